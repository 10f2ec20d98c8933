//! Job queue throughput: enqueue → claim → complete, batch sizes 1 and 100,
//! on SQLite (a temp file) and Postgres (a fresh database on
//! TEST_DATABASE_URL or 127.0.0.1:5432), with pgbench's figures for the same
//! Postgres server printed beside them as the reference.
//!
//! cargo bench --bench queue            (JOBS=20000 to change the job count)

use std::time::{Duration, Instant};

use lineaged::store::{NewJob, OpenOptions, Store, now_millis};

async fn run(store: &Store, jobs: usize, batch: i64, batch_complete: bool) -> (f64, f64) {
    let now = now_millis();
    let started = Instant::now();
    let mut tx = store.begin().await.expect("begin");
    for i in 0..jobs {
        let mut j = NewJob::new("rebuild", now);
        j.unique_key = Some(format!("bench-{batch}-{batch_complete}-{i}"));
        store.enqueue_in(&mut tx, &j, now).await.expect("enqueue");
        if i % 500 == 499 {
            tx.commit().await.expect("commit");
            tx = store.begin().await.expect("begin");
        }
    }
    tx.commit().await.expect("commit");
    let enqueue_rate = jobs as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut done = 0;
    while done < jobs {
        let claimed = store
            .claim("bench", batch, Duration::from_secs(60), now_millis())
            .await
            .expect("claim");
        assert!(!claimed.is_empty(), "queue ran dry at {done} of {jobs}");
        if batch_complete {
            let ids: Vec<i64> = claimed.iter().map(|j| j.id).collect();
            let n = store
                .complete_batch(&ids, "bench", now_millis())
                .await
                .expect("complete");
            assert_eq!(n.len(), ids.len());
        } else {
            for j in &claimed {
                store
                    .complete(j.id, "bench", None, now_millis())
                    .await
                    .expect("complete");
            }
        }
        done += claimed.len();
    }
    (enqueue_rate, jobs as f64 / started.elapsed().as_secs_f64())
}

fn pgbench(admin: &str) -> Option<String> {
    let bin = std::process::Command::new("sh")
        .args([
            "-c",
            "command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench | tail -1",
        ])
        .output()
        .ok()?;
    let bin = String::from_utf8_lossy(&bin.stdout).trim().to_string();
    if bin.is_empty() {
        return None;
    }
    let url = admin
        .rsplit_once('/')
        .map(|(p, _)| format!("{p}/lineaged_pgbench"))?;
    let psql = |sql: &str| {
        std::process::Command::new("psql")
            .args([admin, "-qc", sql])
            .output()
    };
    let _ = psql("DROP DATABASE IF EXISTS lineaged_pgbench");
    psql("CREATE DATABASE lineaged_pgbench").ok()?;
    let ok = std::process::Command::new(&bin)
        .args(["-i", "-q", "-s", "1", &url])
        .output()
        .ok()?;
    if !ok.status.success() {
        return None;
    }
    let tps = |mode: &str| -> String {
        let o = std::process::Command::new(&bin)
            .args([mode, "-c", "1", "-T", "5", &url])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        o.lines()
            .find(|l| l.starts_with("tps"))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("?")
            .to_string()
    };
    let line = format!(
        "pgbench (1 client, 5 s): select-only -S {} tps, simple-update -N {} tps",
        tps("-S"),
        tps("-N")
    );
    let _ = psql("DROP DATABASE IF EXISTS lineaged_pgbench");
    Some(line)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / `cargo test --benches`
    }
    let jobs: usize = std::env::var("JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(10_000);
    let admin = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = Store::open(&format!("sqlite://{}/bench.db", dir.path().display()), &OpenOptions::default())
            .await
            .expect("sqlite");
        let pg_name = format!("lineaged_bench_{}", std::process::id());
        let pg_url = admin.rsplit_once('/').map(|(p, _)| format!("{p}/{pg_name}")).expect("url");
        {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&admin).await.expect("postgres");
            sqlx::query(&format!("CREATE DATABASE {pg_name}")).execute(&mut c).await.expect("create db");
        }
        let pg = Store::open(&pg_url, &OpenOptions::default()).await.expect("postgres store");
        println!("queue throughput, {jobs} jobs per run (enqueue in transactions of 500)");
        for (name, store) in [("sqlite", &sqlite), ("postgres", &pg)] {
            for (batch, together) in [(1, false), (100, false), (100, true)] {
                let (enq, cc) = run(store, jobs, batch, together).await;
                let how = if together { "one complete per batch" } else { "one complete per job" };
                println!("{name:<9} batch {batch:>3}: enqueue {enq:>8.0} jobs/s   claim+complete {cc:>8.0} jobs/s   ({how})");
            }
        }
        pg.close().await;
        use sqlx::Connection;
        if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)")).execute(&mut c).await;
        }
    });
    match pgbench(&admin) {
        Some(line) => println!("{line}"),
        None => println!("pgbench: not available on this machine"),
    }
}
