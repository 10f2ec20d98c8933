use super::*;
use crate::config::load_str;

fn lineage(yaml: &str) -> Lineage {
    let cfg = load_str("test.yaml", yaml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    Lineage::new(&cfg.images)
}

fn r(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

fn waves(l: &Lineage, changed: &[&str]) -> Vec<Vec<String>> {
    let changed: Vec<ImageRef> = changed.iter().map(|c| r(c)).collect();
    l.plan(&changed)
        .unwrap()
        .waves
        .into_iter()
        .map(|w| w.into_iter().map(|i| i.familiar()).collect())
        .collect()
}

const HEAD: &str = "backends: { ci: { kind: webhook, url: http://127.0.0.1:9/ } }\nimages:\n";

fn img(name: &str, from: &[&str], managed: bool) -> String {
    let build = if managed {
        "\n    build: { backend: ci }"
    } else {
        ""
    };
    format!("  - name: {name}\n    from: [{}]{build}\n", from.join(", "))
}

#[test]
fn diamond_rebuilds_bottom_once_after_both_sides() {
    let yaml = format!(
        "{HEAD}{}{}{}{}",
        img("base:1", &[], false),
        img("left:1", &["base:1"], true),
        img("right:1", &["base:1"], true),
        img("bottom:1", &["left:1", "right:1"], true),
    );
    let l = lineage(&yaml);
    assert_eq!(
        waves(&l, &["base:1"]),
        vec![vec!["left:1", "right:1"], vec!["bottom:1"]]
    );
}

#[test]
fn wave_is_one_more_than_the_deepest_affected_parent() {
    // chain a → b → c, and d built from a and c: d must wait for c (wave 3).
    let yaml = format!(
        "{HEAD}{}{}{}{}{}",
        img("a:1", &[], false),
        img("b:1", &["a:1"], true),
        img("c:1", &["b:1"], true),
        img("d:1", &["a:1", "c:1"], true),
        img("other:1", &[], false),
    );
    let l = lineage(&yaml);
    assert_eq!(
        waves(&l, &["a:1"]),
        vec![vec!["b:1"], vec!["c:1"], vec!["d:1"]]
    );
    // A change of b only: c in wave 1, d in wave 2 (a did not change).
    assert_eq!(waves(&l, &["b:1"]), vec![vec!["c:1"], vec!["d:1"]]);
    assert!(waves(&l, &["other:1"]).is_empty());
    assert!(waves(&l, &["d:1"]).is_empty());
}

#[test]
fn multi_root_change_merges_and_dedups() {
    let yaml = format!(
        "{HEAD}{}{}{}{}{}",
        img("py:1", &[], false),
        img("deb:1", &[], false),
        img("p:1", &["py:1"], true),
        img("d:1", &["deb:1"], true),
        img("both:1", &["p:1", "d:1", "py:1"], true),
    );
    let l = lineage(&yaml);
    assert_eq!(
        waves(&l, &["py:1", "deb:1", "py:1"]),
        vec![vec!["d:1", "p:1"], vec!["both:1"]]
    );
    let plan = l
        .plan(&[r("deb:1"), r("py:1"), r("docker.io/library/py:1")])
        .unwrap();
    assert_eq!(plan.changed, vec![r("deb:1"), r("py:1")]);
    assert_eq!(plan.image_count(), 3);
}

#[test]
fn external_images_stop_the_walk_and_are_never_in_a_wave() {
    let yaml = format!(
        "{HEAD}{}{}{}{}",
        img("root:1", &[], false),
        img("vendor:1", &["root:1"], false),
        img("mine:1", &["vendor:1"], true),
        img("direct:1", &["root:1"], true),
    );
    let l = lineage(&yaml);
    assert_eq!(waves(&l, &["root:1"]), vec![vec!["direct:1"]]);
    assert_eq!(waves(&l, &["vendor:1"]), vec![vec!["mine:1"]]);
}

#[test]
fn changed_image_that_descends_from_another_change_is_rebuilt() {
    let yaml = format!(
        "{HEAD}{}{}{}",
        img("base:1", &[], false),
        img("mid:1", &["base:1"], true),
        img("leaf:1", &["mid:1"], true),
    );
    let l = lineage(&yaml);
    assert_eq!(
        waves(&l, &["base:1", "mid:1"]),
        vec![vec!["mid:1"], vec!["leaf:1"]]
    );
    assert_eq!(waves(&l, &["mid:1"]), vec![vec!["leaf:1"]]);
}

#[test]
fn unknown_changed_image_is_an_error() {
    let l = lineage(&format!("{HEAD}{}", img("a:1", &[], false)));
    assert_eq!(
        l.plan(&[r("zzz:9")]),
        Err(PlanError::UnknownImage(r("zzz:9")))
    );
}

#[test]
fn parents_and_children() {
    let yaml = format!(
        "{HEAD}{}{}",
        img("b:1", &[], false),
        img("c:1", &["b:1", "implicit:2"], true),
    );
    let l = lineage(&yaml);
    assert_eq!(l.parents(&r("c:1")), vec![r("b:1"), r("implicit:2")]);
    assert_eq!(l.children(&r("implicit:2")), vec![r("c:1")]);
    assert_eq!(l.is_managed(&r("implicit:2")), Some(false));
    assert_eq!(l.len(), 3);
}

#[test]
fn generated_lineage_loads_and_plans() {
    let yaml = generate_yaml(2_000, 7);
    let l = lineage(&yaml);
    assert_eq!(l.len(), 2_000);
    let plan = l.plan(&[r("base0:1.0")]).unwrap();
    assert!(plan.image_count() > 100, "{}", plan.image_count());
    // Every image's affected parents sit in earlier waves.
    let mut wave_of = HashMap::new();
    for (i, w) in plan.waves.iter().enumerate() {
        for img in w {
            assert!(wave_of.insert(img.clone(), i).is_none(), "{img} twice");
        }
    }
    for (img, &w) in &wave_of {
        for p in l.parents(img) {
            if let Some(&pw) = wave_of.get(&p) {
                assert!(pw < w, "{p} (wave {pw}) before {img} (wave {w})");
            }
        }
    }
    // Deterministic: same seed, same text.
    assert_eq!(generate_yaml(500, 3), generate_yaml(500, 3));
}

#[test]
fn a_split_lineage_loads_as_a_directory_like_the_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let docs = crate::lineage::generate_files(1_000, 3, 4);
    assert_eq!(docs.len(), 4);
    assert_eq!(
        docs.concat().len(),
        generate_yaml(1_000, 3).len() + 3 * "images:\n".len()
    );
    for (i, d) in docs.iter().enumerate() {
        std::fs::write(dir.path().join(format!("team-{i}.yaml")), d).unwrap();
    }
    let from_dir = crate::config::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_dir.sources.len(), 4);
    let single = lineage(&generate_yaml(1_000, 3));
    let split = Lineage::new(&from_dir.images);
    assert_eq!(split.len(), 1_000);
    assert_eq!(
        split.plan(&[r("base0:1.0")]).unwrap(),
        single.plan(&[r("base0:1.0")]).unwrap()
    );
}

#[test]
fn plan_rebuild_includes_the_stale_images_themselves() {
    let yaml = format!(
        "{HEAD}{}{}{}{}{}",
        img("base:1", &[], false),
        img("left:1", &["base:1"], true),
        img("right:1", &["base:1"], true),
        img("bottom:1", &["left:1", "right:1"], true),
        img("other:1", &["base:1"], true),
    );
    let l = lineage(&yaml);
    let p = l.plan_rebuild(&[r("left:1")]).unwrap();
    let names: Vec<Vec<String>> = p
        .waves
        .iter()
        .map(|w| w.iter().map(|i| i.familiar()).collect())
        .collect();
    assert_eq!(
        names,
        vec![vec!["left:1"], vec!["bottom:1"]],
        "right and other are fresh"
    );
    let p = l.plan_rebuild(&[r("left:1"), r("bottom:1")]).unwrap();
    assert_eq!(p.image_count(), 2);
    assert!(
        l.plan_rebuild(&[r("base:1")]).unwrap().waves.is_empty(),
        "external images are not rebuilt"
    );
}
