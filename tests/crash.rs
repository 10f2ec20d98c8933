//! `lineaged serve` as a user runs it, killed with SIGKILL in the middle of a
//! rollout and restarted: the rollout completes, nothing is triggered twice
//! with different webhook ids, nothing is left stuck. And reconcile: a
//! change recorded but never planned is rebuilt after a restart.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lineaged::dispatch::webhook;
use lineaged::registry::manifest::{BASE_DIGEST, BASE_NAME};
use lineaged::store::{DigestSource, OpenOptions, Store, now_millis};
use serde_json::Value;
use support::fleet::{SECRET, Serve, free_port, until};
use support::registry::{RegistryOptions, TestRegistry};

#[derive(Default)]
struct Ci {
    /// image → webhook ids it was triggered with
    triggers: Mutex<HashMap<String, HashSet<String>>>,
    count: Mutex<usize>,
}

/// A CI that answers at once and reports back 1.5 s later, retrying its
/// callback until lineaged answers (like `curl --retry`).
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
                let ts: i64 = headers["webhook-timestamp"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(webhook::verify(
                    SECRET.as_bytes(),
                    &id,
                    ts,
                    &body,
                    headers["webhook-signature"].to_str().unwrap()
                ));
                let v: Value = serde_json::from_slice(&body).unwrap();
                let image = v["image"].as_str().unwrap().to_string();
                ci.triggers
                    .lock()
                    .unwrap()
                    .entry(image.clone())
                    .or_default()
                    .insert(id);
                *ci.count.lock().unwrap() += 1;
                let callback = v["callback_url"].as_str().unwrap().to_string();
                let parent = v["parents"][0].clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    let (repo, tag) = image.split_once('/').unwrap().1.rsplit_once(':').unwrap();
                    let mut ann = BTreeMap::new();
                    ann.insert(
                        BASE_NAME.to_string(),
                        parent["name"].as_str().unwrap().to_string(),
                    );
                    ann.insert(
                        BASE_DIGEST.to_string(),
                        parent["digest"].as_str().unwrap().to_string(),
                    );
                    let (digest, _) = reg
                        .push_image(
                            repo,
                            tag,
                            &format!("{image} {}", now_millis()),
                            ("linux", "amd64"),
                            ann,
                            BTreeMap::new(),
                        )
                        .await;
                    let http = reqwest::Client::new();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while Instant::now() < deadline {
                        let r = http
                            .post(&callback)
                            .json(&serde_json::json!({ "status": "succeeded", "digest": digest }))
                            .send()
                            .await;
                        if r.is_ok_and(|r| r.status().is_success()) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                });
                StatusCode::ACCEPTED
            }
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

struct World {
    reg: Arc<TestRegistry>,
    ci: Arc<Ci>,
    cfg: std::path::PathBuf,
    db_url: String,
    _dir: tempfile::TempDir,
}

