//! CI trigger benchmark: per kind, the cost of building a trigger request
//! (pure) and of sending it to a local peer that answers as that API does
//! (one connection pool, as the dispatcher has): triggers per second at
//! concurrency 1 and 8, latency p50/p99.
//!
//! cargo bench --bench ci          (N=… triggers per kind, default 2000)

use std::sync::Arc;
use std::time::{Duration, Instant};

use lineaged::config::{Config, load_str};
use lineaged::dispatch::{Trigger, http_client, rebuild_request, request};
use lineaged::rollout::ParentDigest;

const KINDS: [(&str, &str, &str); 7] = [
    (
        "webhook",
        r#"{ kind: webhook, url: "{u}/hook", secret_env: T }"#,
        "{ backend: ci }",
    ),
    (
        "github_actions",
        r#"{ kind: github_actions, api_url: "{u}", repository: a/b, token_env: T }"#,
        "{ backend: ci, workflow: w.yml }",
    ),
    (
        "gitlab",
        r#"{ kind: gitlab, url: "{u}", project: a/b, token_env: T }"#,
        "{ backend: ci }",
    ),
    (
        "jenkins",
        r#"{ kind: jenkins, url: "{u}", username: u, token_env: T }"#,
        "{ backend: ci, job: a/b }",
    ),
    (
        "azure_pipelines",
        r#"{ kind: azure_pipelines, api_url: "{u}", organization: o, project: p, pipeline: "1", token_env: T }"#,
        "{ backend: ci }",
    ),
    (
        "buildkite",
        r#"{ kind: buildkite, api_url: "{u}", organization: o, token_env: T }"#,
        "{ backend: ci, pipeline: p }",
    ),
    (
        "tekton",
        r#"{ kind: tekton, url: "{u}/el", secret_env: T }"#,
        "{ backend: ci }",
    ),
];

async fn peer() -> String {
    use axum::http::{StatusCode, Uri};
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(|uri: Uri| async move {
        let p = uri.path();
        let (code, body) = if p.contains("/actions/workflows/") {
            (
                200,
                r#"{"workflow_run_id":1,"run_url":"http://x/1","html_url":"http://x/1"}"#,
            )
        } else if p.contains("/trigger/pipeline") {
            (201, r#"{"id":1,"web_url":"http://x/1"}"#)
        } else if p.ends_with("/buildWithParameters") {
            (201, "")
        } else if p.contains("/_apis/pipelines/") {
            (200, r#"{"id":1,"_links":{"web":{"href":"http://x/1"}}}"#)
        } else if p.ends_with("/builds") {
            (201, r#"{"id":"u","number":1,"web_url":"http://x/1"}"#)
        } else {
            (202, r#"{"eventID":"e"}"#)
        };
        let mut r = (StatusCode::from_u16(code).unwrap(), body).into_response();
        r.headers_mut()
            .insert("location", "http://x/queue/item/1/".parse().unwrap());
        r
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    url
}

fn config(backend: &str, build: &str) -> Config {
    let yaml = format!(
        "backends:\n  ci: {backend}\nimages:\n  - name: registry.example.com/team/app:1\n    from: [\"python:3.12-slim\"]\n    build: {build}\n"
    );
    load_str("bench.yaml", &yaml, &|_| {
        Some("bench-token-0123456789".into())
    })
    .unwrap()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let url = peer().await;
    let http = http_client();
    let parents = vec![ParentDigest {
        name: "docker.io/library/python:3.12-slim".into(),
        digest: Some(format!("sha256:{}", "a".repeat(64))),
    }];
    println!("kind               build µs   c=1 trig/s  p50 ms  p99 ms   c=8 trig/s");
    for (kind, backend, build) in KINDS {
        let cfg = Arc::new(config(&backend.replace("{u}", &url), build));
        let image = cfg.images.iter().find(|i| i.is_managed()).unwrap().clone();
        let b = cfg.backends["ci"].clone();
        let build = image.build.clone().unwrap();
        let trig = |i: usize| Trigger {
            image: "registry.example.com/team/app:1",
            parents: &parents,
            job_id: i as i64,
            rollout_id: 1,
            callback_url: format!("http://127.0.0.1:8080/api/v1/jobs/{i}/result?token=abc"),
            idempotency_key: "key",
            attempt: 1,
            reason: "base moved".into(),
            build: &build,
        };
        // Building requests: pure work.
        let reps = 20_000;
        let t0 = Instant::now();
        for i in 0..reps {
            std::hint::black_box(rebuild_request(&b, &trig(i)).unwrap());
        }
        let build_us = t0.elapsed().as_secs_f64() * 1e6 / reps as f64;
        // Sending, one at a time.
        let mut lat = Vec::with_capacity(n);
        let t0 = Instant::now();
        for i in 0..n {
            let req = rebuild_request(&b, &trig(i)).unwrap();
            let s = Instant::now();
            request::send(&http, &req, Duration::from_secs(5))
                .await
                .unwrap();
            lat.push(s.elapsed());
        }
        let c1 = n as f64 / t0.elapsed().as_secs_f64();
        // Eight in flight (the default backend concurrency).
        let t0 = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(8));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let req = rebuild_request(&b, &trig(i)).unwrap();
            let (http, permit) = (http.clone(), sem.clone().acquire_owned().await.unwrap());
            set.spawn(async move {
                request::send(&http, &req, Duration::from_secs(5))
                    .await
                    .unwrap();
                drop(permit);
            });
        }
        while set.join_next().await.is_some() {}
        let c8 = n as f64 / t0.elapsed().as_secs_f64();
        println!(
            "{kind:<18} {build_us:>8.2}   {c1:>10.0}  {:>6.2}  {:>6.2}   {c8:>10.0}",
            pct(&mut lat, 0.5).as_secs_f64() * 1e3,
            pct(&mut lat, 0.99).as_secs_f64() * 1e3
        );
    }
}
