//! Exactly once, tried as a user would: `lineaged serve` processes on
//! SQLite and Postgres, the real `docker-registry`, a CI peer that pushes
//! rebuilt images with base annotations and calls back. The daemon is
//! killed with SIGKILL mid-rollout (storms of kills), stopped while a base
//! moves, and run as two replicas on one database. Every test counts what
//! the CI received per image and webhook-id (issue 10, defects 1–6).

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lineaged::store::{DigestSource, Store, now_millis};
use support::TestDb;
use support::fleet::{Lineage, Serve, World, push_with_kills, rollouts_finished, until};

const BACKENDS: [&str; 2] = ["sqlite", "postgres"];

/// Distinct rebuild webhook-ids per repo (`team/p` → n).
fn rebuilds(w: &World) -> HashMap<String, usize> {
    w.ci.ids("rebuild")
        .into_iter()
        .map(|(image, ids)| {
            let repo = image
                .split_once('/')
                .unwrap()
                .1
                .rsplit_once(':')
                .unwrap()
                .0
                .to_string();
            (repo, ids.len())
        })
        .collect()
}

fn expect(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
    pairs
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| (r.to_string(), *n))
        .collect()
}

/// Nothing stale, and no trigger for a few reconcile rounds (1 s each).
async fn settled(w: &World, store: &Store, what: &str) {
    let before = w.ci.count();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        w.ci.count(),
        before,
        "{what}: triggers after the rollout finished"
    );
    let counts = store.status_counts().await.unwrap();
    assert_eq!(
        counts.images_stale, 0,
        "{what}: rebuilt images judged stale"
    );
}

/// The digest every parent had at the last trigger of `repo`.
fn last_parents(w: &World, repo: &str) -> Vec<(String, String)> {
    let full = w.full(repo);
    w.ci.triggers
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|t| t.kind == "rebuild" && t.image == full)
        .map(|t| t.parents.clone())
        .unwrap_or_default()
}

/// Defects 1 and 6: a SIGKILL right after T's trigger went out must not
/// rebuild P and W (built on A's current digest), and rebuilt images are
/// not stale afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_trigger_reruns_nothing_that_was_done() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let w = World::new(Lineage::issue(), db.url(), &[]).await;
        let serve = Serve::start(&w.cfg, "node-1");
        let store = w.store_when_observed().await;
        w.push_base("base/a").await;
        rollouts_finished(&store, 1, Duration::from_secs(60)).await;
        assert_eq!(
            rebuilds(&w),
            expect(&[("team/p", 1), ("team/x", 1), ("team/w", 1), ("team/e", 1)]),
            "{backend}: first rollout"
        );
        w.push_base("base/b").await;
        w.until_triggered("team/t").await;
        serve.kill9();
        let serve = Serve::start(&w.cfg, "node-1");
        let states = rollouts_finished(&store, 2, Duration::from_secs(60)).await;
        assert!(
            states.iter().all(|s| s == "succeeded"),
            "{backend}: {states:?}"
        );
        assert_eq!(
            rebuilds(&w),
            expect(&[
                ("team/p", 1),
                ("team/t", 1),
                ("team/x", 2),
                ("team/w", 1),
                ("team/e", 2)
            ]),
            "{backend}: after the crash only T, X and E are rebuilt"
        );
        settled(&w, &store, backend).await;
        serve.stop();
        db.finish().await;
    }
}

/// Defect 2: stopped, a base moves, started: each descendant is built once,
/// on the new digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downtime_then_a_new_base_builds_each_descendant_once_on_it() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let w = World::new(Lineage::issue(), db.url(), &[]).await;
        let serve = Serve::start(&w.cfg, "node-1");
        let store = w.store_when_observed().await;
        serve.stop();
        let new_a = w.push_base("base/a").await;
        let serve = Serve::start(&w.cfg, "node-1");
        rollouts_finished(&store, 1, Duration::from_secs(60)).await;
        assert_eq!(
            rebuilds(&w),
            expect(&[("team/p", 1), ("team/x", 1), ("team/w", 1), ("team/e", 1)]),
            "{backend}"
        );
        assert_eq!(
            last_parents(&w, "team/p"),
            vec![(w.full("base/a"), new_a.clone())],
            "{backend}: P built on the new A"
        );
        assert_eq!(
            store.rollouts(10).await.unwrap().len(),
            1,
            "{backend}: one rollout"
        );
        settled(&w, &store, backend).await;
        serve.stop();
        db.finish().await;
    }
}

