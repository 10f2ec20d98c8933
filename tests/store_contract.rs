//! The storage contract: the same test bodies run against SQLite and
//! Postgres, each test in a database of its own.

mod support;

use std::time::Duration;

use lineaged::store::{
    DigestSource, DigestUpdate, Failure, JobState, NewEvent, NewJob, Store, StoreError,
};
use serde_json::json;
use support::TestDb;

const T0: i64 = 1_800_000_000_000;
const LEASE: Duration = Duration::from_secs(30);

fn job(key: Option<&str>, reason: &str) -> NewJob {
    let mut j = NewJob::new("rebuild", T0);
    j.unique_key = key.map(String::from);
    j.image = key.map(String::from);
    j.reasons = vec![reason.to_string()];
    j.payload = json!({ "reason": reason });
    j
}

async fn migrations_from_empty_and_reapplied(db: &TestDb) {
    let store = db.store().await; // applies from empty
    assert_eq!(store.migrate().await.unwrap(), 0, "re-applying is a no-op");
    let again = db.store().await;
    assert_eq!(again.migrate().await.unwrap(), 0);
    assert_eq!(again.job_counts().await.unwrap(), vec![]);
}

async fn enqueue_coalesces_pending_jobs_with_the_same_key(db: &TestDb) {
    let s = db.store().await;
    let a = s
        .enqueue(&job(Some("rebuild:x"), "python moved"), T0)
        .await
        .unwrap();
    let mut second = job(Some("rebuild:x"), "debian moved");
    second.run_at = T0 + 5_000;
    let b = s.enqueue(&second, T0 + 1).await.unwrap();
    assert!(a.inserted);
    assert!(!b.inserted);
    assert_eq!(a.id, b.id);
    let j = s.job(a.id).await.unwrap().unwrap();
    assert_eq!(j.reasons(), vec!["python moved", "debian moved"]);
    assert_eq!(
        j.payload,
        json!({"reason": "debian moved"}).to_string(),
        "newest payload wins"
    );
    assert_eq!(j.run_at, T0, "earliest run_at stays");
    assert_eq!(j.enqueue_count, 2);
    let c = s.enqueue(&job(Some("rebuild:y"), "r"), T0).await.unwrap();
    let d = s.enqueue(&job(None, "r"), T0).await.unwrap();
    let e = s.enqueue(&job(None, "r"), T0).await.unwrap();
    assert!(c.inserted && d.inserted && e.inserted);
    assert_eq!(
        [c.id, d.id, e.id]
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );
    assert_ne!(
        j.idempotency_key,
        s.job(c.id).await.unwrap().unwrap().idempotency_key
    );
}

async fn enqueue_joins_the_callers_transaction(db: &TestDb) {
    let s = db.store().await;
    let event = NewEvent {
        kind: "digest_changed".into(),
        image: Some("x".into()),
        rollout_id: None,
        job_id: None,
        data: json!({}),
    };
    {
        let mut tx = s.begin().await.unwrap();
        s.append_event_in(&mut tx, &event, T0).await.unwrap();
        s.enqueue_in(&mut tx, &job(Some("k"), "r"), T0)
            .await
            .unwrap();
        // dropped without commit: rolled back, both writes gone
    }
    assert!(s.jobs(None, 0, 10).await.unwrap().is_empty());
    assert!(s.events_after(0, 10).await.unwrap().is_empty());
    let mut tx = s.begin().await.unwrap();
    s.append_event_in(&mut tx, &event, T0).await.unwrap();
    let e = s
        .enqueue_in(&mut tx, &job(Some("k"), "r"), T0)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    s.wake_local();
    assert_eq!(s.jobs(None, 0, 10).await.unwrap()[0].id, e.id);
    assert_eq!(s.events_after(0, 10).await.unwrap().len(), 1);
}

