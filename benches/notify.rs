//! The notifier: events in the log become notify jobs (one per sink that
//! hears them), message composed, cursor moved, in one transaction per
//! pass of up to 500 events. Three sinks hear half the events. SQLite (a
//! temp file) and Postgres (a fresh database on TEST_DATABASE_URL or
//! 127.0.0.1:5432).
//!
//! cargo bench --bench notify            (EVENTS=20000 to change the count)

use std::sync::Arc;
use std::time::Instant;

use lineaged::notify::Notifier;
use lineaged::store::{NewEvent, OpenOptions, Store, now_millis};

const CONFIG: &str = r#"
notifications:
  - { kind: webhook, url: "http://127.0.0.1:9/a", on: [approval_pending, rollout_finished] }
  - { kind: webhook, url: "http://127.0.0.1:9/b", on: [approval_pending] }
  - { kind: webhook, url: "http://127.0.0.1:9/c", on: [rollout_finished, deploy_failed], images: ["r.example.com/team/**"] }
"#;

async fn run(store: &Store, events: usize) -> (f64, f64, usize) {
    let cfg =
        Arc::new(lineaged::config::load_str("bench.yaml", CONFIG, &|_| None).expect("config"));
    let now = now_millis();
    let mut tx = store.begin().await.expect("begin");
    for i in 0..events {
        // Half are heard (approvals, finishes), half are not (job events).
        let (kind, data) = match i % 4 {
            0 => (
                "approval_pending",
                serde_json::json!({ "approval_id": i, "stage": "deploy", "digest": format!("sha256:{i:064}") }),
            ),
            1 => (
                "rollout_finished",
                serde_json::json!({ "state": "succeeded", "images": 4, "succeeded": 4 }),
            ),
            _ => (
                "job_dispatched",
                serde_json::json!({ "kind": "rebuild", "attempt": 1 }),
            ),
        };
        let e = NewEvent {
            kind: kind.into(),
            image: (kind == "approval_pending").then(|| format!("r.example.com/team/img{i}:1")),
            rollout_id: None,
            job_id: None,
            data,
        };
        store
            .append_event_in(&mut tx, &e, now)
            .await
            .expect("event");
        if i % 500 == 499 {
            tx.commit().await.expect("commit");
            tx = store.begin().await.expect("begin");
        }
    }
    tx.commit().await.expect("commit");
    let n = Notifier::new(cfg, store.clone(), "http://lineaged.example.com".into());
    let started = Instant::now();
    let mut jobs = 0;
    loop {
        let k = n.pump(now_millis()).await.expect("pump");
        jobs += k;
        if store.notify_cursor().await.expect("cursor") >= events as i64 {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    (events as f64 / secs, jobs as f64 / secs, jobs)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(10_000);
    let admin = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = Store::open(
            &format!("sqlite://{}/bench.db", dir.path().display()),
            &OpenOptions::default(),
        )
        .await
        .expect("sqlite");
        let pg_name = format!("lineaged_notify_bench_{}", std::process::id());
        let pg_url = admin
            .rsplit_once('/')
            .map(|(p, _)| format!("{p}/{pg_name}"))
            .expect("url");
        {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&admin).await.expect("postgres");
            sqlx::query(&format!("CREATE DATABASE {pg_name}"))
                .execute(&mut c)
                .await
                .expect("create db");
        }
        let pg = Store::open(&pg_url, &OpenOptions::default())
            .await
            .expect("postgres store");
        println!("notifier: {events} events, 3 sinks, half the events heard");
        for (name, store) in [("sqlite", &sqlite), ("postgres", &pg)] {
            let (ev, jobs, n) = run(store, events).await;
            println!("{name:<9} {ev:>8.0} events/s   {jobs:>8.0} notify jobs/s   ({n} jobs)");
        }
        pg.close().await;
        use sqlx::Connection;
        if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)"))
                .execute(&mut c)
                .await;
        }
    });
}
