//! Rollout benchmarks against a local docker-registry and a local CI
//! receiver: registry push of a base → first webhook latency (push events),
//! and a fan-out of N managed images (default 10,000) with a deploy each, on
//! SQLite and Postgres: triggers and deploys per second, time to the end of
//! the rollout, peak memory of the process.
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
    deploys: AtomicUsize,
    deploy_first: Mutex<Option<Instant>>,
    deploy_last: Mutex<Option<Instant>>,
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
    // 64 CI runners: callbacks go out 64 at a time and are retried like
    // `curl --retry` (lineaged answers 503 while it cannot ask the registry).
    let runners = Arc::new(tokio::sync::Semaphore::new(64));
    let deploys = r.clone();
    let app = axum::Router::new()
        .route(
            "/build",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (r, http, runners) = (r.clone(), http.clone(), runners.clone());
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
                            let _runner = runners.acquire_owned().await;
                            for _ in 0..100 {
                                let r = http
                                    .post(&url)
                                    .json(&serde_json::json!({"status": "succeeded"}))
                                    .send()
                                    .await;
                                if r.is_ok_and(|r| !r.status().is_server_error()) {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        });
                    }
                    "ok"
                }
            }),
        )
        .route(
            "/deploy",
            axum::routing::post(move || {
                let r = deploys.clone();
                async move {
                    let now = Instant::now();
                    r.deploys.fetch_add(1, Ordering::Relaxed);
                    r.deploy_first.lock().expect("lock").get_or_insert(now);
                    *r.deploy_last.lock().expect("lock") = Some(now);
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
        // The managed image exists: the callback (no digest) is checked
        // against what its tag points at.
        reg.push_image("app/x", "1", "x0", ("linux", "amd64"), none(), none()).await;
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
            let wait = Instant::now();
            loop {
                let r = daemon.store.rollouts(1).await.expect("rollouts");
                if r.first().is_none_or(|r| r.state != "running") {
                    break;
                }
                if wait.elapsed() > Duration::from_secs(30) {
                    eprintln!("push {i}: rollout still running after 30 s");
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

        // 2. fan-out with a deploy on every leaf, on both backends.
        for backend in ["sqlite", "postgres"] {
            fanout_run(backend, fanout, &pg_admin).await;
        }
    });
}

/// One base, `fanout` managed images built from it (tags of one repository
/// in the local registry, so callbacks are checked against real digests),
/// each with a deploy through a webhook backend with `ack: sync`. The
/// receiver calls back at once without a digest (lineaged asks the
/// registry). Measures triggers/s, deploys/s and the time to the rollout's
/// end.
async fn fanout_run(backend: &str, fanout: usize, pg_admin: &str) {
    use sqlx::Connection;
    let none = BTreeMap::new;
    let db_dir = tempfile::tempdir().expect("tempdir");
    let db_name = format!("lineaged_bench_fanout_{}", std::process::id());
    let db_url = if backend == "postgres" {
        let mut c = sqlx::PgConnection::connect(pg_admin)
            .await
            .expect("postgres");
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(&mut c)
            .await
            .expect("create db");
        format!("{}/{db_name}", pg_admin.rsplit_once('/').expect("url").0)
    } else {
        format!("sqlite://{}/f.db", db_dir.path().display())
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // No registry notifications here: the 10,000 tag pushes below would
    // queue 10,000 events in front of the base's. The bench posts the base
    // push's event itself, as the registry would.
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    reg.push_image("base/os", "1", "f0", ("linux", "amd64"), none(), none())
        .await;
    // One leaf image, tagged `fanout` times.
    reg.push_image("apps/app", "0", "leaf", ("linux", "amd64"), none(), none())
        .await;
    let http = reqwest::Client::new();
    let body = http
        .get(format!("http://{}/v2/apps/app/manifests/0", reg.addr))
        .header("accept", support_registry::OCI_MANIFEST)
        .send()
        .await
        .expect("manifest")
        .bytes()
        .await
        .expect("body");
    let t = Instant::now();
    futures_util::future::join_all(
        (0..fanout)
            .collect::<Vec<_>>()
            .chunks(fanout.div_ceil(16))
            .map(|c| {
                let (reg, body) = (&reg, &body);
                async move {
                    for i in c {
                        reg.push_manifest(
                            "apps/app",
                            &format!("t{i}"),
                            support_registry::OCI_MANIFEST,
                            body,
                        )
                        .await;
                    }
                }
            }),
    )
    .await;
    eprintln!(
        "  ({backend}: {fanout} tags pushed in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let rec = Arc::new(Receiver {
        callback: true,
        ..Receiver::default()
    });
    let ci = receiver(rec.clone()).await;
    let a = reg.addr.clone();
    let mut yaml = format!(
        "database: {{ url: \"{db_url}\" }}\nreceivers: {{ distribution: {{ token_env: T }} }}\nregistries: [{{ host: \"{a}\", insecure: true, concurrency: 32 }}]\nbackends:\n  ci: {{ kind: webhook, url: \"http://{ci}/build\", concurrency: 64 }}\n  cd: {{ kind: webhook, url: \"http://{ci}/deploy\", concurrency: 64, ack: sync }}\ndefaults: {{ schedule: \"0 0 0 1 1 *\" }}\nimages:\n  - name: \"{a}/base/os:1\"\n"
    );
    for i in 0..fanout {
        yaml.push_str(&format!(
            "  - name: \"{a}/apps/app:t{i}\"\n    from: [\"{a}/base/os:1\"]\n    build: {{ backend: ci }}\n    deploy: {{ backend: cd, app: app{i} }}\n"
        ));
    }
    let cfg = Arc::new(
        load_str("fanout.yaml", &yaml, &|n| {
            (n == "T").then(|| "t".to_string())
        })
        .expect("config"),
    );
    let shutdown = CancellationToken::new();
    let daemon = start(cfg, listener, shutdown.clone(), opts())
        .await
        .expect("daemon");
    let t = Instant::now();
    if let Some(w) = &daemon.watch {
        // The start-up sweep checks every tag once: the digests it records
        // are the baseline.
        w.swept().await;
    }
    eprintln!(
        "  ({backend}: start-up sweep of {} images took {:.1} s)",
        fanout + 1,
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    let (digest, _) = reg
        .push_image("base/os", "1", "f2", ("linux", "amd64"), none(), none())
        .await;
    let envelope = serde_json::json!({ "events": [{ "action": "push",
        "target": { "repository": "base/os", "tag": "1", "digest": digest,
                    "mediaType": support_registry::OCI_MANIFEST },
        "request": { "host": reg.addr } }] });
    let hook = http
        .post(format!(
            "http://127.0.0.1:{port}/api/v1/hooks/registry/distribution"
        ))
        .bearer_auth("t")
        .header(
            "content-type",
            "application/vnd.docker.distribution.events.v1+json",
        )
        .body(envelope.to_string())
        .send()
        .await
        .expect("hook");
    assert!(hook.status().is_success(), "hook: {}", hook.status());
    let finished = loop {
        let r = daemon.store.rollouts(1).await.expect("rollouts");
        if r.first().is_some_and(|r| r.state != "running") {
            break r[0].state.to_string();
        }
        if t0.elapsed() > Duration::from_secs(900) {
            break "timed out".to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let total = t0.elapsed();
    let span = |f: &Mutex<Option<Instant>>, l: &Mutex<Option<Instant>>| {
        let f = f
            .lock()
            .expect("lock")
            .map(|x| x.saturating_duration_since(t0))
            .unwrap_or_default();
        let l = l
            .lock()
            .expect("lock")
            .map(|x| x.saturating_duration_since(t0))
            .unwrap_or_default();
        (f, l)
    };
    let (bf, bl) = span(&rec.first, &rec.last);
    let (df, dl) = span(&rec.deploy_first, &rec.deploy_last);
    let (nb, nd) = (
        rec.count.load(Ordering::Relaxed),
        rec.deploys.load(Ordering::Relaxed),
    );
    println!(
        "fan-out on {backend}: {nb} triggers (first {:.2} s, last {:.2} s: {:.0}/s), {nd} deploys (first {:.2} s, last {:.2} s: {:.0}/s), rollout {finished} after {:.1} s; peak RSS {:.0} MiB",
        bf.as_secs_f64(),
        bl.as_secs_f64(),
        nb as f64 / (bl - bf).as_secs_f64().max(1e-9),
        df.as_secs_f64(),
        dl.as_secs_f64(),
        nd as f64 / (dl - df).as_secs_f64().max(1e-9),
        total.as_secs_f64(),
        peak_rss_mib()
    );
    shutdown.cancel();
    let _ = daemon.wait().await;
    if backend == "postgres"
        && let Ok(mut c) = sqlx::PgConnection::connect(pg_admin).await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
            .execute(&mut c)
            .await;
    }
}
