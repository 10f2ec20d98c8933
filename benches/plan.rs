//! Scale benchmarks for the foundation: planning a root change in a
//! 100,000-image lineage, loading + validating a 100,000-image config, and
//! the rollout's decision function on a 10,000-image rollout step.
//! Reproduce the input with `lineaged generate --images 100000 --seed 1`.

use criterion::{Criterion, criterion_group, criterion_main};
use lineaged::config::load_str;
use lineaged::lineage::{Lineage, generate_yaml};
use lineaged::registry::ImageRef;
use lineaged::rollout::ImageState;
use lineaged::rollout::machine::{Node, Nodes, Stages, step};
use lineaged::store::RolloutImage;

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

    // The rollout's decision function alone: one step over a 10,000-image
    // rollout in which the first wave (100 images) just finished building
    // and 9,900 children (one or two parents each) all become ready: the
    // worst step, every row decided and 9,900 triggers plus 100 deploys.
    let mut nodes = Nodes::new();
    let mut rows = Vec::new();
    for i in 0..10_000usize {
        let name = format!("registry.example.com/team{}/img{i}:1", i % 50);
        let parents = if i < 100 {
            vec!["docker.io/library/base:1".to_string()]
        } else {
            let p = |k: usize| format!("registry.example.com/team{}/img{k}:1", k % 50);
            if i % 3 == 0 {
                vec![p(i % 100), p((i + 7) % 100)]
            } else {
                vec![p(i % 100)]
            }
        };
        let stages = Stages {
            build: true,
            deploy: i < 100,
        };
        nodes.insert(
            name.clone(),
            Node {
                parents,
                stages,
                ..Default::default()
            },
        );
        let mut r = RolloutImage::new(1, &name, if i < 100 { 1 } else { 2 }, 0);
        if i < 100 {
            r.state = ImageState::Built;
            r.built_digest = Some(format!("sha256:{i:064}"));
        }
        rows.push(r);
    }
    let actions = step(&rows, &nodes);
    eprintln!(
        "rollout step over {} rows: {} actions",
        rows.len(),
        actions.len()
    );
    let mut g = c.benchmark_group("rollout");
    g.sample_size(30);
    g.bench_function("machine_step_10k", |b| b.iter(|| step(&rows, &nodes)));
    g.finish();
}

criterion_group!(scale, benches);
criterion_main!(scale);
