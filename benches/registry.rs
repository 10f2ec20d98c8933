//! Registry watching throughput and latency against a local docker-registry:
//! digest checks per second through lineaged's client at concurrency 1, 16
//! and 64 next to a raw reqwest HEAD loop (the ceiling), `skopeo inspect
//! --raw` over the same references, and push event → DigestChanged latency.
//!
//! cargo bench --bench registry          (needs docker-registry and skopeo)

#[path = "../tests/support/registry.rs"]
#[allow(dead_code)]
mod support_registry;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lineaged::config::{RegistryConfig, load_str};
use lineaged::daemon::{RunOptions, start};
use lineaged::registry::{ImageRef, RegistryClient};
use lineaged::watch::WatchOptions;
use support_registry::{RegistryOptions, TestRegistry};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const REFS: usize = 500;
const ROUNDS: usize = 4;

async fn raw_head(addr: &str, concurrency: usize) -> f64 {
    let http = reqwest::Client::new();
    let sem = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..REFS * ROUNDS {
        let (http, sem) = (http.clone(), sem.clone());
        let url = format!("http://{addr}/v2/bench/img/manifests/t{}", i % REFS);
        set.spawn(async move {
            let _p = sem.acquire_owned().await.expect("semaphore");
            let r = http
                .head(url)
                .header("accept", lineaged::registry::manifest::ACCEPT)
                .send()
                .await
                .expect("head");
            assert!(r.headers().contains_key("docker-content-digest"));
        });
    }
    while set.join_next().await.is_some() {}
    (REFS * ROUNDS) as f64 / started.elapsed().as_secs_f64()
}

async fn lineaged_checks(addr: &str, concurrency: usize) -> f64 {
    let cfg = vec![RegistryConfig {
        host: addr.to_string(),
        trusted: true,
        insecure: true,
        auth: None,
        concurrency: concurrency as u32,
        rate_limit: None,
    }];
    let client = Arc::new(RegistryClient::new(&cfg, Duration::from_secs(10)).expect("client"));
    let refs: Vec<ImageRef> = (0..REFS)
        .map(|i| ImageRef::parse(&format!("{addr}/bench/img:t{i}")).expect("ref"))
        .collect();
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..REFS * ROUNDS {
        let (client, r) = (client.clone(), refs[i % REFS].clone());
        set.spawn(async move { client.head_digest(&r).await.expect("digest") });
    }
    while set.join_next().await.is_some() {}
    (REFS * ROUNDS) as f64 / started.elapsed().as_secs_f64()
}

fn skopeo(addr: &str) -> Option<f64> {
    let started = Instant::now();
    for i in 0..REFS {
        let out = std::process::Command::new("skopeo")
            .args([
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{addr}/bench/img:t{i}"),
            ])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
    }
    Some(REFS as f64 / started.elapsed().as_secs_f64())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(filter) = std::env::var("LINEAGED_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }
    let only_latency = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "latency");
    rt.block_on(async {
        if !only_latency {
        let reg = TestRegistry::start(RegistryOptions::default()).await;
        for i in 0..REFS {
            reg.push_image("bench/img", &format!("t{i}"), &format!("s{i}"), ("linux", "amd64"), BTreeMap::new(), BTreeMap::new()).await;
        }
        println!("digest checks against docker-registry on 127.0.0.1, {REFS} tags x {ROUNDS} rounds");
        for c in [1, 16, 64] {
            let raw = raw_head(&reg.addr, c).await;
            let ours = lineaged_checks(&reg.addr, c).await;
            println!("concurrency {c:>2}: raw reqwest HEAD {raw:>7.0}/s   lineaged RegistryClient {ours:>7.0}/s   ({:.0}% of raw)", 100.0 * ours / raw);
        }
        match skopeo(&reg.addr) {
            Some(rate) => println!("skopeo inspect --raw, sequential: {rate:.1}/s"),
            None => println!("skopeo: not available"),
        }
        drop(reg);
        }

        // Push → DigestChanged through the registry's own notifications.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let reg = TestRegistry::start(RegistryOptions {
            basic_auth: None,
            notify: Some((format!("http://127.0.0.1:{port}/api/v1/hooks/registry/distribution"), "bench-token".into())),
        })
        .await;
        reg.push_image("bench/app", "1", "v0", ("linux", "amd64"), BTreeMap::new(), BTreeMap::new()).await;
        let db = tempfile::tempdir().expect("tempdir");
        let a = &reg.addr;
        let yaml = format!(
            "database: {{ url: \"sqlite://{}/b.db\" }}\nreceivers:\n  distribution: {{ token_env: BENCH_TOKEN }}\nregistries:\n  - host: \"{a}\"\n    insecure: true\nimages:\n  - name: \"{a}/bench/app:1\"\n    schedule: \"0 0 0 1 1 *\"\n",
            db.path().display()
        );
        let cfg = Arc::new(load_str("bench.yaml", &yaml, &|n| (n == "BENCH_TOKEN").then(|| "bench-token".to_string())).expect("config"));
        let shutdown = CancellationToken::new();
        let opts = RunOptions { rollouts: false, watch_options: WatchOptions { node_id: "bench".into(), ..WatchOptions::default() }, registry_timeout: Duration::from_secs(5), ..RunOptions::default() };
        let daemon = start(cfg, listener, shutdown.clone(), opts).await.expect("daemon");
        let mut rx = daemon.watch.as_ref().expect("watch").subscribe();
        // Settle the baseline.
        reg.push_image("bench/app", "1", "base", ("linux", "amd64"), BTreeMap::new(), BTreeMap::new()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        while rx.try_recv().is_ok() {}
        let mut lat = Vec::new();
        let mut missed = 0;
        for i in 0..100 {
            let (digest, _) = reg.push_image("bench/app", "1", &format!("p{i}"), ("linux", "amd64"), BTreeMap::new(), BTreeMap::new()).await;
            let t = Instant::now();
            let deadline = t + Duration::from_secs(3);
            loop {
                match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), rx.recv()).await {
                    Ok(Ok(c)) if c.new == digest => {
                        lat.push(t.elapsed());
                        break;
                    }
                    Ok(Ok(_)) => continue,
                    other => {
                        eprintln!("push {i}: no change seen ({other:?})");
                        missed += 1;
                        break;
                    }
                }
            }
        }
        lat.sort();
        if !lat.is_empty() {
            println!(
                "push event -> DigestChanged over {} pushes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, missed {missed}",
                lat.len(),
                percentile(&lat, 0.5).as_secs_f64() * 1e3,
                percentile(&lat, 0.99).as_secs_f64() * 1e3,
                lat[lat.len() - 1].as_secs_f64() * 1e3
            );
        }
        shutdown.cancel();
        let _ = daemon.wait().await;
    });
}