/// Defect 3: two replicas on one Postgres database, three pushes in a row:
/// one rollout per push, each affected image triggered once per push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_trigger_each_image_once_per_push() {
    let db = TestDb::new("postgres").await;
    let w = World::new(Lineage::issue(), db.url(), &[]).await;
    let one = Serve::start(&w.cfg, "replica-1");
    let two = Serve::start(&w.replica_cfg(), "replica-2");
    let store = w.store_when_observed().await;
    for (i, base) in ["base/a", "base/b", "base/a"].into_iter().enumerate() {
        w.push_base(base).await;
        rollouts_finished(&store, i + 1, Duration::from_secs(60)).await;
    }
    assert_eq!(
        rebuilds(&w),
        expect(&[
            ("team/p", 2),
            ("team/t", 1),
            ("team/x", 3),
            ("team/w", 2),
            ("team/e", 3)
        ])
    );
    let rollouts = store.rollouts(10).await.unwrap();
    assert_eq!(rollouts.len(), 3, "one rollout per push: {rollouts:?}");
    settled(&w, &store, "replicas").await;
    one.stop();
    two.stop();
    db.finish().await;
}

/// Two processes on one host with no `LINEAGED_NODE_ID` (both named after
/// the host) on one Postgres: each run holds leases and claims with its own
/// instance id, so only one polls; one is SIGKILLed twice during a rollout
/// and restarted, freeing its dead run's jobs at once without touching the
/// live sibling's; every affected image is triggered with one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_host_need_no_node_id() {
    let db = TestDb::new("postgres").await;
    let w = World::new(Lineage::issue(), db.url(), &[]).await;
    let one = Serve::start(&w.cfg, "");
    let two = Serve::start(&w.replica_cfg(), "");
    let store = w.store_when_observed().await;
    // One poller: about one observation a second of a base on a 1 s
    // schedule, never the ~2 two pollers make (measured before: 2.0/s).
    let base = w.full("base/b");
    let before = store.digest_history(&base, 10_000).await.unwrap().len();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let polls = store.digest_history(&base, 10_000).await.unwrap().len() - before;
    assert!(
        (3..=8).contains(&polls),
        "{polls} observations of {base} in 6 s"
    );
    let holder = store
        .lease_holder(lineaged::watch::WATCH_LEASE)
        .await
        .unwrap()
        .unwrap()
        .holder;
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host = host.trim();
    assert!(
        holder.starts_with(&format!(
            "{}:",
            if host.is_empty() { "lineaged" } else { host }
        )),
        "{holder}"
    );
    let (one, states) = push_with_kills(&w, &store, one, "", "base/a", 2, (0, 200), 1).await;
    assert_eq!(states, vec!["succeeded"]);
    assert_eq!(
        rebuilds(&w),
        expect(&[("team/p", 1), ("team/x", 1), ("team/w", 1), ("team/e", 1)])
    );
    settled(&w, &store, "same host").await;
    one.stop();
    two.stop();
    db.finish().await;
}

/// Defect 4: an image of two parents whose annotation names only the first
/// is stale when the second moves, and reconcile rebuilds it once when that
/// change was recorded but never planned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_of_two_parents_is_stale_when_either_moves() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let w = World::new(Lineage::issue(), db.url(), &[]).await;
        let serve = Serve::start(&w.cfg, "node-1");
        let store = w.store_when_observed().await;
        w.push_base("base/a").await;
        rollouts_finished(&store, 1, Duration::from_secs(60)).await;
        serve.stop();
        // T is rebuilt outside lineaged while it is down, and the change is
        // recorded but lost before anything planned it (as a crash of an
        // older version could leave it).
        let (new_t, _) = w
            .reg
            .push_image(
                "team/t",
                "1",
                "outside build of T",
                ("linux", "amd64"),
                Default::default(),
                Default::default(),
            )
            .await;
        store
            .record_digest(
                &w.full("team/t"),
                &new_t,
                "",
                DigestSource::Poll,
                now_millis(),
            )
            .await
            .unwrap();
        let mut tx = store.begin().await.unwrap();
        for c in store
            .due_changes_in(&mut tx, now_millis(), 10)
            .await
            .unwrap()
        {
            store
                .finish_change_in(&mut tx, c.id, now_millis())
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let stale = store.stale_parents(&w.full("team/x")).await.unwrap();
        assert_eq!(stale.len(), 1, "{backend}: {stale:?}");
        assert_eq!(
            (stale[0].parent.as_str(), stale[0].source.as_str()),
            (w.full("team/t").as_str(), "build")
        );
        let serve = Serve::start(&w.cfg, "node-1");
        rollouts_finished(&store, 2, Duration::from_secs(60)).await;
        assert_eq!(
            rebuilds(&w),
            expect(&[("team/p", 1), ("team/x", 2), ("team/w", 1), ("team/e", 2)]),
            "{backend}: reconcile rebuilt X and E once"
        );
        assert!(
            last_parents(&w, "team/x").contains(&(w.full("team/t"), new_t.clone())),
            "{backend}: X rebuilt on the new T"
        );
        settled(&w, &store, backend).await;
        serve.stop();
        db.finish().await;
    }
}

