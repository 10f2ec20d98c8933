//! The read API against a running daemon with seeded state: auth matrix,
//! image detail and pagination, rollouts and jobs, the SSE stream.

mod support;

use std::sync::Arc;
use std::time::Duration;

use lineaged::config::load_str;
use lineaged::daemon::{Daemon, RunOptions, start};
use lineaged::store::{DigestSource, Failure, NewEvent, NewJob, now_millis};
use lineaged::watch::WatchOptions;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const READ: &str = "read-token-1";
const WRITE: &str = "write-token-2";

struct Api {
    daemon: Daemon,
    shutdown: CancellationToken,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn api(public_read: bool) -> Api {
    lineaged::init_tls();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"database: {{ url: "sqlite://{}/a.db" }}
api:
  public_read: {public_read}
  tokens:
    - {{ name: dashboard, role: read, token_env: T_READ }}
    - {{ name: ops, role: write, token_env: T_WRITE }}
backends: {{ ci: {{ kind: webhook, url: "http://127.0.0.1:9/" }} }}
images:
  - name: python:3.12-slim
  - name: registry.example.com/platform/python:3.12
    from: [python:3.12-slim]
    build: {{ backend: ci }}
  - name: registry.example.com/apps/api:1
    from: [registry.example.com/platform/python:3.12]
    build: {{ backend: ci }}
"#,
        dir.path().display()
    );
    let env = |n: &str| match n {
        "T_READ" => Some(READ.to_string()),
        "T_WRITE" => Some(WRITE.to_string()),
        _ => None,
    };
    let cfg = Arc::new(load_str("api.yaml", &yaml, &env).unwrap());
    let shutdown = CancellationToken::new();
    let opts = RunOptions {
        watch: false,
        rollouts: false,
        reconcile_interval: Duration::from_secs(30),
        watch_options: WatchOptions {
            node_id: "api".into(),
            ..WatchOptions::default()
        },
        registry_timeout: Duration::from_secs(5),
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon = start(cfg, l, shutdown.clone(), opts).await.unwrap();
    let base = format!("http://{}/api/v1", daemon.addr);
    Api {
        daemon,
        shutdown,
        base,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Api {
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix() {
    let a = api(false).await;
    assert_eq!(a.get("/images", None).await.0, 401);
    let (st, body) = a.get("/images", Some("nope")).await;
    assert_eq!(st, 401);
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(a.get("/images", Some(READ)).await.0, 200);
    assert_eq!(
        a.get("/images", Some(WRITE)).await.0,
        200,
        "write implies read"
    );
    let store = a.daemon.store.clone();
    let now = now_millis();
    let id = store
        .enqueue(&NewJob::new("rebuild", now), now)
        .await
        .unwrap()
        .id;
    store
        .claim("w", 1, Duration::from_secs(30), now)
        .await
        .unwrap();
    store
        .fail(
            id,
            "w",
            &Failure::Permanent {
                error: "HTTP 404".into(),
            },
            now,
        )
        .await
        .unwrap();
    let retry = |t: &'static str| {
        a.http
            .post(format!("{}/jobs/{id}/retry", a.base))
            .bearer_auth(t)
            .send()
    };
    assert_eq!(
        retry(READ).await.unwrap().status().as_u16(),
        403,
        "read token on a write endpoint"
    );
    assert_eq!(retry(WRITE).await.unwrap().status().as_u16(), 200);
    assert_eq!(
        retry(WRITE).await.unwrap().status().as_u16(),
        409,
        "already pending"
    );
    let audit = store.events_after(0, 10).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.kind == "job_retried" && e.data.contains("\"ops\"")),
        "{audit:?}"
    );
    a.shutdown.cancel();
    a.daemon.wait().await.unwrap();

    let open = api(true).await;
    assert_eq!(open.get("/images", None).await.0, 200, "public_read");
    assert_eq!(
        open.http
            .post(format!("{}/jobs/1/retry", open.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401,
        "writes always need a token"
    );
    open.shutdown.cancel();
    open.daemon.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_list_detail_and_why_stale() {
    let a = api(false).await;
    let store = a.daemon.store.clone();
    let now = now_millis();
    let py = "docker.io/library/python:3.12-slim";
    let plat = "registry.example.com/platform/python:3.12";
    store
        .record_digest(
            py,
            &format!("sha256:{}", "1".repeat(64)),
            "",
            DigestSource::Poll,
            now,
        )
        .await
        .unwrap();
    store
        .record_digest(
            plat,
            &format!("sha256:{}", "a".repeat(64)),
            "",
            DigestSource::Poll,
            now,
        )
        .await
        .unwrap();
    store
        .record_base(
            plat,
            Some(py),
            Some(&format!("sha256:{}", "1".repeat(64))),
            now,
        )
        .await
        .unwrap();

    let (st, body) = a.get("/images?limit=2", Some(READ)).await;
    assert_eq!(st, 200);
    assert_eq!(body["images"].as_array().unwrap().len(), 2);
    let next = body["next"].as_str().unwrap().to_string();
    let (_, rest) = a
        .get(&format!("/images?limit=2&after={next}"), Some(READ))
        .await;
    assert_eq!(rest["images"].as_array().unwrap().len(), 1);
    assert!(rest["next"].is_null());
    let (_, managed) = a.get("/images?managed=true", Some(READ)).await;
    assert_eq!(managed["images"].as_array().unwrap().len(), 2);
    assert_eq!(a.get("/images?limit=0", Some(READ)).await.0, 400);

    // Short and URL-encoded full forms name the same image.
    let (st, d) = a.get(&format!("/images/{plat}"), Some(READ)).await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["parents"], serde_json::json!([py]));
    assert_eq!(
        d["children"],
        serde_json::json!(["registry.example.com/apps/api:1"])
    );
    assert_eq!(d["stale"]["stale"], false);
    let (_, same) = a
        .get(
            "/images/registry.example.com%2Fplatform%2Fpython%3A3.12",
            Some(READ),
        )
        .await;
    assert_eq!(same["image"]["name"], plat);
    // The base moves: the platform image is stale, and says why.
    store
        .record_digest(
            py,
            &format!("sha256:{}", "2".repeat(64)),
            "",
            DigestSource::Push,
            now + 1,
        )
        .await
        .unwrap();
    let (_, d) = a.get(&format!("/images/{plat}"), Some(READ)).await;
    assert_eq!(d["stale"]["stale"], true);
    assert!(
        d["stale"]["why"]
            .as_str()
            .unwrap()
            .contains(&"2".repeat(64)),
        "{d}"
    );
    let (_, pyd) = a.get("/images/python:3.12-slim", Some(READ)).await;
    assert_eq!(pyd["digest_history"].as_array().unwrap().len(), 2);
    let (st, nf) = a.get("/images/alpine:3", Some(READ)).await;
    assert_eq!(st, 404);
    assert!(
        nf["message"]
            .as_str()
            .unwrap()
            .contains("docker.io/library/alpine:3"),
        "{nf}"
    );
    assert_eq!(a.get("/images/Not%20A%20Ref", Some(READ)).await.0, 400);
    a.shutdown.cancel();
    a.daemon.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_hide_callback_tokens_and_validate_filters() {
    let a = api(false).await;
    let now = now_millis();
    let mut j = NewJob::new("rebuild", now);
    j.payload = serde_json::json!({ "image": "x", "callback_token": "sekrit" });
    let id = a.daemon.store.enqueue(&j, now).await.unwrap().id;
    let (st, body) = a.get(&format!("/jobs/{id}"), Some(READ)).await;
    assert_eq!(st, 200);
    assert!(!body.to_string().contains("sekrit"));
    assert_eq!(body["payload"]["image"], "x");
    let (_, list) = a.get("/jobs?state=pending", Some(READ)).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    let (st, err) = a.get("/jobs?state=bogus", Some(READ)).await;
    assert_eq!(st, 400);
    assert!(err["message"].as_str().unwrap().contains("state"));
    assert_eq!(a.get("/jobs/424242", Some(READ)).await.0, 404);
    assert_eq!(a.get("/rollouts/7", Some(READ)).await.0, 404);
    assert_eq!(a.get("/rollouts", Some(READ)).await.0, 200);
    assert_eq!(a.get("/registries", Some(READ)).await.0, 200);
    let (st, g) = a.get("/graph", Some(READ)).await;
    assert_eq!(st, 200);
    assert_eq!(g["images"].as_array().unwrap().len(), 3);
    let dot = a
        .http
        .get(format!("{}/graph?format=dot", a.base))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert!(dot.text().await.unwrap().starts_with("digraph lineage {"));
    assert_eq!(a.get("/graph?format=png", Some(READ)).await.0, 400);
    a.shutdown.cancel();
    a.daemon.wait().await.unwrap();
}

/// Reads SSE frames until `n` events arrived; returns (id, kind) pairs.
async fn read_events(resp: reqwest::Response, n: usize) -> Vec<(i64, String)> {
    let mut resp = resp;
    let mut text = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("events in time")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            let id = frame
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .map(|v| v.trim().parse().unwrap());
            let kind = frame
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .map(|v| v.trim().to_string());
            if let (Some(id), Some(kind)) = (id, kind) {
                out.push((id, kind));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_in_order_and_resume_from_last_event_id() {
    let a = api(false).await;
    let store = a.daemon.store.clone();
    for i in 0..3 {
        let e = NewEvent {
            kind: format!("k{i}"),
            image: None,
            rollout_id: None,
            job_id: None,
            data: serde_json::json!({}),
        };
        store.append_event(&e, now_millis()).await.unwrap();
    }
    let resp = a
        .http
        .get(format!("{}/events", a.base))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let live = tokio::spawn(read_events(resp, 5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 3..5 {
        let e = NewEvent {
            kind: format!("k{i}"),
            image: None,
            rollout_id: None,
            job_id: None,
            data: serde_json::json!({}),
        };
        store.append_event(&e, now_millis()).await.unwrap();
    }
    let got = live.await.unwrap();
    assert_eq!(
        got.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(),
        vec!["k0", "k1", "k2", "k3", "k4"]
    );
    // Resume after the second event.
    let resp = a
        .http
        .get(format!("{}/events", a.base))
        .bearer_auth(READ)
        .header("last-event-id", got[1].0.to_string())
        .send()
        .await
        .unwrap();
    let resumed = read_events(resp, 3).await;
    assert_eq!(
        resumed.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(),
        vec!["k2", "k3", "k4"]
    );
    assert_eq!(
        a.http
            .get(format!("{}/events", a.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    a.shutdown.cancel();
    a.daemon.wait().await.unwrap();
}
