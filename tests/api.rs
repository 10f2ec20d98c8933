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
use support::TestDb;
use tokio_util::sync::CancellationToken;

const READ: &str = "read-token-1";
const WRITE: &str = "write-token-2";
const METRICS: &str = "metrics-token-3";

struct Api {
    daemon: Daemon,
    shutdown: CancellationToken,
    base: String,
    root: String,
    http: reqwest::Client,
    db: Option<TestDb>,
}

const BACKENDS: [&str; 2] = ["sqlite", "postgres"];

async fn api(public_read: bool) -> Api {
    api_with("sqlite", public_read, false, "").await
}

/// A daemon on `backend` with the API (and the rollout engine when
/// `rollouts`; its CI is a closed port, so triggers stay queued).
async fn api_with(backend: &str, public_read: bool, rollouts: bool, api_extra: &str) -> Api {
    lineaged::init_tls();
    let db = TestDb::new(backend).await;
    let yaml = format!(
        r#"database: {{ url: "{}" }}
api:
  public_read: {public_read}{api_extra}
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
        db.url()
    );
    let env = |n: &str| match n {
        "T_READ" => Some(READ.to_string()),
        "T_WRITE" => Some(WRITE.to_string()),
        "T_METRICS" => Some(METRICS.to_string()),
        _ => None,
    };
    let cfg = Arc::new(load_str("api.yaml", &yaml, &env).unwrap());
    let shutdown = CancellationToken::new();
    let opts = RunOptions {
        watch: false,
        rollouts,
        reconcile_interval: Duration::from_secs(30),
        watch_options: WatchOptions {
            node_id: "api".into(),
            ..WatchOptions::default()
        },
        registry_timeout: Duration::from_secs(5),
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon = start(cfg, l, shutdown.clone(), opts).await.unwrap();
    let root = format!("http://{}", daemon.addr);
    let base = format!("{root}/api/v1");
    Api {
        daemon,
        shutdown,
        base,
        root,
        http: reqwest::Client::new(),
        db: Some(db),
    }
}

impl Api {
    async fn stop(mut self) {
        self.shutdown.cancel();
        let db = self.db.take();
        self.daemon.wait().await.unwrap();
        if let Some(db) = db {
            db.finish().await;
        }
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

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
    a.stop().await;

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
    open.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_list_detail_and_why_stale() {
    for backend in BACKENDS {
        let a = api_with(backend, false, false, "").await;
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
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_hide_callback_tokens_and_validate_filters() {
    for backend in BACKENDS {
        let a = api_with(backend, false, false, "").await;
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
        a.stop().await;
    }
}

/// `GET /graph?image=` and `?rollout=`: a neighbourhood with each image's
/// state, cut at the limit with hidden counts, and 4xx for bad queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_views_colour_images_and_refuse_bad_queries() {
    for backend in BACKENDS {
        let a = api_with(backend, false, true, "").await;
        stale_and_failing(&a.daemon.store).await;
        let state = |v: &Value| -> Vec<(String, i64, String)> {
            v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| {
                    (
                        n["name"].as_str().unwrap().to_string(),
                        n["distance"].as_i64().unwrap(),
                        n["state"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        };
        let (st, v) = a.get(&format!("/graph?image={PLAT_ENC}"), Some(READ)).await;
        assert_eq!(st, 200, "{backend}: {v}");
        assert_eq!(
            state(&v),
            [
                (PLAT.to_string(), 0, "stale".to_string()),
                (PY.to_string(), -1, "ok".to_string()),
                (APP.to_string(), 1, "error".to_string()),
            ],
            "{backend}"
        );
        assert_eq!(v["edges"], serde_json::json!([[0, 2], [1, 0]]));
        assert_eq!(
            (v["total"].as_i64(), v["truncated"].as_bool()),
            (Some(3), Some(false))
        );
        assert_eq!(v["centres"], serde_json::json!([PLAT]));
        assert_eq!(v["nodes"][0]["digest"], sha('a'));
        assert_eq!(v["nodes"][2]["reason"], "manifest unknown (404)");
        // The limit keeps the centre and counts what it hides.
        let (_, one) = a
            .get(&format!("/graph?image={PLAT_ENC}&limit=1"), Some(READ))
            .await;
        assert_eq!(one["nodes"].as_array().unwrap().len(), 1);
        assert_eq!(one["truncated"], true);
        assert_eq!(
            (
                &one["nodes"][0]["hidden_parents"],
                &one["nodes"][0]["hidden_children"]
            ),
            (&serde_json::json!(1), &serde_json::json!(1))
        );
        let (_, down) = a
            .get(&format!("/graph?image={PLAT_ENC}&up=0"), Some(READ))
            .await;
        assert_eq!(down["nodes"].as_array().unwrap().len(), 2);

        // A rollout: its images in their stages, with waves.
        let (st, r) = a
            .post(&format!("/images/{PLAT_ENC}/rebuild"), Some(WRITE), "")
            .await;
        assert_eq!(st, 202, "{r}");
        let rid = r["rollout_id"].as_i64().unwrap();
        let (st, v) = a.get(&format!("/graph?rollout={rid}"), Some(READ)).await;
        assert_eq!(st, 200, "{v}");
        let nodes = v["nodes"].as_array().unwrap();
        let node = |name: &str| nodes.iter().find(|n| n["name"] == name).unwrap().clone();
        assert_eq!(v["centres"], serde_json::json!([PLAT]), "{v}");
        let (plat, app, py) = (node(PLAT), node(APP), node(PY));
        assert_eq!(
            (plat["wave"].as_i64(), plat["rollout_id"].as_i64()),
            (Some(1), Some(rid))
        );
        assert_eq!(
            (app["wave"].as_i64(), app["detail"].as_str()),
            (Some(2), Some("waiting"))
        );
        assert_eq!(app["state"], "waiting");
        // The base it is rebuilt on is drawn, with what the watcher knows.
        assert_eq!(
            (py["distance"].as_i64(), py["state"].as_str()),
            (Some(-1), Some("ok"))
        );
        assert!(py["wave"].is_null());
        // Outside the rollout view, the running rollout's stage shows.
        let (_, v) = a.get(&format!("/graph?image={PLAT_ENC}"), Some(READ)).await;
        assert_eq!(v["nodes"][2]["state"], "waiting", "{v}");
        assert_eq!(v["nodes"][2]["rollout_id"].as_i64(), Some(rid));
        // The rollout reads its cause as a sentence.
        let (_, d) = a.get(&format!("/rollouts/{rid}"), Some(READ)).await;
        assert_eq!(
            d["causes"][0]["text"].as_str().unwrap(),
            format!("ops requested a rebuild of {PLAT}"),
            "{d}"
        );

        // A finished rollout's stage no longer shows (cancelled here): what
        // the watcher knows does.
        let (st, c) = a
            .post(&format!("/rollouts/{rid}/cancel"), Some(WRITE), "")
            .await;
        assert_eq!(st, 200, "{c}");
        let (_, v) = a.get(&format!("/graph?image={PLAT_ENC}"), Some(READ)).await;
        assert_eq!(
            (
                v["nodes"][0]["state"].as_str(),
                v["nodes"][2]["state"].as_str()
            ),
            (Some("stale"), Some("error")),
            "{backend}: {v}"
        );
        assert!(v["nodes"][0]["rollout_id"].is_null());
        // In the rollout's own view, its stages stay.
        let (_, v) = a.get(&format!("/graph?rollout={rid}"), Some(READ)).await;
        assert!(
            v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["wave"].is_number())
                .all(|n| n["state"] == "cancelled"),
            "{v}"
        );
        for (path, st, says) in [
            (
                format!("/graph?image={PLAT_ENC}&rollout={rid}"),
                400,
                "not both",
            ),
            (
                format!("/graph?image={PLAT_ENC}&format=dot"),
                400,
                "JSON only",
            ),
            (format!("/graph?image={PLAT_ENC}&limit=0"), 400, "limit"),
            (format!("/graph?image={PLAT_ENC}&limit=501"), 400, "limit"),
            (format!("/graph?image={PLAT_ENC}&up=51"), 400, "up"),
            (format!("/graph?image={PLAT_ENC}&down=-1"), 400, "down"),
            ("/graph?image=Not%20A%20Ref".to_string(), 400, "image"),
            ("/graph?limit=5".to_string(), 400, "need image= or rollout="),
            (
                "/graph?image=alpine:3".to_string(),
                404,
                "docker.io/library/alpine:3",
            ),
            ("/graph?rollout=999".to_string(), 404, "rollout 999"),
        ] {
            let (got, e) = a.get(&path, Some(READ)).await;
            assert_eq!(got, st, "{backend} {path}: {e}");
            assert!(e["message"].as_str().unwrap().contains(says), "{path}: {e}");
        }
        a.stop().await;
    }
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
    for backend in BACKENDS {
        let a = api_with(backend, false, false, "").await;
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
        // Only the last two, then live.
        let resp = a
            .http
            .get(format!("{}/events?tail=2", a.base))
            .bearer_auth(READ)
            .send()
            .await
            .unwrap();
        let tail = read_events(resp, 2).await;
        assert_eq!(
            tail.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(),
            vec!["k3", "k4"]
        );
        assert_eq!(a.get("/events?tail=-1", Some(READ)).await.0, 400);
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
        a.stop().await;
    }
}

fn names(v: &Value) -> Vec<String> {
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

const PY: &str = "docker.io/library/python:3.12-slim";
const PLAT: &str = "registry.example.com/platform/python:3.12";
const PLAT_ENC: &str = "registry.example.com%2Fplatform%2Fpython%3A3.12";
const APP: &str = "registry.example.com/apps/api:1";

fn sha(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// python moves after the platform image was built on it (the platform
/// image is stale); the app's registry answers 404 (error).
async fn stale_and_failing(store: &lineaged::store::Store) {
    stale_platform(store).await;
    store
        .record_check_error(APP, "manifest unknown (404)", now_millis())
        .await
        .unwrap();
}

/// python moves after the platform image was built on it.
async fn stale_platform(store: &lineaged::store::Store) {
    let now = now_millis();
    store
        .record_digest(PY, &sha('1'), "", DigestSource::Poll, now)
        .await
        .unwrap();
    store
        .record_digest(PLAT, &sha('a'), "", DigestSource::Poll, now)
        .await
        .unwrap();
    store
        .record_base(PLAT, Some(PY), Some(&sha('1')), now)
        .await
        .unwrap();
    store
        .record_digest(PY, &sha('2'), "", DigestSource::Poll, now + 1)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_filters_and_bad_queries() {
    for backend in BACKENDS {
        let a = api_with(backend, false, false, "").await;
        let store = a.daemon.store.clone();
        stale_and_failing(&store).await;

        let q = |p: &'static str| a.get(p, Some(READ));
        let (st, all) = q("/images").await;
        assert_eq!(st, 200, "{backend}");
        let states: Vec<&str> = all["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["ok", "error", "stale"], "{backend}: {all}");
        assert_eq!(names(&q("/images?stale=true").await.1), [PLAT]);
        assert_eq!(names(&q("/images?stale=false").await.1), [PY, APP]);
        assert_eq!(names(&q("/images?state=stale").await.1), [PLAT]);
        assert_eq!(names(&q("/images?state=error").await.1), [APP]);
        assert_eq!(names(&q("/images?state=ok").await.1), [PY]);
        assert!(names(&q("/images?state=rebuilding").await.1).is_empty());
        assert_eq!(
            names(&q("/images?registry=registry.example.com").await.1),
            [APP, PLAT]
        );
        assert_eq!(names(&q("/images?registry=Docker.IO").await.1), [PY]);
        assert_eq!(
            names(
                &q("/images?registry=registry.example.com&managed=true&limit=1")
                    .await
                    .1
            ),
            [APP]
        );
        for (path, param) in [
            ("/images?state=bogus", "state"),
            ("/images?registry=not%20a%20host", "registry"),
            ("/images?limit=abc", "limit"),
            ("/images?managed=maybe", "managed"),
            ("/jobs?after=x", "after"),
        ] {
            let (st, e) = a.get(path, Some(READ)).await;
            assert_eq!(st, 400, "{path}");
            assert_eq!(e["error"], "bad_request");
            assert!(
                e["message"].as_str().unwrap().contains(param),
                "{path}: {e}"
            );
        }
        let (st, e) = a.get("/jobs/abc", Some(READ)).await;
        assert_eq!((st, e["error"].as_str()), (400, Some("bad_request")));
        let (st, e) = a.get("/nope", Some(READ)).await;
        assert_eq!((st, e["error"].as_str()), (404, Some("no_route")));
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_need_write_and_are_audited() {
    for backend in BACKENDS {
        let a = api_with(backend, false, true, "").await;
        let rebuild = format!("/images/{PLAT_ENC}/rebuild");
        assert_eq!(a.post(&rebuild, None, "").await.0, 401);
        assert_eq!(a.post(&rebuild, Some("nope"), "").await.0, 401);
        assert_eq!(a.post(&rebuild, Some(READ), "").await.0, 403);
        let (st, e) = a.post(&rebuild, Some(WRITE), "{not json").await;
        assert_eq!(st, 400, "{e}");
        let big = format!("{{\"reason\": \"{}\"}}", "x".repeat(70_000));
        let (st, e) = a.post(&rebuild, Some(WRITE), &big).await;
        assert_eq!((st, e["error"].as_str()), (413, Some("payload_too_large")));
        let (st, e) = a
            .post("/images/python%3A3.12-slim/rebuild", Some(WRITE), "")
            .await;
        assert_eq!(st, 409, "external image: {e}");
        let (st, e) = a.post("/images/alpine%3A3/rebuild", Some(WRITE), "").await;
        assert_eq!(st, 404);
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("docker.io/library/alpine:3")
        );

        let (st, r) = a
            .post(&rebuild, Some(WRITE), r#"{"reason": "CVE-2026-1234"}"#)
            .await;
        assert_eq!(st, 202, "{r}");
        assert_eq!(r["images"], 2);
        let rid = r["rollout_id"].as_i64().unwrap();
        let (_, ro) = a.get(&format!("/rollouts/{rid}"), Some(READ)).await;
        assert_eq!(ro["waves"][0][0]["image"], PLAT, "{ro}");
        assert_eq!(ro["waves"][0][0]["state"], "queued");
        assert_eq!(ro["waves"][1][0]["image"], APP);
        assert_eq!(ro["waves"][1][0]["state"], "waiting");
        let job = ro["waves"][0][0]["job_id"].as_i64().unwrap();
        assert_eq!(
            names(&a.get("/images?state=rebuilding", Some(READ)).await.1),
            [APP, PLAT]
        );
        let (_, d) = a
            .get("/images/registry.example.com%2Fapps%2Fapi%3A1", Some(READ))
            .await;
        let why = d["cause"]["text"].as_str().unwrap();
        assert!(
            why.contains(&format!("after its parent {PLAT} (queued)"))
                && why.contains(&format!("ops requested a rebuild of {PLAT}")),
            "{why}"
        );

        let cancel = format!("/rollouts/{rid}/cancel");
        assert_eq!(a.post(&cancel, None, "").await.0, 401);
        assert_eq!(a.post(&cancel, Some(READ), "").await.0, 403);
        let (st, c) = a.post(&cancel, Some(WRITE), "").await;
        assert_eq!(st, 200, "{c}");
        assert_eq!(c["images_cancelled"], 2);
        assert_eq!(a.post(&cancel, Some(WRITE), "").await.0, 409);
        assert_eq!(
            a.post("/rollouts/4242/cancel", Some(WRITE), "").await.0,
            404
        );
        let (_, ro) = a.get(&format!("/rollouts/{rid}"), Some(READ)).await;
        assert_eq!(ro["rollout"]["state"], "cancelled");
        assert_eq!(ro["waves"][1][0]["state"], "cancelled");
        let (_, j) = a.get(&format!("/jobs/{job}"), Some(READ)).await;
        assert_eq!(j["state"], "cancelled", "{j}");

        let events = a.daemon.store.events_after(0, 100).await.unwrap();
        let audited = |kind: &str| {
            events
                .iter()
                .any(|e| e.kind == kind && e.data.contains("\"by\":\"ops\""))
        };
        assert!(audited("rebuild_requested"), "{events:?}");
        assert!(audited("rollout_cancelled"), "{events:?}");
        assert!(
            events
                .iter()
                .any(|e| e.kind == "rebuild_requested" && e.data.contains("CVE-2026-1234"))
        );
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_says_why_it_was_rebuilt() {
    for backend in BACKENDS {
        let a = api_with(backend, false, true, "").await;
        let store = a.daemon.store.clone();
        let now = now_millis();
        store
            .record_digest(PY, &sha('1'), "", DigestSource::Poll, now)
            .await
            .unwrap();
        store
            .record_digest(PY, &sha('2'), "", DigestSource::Push, now + 1)
            .await
            .unwrap();
        let engine = a.daemon.engine.clone().unwrap();
        // The change is in the outbox; plan it now.
        engine.process_changes().await.unwrap();
        let (st, d) = a
            .get("/images/registry.example.com%2Fapps%2Fapi%3A1", Some(READ))
            .await;
        assert_eq!(st, 200);
        let why = d["cause"]["text"].as_str().unwrap();
        assert!(
            why.contains(&format!("after its parent {PLAT}"))
                && why.contains(&format!(
                    "because {PY} moved from sha256:111111111111 to sha256:222222222222"
                ))
                && why.contains("(push)"),
            "{backend}: {why}"
        );
        let chain = d["cause"]["chain"].as_array().unwrap();
        assert_eq!(chain.len(), 3, "{chain:?}");
        assert_eq!(chain[2]["image"], PY);
        assert_eq!(chain[2]["moved"]["to"], sha('2'));
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_the_routes_and_every_operation_answers() {
    let a = api_with("sqlite", false, true, "").await;
    let doc: Value = a
        .http
        .get(format!("{}/openapi.json", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: std::collections::BTreeSet<(String, String)> = lineaged::api::routes()
        .iter()
        .map(|r| (r.method.to_string(), r.doc_path.to_string()))
        .collect();
    assert_eq!(documented, routed, "the document and the router disagree");
    for (method, path) in &documented {
        let url = path
            .replace("{image}", PLAT_ENC)
            .replace("{id}", "1")
            .replace("{source}", "distribution")
            .replace("{file}", "app.js");
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = a
            .http
            .request(m, format!("{}{url}", a.root))
            .bearer_auth(WRITE);
        if method == "POST" {
            req = req.header("content-type", "application/json").body("{}");
        }
        let resp = req.send().await.unwrap();
        let st = resp.status().as_u16();
        assert_ne!(st, 405, "{method} {url}");
        if path == "/api/v1/events" {
            assert_eq!(st, 200);
            continue;
        }
        let body = resp.text().await.unwrap();
        assert!(
            !(st == 404 && body.contains("no_route")),
            "{method} {url} is documented but not routed: {body}"
        );
    }
    // Typed responses carry what their schema requires (the rebuild above
    // made rollout 1 and job 1 exist).
    let mut checked = 0;
    for (method, path) in &documented {
        if method != "GET" {
            continue;
        }
        let op = &doc["paths"][path.as_str()]["get"];
        let Some(reference) =
            op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].as_str()
        else {
            continue;
        };
        let name = reference.rsplit('/').next().unwrap();
        let schema = &doc["components"]["schemas"][name];
        let mut url = path.replace("{image}", PLAT_ENC).replace("{id}", "1");
        if path == "/api/v1/graph" {
            // Typed: the view of one image (the whole lineage is untyped).
            url.push_str(&format!("?image={PLAT_ENC}"));
        }
        let (st, body) = a.get(url.trim_start_matches("/api/v1"), Some(READ)).await;
        assert_eq!(st, 200, "{url}: {body}");
        for field in schema["required"].as_array().into_iter().flatten() {
            let field = field.as_str().unwrap();
            assert!(
                body.get(field).is_some(),
                "{url}: `{field}` required by {name}, missing in {body}"
            );
        }
        for (prop, _) in schema["properties"].as_object().unwrap() {
            assert!(
                body.get(prop).is_some(),
                "{url}: `{prop}` of {name} missing in {body}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 7, "typed GET responses checked: {checked}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_never_name_an_image() {
    for backend in BACKENDS {
        let a = api_with(backend, false, true, "").await;
        assert_eq!(a.get("/images", Some(READ)).await.0, 200);
        assert_eq!(a.get("/images/alpine%3A3", Some(READ)).await.0, 404);
        let (st, r) = a
            .post(&format!("/images/{PLAT_ENC}/rebuild"), Some(WRITE), "")
            .await;
        assert_eq!(st, 202);
        let rid = r["rollout_id"].as_i64().unwrap();
        // The trigger goes to a closed port: one failed delivery, retried.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            let resp = a
                .http
                .get(format!("{}/metrics", a.root))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            assert!(
                resp.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/plain; version=0.0.4")
            );
            let text = resp.text().await.unwrap();
            if text.contains("lineaged_dispatches_total{kind=\"webhook\",result=\"retry\"}") {
                break text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no dispatch:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            a.post(&format!("/rollouts/{rid}/cancel"), Some(WRITE), "")
                .await
                .0,
            200
        );
        let text2 = a
            .http
            .get(format!("{}/metrics", a.root))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for want in [
            "lineaged_http_requests_total{method=\"GET\",route=\"/api/v1/images\",status=\"200\"}",
            "lineaged_http_requests_total{method=\"GET\",route=\"/api/v1/images/{*image}\",status=\"404\"}",
            "lineaged_rollouts_finished_total{state=\"cancelled\"}",
            "lineaged_rollout_duration_seconds_count",
            "lineaged_dispatch_duration_seconds_bucket{le=\"+Inf\"}",
            "lineaged_jobs{state=\"cancelled\"} 1",
            "lineaged_images{kind=\"managed\"} 2",
            "lineaged_stale_images 0",
        ] {
            assert!(text2.contains(want), "{backend}: missing {want}:\n{text2}");
        }
        for t in [&text, &text2] {
            assert!(
                !t.contains("python") && !t.contains("example.com"),
                "an image in a label:\n{t}"
            );
            let mut child = std::process::Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
            use std::io::Write;
            child.stdin.take().unwrap().write_all(t.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
                "promtool check metrics: {}{}\n{t}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        a.stop().await;
    }
    let a = api_with("sqlite", false, false, "\n  metrics_token_env: T_METRICS").await;
    let get = |t: Option<&'static str>| {
        let mut r = a.http.get(format!("{}/metrics", a.root));
        if let Some(t) = t {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(get(None).await.unwrap().status().as_u16(), 401);
    assert_eq!(get(Some(READ)).await.unwrap().status().as_u16(), 401);
    assert_eq!(get(Some(METRICS)).await.unwrap().status().as_u16(), 200);
    assert_eq!(
        a.http
            .get(format!("{}/healthz", a.root))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200,
        "health stays open"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_configured_origins_only() {
    let a = api_with(
        "sqlite",
        false,
        false,
        "\n  cors_origins: [\"https://dash.example.com\"]",
    )
    .await;
    let preflight = |origin: &'static str| {
        a.http
            .request(reqwest::Method::OPTIONS, format!("{}/images", a.base))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight("https://dash.example.com").await.unwrap();
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://dash.example.com")
    );
    let allowed_headers = ok.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    let evil = preflight("https://evil.example.com").await.unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    let get = a
        .http
        .get(format!("{}/images", a.base))
        .header("origin", "https://dash.example.com")
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 200);
    assert!(get.headers().get("access-control-allow-origin").is_some());
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_cli_prints_what_needs_attention() {
    // No engine here: its dispatcher would race the test for the job.
    let a = api_with("postgres", false, false, "").await;
    let store = a.daemon.store.clone();
    let now = now_millis();
    stale_platform(&store).await;
    store
        .record_registry_health("ghcr.io", 3, Some("HTTP 503"), None, Some((0, 5000)), now)
        .await
        .unwrap();
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
                error: "HTTP 404 from CI".into(),
            },
            now,
        )
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    let (rid, _) = store
        .open_rollout_in(&mut tx, &serde_json::json!({}), now)
        .await
        .unwrap();
    store
        .save_rollout_image_in(
            &mut tx,
            &lineaged::store::RolloutImage::new(rid, APP, 1, now),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let root = a.root.clone();
    let run = move |token: &'static str, url: String, json: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_lineaged"));
        c.args(["status", "--url", &url])
            .env("LINEAGED_TOKEN", token);
        if json {
            c.args(["--output", "json"]);
        }
        c.output().unwrap()
    };
    let r = root.clone();
    let out = tokio::task::spawn_blocking(move || run(READ, r, false))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "Stale images (1)",
        PLAT,
        "Running rollouts (1)",
        "Failing jobs (1)",
        "HTTP 404 from CI",
        "Degraded registries (1)",
        "ghcr.io",
        "0/5000",
    ] {
        assert!(text.contains(want), "missing {want}:\n{text}");
    }
    let r = root.clone();
    let out = tokio::task::spawn_blocking(move || run(READ, r, true))
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["running_rollouts"][0]["images"], 1);
    assert_eq!(v["stale_images"][0]["name"], PLAT);

    let r = root.clone();
    let out = tokio::task::spawn_blocking(move || run("wrong-token", r, false))
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("401") && !err.contains("wrong-token"), "{err}");
    let out = tokio::task::spawn_blocking(move || run(READ, "http://127.0.0.1:9".into(), false))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_event_streams() {
    let a = api(false).await;
    let resp = a
        .http
        .get(format!("{}/events", a.base))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    a.shutdown.cancel();
    let db = a.db;
    tokio::time::timeout(Duration::from_secs(5), a.daemon.wait())
        .await
        .expect("the daemon stops while an SSE client is connected")
        .unwrap();
    drop(resp);
    if let Some(db) = db {
        db.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_page_is_served_and_uses_only_the_api() {
    let a = api(false).await;
    let resp = a.http.get(format!("{}/", a.root)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "open: the page holds no data");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = resp.text().await.unwrap();
    // Its script and layout library come from the daemon, no CDN.
    assert!(!html.contains("://"), "no external URL in the page");
    for file in ["dagre.min.js", "app.js"] {
        assert!(html.contains(&format!("src=\"/ui/{file}\"")), "{file}");
    }
    let resp = a
        .http
        .get(format!("{}/ui/app.js", a.root))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let etag = resp.headers()["etag"].clone();
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let html = resp.text().await.unwrap();
    // Revalidation: the same file is 304.
    let again = a
        .http
        .get(format!("{}/ui/app.js", a.root))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    for (file, st) in [
        ("dagre.min.js", 200),
        ("LICENSE-dagre", 200),
        ("nope.js", 404),
        ("index.html", 404),
    ] {
        let resp = a
            .http
            .get(format!("{}/ui/{file}", a.root))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), st, "{file}");
    }
    // Every API path the script calls is one the daemon serves.
    let routes: Vec<String> = lineaged::api::routes()
        .iter()
        .map(|r| r.doc_path.to_string())
        .collect();
    for used in [
        "/images",
        "/rollouts",
        "/jobs",
        "/registries",
        "/events",
        "/graph",
        "/approvals",
    ] {
        assert!(
            html.contains(&format!("\"{used}?"))
                || html.contains(&format!("\"{used}\""))
                || html.contains(&format!("/api/v1{used}?")),
            "page uses {used}"
        );
        assert!(
            routes.contains(&format!("/api/v1{used}")),
            "{used} is routed"
        );
    }
    assert!(html.contains("Authorization"), "the page sends the token");
    a.stop().await;
}

/// On Postgres an event id is taken at insert: a transaction that commits
/// after a higher id is read must not be skipped by live streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_is_not_skipped_by_the_event_stream() {
    use sqlx::{Connection, Executor};
    let a = api_with("postgres", false, false, "").await;
    let store = a.daemon.store.clone();
    let resp = a
        .http
        .get(format!("{}/events?tail=0", a.base))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    let live = tokio::spawn(read_events(resp, 2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The slow writer takes its id first and commits last.
    let url = a.db.as_ref().unwrap().url().to_string();
    let mut slow = sqlx::PgConnection::connect(&url).await.unwrap();
    slow.execute("BEGIN").await.unwrap();
    sqlx::query("INSERT INTO events (at, kind, data) VALUES (0, 'slow', '{}')")
        .execute(&mut slow)
        .await
        .unwrap();
    let e = NewEvent {
        kind: "fast".into(),
        image: None,
        rollout_id: None,
        job_id: None,
        data: serde_json::json!({}),
    };
    store.append_event(&e, now_millis()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    slow.execute("COMMIT").await.unwrap();
    let got = live.await.unwrap();
    assert_eq!(
        got.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(),
        vec!["slow", "fast"],
        "both, in id order"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_event_streams_get_keep_alives() {
    let a = api_with("sqlite", false, false, "\n  sse_keepalive: 1s").await;
    let mut resp = a
        .http
        .get(format!("{}/events?tail=0", a.base))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut text = String::new();
    let mut comments = 0;
    while comments < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .expect("a keep-alive within 5 s")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        comments = text.lines().filter(|l| l.starts_with(':')).count();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "two keep-alives take about a second at least"
    );
    assert!(
        !text.contains("data:"),
        "no events, only comments: {text:?}"
    );
    drop(resp);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_page_newest_first_and_filter_by_state() {
    for backend in BACKENDS {
        let a = api_with(backend, false, false, "").await;
        let store = a.daemon.store.clone();
        let now = now_millis();
        let mut ids = Vec::new();
        for i in 0..3 {
            let mut tx = store.begin().await.unwrap();
            let (id, _) = store
                .open_rollout_in(&mut tx, &serde_json::json!({ "i": i }), now)
                .await
                .unwrap();
            if i < 2 {
                store
                    .finish_rollout_in(&mut tx, id, lineaged::rollout::RolloutState::Succeeded, now)
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
            ids.push(id);
        }
        let (st, p1) = a.get("/rollouts?limit=2", Some(READ)).await;
        assert_eq!(st, 200);
        let got: Vec<i64> = p1["rollouts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(got, [ids[2], ids[1]], "{backend}");
        let next = p1["next"].as_i64().unwrap();
        let (_, p2) = a
            .get(&format!("/rollouts?limit=2&after={next}"), Some(READ))
            .await;
        assert_eq!(p2["rollouts"].as_array().unwrap().len(), 1);
        assert_eq!(p2["rollouts"][0]["id"], ids[0]);
        assert!(p2["next"].is_null());
        let (_, running) = a.get("/rollouts?state=running", Some(READ)).await;
        assert_eq!(running["rollouts"].as_array().unwrap().len(), 1);
        assert_eq!(running["rollouts"][0]["id"], ids[2]);
        let (st, e) = a.get("/rollouts?state=bogus", Some(READ)).await;
        assert_eq!(st, 400);
        assert!(e["message"].as_str().unwrap().contains("state"));
        a.stop().await;
    }
}

/// CI callback bodies, fuzzed (seeded, `LINEAGED_FUZZ_CASES` /
/// `LINEAGED_FUZZ_SEED` as in tests/fuzz.rs): random bytes, wrong JSON
/// shapes and mutated good bodies get a 4xx with a reason, never a 5xx;
/// the job is untouched, and the real result after them is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_callback_bodies_get_4xx_and_lose_nothing() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let n: usize = std::env::var("LINEAGED_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let seed: u64 = std::env::var("LINEAGED_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let a = api_with("sqlite", false, true, "").await;
    let (st, r) = a
        .post(&format!("/images/{PLAT_ENC}/rebuild"), Some(WRITE), "")
        .await;
    assert_eq!(st, 202, "{r}");
    let rid = r["rollout_id"].as_i64().unwrap();
    let (_, d) = a.get(&format!("/rollouts/{rid}"), Some(READ)).await;
    let job = d["waves"][0][0]["job_id"].as_i64().unwrap();
    let rec = a.daemon.store.job(job).await.unwrap().unwrap();
    let payload: Value = serde_json::from_str(&rec.payload).unwrap();
    let token = payload["callback_token"].as_str().unwrap().to_string();
    let url = format!("{}/jobs/{job}/result?token={token}", a.base);
    let good = br#"{"status":"failed","log_url":"https://ci.example.com/runs/1"}"#;
    // What the daemon takes as a result: its shape, with unknown fields
    // skipped without looking inside (as the daemon skips them).
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Taken {
        status: String,
        digest: Option<String>,
        log_url: Option<String>,
    }
    let is_result = |b: &[u8]| {
        serde_json::from_slice::<Taken>(b)
            .is_ok_and(|r| r.status == "failed" || r.status == "succeeded")
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let values = [
        Value::Null,
        Value::Bool(true),
        serde_json::json!(7),
        serde_json::json!(""),
        serde_json::json!("SUCCEEDED"),
        serde_json::json!("ok"),
        serde_json::json!("sha256:zz"),
        serde_json::json!(format!("sha256:{}", "a".repeat(63))),
        serde_json::json!([]),
        serde_json::json!({"status": "failed"}),
    ];
    let mut sent = 0;
    for case in 0..n {
        let body: Vec<u8> = match rng.random_range(0..3) {
            0 => (0..rng.random_range(0..120))
                .map(|_| rng.random::<u8>())
                .collect(),
            1 => {
                let mut o = serde_json::Map::new();
                for k in ["status", "digest", "log_url", "extra"] {
                    if rng.random_bool(0.6) {
                        o.insert(k.into(), values[rng.random_range(0..values.len())].clone());
                    }
                }
                serde_json::to_vec(&o).unwrap()
            }
            _ => {
                let mut b = good.to_vec();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..b.len());
                    match rng.random_range(0..3) {
                        0 => b[i] = rng.random(),
                        1 => {
                            b.remove(i);
                        }
                        _ => b.truncate(i),
                    }
                    if b.is_empty() {
                        break;
                    }
                }
                b
            }
        };
        if is_result(&body) {
            continue; // a mutation that is still a real result
        }
        sent += 1;
        let resp = a
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let st = resp.status().as_u16();
        let e: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            (400..500).contains(&st) && !e["message"].as_str().unwrap_or("").is_empty(),
            "case {case} (seed {seed}): {st} {e} for {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    assert!(sent > n / 2, "{sent} of {n} sent");
    // Untouched: the job as it was (its delivery retries go on), the image
    // still queued in its rollout.
    let (_, d) = a.get(&format!("/rollouts/{rid}"), Some(READ)).await;
    assert_eq!(d["waves"][0][0]["state"], "queued", "{d}");
    let after = a.daemon.store.job(job).await.unwrap().unwrap();
    assert!(after.finished_at.is_none(), "{after:?}");
    // The real result is still taken.
    let resp = a
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(good.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (_, d) = a.get(&format!("/rollouts/{rid}"), Some(READ)).await;
    assert_eq!(d["waves"][0][0]["state"], "failed", "{d}");
    a.stop().await;
}

/// `/readyz` follows the database: 503 with the reason while Postgres
/// refuses this database's connections (and its sessions are killed), 200
/// again once it takes them back (the pool reconnects on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database() {
    use sqlx::Connection;
    let a = api_with("postgres", false, false, "").await;
    let name = match a.db.as_ref().unwrap() {
        TestDb::Pg(d) => d.name.clone(),
        TestDb::Sqlite(_) => unreachable!("a Postgres test"),
    };
    let ready = || async {
        let r = a
            .http
            .get(format!("{}/readyz", a.root))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(ready().await, (200, "ready\n".to_string()));
    let mut admin = sqlx::PgConnection::connect(&support::pg_admin_url())
        .await
        .unwrap();
    let allow = |on: bool| format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {on}");
    sqlx::query(&allow(false))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&name)
    .execute(&mut admin)
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (st, body) = loop {
        let (st, body) = ready().await;
        if st != 200 || std::time::Instant::now() > deadline {
            break (st, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(st, 503, "{body}");
    assert!(body.starts_with("database unreachable: "), "{body}");
    sqlx::query(&allow(true)).execute(&mut admin).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (st, body) = ready().await;
        if st == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready again: {st} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.stop().await;
}
