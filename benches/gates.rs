//! Gate benchmark against a local docker-registry: cosign-signed images
//! verified cold (every digest new: signature manifest, payload blob, an
//! ECDSA verification), at 1 and 8 in flight; and the cached path the gate
//! worker takes for a digest already judged under the same policy (one
//! indexed read and a JSON parse) on SQLite and Postgres.
//!
//! cargo bench --bench gates          (N=… images, default 300)

// At the crate root, so the signer's `super::registry` resolves.
#[path = "../tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;
#[path = "../tests/support/signer.rs"]
#[allow(dead_code)]
mod signer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lineaged::config::load_str;
use lineaged::policy::{Evaluation, Gatekeeper, Purpose};
use lineaged::registry::{ImageRef, RegistryClient};
use lineaged::store::{OpenOptions, Store, now_millis};
use registry::TestRegistry;
use signer::{Signer, layer, push_signatures};

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let reg = TestRegistry::start(Default::default()).await;
    let signer = Signer::new();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cosign.pub");
    std::fs::write(&key, signer.public_pem()).unwrap();
    let yaml = format!(
        "registries:\n  - {{ host: \"{}\", insecure: true, concurrency: 16 }}\npolicy:\n  rules:\n    - images: [\"**\"]\n      signatures: {{ authorities: [{{ cosign: {{ public_key_file: \"{}\" }} }}] }}\n",
        reg.addr,
        key.display()
    );
    let cfg = Arc::new(load_str("bench.yaml", &yaml, &|_| None).unwrap());
    let mut images = Vec::with_capacity(2 * n);
    for i in 0..2 * n {
        let repo = format!("apps/img{i}");
        let (d, _) = reg
            .push_image(
                &repo,
                "1",
                &format!("img {i}"),
                ("linux", "amd64"),
                BTreeMap::new(),
                BTreeMap::new(),
            )
            .await;
        let r = ImageRef::parse(&format!("{}/{repo}:1", reg.addr)).unwrap();
        push_signatures(&reg, &repo, &d, &[layer(&signer, &r, &d)]).await;
        images.push((r, d));
    }
    let client = Arc::new(RegistryClient::new(&cfg.registries, Duration::from_secs(10)).unwrap());
    let gates = Arc::new(Gatekeeper::new(cfg.clone(), client));
    println!("gates: cosign-signed images in a local docker-registry, {n} per run");
    // Cold, one at a time.
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    let mut evaluations = Vec::with_capacity(n);
    for (r, d) in &images[..n] {
        let s = Instant::now();
        let ev = gates.evaluate(r, d, Purpose::All).await.unwrap();
        assert!(ev.refusal().is_none(), "{ev:?}");
        lat.push(s.elapsed());
        evaluations.push(ev);
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    println!(
        "cold, 1 in flight : {rate:>7.0} verifications/s   p50 {:.2} ms   p99 {:.2} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    // Cold, eight in flight (the worker's parallelism).
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    for (r, d) in images.drain(n..) {
        let (g, permit) = (gates.clone(), sem.clone().acquire_owned().await.unwrap());
        set.spawn(async move {
            let ev = g.evaluate(&r, &d, Purpose::All).await.unwrap();
            drop(permit);
            ev.refusal().is_none()
        });
    }
    while let Some(ok) = set.join_next().await {
        assert!(ok.unwrap());
    }
    println!(
        "cold, 8 in flight : {:>7.0} verifications/s",
        n as f64 / t0.elapsed().as_secs_f64()
    );
    // Cached: the worker's lookup of a judged digest.
    let admin = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let sqlite = Store::open(
        &format!("sqlite://{}/bench.db", dir.path().display()),
        &OpenOptions::default(),
    )
    .await
    .unwrap();
    let pg_name = format!("lineaged_gates_bench_{}", std::process::id());
    let pg_url = admin
        .rsplit_once('/')
        .map(|(p, _)| format!("{p}/{pg_name}"))
        .unwrap();
    {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {pg_name}"))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let pg = Store::open(&pg_url, &OpenOptions::default()).await.unwrap();
    for (name, store) in [("sqlite", &sqlite), ("postgres", &pg)] {
        let mut tx = store.begin().await.unwrap();
        for ev in &evaluations {
            store
                .save_gate_result_in(&mut tx, ev, &cfg.policy.hash, now_millis())
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let mut lat = Vec::with_capacity(n);
        let t0 = Instant::now();
        for ev in &evaluations {
            let s = Instant::now();
            let text = store
                .gate_result(&ev.image, &ev.digest, &cfg.policy.hash)
                .await
                .unwrap()
                .unwrap();
            let back: Evaluation = serde_json::from_str(&text.0).unwrap();
            assert_eq!(back.digest, ev.digest);
            lat.push(s.elapsed());
        }
        println!(
            "cached ({name:<8}): {:>7.0} lookups/s        p50 {:.3} ms  p99 {:.3} ms",
            n as f64 / t0.elapsed().as_secs_f64(),
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );
    }
    drop(pg);
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE {pg_name} WITH (FORCE)"))
        .execute(&mut c)
        .await;
}