async fn world(annotated: bool) -> World {
    let reg = Arc::new(TestRegistry::start(RegistryOptions::default()).await);
    let a = reg.addr.clone();
    let (base, _) = reg
        .push_image(
            "base/os",
            "1",
            "b1",
            ("linux", "amd64"),
            BTreeMap::new(),
            BTreeMap::new(),
        )
        .await;
    for repo in ["team/left", "team/right"] {
        let mut ann = BTreeMap::new();
        if annotated {
            ann.insert(BASE_NAME.to_string(), format!("{a}/base/os:1"));
            ann.insert(BASE_DIGEST.to_string(), base.clone());
        }
        reg.push_image(repo, "1", repo, ("linux", "amd64"), ann, BTreeMap::new())
            .await;
    }
    reg.push_image(
        "team/bottom",
        "1",
        "m",
        ("linux", "amd64"),
        BTreeMap::new(),
        BTreeMap::new(),
    )
    .await;
    let ci = Arc::new(Ci::default());
    let ci_addr = ci_receiver(reg.clone(), ci.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/lineaged.db", dir.path().display());
    let cfg = dir.path().join("lineaged.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"database: {{ url: "{db_url}" }}
listen: "127.0.0.1:{port}"
defaults: {{ schedule: "* * * * * *" }}
registries:
  - host: "{a}"
    insecure: true
backends:
  ci: {{ kind: webhook, url: "http://{ci_addr}/build", secret_env: T_CI_SECRET }}
images:
  - name: "{a}/base/os:1"
    schedule: "* * * * * *"
  - name: "{a}/team/left:1"
    from: ["{a}/base/os:1"]
    build: {{ backend: ci }}
  - name: "{a}/team/right:1"
    from: ["{a}/base/os:1"]
    build: {{ backend: ci }}
  - name: "{a}/team/bottom:1"
    from: ["{a}/team/left:1", "{a}/team/right:1"]
    build: {{ backend: ci }}
"#,
            port = free_port()
        ),
    )
    .unwrap();
    World {
        reg,
        ci,
        cfg,
        db_url,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_rollout_then_restart_completes_without_duplicates() {
    let w = world(false).await;
    let a = w.reg.addr.clone();
    let base = format!("{a}/base/os:1");
    let serve = Serve::start(&w.cfg, "crash-test-node");
    let store = connect_when(&w.db_url, "daemon never observed the base", |s: Store| {
        let base = base.clone();
        async move {
            s.image_state(&base)
                .await
                .ok()
                .flatten()
                .is_some_and(|st| st.current_digest.is_some())
        }
    })
    .await;
    w.reg
        .push_image(
            "base/os",
            "1",
            "b2",
            ("linux", "amd64"),
            BTreeMap::new(),
            BTreeMap::new(),
        )
        .await;
    // Kill as soon as the first trigger went out: builds are in flight.
    let ci = w.ci.clone();
    until("first trigger", Duration::from_secs(20), || {
        let ci = ci.clone();
        async move { *ci.count.lock().unwrap() >= 1 }
    })
    .await;
    serve.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let serve = Serve::start(&w.cfg, "crash-test-node");
    // Kill once more while the bottom is being triggered or built.
    let ci = w.ci.clone();
    until("bottom triggered", Duration::from_secs(60), || {
        let ci = ci.clone();
        let bottom = format!("{a}/team/bottom:1");
        async move { ci.triggers.lock().unwrap().contains_key(&bottom) }
    })
    .await;
    serve.kill9();
    let serve = Serve::start(&w.cfg, "crash-test-node");
    until("rollout finished", Duration::from_secs(60), || {
        let store = store.clone();
        async move {
            store
                .rollouts(1)
                .await
                .unwrap()
                .first()
                .is_some_and(|r| r.state != "running")
        }
    })
    .await;
    let r = store.rollouts(5).await.unwrap();
    assert_eq!(r.len(), 1, "one rollout: {r:?}");
    assert_eq!(
        r[0].state,
        "succeeded",
        "{:?}",
        store.rollout_images(r[0].id).await.unwrap()
    );
    let triggers = w.ci.triggers.lock().unwrap().clone();
    assert_eq!(triggers.len(), 3, "{triggers:?}");
    for (image, ids) in &triggers {
        assert_eq!(
            ids.len(),
            1,
            "{image} triggered with several webhook ids: {ids:?}"
        );
    }
    let running = store
        .jobs(Some(lineaged::store::JobState::Running), 0, 100)
        .await
        .unwrap();
    let pending = store
        .jobs(Some(lineaged::store::JobState::Pending), 0, 100)
        .await
        .unwrap();
    assert!(
        running.is_empty() && pending.is_empty(),
        "stuck jobs: {running:?} {pending:?}"
    );
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_rebuilds_an_image_that_went_stale_while_nobody_planned_it() {
    let w = world(true).await;
    let a = w.reg.addr.clone();
    let serve = Serve::start(&w.cfg, "crash-test-node");
    let left = format!("{a}/team/left:1");
    let base = format!("{a}/base/os:1");
    let store = connect_when(
        &w.db_url,
        "no baseline with base annotations",
        |s: Store| {
            let left = left.clone();
            async move {
                s.image_state(&left)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|st| st.base_digest.is_some())
                    && s.image_state(&left.replace("left", "right"))
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|st| st.base_digest.is_some())
            }
        },
    )
    .await;
    serve.stop();
    // While it is down, the base moves and the observation is committed,
    // but no rollout was ever planned (as after a crash at that moment).
    let (new_base, _) = w
        .reg
        .push_image(
            "base/os",
            "1",
            "b2",
            ("linux", "amd64"),
            BTreeMap::new(),
            BTreeMap::new(),
        )
        .await;
    store
        .record_digest(&base, &new_base, "", DigestSource::Poll, now_millis())
        .await
        .unwrap();
    assert!(store.rollouts(5).await.unwrap().is_empty());
    let serve = Serve::start(&w.cfg, "crash-test-node");
    until(
        "reconcile rollout finished",
        Duration::from_secs(60),
        || {
            let store = store.clone();
            async move {
                store
                    .rollouts(1)
                    .await
                    .unwrap()
                    .first()
                    .is_some_and(|r| r.state != "running")
            }
        },
    )
    .await;
    let triggers = w.ci.triggers.lock().unwrap().clone();
    let mut built: Vec<&String> = triggers.keys().collect();
    built.sort();
    assert_eq!(
        built,
        vec![
            &format!("{a}/team/bottom:1"),
            &left,
            &format!("{a}/team/right:1")
        ]
    );
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_valid_config_and_keeps_the_old_one_on_errors() {
    let w = world(false).await;
    let a = w.reg.addr.clone();
    let mut serve = Serve::start(&w.cfg, "crash-test-node");
    let extra = format!("{a}/team/extra:1");
    let base = format!("{a}/base/os:1");
    let store = connect_when(&w.db_url, "daemon did not start", |s: Store| {
        let base = base.clone();
        async move { s.active_images().await.is_ok_and(|i| i.contains(&base)) }
    })
    .await;
    let original = std::fs::read_to_string(&w.cfg).unwrap();
    std::fs::write(&w.cfg, format!("{original}  - name: \"{extra}\"\n")).unwrap();
    let hup = |pid: u32| {
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    hup(serve.child.id());
    until("reloaded", Duration::from_secs(20), || {
        let store = store.clone();
        let extra = extra.clone();
        async move {
            store
                .active_images()
                .await
                .is_ok_and(|i| i.contains(&extra))
        }
    })
    .await;
    // A broken config is refused; the daemon keeps running the last good one.
    std::fs::write(&w.cfg, format!("{original}  - name: \"Not A Ref\"\n")).unwrap();
    hup(serve.child.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(serve.child.try_wait().unwrap().is_none(), "still running");
    assert!(
        store.active_images().await.unwrap().contains(&extra),
        "old config kept"
    );
    serve.stop();
}

/// Connects to the daemon's database once `ready` holds for it.
async fn connect_when<F, Fut>(url: &str, what: &str, ready: F) -> Store
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let opts = OpenOptions {
            max_connections: 2,
            ..OpenOptions::default()
        };
        if let Ok(s) = Store::connect(url, &opts).await
            && ready(s.clone()).await
        {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
