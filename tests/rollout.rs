//! Rollouts end to end: a real docker-registry, the daemon in-process, and a
//! CI receiver that verifies signatures, "builds" by pushing the rebuilt
//! image (base annotation = its parent's new digest) and calls back.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lineaged::config::load_str;
use lineaged::daemon::{Daemon, RunOptions, start};
use lineaged::dispatch::webhook;
use lineaged::registry::manifest::{BASE_DIGEST, BASE_NAME};
use lineaged::watch::WatchOptions;
use serde_json::Value;
use support::registry::{RegistryOptions, TestRegistry};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "ci-signing-secret";

#[derive(Clone, Debug)]
struct Received {
    image: String,
    webhook_id: String,
    parents: Value,
    at: Instant,
}

#[derive(Default)]
struct Ci {
    received: Mutex<Vec<Received>>,
    finished: Mutex<Vec<(String, Instant)>>,
    /// Answer 503 to this many requests first.
    unavailable: Mutex<u32>,
    /// Images whose build fails.
    failing: Mutex<Vec<String>>,
    /// Push the rebuilt image but never call back.
    silent: std::sync::atomic::AtomicBool,
    /// Accept triggers and do nothing at all.
    ghost: std::sync::atomic::AtomicBool,
}

/// The CI peer: checks the Standard Webhooks signature, records, builds.
async fn ci_receiver(reg: Arc<TestRegistry>, ci: Arc<Ci>) -> String {
    use axum::http::{HeaderMap, StatusCode};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let app = axum::Router::new().route(
        "/build",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (reg, ci) = (reg.clone(), ci.clone());
            async move {
                let id = headers["webhook-id"].to_str().unwrap().to_string();
                let ts: i64 = headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
                let sig = headers["webhook-signature"].to_str().unwrap();
                assert!(webhook::verify(SECRET.as_bytes(), &id, ts, &body, sig), "bad signature");
                {
                    let mut u = ci.unavailable.lock().unwrap();
                    if *u > 0 {
                        *u -= 1;
                        ci.received.lock().unwrap().push(Received { image: "<503>".into(), webhook_id: id, parents: Value::Null, at: Instant::now() });
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                }
                let v: Value = serde_json::from_slice(&body).unwrap();
                let image = v["image"].as_str().unwrap().to_string();
                ci.received.lock().unwrap().push(Received { image: image.clone(), webhook_id: id, parents: v["parents"].clone(), at: Instant::now() });
                let callback = v["callback_url"].as_str().unwrap().to_string();
                let parent = v["parents"][0].clone();
                let fail = ci.failing.lock().unwrap().contains(&image);
                if ci.ghost.load(std::sync::atomic::Ordering::Relaxed) {
                    return StatusCode::ACCEPTED;
                }
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let http = reqwest::Client::new();
                    let body = if fail {
                        serde_json::json!({ "status": "failed", "log_url": "http://ci.example/log/1" })
                    } else {
                        let repo_tag = image.split_once('/').unwrap().1;
                        let (repo, tag) = repo_tag.rsplit_once(':').unwrap();
                        let mut ann = BTreeMap::new();
                        ann.insert(BASE_NAME.to_string(), parent["name"].as_str().unwrap().to_string());
                        ann.insert(BASE_DIGEST.to_string(), parent["digest"].as_str().unwrap().to_string());
                        let (digest, _) = reg.push_image(repo, tag, &format!("{image} {}", rand_tag()), ("linux", "amd64"), ann, BTreeMap::new()).await;
                        serde_json::json!({ "status": "succeeded", "digest": digest })
                    };
                    ci.finished.lock().unwrap().push((image.clone(), Instant::now()));
                    if ci.silent.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let r = http.post(&callback).json(&body).send().await.unwrap();
                    assert_eq!(r.status().as_u16(), 200, "callback: {}", r.text().await.unwrap_or_default());
                });
                StatusCode::ACCEPTED
            }
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

fn rand_tag() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

struct Setup {
    reg: Arc<TestRegistry>,
    ci: Arc<Ci>,
    daemon: Option<Daemon>,
    shutdown: CancellationToken,
    _db: tempfile::TempDir,
}

/// base (external) → left, right → bottom (diamond), all in the registry.
async fn diamond() -> Setup {
    diamond_on(None).await
}

async fn diamond_with(build_timeout: &str) -> Setup {
    diamond_opts(None, build_timeout).await
}

async fn diamond_on(db_url: Option<&str>) -> Setup {
    diamond_opts(db_url, "1h").await
}

/// The diamond on `db_url` (default: SQLite in a temp dir).
async fn diamond_opts(db_url: Option<&str>, build_timeout: &str) -> Setup {
    let reg = Arc::new(TestRegistry::start(RegistryOptions::default()).await);
    let none = BTreeMap::new;
    for (repo, seed) in [
        ("base/os", "b1"),
        ("team/left", "l1"),
        ("team/right", "r1"),
        ("team/bottom", "m1"),
    ] {
        reg.push_image(repo, "1", seed, ("linux", "amd64"), none(), none())
            .await;
    }
    let ci = Arc::new(Ci::default());
    let ci_addr = ci_receiver(reg.clone(), ci.clone()).await;
    let a = &reg.addr;
    let db = tempfile::tempdir().unwrap();
    let url = db_url.map_or_else(
        || format!("sqlite://{}/l.db", db.path().display()),
        str::to_string,
    );
    let yaml = format!(
        r#"database: {{ url: "{url}" }}
registries:
  - host: "{a}"
    insecure: true
backends:
  ci:
    kind: webhook
    url: http://{ci_addr}/build
    secret_env: T_CI_SECRET
    build_timeout: {build_timeout}
images:
  - name: "{a}/base/os:1"
    schedule: "* * * * * *"
  - name: "{a}/team/left:1"
    from: ["{a}/base/os:1"]
    build: {{ backend: ci }}
    schedule: "* * * * * *"
  - name: "{a}/team/right:1"
    from: ["{a}/base/os:1"]
    build: {{ backend: ci }}
    schedule: "* * * * * *"
  - name: "{a}/team/bottom:1"
    from: ["{a}/team/left:1", "{a}/team/right:1"]
    build: {{ backend: ci }}
    schedule: "* * * * * *"
"#
    );
    let cfg = Arc::new(
        load_str("diamond.yaml", &yaml, &|n| {
            (n == "T_CI_SECRET").then(|| SECRET.to_string())
        })
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let shutdown = CancellationToken::new();
    let opts = RunOptions {
        watch: true,
        rollouts: true,
        reconcile_interval: Duration::from_secs(1),
        watch_options: WatchOptions {
            node_id: "t".into(),
            lease_ttl: Duration::from_secs(5),
            max_in_flight: 16,
        },
        registry_timeout: Duration::from_secs(5),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon = start(cfg, listener, shutdown.clone(), opts).await.unwrap();
    // Every image observed once (baselines) before anything changes.
    let deadline = Instant::now() + Duration::from_secs(10);
    for repo in ["base/os", "team/left", "team/right", "team/bottom"] {
        let name = format!("{a}/{repo}:1");
        while daemon
            .store
            .image_state(&name)
            .await
            .unwrap()
            .unwrap()
            .current_digest
            .is_none()
        {
            assert!(Instant::now() < deadline, "no baseline for {name}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Setup {
        reg,
        ci,
        daemon: Some(daemon),
        shutdown,
        _db: db,
    }
}

impl Setup {
    /// Pushes a new base image; returns its digest.
    async fn push_base(&self, seed: &str) -> String {
        let none = BTreeMap::new;
        self.reg
            .push_image("base/os", "1", seed, ("linux", "amd64"), none(), none())
            .await
            .0
    }

    async fn wait_rollout(&self, within: Duration) -> (String, Vec<(String, String)>) {
        let store = &self.daemon.as_ref().unwrap().store;
        let deadline = Instant::now() + within;
        loop {
            if let Some(r) = store.rollouts(1).await.unwrap().into_iter().next()
                && r.state != "running"
            {
                let imgs = store
                    .rollout_images(r.id)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|i| (i.image, i.state.to_string()))
                    .collect();
                return (r.state.to_string(), imgs);
            }
            assert!(
                Instant::now() < deadline,
                "rollout did not finish: {:?}\nimages: {:?}\njobs: {:?}",
                store.rollouts(5).await.unwrap(),
                store.rollout_images(1).await.unwrap(),
                store
                    .jobs(None, 0, 20)
                    .await
                    .unwrap()
                    .iter()
                    .map(|j| (
                        j.id,
                        j.image.clone(),
                        j.state.clone(),
                        j.attempt,
                        j.last_error.clone()
                    ))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        self.daemon.take().unwrap().wait().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_push_rebuilds_a_diamond_once_each_in_wave_order() {
    let s = diamond().await;
    let a = s.reg.addr.clone();
    let base_digest = s.push_base("b2").await;
    let (state, images) = s.wait_rollout(Duration::from_secs(30)).await;
    assert_eq!(state, "succeeded", "{images:?}");
    assert_eq!(images.len(), 3);
    // Quiet period: nothing is rebuilt again by the watcher seeing the rebuilt images.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = s.ci.received.lock().unwrap().clone();
    let mut names: Vec<&str> = got.iter().map(|r| r.image.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            format!("{a}/team/bottom:1"),
            format!("{a}/team/left:1"),
            format!("{a}/team/right:1")
        ],
        "each exactly once"
    );
    let at = |img: &str| got.iter().find(|r| r.image.ends_with(img)).unwrap().clone();
    for side in ["/team/left:1", "/team/right:1"] {
        let r = at(side);
        assert_eq!(
            r.parents[0]["digest"],
            base_digest.as_str(),
            "built on the new base"
        );
        let finished =
            s.ci.finished
                .lock()
                .unwrap()
                .iter()
                .find(|(i, _)| i.ends_with(side))
                .unwrap()
                .1;
        assert!(
            at("/team/bottom:1").at > finished,
            "bottom only after {side} finished"
        );
    }
    let ids: std::collections::HashSet<_> = got.iter().map(|r| r.webhook_id.clone()).collect();
    assert_eq!(ids.len(), 3);
    let kinds: Vec<String> = s
        .daemon
        .as_ref()
        .unwrap()
        .store
        .events_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for k in [
        "digest_changed",
        "rollout_started",
        "job_dispatched",
        "job_accepted",
        "job_succeeded",
        "rollout_finished",
    ] {
        assert!(kinds.iter().any(|x| x == k), "missing event {k}: {kinds:?}");
    }
    // Each trigger's job records what CI answered.
    let store = &s.daemon.as_ref().unwrap().store;
    let jobs = store
        .jobs(Some(lineaged::store::JobState::Succeeded), 0, 100)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 3);
    for j in &jobs {
        let r: serde_json::Value = serde_json::from_str(j.result.as_deref().unwrap()).unwrap();
        assert_eq!(r["status"], 202, "{r}");
        assert!(r["duration_ms"].is_u64(), "{r}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_blocks_its_descendants() {
    let s = diamond().await;
    let a = s.reg.addr.clone();
    s.ci.failing
        .lock()
        .unwrap()
        .push(format!("{a}/team/left:1"));
    s.push_base("b2").await;
    let (state, images) = s.wait_rollout(Duration::from_secs(30)).await;
    assert_eq!(state, "partially_failed");
    let st = |img: &str| {
        images
            .iter()
            .find(|(i, _)| i.ends_with(img))
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(
        (
            st("/team/left:1"),
            st("/team/right:1"),
            st("/team/bottom:1")
        ),
        ("failed".into(), "done".into(), "blocked".into())
    );
    assert!(
        !s.ci
            .received
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.image.ends_with("/team/bottom:1")),
        "never built on a failed parent"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_unavailable_then_back_delivers_once_with_the_same_webhook_id() {
    let s = diamond().await;
    *s.ci.unavailable.lock().unwrap() = 3;
    s.push_base("b2").await;
    let (state, _) = s.wait_rollout(Duration::from_secs(60)).await;
    assert_eq!(state, "succeeded");
    let got = s.ci.received.lock().unwrap().clone();
    let refused: Vec<&Received> = got.iter().filter(|r| r.image == "<503>").collect();
    assert_eq!(refused.len(), 3);
    let delivered: Vec<&Received> = got.iter().filter(|r| r.image != "<503>").collect();
    assert_eq!(delivered.len(), 3, "one accepted trigger per image");
    for r in refused {
        assert!(
            delivered.iter().any(|d| d.webhook_id == r.webhook_id),
            "retries keep the webhook-id"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_diamond_on_postgres() {
    let pg = support::PgDb::create().await;
    let s = diamond_on(Some(&pg.url)).await;
    s.push_base("b2").await;
    let (state, images) = s.wait_rollout(Duration::from_secs(30)).await;
    assert_eq!(state, "succeeded", "{images:?}");
    assert_eq!(s.ci.received.lock().unwrap().len(), 3);
    s.stop().await;
    pg.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_quick_base_pushes_rebuild_on_the_newest_base_without_overlap() {
    let s = diamond().await;
    let a = s.reg.addr.clone();
    s.push_base("b2").await;
    // The second push lands while the first rollout is being planned or built.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let v3 = s.push_base("b3").await;
    let store = s.daemon.as_ref().unwrap().store.clone();
    // Until the base's v3 is observed and everything after it has settled.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = store
            .image_state(&format!("{a}/base/os:1"))
            .await
            .unwrap()
            .unwrap()
            .current_digest;
        let running = store
            .rollouts(1)
            .await
            .unwrap()
            .first()
            .is_some_and(|r| r.state == "running");
        if seen.as_deref() == Some(v3.as_str()) && !running {
            break;
        }
        assert!(Instant::now() < deadline, "did not settle");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = s.ci.received.lock().unwrap().clone();
    let finished = s.ci.finished.lock().unwrap().clone();
    for img in ["team/left:1", "team/right:1", "team/bottom:1"] {
        let mine: Vec<&Received> = got.iter().filter(|r| r.image.ends_with(img)).collect();
        assert!(
            (1..=2).contains(&mine.len()),
            "{img}: {} triggers",
            mine.len()
        );
        if mine.len() == 2 {
            let first_done = finished.iter().find(|(i, _)| i.ends_with(img)).unwrap().1;
            assert!(
                mine[1].at >= first_done,
                "{img}: second build started before the first finished"
            );
        }
    }
    for side in ["team/left:1", "team/right:1"] {
        let last = got.iter().rev().find(|r| r.image.ends_with(side)).unwrap();
        assert_eq!(
            last.parents[0]["digest"],
            v3.as_str(),
            "{side} ends on the newest base"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_without_callback_comes_from_the_registry() {
    let s = diamond().await;
    s.ci.silent
        .store(true, std::sync::atomic::Ordering::Relaxed);
    s.push_base("b2").await;
    let (state, images) = s.wait_rollout(Duration::from_secs(30)).await;
    assert_eq!(state, "succeeded", "{images:?}");
    assert_eq!(s.ci.received.lock().unwrap().len(), 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_endpoint_checks_tokens_and_is_idempotent() {
    let s = diamond().await;
    s.ci.ghost.store(true, std::sync::atomic::Ordering::Relaxed);
    let a = s.reg.addr.clone();
    s.push_base("b2").await;
    let store = s.daemon.as_ref().unwrap().store.clone();
    let left = format!("{a}/team/left:1");
    let deadline = Instant::now() + Duration::from_secs(20);
    let job = loop {
        let jobs = store
            .jobs(Some(lineaged::store::JobState::Succeeded), 0, 10)
            .await
            .unwrap();
        if let Some(j) = jobs
            .into_iter()
            .find(|j| j.image.as_deref() == Some(left.as_str()))
        {
            break j;
        }
        assert!(Instant::now() < deadline, "left never triggered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let token = serde_json::from_str::<Value>(&job.payload).unwrap()["callback_token"]
        .as_str()
        .unwrap()
        .to_string();
    let base = format!("http://{}/api/v1/jobs", s.daemon.as_ref().unwrap().addr);
    let http = reqwest::Client::new();
    let post = |url: String, body: Value| http.post(url).json(&body).send();
    let ok = serde_json::json!({ "status": "succeeded" });
    assert_eq!(
        post(format!("{base}/{}/result?token=wrong", job.id), ok.clone())
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        post(format!("{base}/{}/result", job.id), ok.clone())
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        post(format!("{base}/999999/result?token={token}"), ok.clone())
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    let r = post(
        format!("{base}/{}/result?token={token}", job.id),
        serde_json::json!({ "status": "maybe" }),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = post(
        format!("{base}/{}/result?token={token}", job.id),
        serde_json::json!({ "status": "succeeded", "digest": "sha256:xyz" }),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400, "invalid digest");
    // A digest that was never pushed does not mark the build done.
    let never = format!("sha256:{}", "0".repeat(64));
    let r = post(
        format!("{base}/{}/result?token={token}", job.id),
        serde_json::json!({ "status": "succeeded", "digest": never }),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status().as_u16(),
        409,
        "a digest the tag does not point at"
    );
    let msg = r.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("is not what") && msg.contains(&never), "{msg}");
    let row = store.rollout_image_for_job(job.id).await.unwrap().unwrap();
    assert_eq!(row.state, "building", "unchanged by a refused report");
    for _ in 0..2 {
        let r = post(
            format!("{base}/{}/result?token={token}", job.id),
            ok.clone(),
        )
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["state"], "done");
    }
    // A later contradictory report changes nothing.
    let r = post(
        format!("{base}/{}/result?token={token}", job.id),
        serde_json::json!({ "status": "failed" }),
    )
    .await
    .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "done");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_ci_is_retried_after_build_timeout_then_failed() {
    let s = diamond_with("1s").await;
    s.ci.ghost.store(true, std::sync::atomic::Ordering::Relaxed);
    s.push_base("b2").await;
    let (state, images) = s.wait_rollout(Duration::from_secs(40)).await;
    assert_eq!(state, "failed", "{images:?}");
    let got = s.ci.received.lock().unwrap().clone();
    let left: Vec<&Received> = got
        .iter()
        .filter(|r| r.image.ends_with("/team/left:1"))
        .collect();
    assert_eq!(left.len(), 3, "three builds before giving up");
    let ids: std::collections::HashSet<_> = left.iter().map(|r| r.webhook_id.clone()).collect();
    assert_eq!(
        ids.len(),
        3,
        "each retry is a new build with its own webhook-id"
    );
    assert!(!got.iter().any(|r| r.image.ends_with("/team/bottom:1")));
    s.stop().await;
}
