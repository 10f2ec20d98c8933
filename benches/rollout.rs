//! Rollout benchmarks against a local docker-registry and a local CI
//! receiver: registry push of a base → first webhook latency (push events),
//! and a fan-out of N managed images (default 10,000) on Postgres: webhooks
//! per second, total time, peak memory of the process.
//!
//! cargo bench --bench rollout          (FANOUT=2000 for a quicker run)

#[path = "../tests/support/registry.rs"]
#[allow(dead_code)]
mod support_registry;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lineaged::config::load_str;
use lineaged::daemon::{RunOptions, start};
use lineaged::watch::WatchOptions;
use serde_json::Value;
use support_registry::{RegistryOptions, TestRegistry};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Receiver {
    count: AtomicUsize,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    /// parent digest → arrival
    by_parent: Mutex<Vec<(String, Instant)>>,
    callback: bool,
}

async fn receiver(r: Arc<Receiver>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let http = reqwest::Client::new();
    let app = axum::Router::new().route(
        "/build",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (r, http) = (r.clone(), http.clone());
            async move {
                let now = Instant::now();
                r.count.fetch_add(1, Ordering::Relaxed);
                r.first.lock().expect("lock").get_or_insert(now);
                *r.last.lock().expect("lock") = Some(now);
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                if let Some(d) = v["parents"][0]["digest"].as_str() {
                    r.by_parent.lock().expect("lock").push((d.to_string(), now));
                }
                if r.callback {
                    let url = v["callback_url"].as_str().unwrap_or_default().to_string();
                    tokio::spawn(async move {
                        let _ = http
                            .post(url)
                            .json(&serde_json::json!({"status": "succeeded"}))
                            .send()
                            .await;
                    });
                }
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn opts() -> RunOptions {
    RunOptions {
        watch_options: WatchOptions {
            node_id: "bench".into(),
            ..WatchOptions::default()
        },
        registry_timeout: Duration::from_secs(5),
        ..RunOptions::default()
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let fanout: usize = std::env::var("FANOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let pg_admin = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // 1. push → first webhook, 100 pushes, each its own rollout.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let reg = TestRegistry::start(RegistryOptions {
            basic_auth: None,
            notify: Some((format!("http://127.0.0.1:{port}/api/v1/hooks/registry/distribution"), "t".into())),
        })
        .await;
        let none = BTreeMap::new;
        reg.push_image("base/os", "1", "v0", ("linux", "amd64"), none(), none()).await;
        let rec = Arc::new(Receiver { callback: true, ..Receiver::default() });
        let ci = receiver(rec.clone()).await;
        let a = reg.addr.clone();
        let db = tempfile::tempdir().expect("tempdir");
        let yaml = format!(
            "database: {{ url: \"sqlite://{}/b.db\" }}\nreceivers: {{ distribution: {{ token_env: T }} }}\nregistries: [{{ host: \"{a}\", insecure: true }}]\nbackends: {{ ci: {{ kind: webhook, url: \"http://{ci}/build\" }} }}\nimages:\n  - name: \"{a}/base/os:1\"\n    schedule: \"0 0 0 1 1 *\"\n  - name: \"{a}/app/x:1\"\n    from: [\"{a}/base/os:1\"]\n    build: {{ backend: ci }}\n    schedule: \"0 0 0 1 1 *\"\n",
            db.path().display()
        );
        let cfg = Arc::new(load_str("b.yaml", &yaml, &|n| (n == "T").then(|| "t".to_string())).expect("config"));
        let shutdown = CancellationToken::new();
        let daemon = start(cfg, listener, shutdown.clone(), opts()).await.expect("daemon");
        reg.push_image("base/os", "1", "v1", ("linux", "amd64"), none(), none()).await; // baseline
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut lat = Vec::new();
        for i in 0..100 {
            let (digest, _) = reg.push_image("base/os", "1", &format!("p{i}"), ("linux", "amd64"), none(), none()).await;
            let t = Instant::now();
            loop {
                if let Some((_, at)) = rec.by_parent.lock().expect("lock").iter().find(|(d, _)| *d == digest) {
                    lat.push(at.saturating_duration_since(t));
                    break;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    eprintln!("push {i}: no webhook");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // Let the rollout finish (immediate callback) before the next push.
            loop {
                let r = daemon.store.rollouts(1).await.expect("rollouts");
                if r.first().is_none_or(|r| r.state != "running") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
        println!("registry push -> first webhook (push events, SQLite), {} pushes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", lat.len(), p(0.5), p(0.99), p(1.0));
        shutdown.cancel();
        let _ = daemon.wait().await;
        drop(reg);

        // 2. fan-out on Postgres.
        let db_name = format!("lineaged_bench_fanout_{}", std::process::id());
        {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&pg_admin).await.expect("postgres");
            sqlx::query(&format!("CREATE DATABASE {db_name}")).execute(&mut c).await.expect("create db");
        }
        let pg_url = format!("{}/{db_name}", pg_admin.rsplit_once('/').expect("url").0);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let reg = TestRegistry::start(RegistryOptions {
            basic_auth: None,
            notify: Some((format!("http://127.0.0.1:{port}/api/v1/hooks/registry/distribution"), "t".into())),
        })
        .await;
        reg.push_image("base/os", "1", "f0", ("linux", "amd64"), none(), none()).await;
        let rec = Arc::new(Receiver::default());
        let ci = receiver(rec.clone()).await;
        let a = reg.addr.clone();
        let mut yaml = format!(
            "database: {{ url: \"{pg_url}\" }}\nreceivers: {{ distribution: {{ token_env: T }} }}\nregistries: [{{ host: \"{a}\", insecure: true }}]\nbackends: {{ ci: {{ kind: webhook, url: \"http://{ci}/build\", concurrency: 64 }} }}\ndefaults: {{ schedule: \"0 0 0 1 1 *\" }}\nimages:\n  - name: \"{a}/base/os:1\"\n"
        );
        for i in 0..fanout {
            yaml.push_str(&format!("  - name: registry.example.com/apps/app{i}:1\n    from: [\"{a}/base/os:1\"]\n    build: {{ backend: ci }}\n"));
        }
        let cfg = Arc::new(load_str("fanout.yaml", &yaml, &|n| (n == "T").then(|| "t".to_string())).expect("config"));
        let shutdown = CancellationToken::new();
        let daemon = start(cfg, listener, shutdown.clone(), opts()).await.expect("daemon");
        reg.push_image("base/os", "1", "f1", ("linux", "amd64"), none(), none()).await; // baseline
        tokio::time::sleep(Duration::from_secs(2)).await;
        // From the start of the push: with fast planning the first webhook
        // can arrive before the push command returns.
        let t0 = Instant::now();
        reg.push_image("base/os", "1", "f2", ("linux", "amd64"), none(), none()).await;
        println!("  (the push itself took {:.2} s)", t0.elapsed().as_secs_f64());
        while rec.count.load(Ordering::Relaxed) < fanout && t0.elapsed() < Duration::from_secs(600) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = rec.count.load(Ordering::Relaxed);
        let first = rec.first.lock().expect("lock").map(|f| f.saturating_duration_since(t0));
        let last = rec.last.lock().expect("lock").map(|l| l.saturating_duration_since(t0));
        let (first, last) = (first.unwrap_or_default(), last.unwrap_or_default());
        let rate = n as f64 / (last - first).as_secs_f64().max(1e-9);
        println!(
            "fan-out on Postgres: {n} of {fanout} webhooks; first after {:.2} s (planning), last after {:.2} s; {rate:.0} webhooks/s between first and last; peak RSS of the process {:.0} MiB",
            first.as_secs_f64(),
            last.as_secs_f64(),
            peak_rss_mib()
        );
        shutdown.cancel();
        let _ = daemon.wait().await;
        use sqlx::Connection;
        if let Ok(mut c) = sqlx::PgConnection::connect(&pg_admin).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).execute(&mut c).await;
        }
    });
}
