//! Several replicas on one Postgres, and the faults a store must survive.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lineaged::store::{JobState, NewJob, OpenOptions, Store, StoreError, now_millis};
use support::{PgDb, SqliteDb};

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_replicas_complete_ten_thousand_jobs_exactly_once() {
    let db = PgDb::create().await;
    let enqueuer = db.store().await;
    let now = now_millis();
    let mut jobs = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let mut j = NewJob::new("rebuild", now);
        j.unique_key = Some(format!("img-{i}"));
        jobs.push(j);
    }
    for chunk in jobs.chunks(500) {
        let mut tx = enqueuer.begin().await.unwrap();
        for j in chunk {
            enqueuer.enqueue_in(&mut tx, j, now).await.unwrap();
        }
        tx.commit().await.unwrap();
    }

    let done: Arc<Mutex<HashMap<i64, Vec<usize>>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..4 {
        // A pool of its own, as a separate replica would have.
        let store = Store::connect(
            &db.url,
            &OpenOptions {
                max_connections: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            let name = format!("replica-{w}");
            let mut idle_rounds = 0;
            while idle_rounds < 3 {
                let batch = store.claim(&name, 25, LEASE, now_millis()).await.unwrap();
                if batch.is_empty() {
                    idle_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                idle_rounds = 0;
                for j in batch {
                    store
                        .complete(j.id, &name, None, now_millis())
                        .await
                        .unwrap();
                    done.lock().unwrap().entry(j.id).or_default().push(w);
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let done = std::mem::take(&mut *done.lock().unwrap());
    assert_eq!(done.len(), 10_000, "every job completed");
    assert!(
        done.values().all(|by| by.len() == 1),
        "no job completed twice"
    );
    let per_worker = (0..4)
        .map(|w| done.values().filter(|by| by[0] == w).count())
        .collect::<Vec<_>>();
    assert!(
        per_worker.iter().filter(|&&n| n > 0).count() >= 2,
        "work was shared: {per_worker:?}"
    );
    let counts = enqueuer.job_counts().await.unwrap();
    assert_eq!(
        counts,
        vec![(JobState::Succeeded.as_str().to_string(), 10_000)]
    );
    let attempts: i64 = sqlx::query_scalar("SELECT MAX(attempt)::BIGINT FROM jobs")
        .fetch_one(&sqlx::PgPool::connect(&db.url).await.unwrap())
        .await
        .unwrap();
    assert_eq!(attempts, 1, "no job was claimed twice");
    db.drop_db().await;
}

#[tokio::test]
async fn a_stalled_replica_loses_its_job_to_another() {
    let db = PgDb::create().await;
    let a = db.store().await;
    let b = Store::connect(&db.url, &OpenOptions::default())
        .await
        .unwrap();
    let t0 = now_millis();
    let id = a.enqueue(&NewJob::new("rebuild", t0), t0).await.unwrap().id;
    assert_eq!(
        a.claim("a", 10, Duration::from_secs(5), t0)
            .await
            .unwrap()
            .len(),
        1
    );
    // a stops heartbeating; b's rescuer runs after the lease.
    assert_eq!(b.rescue(t0 + 6_000).await.unwrap(), vec![id]);
    assert_eq!(
        b.claim("b", 10, Duration::from_secs(5), t0 + 6_000)
            .await
            .unwrap()[0]
            .id,
        id
    );
    assert!(matches!(
        a.complete(id, "a", None, t0 + 7_000).await,
        Err(StoreError::LeaseLost(_))
    ));
    b.complete(id, "b", None, t0 + 7_000).await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn two_replicas_never_lead_at_once() {
    let db = PgDb::create().await;
    let a = db.store().await;
    let b = Store::connect(&db.url, &OpenOptions::default())
        .await
        .unwrap();
    let ttl = Duration::from_secs(10);
    let t0 = 1_900_000_000_000i64;
    // Both contend every second for 60 s; a dies at 20 s.
    let mut leader_at = Vec::new();
    let (mut a_until, mut b_until) = (i64::MIN, i64::MIN);
    for s in 0..60i64 {
        let now = t0 + s * 1_000;
        if s < 20 && a.acquire_lease("scheduler", "a", ttl, now).await.unwrap() {
            a_until = now + 10_000;
        }
        if b.acquire_lease("scheduler", "b", ttl, now).await.unwrap() {
            b_until = now + 10_000;
        }
        let (a_leads, b_leads) = (now < a_until, now < b_until);
        assert!(!(a_leads && b_leads), "two leaders at {s}s");
        leader_at.push(if a_leads {
            'a'
        } else if b_leads {
            'b'
        } else {
            '-'
        });
    }
    let s: String = leader_at.into_iter().collect();
    assert!(s.starts_with(&"a".repeat(20)), "{s}");
    // a's last renewal at 19 s holds until 29 s; b takes over then.
    assert_eq!(s.find('b'), Some(29), "{s}");
    assert!(s[29..].chars().all(|c| c == 'b'), "{s}");
    db.drop_db().await;
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_fail_clearly() {
    let opts = OpenOptions {
        max_connections: 1,
        connect_deadline: Duration::from_secs(2),
    };
    match Store::open("mysql://x/y", &opts).await {
        Err(e @ StoreError::UnsupportedUrl(_)) => assert!(e.to_string().contains("`mysql`")),
        r => panic!("{r:?}"),
    }
    // Nothing listens on this port: retried with backoff, then a clear error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let r = Store::open(&format!("postgres://postgres@127.0.0.1:{port}/x"), &opts).await;
    assert!(matches!(r, Err(StoreError::Connect(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        r.unwrap_err()
            .to_string()
            .starts_with("cannot connect to the database")
    );
}

#[tokio::test]
async fn a_locked_sqlite_file_gives_a_clear_error() {
    use sqlx::Connection;
    let db = SqliteDb::create();
    let store = db.store().await;
    let mut locker = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    let t = now_millis();
    let r = store.enqueue(&NewJob::new("rebuild", t), t).await;
    let err = r.expect_err("the file is locked");
    assert!(err.to_string().contains("locked"), "{err}");
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    store
        .enqueue(&NewJob::new("rebuild", t), t)
        .await
        .expect("works again once unlocked");
}

#[test]
fn migrate_command_on_fresh_databases_twice() {
    let bin = env!("CARGO_BIN_EXE_lineaged");
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = rt.block_on(PgDb::create());
    for url in [
        format!("sqlite://{}/fresh.db", dir.path().display()),
        pg.url.clone(),
    ] {
        let cfg = dir.path().join("c.yaml");
        std::fs::write(
            &cfg,
            "database: { url_env: LINEAGED_TEST_DB }\nimages:\n  - name: a:1\n",
        )
        .unwrap();
        let run = || {
            std::process::Command::new(bin)
                .args(["migrate", "-c"])
                .arg(&cfg)
                .env("LINEAGED_TEST_DB", &url)
                .output()
                .unwrap()
        };
        let first = run();
        assert_eq!(
            first.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
        // Every migration file of the backend, applied once.
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
            .unwrap()
            .count();
        let out = String::from_utf8_lossy(&first.stdout);
        assert!(
            out.contains(&format!("{files} migration(s) applied")),
            "{out}"
        );
        let second = run();
        assert_eq!(second.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&second.stdout).contains("0 migration(s) applied"));
    }
    rt.block_on(pg.drop_db());
}

/// A cancel that commits while a worker records a failed attempt must win:
/// the worker's requeue must not bring the cancelled job back to pending.
/// (Seen as a rollout cancel that left its trigger pending.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_committed_during_a_failed_attempt_is_not_undone() {
    use sqlx::{Connection, Executor};
    let db = PgDb::create().await;
    let store = db.store().await;
    let now = now_millis();
    let id = store
        .enqueue(&NewJob::new("rebuild", now), now)
        .await
        .unwrap()
        .id;
    store.claim("w", 1, LEASE, now).await.unwrap();
    // The operator's cancel holds the row, not yet committed.
    let mut op = sqlx::PgConnection::connect(&db.url).await.unwrap();
    op.execute("BEGIN").await.unwrap();
    sqlx::query(
        "UPDATE jobs SET state = 'cancelled', locked_by = NULL, locked_until = NULL WHERE id = $1",
    )
    .bind(id)
    .execute(&mut op)
    .await
    .unwrap();
    let s = store.clone();
    let worker = tokio::spawn(async move {
        s.fail(
            id,
            "w",
            &lineaged::store::Failure::Retry {
                error: "HTTP 503".into(),
                retry_after: None,
            },
            now_millis(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    op.execute("COMMIT").await.unwrap();
    let r = worker.await.unwrap();
    assert!(matches!(r, Err(StoreError::LeaseLost(_))), "{r:?}");
    assert_eq!(store.job(id).await.unwrap().unwrap().state, "cancelled");
    store.close().await;
    db.drop_db().await;
}