/// Defect 5: a CI that never calls back, and a SIGKILL while builds are out:
/// the pushed images complete the builds (seen in the registry at start-up)
/// and the rollout finishes with each image built once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_pushed_while_the_daemon_was_dead_complete_from_the_registry() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let w = World::new(Lineage::issue(), db.url(), &[]).await;
        w.ci.silent
            .store(true, std::sync::atomic::Ordering::Relaxed);
        *w.ci.build_time.lock().unwrap() = Duration::from_millis(600);
        let serve = Serve::start(&w.cfg, "node-1");
        let store = w.store_when_observed().await;
        w.push_base("base/a").await;
        w.until_triggered("team/p").await;
        serve.kill9();
        // P's build lands in the registry while nobody watches.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let serve = Serve::start(&w.cfg, "node-1");
        let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
        assert_eq!(states, vec!["succeeded"], "{backend}");
        assert_eq!(
            rebuilds(&w),
            expect(&[("team/p", 1), ("team/x", 1), ("team/w", 1), ("team/e", 1)]),
            "{backend}"
        );
        settled(&w, &store, backend).await;
        serve.stop();
        db.finish().await;
    }
}

/// SIGKILL storms: a 22-image lineage with diamonds, a base push per storm,
/// five kills at spread-out points of each rollout, restarted at once.
/// After every storm: one rollout per push, every affected image triggered
/// with exactly one new webhook-id, built on its parents' newest digests,
/// and the images with `deploy:` deployed once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_storms_lose_and_double_nothing() {
    let storms: usize = std::env::var("LINEAGED_STORMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let deployed = ["team/i05", "team/i12", "team/i17", "team/i19"];
        let w = World::new(Lineage::storm(), db.url(), &deployed).await;
        let mut serve = Serve::start(&w.cfg, "storm-node");
        let store = w.store_when_observed().await;
        let mut expected: HashMap<String, usize> = HashMap::new();
        for s in 0..storms {
            let base = if s % 2 == 0 { "base/a" } else { "base/b" };
            let affected = w.lineage.affected(base);
            for r in &affected {
                *expected.entry(r.clone()).or_default() += 1;
            }
            let start = w.ci.distinct();
            w.push_base(base).await;
            let n = affected.len();
            for k in 0..5 {
                let at = start + (1 + k * n / 5).min(n);
                let ci = w.ci.clone();
                until(
                    &format!("{backend} storm {s}: trigger {at}"),
                    Duration::from_secs(60),
                    || {
                        let ci = ci.clone();
                        async move { ci.distinct() >= at }
                    },
                )
                .await;
                tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 120)).await;
                serve.kill9();
                serve = Serve::start(&w.cfg, "storm-node");
            }
            let states = rollouts_finished(&store, s + 1, Duration::from_secs(90)).await;
            assert!(
                states.iter().all(|st| st == "succeeded"),
                "{backend} storm {s}: {states:?}"
            );
            assert_eq!(
                rebuilds(&w),
                expected,
                "{backend} storm {s}: webhook-ids per image"
            );
            for r in &affected {
                for (parent, digest) in last_parents(&w, r) {
                    let current = store
                        .image_state(&parent)
                        .await
                        .unwrap()
                        .unwrap()
                        .current_digest;
                    assert_eq!(
                        Some(digest),
                        current,
                        "{backend} storm {s}: {r} built on an old {parent}"
                    );
                }
            }
        }
        let rollouts = store.rollouts(100).await.unwrap();
        assert_eq!(rollouts.len(), storms, "{backend}: one rollout per push");
        let seen: HashSet<String> = w.ci.ids("rebuild").values().flatten().cloned().collect();
        assert_eq!(seen.len(), expected.values().sum::<usize>(), "{backend}");
        serve.stop();
        db.finish().await;
    }
}