async fn claim_in_order_with_fenced_complete(db: &TestDb) {
    let s = db.store().await;
    let mut low = job(Some("a"), "r");
    low.priority = 5;
    let low = s.enqueue(&low, T0).await.unwrap().id;
    let first = s.enqueue(&job(Some("b"), "r"), T0).await.unwrap().id;
    let second = s.enqueue(&job(Some("c"), "r"), T0).await.unwrap().id;
    let mut later = job(Some("d"), "r");
    later.run_at = T0 + 60_000;
    let later = s.enqueue(&later, T0).await.unwrap().id;

    let got = s.claim("w1", 2, LEASE, T0).await.unwrap();
    assert_eq!(
        got.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![first, second]
    );
    assert!(
        got.iter()
            .all(|j| j.attempt == 1 && j.locked_by.as_deref() == Some("w1"))
    );
    assert_eq!(got[0].locked_until, Some(T0 + 30_000));
    let rest = s.claim("w2", 10, LEASE, T0).await.unwrap();
    assert_eq!(
        rest.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![low],
        "not-yet-due job stays"
    );

    s.heartbeat(first, "w1", LEASE, T0 + 10_000).await.unwrap();
    assert_eq!(
        s.job(first).await.unwrap().unwrap().locked_until,
        Some(T0 + 40_000)
    );
    assert!(matches!(
        s.heartbeat(first, "w2", LEASE, T0).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        s.complete(first, "w2", None, T0).await,
        Err(StoreError::LeaseLost(_))
    ));
    s.complete(first, "w1", Some(&json!({"digest": "sha256:ab"})), T0 + 1)
        .await
        .unwrap();
    assert!(
        matches!(
            s.complete(first, "w1", None, T0 + 2).await,
            Err(StoreError::LeaseLost(_))
        ),
        "twice"
    );
    let j = s.job(first).await.unwrap().unwrap();
    assert_eq!(j.state(), Some(JobState::Succeeded));
    assert_eq!(j.locked_by, None);
    assert_eq!(j.result.as_deref(), Some(r#"{"digest":"sha256:ab"}"#));
    let due = s.claim("w1", 10, LEASE, T0 + 60_000).await.unwrap();
    assert_eq!(due.iter().map(|j| j.id).collect::<Vec<_>>(), vec![later]);
}

async fn one_image_never_builds_twice_at_once(db: &TestDb) {
    let s = db.store().await;
    let first = s.enqueue(&job(Some("rebuild:x"), "one"), T0).await.unwrap();
    assert_eq!(s.claim("w1", 10, LEASE, T0).await.unwrap().len(), 1);
    // While it runs, a new change queues a second rebuild, which waits.
    let second = s.enqueue(&job(Some("rebuild:x"), "two"), T0).await.unwrap();
    assert!(second.inserted);
    assert_ne!(first.id, second.id);
    assert!(s.claim("w2", 10, LEASE, T0 + 1).await.unwrap().is_empty());
    s.complete(first.id, "w1", None, T0 + 2).await.unwrap();
    let next = s.claim("w2", 10, LEASE, T0 + 3).await.unwrap();
    assert_eq!(
        next.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![second.id]
    );
}

async fn failures_back_off_then_die_or_fail_permanently(db: &TestDb) {
    let s = db.store().await;
    let mut j = job(Some("k"), "r");
    j.max_attempts = 3;
    let id = s.enqueue(&j, T0).await.unwrap().id;
    let mut now = T0;
    for attempt in 1..=3 {
        let got = s.claim("w", 1, LEASE, now).await.unwrap();
        assert_eq!(got.len(), 1, "attempt {attempt}");
        assert_eq!(got[0].attempt, attempt);
        let st = s
            .fail(
                id,
                "w",
                &Failure::Retry {
                    error: "HTTP 503".into(),
                    retry_after: None,
                },
                now,
            )
            .await
            .unwrap();
        let rec = s.job(id).await.unwrap().unwrap();
        if attempt < 3 {
            assert_eq!(st, JobState::Pending);
            let min = (1_000i64 << (attempt - 1)) * 8 / 10;
            assert!(
                rec.run_at >= now + min,
                "backoff after attempt {attempt}: {}",
                rec.run_at - now
            );
            assert!(
                s.claim("w", 1, LEASE, now).await.unwrap().is_empty(),
                "not before its time"
            );
            now = rec.run_at;
        } else {
            assert_eq!(st, JobState::Dead);
            assert!(
                rec.last_error
                    .unwrap()
                    .contains("HTTP 503 (attempt 3 of 3)")
            );
        }
    }
    let id2 = s.enqueue(&job(Some("k2"), "r"), now).await.unwrap().id;
    s.claim("w", 1, LEASE, now).await.unwrap();
    let hint = Failure::Retry {
        error: "HTTP 429".into(),
        retry_after: Some(Duration::from_secs(120)),
    };
    s.fail(id2, "w", &hint, now).await.unwrap();
    assert!(
        s.job(id2).await.unwrap().unwrap().run_at >= now + 120_000,
        "Retry-After honoured"
    );
    let id3 = s.enqueue(&job(Some("k3"), "r"), now).await.unwrap().id;
    s.claim("w", 5, LEASE, now).await.unwrap();
    let st = s
        .fail(
            id3,
            "w",
            &Failure::Permanent {
                error: "HTTP 404".into(),
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(st, JobState::Failed);
    assert!(matches!(
        s.fail(id3, "w", &Failure::Permanent { error: "x".into() }, now)
            .await,
        Err(StoreError::LeaseLost(_))
    ));
}

async fn expired_leases_are_rescued_and_the_old_holder_is_fenced(db: &TestDb) {
    let s = db.store().await;
    let id = s.enqueue(&job(Some("k"), "r"), T0).await.unwrap().id;
    assert_eq!(s.claim("old", 1, LEASE, T0).await.unwrap().len(), 1);
    assert!(
        s.rescue(T0 + 29_000).await.unwrap().is_empty(),
        "lease still valid"
    );
    assert_eq!(s.rescue(T0 + 31_000).await.unwrap(), vec![id]);
    let got = s.claim("new", 1, LEASE, T0 + 31_000).await.unwrap();
    assert_eq!(got[0].id, id);
    assert_eq!(got[0].attempt, 2);
    assert_eq!(
        got[0].idempotency_key,
        s.job(id).await.unwrap().unwrap().idempotency_key
    );
    assert!(matches!(
        s.complete(id, "old", None, T0 + 32_000).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        s.heartbeat(id, "old", LEASE, T0 + 32_000).await,
        Err(StoreError::LeaseLost(_))
    ));
    s.complete(id, "new", None, T0 + 33_000).await.unwrap();
}

/// What a dead earlier run of this node held is freed at once; a live
/// sibling's (same node name, another live process) and other nodes' wait
/// for their leases.
async fn a_restart_frees_only_what_dead_runs_of_its_node_held(db: &TestDb) {
    use lineaged::node::Identity;
    let s = db.store().await;
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let mut sibling = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let holders = [
        format!("host-1:{dead}:0badf00d"),
        format!("host-1:{dead}:0badf00d/gates"),
        "host-1".to_string(), // before instance ids
        format!("host-1:{}:12345678", sibling.id()),
        format!("host-10:{dead}:0badf00d"),
        "other-host:1:aaaaaaaa".to_string(),
    ];
    let mut ids = Vec::new();
    for (i, h) in holders.iter().enumerate() {
        let id = s
            .enqueue(&job(Some(&format!("k{i}")), "r"), T0)
            .await
            .unwrap()
            .id;
        assert_eq!(s.claim(h, 1, LEASE, T0).await.unwrap()[0].id, id);
        ids.push(id);
    }
    assert!(
        s.acquire_lease("watch", &holders[0], LEASE, T0)
            .await
            .unwrap()
    );
    assert!(
        s.acquire_lease("other", &holders[3], LEASE, T0)
            .await
            .unwrap()
    );
    let me = Identity::new("host-1");
    let (freed, leases) = s.release_previous_runs(&me, T0 + 1).await.unwrap();
    assert_eq!(freed, ids[..3].to_vec());
    assert_eq!(leases, vec!["watch".to_string()]);
    for (i, id) in ids.iter().enumerate() {
        let j = s.job(*id).await.unwrap().unwrap();
        let want = if i < 3 {
            JobState::Pending
        } else {
            JobState::Running
        };
        assert_eq!(j.state(), Some(want), "{}", holders[i]);
    }
    assert!(s.lease_holder("watch").await.unwrap().is_none());
    assert_eq!(
        s.lease_holder("other").await.unwrap().unwrap().holder,
        holders[3]
    );
    // This run takes the freed lease at once; the sibling's stays.
    assert!(
        s.acquire_lease("watch", &me.instance, LEASE, T0 + 2)
            .await
            .unwrap()
    );
    assert!(
        !s.acquire_lease("other", &me.instance, LEASE, T0 + 2)
            .await
            .unwrap()
    );
    sibling.kill().unwrap();
    sibling.wait().unwrap();
}

async fn a_rescued_job_is_superseded_by_a_newer_pending_one(db: &TestDb) {
    let s = db.store().await;
    let old = s
        .enqueue(&job(Some("k"), "first change"), T0)
        .await
        .unwrap()
        .id;
    s.claim("w", 1, LEASE, T0).await.unwrap();
    let newer = s
        .enqueue(&job(Some("k"), "second change"), T0 + 1)
        .await
        .unwrap()
        .id;
    assert_eq!(s.rescue(T0 + 60_000).await.unwrap(), vec![old]);
    let o = s.job(old).await.unwrap().unwrap();
    assert_eq!(o.state(), Some(JobState::Cancelled));
    assert!(
        o.last_error
            .unwrap()
            .contains(&format!("superseded by job {newer}"))
    );
    let n = s.job(newer).await.unwrap().unwrap();
    assert_eq!(n.state(), Some(JobState::Pending));
    assert_eq!(n.reasons(), vec!["first change", "second change"]);
}

async fn operators_retry_and_cancel(db: &TestDb) {
    let s = db.store().await;
    let mut j = job(Some("k"), "r");
    j.max_attempts = 1;
    let id = s.enqueue(&j, T0).await.unwrap().id;
    s.claim("w", 1, LEASE, T0).await.unwrap();
    let failure = Failure::Retry {
        error: "down".into(),
        retry_after: None,
    };
    assert_eq!(s.fail(id, "w", &failure, T0).await.unwrap(), JobState::Dead);
    s.retry_job(id, T0 + 5).await.unwrap();
    let r = s.job(id).await.unwrap().unwrap();
    assert_eq!(
        (r.state(), r.attempt, r.run_at),
        (Some(JobState::Pending), 0, T0 + 5)
    );
    assert!(matches!(
        s.retry_job(id, T0).await,
        Err(StoreError::InvalidState { .. })
    ));
    s.cancel(id, T0 + 6).await.unwrap();
    assert!(matches!(
        s.cancel(id, T0 + 7).await,
        Err(StoreError::InvalidState { .. })
    ));
    assert!(matches!(
        s.cancel(999_999, T0).await,
        Err(StoreError::JobNotFound(999_999))
    ));
    let other = s
        .enqueue(&job(Some("k"), "again"), T0 + 8)
        .await
        .unwrap()
        .id;
    match s.retry_job(id, T0 + 9).await {
        Err(StoreError::PendingExists { existing, .. }) => assert_eq!(existing, other),
        r => panic!("expected PendingExists, got {r:?}"),
    }
    let running = s.claim("w", 1, LEASE, T0 + 10).await.unwrap()[0].id;
    s.cancel(running, T0 + 11).await.unwrap();
    assert!(matches!(
        s.complete(running, "w", None, T0 + 12).await,
        Err(StoreError::LeaseLost(_))
    ));
}

async fn leader_lease_fails_over_within_the_ttl(db: &TestDb) {
    let s = db.store().await;
    let ttl = Duration::from_secs(10);
    assert!(s.acquire_lease("scheduler", "a", ttl, T0).await.unwrap());
    assert!(
        !s.acquire_lease("scheduler", "b", ttl, T0 + 1_000)
            .await
            .unwrap()
    );
    assert!(
        s.acquire_lease("scheduler", "a", ttl, T0 + 5_000)
            .await
            .unwrap(),
        "renew"
    );
    assert!(
        !s.acquire_lease("scheduler", "b", ttl, T0 + 14_999)
            .await
            .unwrap(),
        "not before expiry"
    );
    // a stops renewing: b takes over as soon as the lease expires.
    assert!(
        s.acquire_lease("scheduler", "b", ttl, T0 + 15_000)
            .await
            .unwrap()
    );
    assert!(
        !s.acquire_lease("scheduler", "a", ttl, T0 + 16_000)
            .await
            .unwrap()
    );
    let h = s.lease_holder("scheduler").await.unwrap().unwrap();
    assert_eq!(
        (h.holder.as_str(), h.acquired_at, h.expires_at),
        ("b", T0 + 15_000, T0 + 25_000)
    );
    s.release_lease("scheduler", "b").await.unwrap();
    assert!(
        s.acquire_lease("scheduler", "a", ttl, T0 + 16_000)
            .await
            .unwrap(),
        "released"
    );
    assert!(
        s.acquire_lease("rescuer", "b", ttl, T0 + 16_000)
            .await
            .unwrap(),
        "leases are per duty"
    );
}

/// A poll that asked the registry before a CI callback recorded the new
/// digest answers with the old one: it must not move the digest back (that
/// would be planned as an outside change). A digest never seen is news.
async fn a_stale_answer_never_moves_a_digest_back(db: &TestDb) {
    use lineaged::store::Observation;
    let s = db.store().await;
    let cfg =
        lineaged::config::load_str("t.yaml", "images:\n  - name: r.example.com/a:1\n", &|_| {
            None
        })
        .unwrap();
    s.sync_config(&cfg.images, T0).await.unwrap();
    let img = "r.example.com/a:1";
    let obs = |digest: &'static str, asked_at: i64| Observation {
        image: img,
        digest,
        top_digest: None,
        asked_at,
        platform: "",
        source: DigestSource::Poll,
        settle_ms: 0,
        base: None,
    };
    assert_eq!(
        s.observe(&obs("sha256:0", T0), T0 + 1).await.unwrap(),
        DigestUpdate::Baseline
    );
    // The callback asks at T0+10 and records sha256:1 at T0+20.
    let mut cb = obs("sha256:1", T0 + 10);
    cb.source = DigestSource::Callback;
    assert!(matches!(
        s.observe(&cb, T0 + 20).await.unwrap(),
        DigestUpdate::Changed { .. }
    ));
    // A poll that asked at T0+15 commits the old answer afterwards.
    assert_eq!(
        s.observe(&obs("sha256:0", T0 + 15), T0 + 25).await.unwrap(),
        DigestUpdate::Unchanged
    );
    let st = s.image_state(img).await.unwrap().unwrap();
    assert_eq!(st.current_digest.as_deref(), Some("sha256:1"));
    assert_eq!(
        s.digest_history(img, 10).await.unwrap().len(),
        3,
        "kept as history"
    );
    // A digest never seen before is news, even from an early question.
    assert!(matches!(
        s.observe(&obs("sha256:2", T0 + 15), T0 + 30).await.unwrap(),
        DigestUpdate::Changed { .. }
    ));
    // Asked after the change, the old digest is a real change back.
    assert!(matches!(
        s.observe(&obs("sha256:1", T0 + 40), T0 + 41).await.unwrap(),
        DigestUpdate::Changed { .. }
    ));
}

async fn config_sync_upserts_and_deactivates(db: &TestDb) {
    let s = db.store().await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/lineage.d");
    let cfg = lineaged::config::load(std::path::Path::new(path)).unwrap();
    let sum = s.sync_config(&cfg.images, T0).await.unwrap();
    assert_eq!((sum.added, sum.deactivated, sum.edges), (8, 0, 7));
    assert_eq!(s.active_images().await.unwrap().len(), 8);
    assert!(s.edges().await.unwrap().contains(&(
        "registry.example.com/data/etl:nightly".to_string(),
        "docker.io/library/postgres:16".to_string()
    )));
    let again = s.sync_config(&cfg.images, T0 + 1).await.unwrap();
    assert_eq!(
        (again.added, again.reactivated, again.deactivated),
        (0, 0, 0)
    );

    let fewer: Vec<_> = cfg
        .images
        .iter()
        .filter(|i| {
            let n = i.name.to_string();
            !n.contains("/data/") && !n.contains("postgres")
        })
        .cloned()
        .collect();
    s.record_digest(
        "registry.example.com/data/etl:nightly",
        "sha256:aa",
        "",
        DigestSource::Poll,
        T0,
    )
    .await
    .unwrap();
    let sum = s.sync_config(&fewer, T0 + 2).await.unwrap();
    assert_eq!(
        sum.deactivated, 2,
        "etl and its implicit parent postgres:16"
    );
    assert_eq!(
        s.inactive_images().await.unwrap(),
        vec![
            "docker.io/library/postgres:16",
            "registry.example.com/data/etl:nightly"
        ]
    );
    assert_eq!(
        s.digest_history("registry.example.com/data/etl:nightly", 10)
            .await
            .unwrap()
            .len(),
        1,
        "history kept"
    );
    let back = s.sync_config(&cfg.images, T0 + 3).await.unwrap();
    assert_eq!(back.reactivated, 2);
}

async fn digests_baseline_then_changes_with_history(db: &TestDb) {
    let s = db.store().await;
    let cfg = lineaged::config::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/example.yaml"
    )))
    .unwrap();
    s.sync_config(&cfg.images, T0).await.unwrap();
    let img = "docker.io/library/python:3.12-slim";
    assert_eq!(
        s.record_digest(img, "sha256:01", "", DigestSource::Poll, T0)
            .await
            .unwrap(),
        DigestUpdate::Baseline
    );
    assert_eq!(
        s.record_digest(img, "sha256:01", "", DigestSource::Poll, T0 + 1)
            .await
            .unwrap(),
        DigestUpdate::Unchanged
    );
    assert_eq!(
        s.record_digest(img, "sha256:02", "", DigestSource::Push, T0 + 2)
            .await
            .unwrap(),
        DigestUpdate::Changed {
            old: "sha256:01".into()
        }
    );
    let h = s.digest_history(img, 10).await.unwrap();
    assert_eq!(
        h.iter()
            .map(|(d, src, _)| (d.as_str(), src.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("sha256:02", "push"),
            ("sha256:01", "poll"),
            ("sha256:01", "poll")
        ]
    );
    assert!(
        s.record_digest("ghost:1", "sha256:03", "", DigestSource::Poll, T0)
            .await
            .is_err()
    );
}

async fn events_append_in_order(db: &TestDb) {
    let s = db.store().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let e = NewEvent {
            kind: format!("k{i}"),
            image: None,
            rollout_id: None,
            job_id: Some(i),
            data: json!({"i": i}),
        };
        ids.push(s.append_event(&e, T0 + i).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let after = s.events_after(ids[1], 10).await.unwrap();
    assert_eq!(
        after.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        vec!["k2", "k3", "k4"]
    );
    assert_eq!(after[0].data, r#"{"i":2}"#);
}

async fn an_idle_worker_is_woken_by_an_enqueue(db: &TestDb) {
    let worker_side = db.store().await;
    // Another replica's pool on Postgres (LISTEN/NOTIFY); the same store on SQLite.
    let enqueuer: Store = match db {
        TestDb::Pg(_) => db.store().await,
        TestDb::Sqlite(_) => worker_side.clone(),
    };
    let mut waiter = worker_side.job_waiter().await.unwrap();
    assert!(
        !waiter.wait(Duration::from_millis(50)).await,
        "nothing enqueued: times out"
    );
    let e = enqueuer.clone();
    let handle = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        e.enqueue(&job(Some("wake"), "r"), T0).await.unwrap();
    });
    let started = std::time::Instant::now();
    // The fallback poll would be 30 s: waking well before proves the notification.
    assert!(waiter.wait(Duration::from_secs(30)).await, "woken");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    handle.await.unwrap();
    assert_eq!(worker_side.claim("w", 1, LEASE, T0).await.unwrap().len(), 1);
}

async fn rollout_rows_save_in_batches_and_upsert(db: &TestDb) {
    use lineaged::store::RolloutImage;
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    let (rid, created) = store
        .open_rollout_in(&mut tx, &serde_json::json!({}), T0)
        .await
        .unwrap();
    assert!(created);
    // More rows than one statement holds (500).
    let rows: Vec<RolloutImage> = (0..1_234)
        .map(|i| RolloutImage::new(rid, &format!("r.example.com/img{i:04}:1"), 1 + i % 3, T0))
        .collect();
    store.save_rollout_images_in(&mut tx, &rows).await.unwrap();
    let mut again = rows[500..510].to_vec();
    for r in &mut again {
        r.state = lineaged::rollout::ImageState::Queued;
        r.job_id = Some(7);
        r.build_attempts = 1;
    }
    store.save_rollout_images_in(&mut tx, &again).await.unwrap();
    store.save_rollout_images_in(&mut tx, &[]).await.unwrap();
    tx.commit().await.unwrap();
    let saved = store.rollout_images(rid).await.unwrap();
    assert_eq!(saved.len(), 1_234);
    let queued: Vec<&RolloutImage> = saved.iter().filter(|r| r.state == "queued").collect();
    assert_eq!(queued.len(), 10);
    assert!(
        queued
            .iter()
            .all(|r| r.job_id == Some(7) && r.build_attempts == 1)
    );
    let one = saved
        .iter()
        .find(|r| r.image == "r.example.com/img0004:1")
        .unwrap();
    assert_eq!((one.wave, one.state.as_str()), (2, "waiting"));
    // Every state the machine has is storable, with every field.
    let mut tx = store.begin().await.unwrap();
    let all: Vec<RolloutImage> = lineaged::rollout::ImageState::ALL
        .iter()
        .map(|st| {
            let mut r = RolloutImage::new(rid, &format!("r.example.com/{st}:1"), 1, T0);
            r.state = *st;
            r.approval_id = Some(3);
            r.approved_digest = Some("sha256:a".into());
            r.build_approved = true;
            r.not_before = Some(T0 + 1);
            r
        })
        .collect();
    store.save_rollout_images_in(&mut tx, &all).await.unwrap();
    tx.commit().await.unwrap();
    let saved = store.rollout_images(rid).await.unwrap();
    for want in &all {
        let got = saved.iter().find(|r| r.image == want.image).unwrap();
        assert_eq!(got, want);
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::new("sqlite").await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::new("postgres").await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

contract!(
    migrations_from_empty_and_reapplied,
    enqueue_coalesces_pending_jobs_with_the_same_key,
    enqueue_joins_the_callers_transaction,
    claim_in_order_with_fenced_complete,
    one_image_never_builds_twice_at_once,
    failures_back_off_then_die_or_fail_permanently,
    expired_leases_are_rescued_and_the_old_holder_is_fenced,
    a_restart_frees_only_what_dead_runs_of_its_node_held,
    a_rescued_job_is_superseded_by_a_newer_pending_one,
    operators_retry_and_cancel,
    leader_lease_fails_over_within_the_ttl,
    config_sync_upserts_and_deactivates,
    a_stale_answer_never_moves_a_digest_back,
    digests_baseline_then_changes_with_history,
    events_append_in_order,
    an_idle_worker_is_woken_by_an_enqueue,
    rollout_rows_save_in_batches_and_upsert,
);

async fn a_batch_completes_only_the_jobs_its_worker_holds(db: &TestDb) {
    let s = db.store().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            s.enqueue(&job(Some(&format!("b{i}")), "r"), T0)
                .await
                .unwrap()
                .id,
        );
    }
    let mine: Vec<i64> = s
        .claim("w1", 3, LEASE, T0)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    let theirs: Vec<i64> = s
        .claim("w2", 3, LEASE, T0)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(s.complete_batch(&ids, "w1", T0 + 1).await.unwrap(), mine);
    assert!(
        s.complete_batch(&mine, "w1", T0 + 2)
            .await
            .unwrap()
            .is_empty(),
        "not twice"
    );
    for id in theirs {
        assert_eq!(
            s.job(id).await.unwrap().unwrap().state(),
            Some(JobState::Running)
        );
    }
}

mod batch {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let db = TestDb::new("sqlite").await;
        a_batch_completes_only_the_jobs_its_worker_holds(&db).await;
        db.finish().await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = TestDb::new("postgres").await;
        a_batch_completes_only_the_jobs_its_worker_holds(&db).await;
        db.finish().await;
    }
}
