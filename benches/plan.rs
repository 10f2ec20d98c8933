//! Scale benchmarks for the foundation: planning a root change in a
//! 100,000-image lineage, and loading + validating a 100,000-image config.
//! Reproduce the input with `lineaged generate --images 100000 --seed 1`.

use criterion::{Criterion, criterion_group, criterion_main};
use lineaged::config::load_str;
use lineaged::lineage::{Lineage, generate_yaml};
use lineaged::registry::ImageRef;

const IMAGES: usize = 100_000;

fn benches(c: &mut Criterion) {
    let yaml = generate_yaml(IMAGES, 1);
    let cfg = load_str("generated.yaml", &yaml, &|_| None).expect("generated config is valid");
    let lineage = Lineage::new(&cfg.images);
    let root = ImageRef::parse("base0:1.0").expect("root ref");
    let plan = lineage.plan(std::slice::from_ref(&root)).expect("plan");
    eprintln!(
        "lineage: {} images; a change of {root} rebuilds {} images in {} waves",
        lineage.len(),
        plan.image_count(),
        plan.waves.len()
    );

    let mut g = c.benchmark_group("scale");
    g.sample_size(20);
    g.bench_function("plan_root_change_100k", |b| {
        b.iter(|| lineage.plan(std::slice::from_ref(&root)).expect("plan"))
    });
    g.bench_function("build_graph_100k", |b| b.iter(|| Lineage::new(&cfg.images)));
    g.sample_size(10);
    g.bench_function("load_validate_100k", |b| {
        b.iter(|| load_str("generated.yaml", &yaml, &|_| None).expect("valid"))
    });
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, d) in lineaged::lineage::generate_files(IMAGES, 1, 4)
        .iter()
        .enumerate()
    {
        std::fs::write(dir.path().join(format!("team-{i}.yaml")), d).expect("write");
    }
    g.bench_function("load_validate_100k_dir_of_4", |b| {
        b.iter(|| lineaged::config::load(dir.path()).expect("valid"))
    });
    g.finish();
}

criterion_group!(scale, benches);
criterion_main!(scale);
