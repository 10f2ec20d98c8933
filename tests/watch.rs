//! The watcher in a running daemon against a real docker-registry: polling,
//! push notifications from the registry itself, platforms, hooks, faults.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use lineaged::config::load_str;
use lineaged::daemon::{Daemon, RunOptions, start};
use lineaged::store::DigestSource;
use lineaged::watch::{DigestChanged, WatchOptions};
use support::registry::{RegistryOptions, TestRegistry};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

const HOOK_TOKEN: &str = "hook-token-123";
const GH_SECRET: &str = "gh-secret-456";

fn map() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn env(name: &str) -> Option<String> {
    match name {
        "T_HOOK_TOKEN" => Some(HOOK_TOKEN.into()),
        "T_GH_SECRET" => Some(GH_SECRET.into()),
        _ => None,
    }
}

struct Running {
    daemon: Daemon,
    shutdown: CancellationToken,
    _db: tempfile::TempDir,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.daemon.wait().await.unwrap();
    }
}

async fn daemon(yaml_body: &str, listener: tokio::net::TcpListener) -> Running {
    daemon_on(None, "test", yaml_body, listener).await
}

/// A daemon on `db_url` (default: SQLite in a temp dir) named `node`.
async fn daemon_on(
    db_url: Option<&str>,
    node: &str,
    yaml_body: &str,
    listener: tokio::net::TcpListener,
) -> Running {
    let db = tempfile::tempdir().unwrap();
    let url = db_url.map_or_else(
        || format!("sqlite://{}/l.db", db.path().display()),
        str::to_string,
    );
    let yaml = format!(
        "database: {{ url: \"{url}\" }}\nreceivers:\n  distribution: {{ token_env: T_HOOK_TOKEN }}\n  ghcr: {{ secret_env: T_GH_SECRET }}\n{yaml_body}"
    );
    let cfg =
        Arc::new(load_str("test.yaml", &yaml, &env).unwrap_or_else(|e| panic!("{e}\n{yaml}")));
    let shutdown = CancellationToken::new();
    let opts = RunOptions {
        watch: true,
        rollouts: false,
        reconcile_interval: Duration::from_secs(30),
        watch_options: WatchOptions {
            node_id: node.into(),
            lease_ttl: Duration::from_secs(5),
            max_in_flight: 16,
        },
        registry_timeout: Duration::from_secs(5),
    };
    let daemon = start(cfg, listener, shutdown.clone(), opts).await.unwrap();
    Running {
        daemon,
        shutdown,
        _db: db,
    }
}

async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

async fn next_change(
    rx: &mut broadcast::Receiver<DigestChanged>,
    image: &str,
    within: Duration,
) -> Option<DigestChanged> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(c)) if c.image.to_string() == image => return Some(c),
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_sees_a_push_within_one_period_and_never_reports_an_unchanged_tag() {
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    let (d1, _) = reg
        .push_image(
            "base/python",
            "3.12",
            "v1",
            ("linux", "amd64"),
            map(),
            map(),
        )
        .await;
    reg.push_image("base/steady", "1", "s", ("linux", "amd64"), map(), map())
        .await;
    let a = &reg.addr;
    let yaml = format!(
        "registries:\n  - host: \"{a}\"\n    insecure: true\nimages:\n  - name: \"{a}/base/python:3.12\"\n    schedule: \"* * * * * *\"\n  - name: \"{a}/base/steady:1\"\n    schedule: \"* * * * * *\"\n"
    );
    let run = daemon(&yaml, listener().await).await;
    let mut rx = run.daemon.watch.as_ref().unwrap().subscribe();
    let python = format!("{a}/base/python:3.12");
    let steady = format!("{a}/base/steady:1");

    // Wait for the baseline observation, then push.
    let store = run.daemon.store.clone();
    wait_baseline(&store, &python).await;
    assert_eq!(
        store
            .image_state(&python)
            .await
            .unwrap()
            .unwrap()
            .current_digest
            .as_deref(),
        Some(d1.as_str())
    );
    let (d2, _) = reg
        .push_image(
            "base/python",
            "3.12",
            "v2",
            ("linux", "amd64"),
            map(),
            map(),
        )
        .await;
    let pushed_at = Instant::now();
    let change = next_change(&mut rx, &python, Duration::from_secs(10))
        .await
        .expect("change seen by polling");
    assert!(
        pushed_at.elapsed() < Duration::from_millis(2_600),
        "within one period (1 s) plus jitter: {:?}",
        pushed_at.elapsed()
    );
    assert_eq!(
        (change.old.as_str(), change.new.as_str(), change.source),
        (d1.as_str(), d2.as_str(), DigestSource::Poll)
    );

    // Several more polls: no change is ever reported for either image.
    assert!(
        next_change(&mut rx, &steady, Duration::from_secs(3))
            .await
            .is_none()
    );
    let history = store.digest_history(&steady, 100).await.unwrap();
    assert!(
        history.len() >= 3,
        "steady was polled {} times",
        history.len()
    );
    let events = store.events_after(0, 100).await.unwrap();
    let changes: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "digest_changed")
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].image.as_deref(), Some(python.as_str()));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registrys_own_notifications_trigger_a_recheck_within_a_second() {
    let l = listener().await;
    let port = l.local_addr().unwrap().port();
    let reg = TestRegistry::start(RegistryOptions {
        basic_auth: None,
        notify: Some((
            format!("http://127.0.0.1:{port}/api/v1/hooks/registry/distribution"),
            HOOK_TOKEN.into(),
        )),
    })
    .await;
    reg.push_image("base/debian", "12", "v1", ("linux", "amd64"), map(), map())
        .await;
    let a = &reg.addr;
    // A yearly schedule: only the push event can explain a quick change.
    let yaml = format!(
        "registries:\n  - host: \"{a}\"\n    insecure: true\nimages:\n  - name: \"{a}/base/debian:12\"\n    schedule: \"0 0 0 1 1 *\"\n"
    );
    let run = daemon(&yaml, l).await;
    let mut rx = run.daemon.watch.as_ref().unwrap().subscribe();
    let image = format!("{a}/base/debian:12");
    // First push event: the baseline (first observation is not a change).
    // (The v1 notification was queued while the daemon was starting; the
    // registry retries it.) Wait until the daemon has seen v2.
    let (d2, _) = reg
        .push_image("base/debian", "12", "v2", ("linux", "amd64"), map(), map())
        .await;
    let store = run.daemon.store.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store
        .image_state(&image)
        .await
        .unwrap()
        .unwrap()
        .current_digest
        .as_deref()
        != Some(d2.as_str())
    {
        assert!(
            Instant::now() < deadline,
            "push events never arrived: {:?} {:?}",
            store.image_state(&image).await.unwrap(),
            store.digest_history(&image, 10).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (d3, _) = reg
        .push_image("base/debian", "12", "v3", ("linux", "amd64"), map(), map())
        .await;
    let t = Instant::now();
    let change = loop {
        let c = next_change(&mut rx, &image, Duration::from_secs(5))
            .await
            .expect("change from push event");
        if c.new == d3 {
            break c;
        }
    };
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(
        (change.old.as_str(), change.source),
        (d2.as_str(), DigestSource::Push)
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_filtered_image_ignores_other_platforms() {
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    let amd = reg
        .push_image(
            "base/multi",
            "amd-1",
            "amd1",
            ("linux", "amd64"),
            map(),
            map(),
        )
        .await;
    let arm = reg
        .push_image(
            "base/multi",
            "arm-1",
            "arm1",
            ("linux", "arm64"),
            map(),
            map(),
        )
        .await;
    reg.push_index(
        "base/multi",
        "1",
        &[(("linux", "amd64"), amd.clone()), (("linux", "arm64"), arm)],
    )
    .await;
    let a = &reg.addr;
    let yaml = format!(
        "registries:\n  - host: \"{a}\"\n    insecure: true\nimages:\n  - name: \"{a}/base/multi:1\"\n    schedule: \"* * * * * *\"\n    platforms: [linux/amd64]\n"
    );
    let run = daemon(&yaml, listener().await).await;
    let mut rx = run.daemon.watch.as_ref().unwrap().subscribe();
    let image = format!("{a}/base/multi:1");
    let store = run.daemon.store.clone();
    wait_baseline(&store, &image).await;
    let arm2 = reg
        .push_image(
            "base/multi",
            "arm-2",
            "arm2",
            ("linux", "arm64"),
            map(),
            map(),
        )
        .await;
    reg.push_index(
        "base/multi",
        "1",
        &[
            (("linux", "amd64"), amd.clone()),
            (("linux", "arm64"), arm2.clone()),
        ],
    )
    .await;
    assert!(
        next_change(&mut rx, &image, Duration::from_secs(3))
            .await
            .is_none(),
        "arm64 change is not a change"
    );
    let amd2 = reg
        .push_image(
            "base/multi",
            "amd-2",
            "amd2",
            ("linux", "amd64"),
            map(),
            map(),
        )
        .await;
    reg.push_index(
        "base/multi",
        "1",
        &[
            (("linux", "amd64"), amd2.clone()),
            (("linux", "arm64"), arm2),
        ],
    )
    .await;
    let c = next_change(&mut rx, &image, Duration::from_secs(5))
        .await
        .expect("amd64 change");
    assert_eq!((c.old, c.new), (amd.0, amd2.0));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_hooks_authenticate_and_reject_bad_input() {
    let yaml = "images:\n  - name: \"127.0.0.1:1/base/x:1\"\n    schedule: \"0 0 0 1 1 *\"\n";
    let run = daemon(yaml, listener().await).await;
    let url = |src: &str| format!("http://{}/api/v1/hooks/registry/{src}", run.daemon.addr);
    let http = reqwest::Client::new();
    let body = r#"{"events":[{"action":"push","target":{"repository":"base/x","tag":"1","digest":"sha256:aa"},"request":{"host":"127.0.0.1:1"}},{"action":"push","target":{"repository":"other/y","tag":"2"},"request":{"host":"127.0.0.1:1"}}]}"#;
    let post = |src: &str, auth: Option<&str>, body: Vec<u8>| {
        let mut r = http
            .post(url(src))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let r = post("distribution", None, body.into()).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = post("distribution", Some("Bearer wrong"), body.into())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "unauthorized");
    let bearer = format!("Bearer {HOOK_TOKEN}");
    let r = post("distribution", Some(&bearer), body.into())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tracked"], serde_json::json!(["127.0.0.1:1/base/x:1"]));
    assert_eq!(v["ignored"], serde_json::json!(["127.0.0.1:1/other/y:2"]));
    let r = post("distribution", Some(&bearer), b"{nope".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("malformed JSON"),
        "{v}"
    );
    // Its own connection: the server answers 413 without reading the body
    // and closes the connection.
    let r = reqwest::Client::new()
        .post(url("distribution"))
        .header("authorization", &bearer)
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(
        post("quay", Some(&bearer), body.into())
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        post("harbor", Some(&bearer), body.into())
            .await
            .unwrap()
            .status()
            .as_u16(),
        404,
        "no receiver configured"
    );

    // GitHub: HMAC-SHA256 of the body.
    use hmac::{Hmac, Mac};
    let gh = br#"{"action":"published","package":{"name":"x","namespace":"base","package_type":"container","package_version":{"container_metadata":{"tag":{"name":"1"}}}}}"#;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(GH_SECRET.as_bytes()).unwrap();
    mac.update(gh);
    let sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let r = http
        .post(url("ghcr"))
        .header("x-hub-signature-256", format!("sha256={sig}"))
        .body(gh.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let r = http
        .post(url("ghcr"))
        .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
        .body(gh.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        http.get(format!("http://{}/readyz", run.daemon.addr))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    run.stop().await;
}

/// A proxy in front of the registry that can fail on demand.
async fn fault_proxy(upstream: String, mode: Arc<AtomicU8>) -> String {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::response::Response;
    let l = listener().await;
    let addr = l.local_addr().unwrap().to_string();
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: Request| {
        let (http, upstream, mode) = (http.clone(), upstream.clone(), mode.clone());
        async move {
            match mode.load(Ordering::Relaxed) {
                1 => {
                    return Response::builder()
                        .status(500)
                        .body(Body::from("boom"))
                        .unwrap();
                }
                2 => {
                    return Response::builder()
                        .status(429)
                        .header("retry-after", "1")
                        .body(Body::empty())
                        .unwrap();
                }
                _ => {}
            }
            let url = format!("http://{upstream}{}", req.uri());
            let mut fwd = http.request(req.method().clone(), url);
            for (k, v) in req.headers() {
                if k != "host" {
                    fwd = fwd.header(k, v);
                }
            }
            let resp = fwd.send().await.unwrap();
            let mut out = Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                if mode.load(Ordering::Relaxed) == 3
                    && k.as_str().eq_ignore_ascii_case("docker-content-digest")
                {
                    continue;
                }
                out = out.header(k, v);
            }
            out.body(Body::from(resp.bytes().await.unwrap())).unwrap()
        }
    });
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_registry_is_backed_off_shown_degraded_and_recovers() {
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    let (d1, _) = reg
        .push_image("base/flaky", "1", "f1", ("linux", "amd64"), map(), map())
        .await;
    let mode = Arc::new(AtomicU8::new(0));
    let proxy = fault_proxy(reg.addr.clone(), mode.clone()).await;
    let yaml = format!(
        "registries:\n  - host: \"{proxy}\"\n    insecure: true\nimages:\n  - name: \"{proxy}/base/flaky:1\"\n    schedule: \"* * * * * *\"\n"
    );
    let run = daemon(&yaml, listener().await).await;
    let mut rx = run.daemon.watch.as_ref().unwrap().subscribe();
    let image = format!("{proxy}/base/flaky:1");
    let store = run.daemon.store.clone();
    wait_baseline(&store, &image).await;

    mode.store(1, Ordering::Relaxed); // HTTP 500
    let h = wait_for(&store, "degraded", |h| {
        h.as_ref().is_some_and(|h| h.state != "healthy")
    })
    .await
    .unwrap();
    assert!(
        h.last_error.as_deref().unwrap().contains("HTTP 500"),
        "{h:?}"
    );
    mode.store(2, Ordering::Relaxed); // 429 + Retry-After
    let h = wait_for(&store, "rate limited", |h| {
        h.as_ref().is_some_and(|h| {
            h.last_error
                .as_deref()
                .is_some_and(|e| e.contains("(HTTP 429)"))
        })
    })
    .await
    .unwrap();
    assert!(
        h.next_attempt_at.unwrap() >= h.last_error_at.unwrap() + 1_000,
        "Retry-After honoured: {h:?}"
    );
    let (d2, _) = reg
        .push_image("base/flaky", "1", "f2", ("linux", "amd64"), map(), map())
        .await;
    mode.store(3, Ordering::Relaxed); // back, but without Docker-Content-Digest: GET + hash
    let c = next_change(&mut rx, &image, Duration::from_secs(20))
        .await
        .expect("resumes after recovery");
    assert_eq!((c.old, c.new), (d1, d2));
    wait_for(&store, "healthy", |h| {
        h.as_ref().is_some_and(|h| h.state == "healthy")
    })
    .await;
    let kinds: Vec<String> = store
        .events_after(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds.contains(&"registry_degraded".to_string())
            && kinds.contains(&"registry_recovered".to_string()),
        "{kinds:?}"
    );
    run.stop().await;
}

async fn wait_for(
    store: &lineaged::store::Store,
    what: &str,
    cond: impl Fn(&Option<lineaged::store::RegistryHealth>) -> bool,
) -> Option<lineaged::store::RegistryHealth> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = store.registry_health().await.unwrap().into_iter().next();
        if cond(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_polls_when_two_replicas_share_postgres() {
    let pg = support::PgDb::create().await;
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    reg.push_image("base/shared", "1", "s", ("linux", "amd64"), map(), map())
        .await;
    let a = &reg.addr;
    let yaml = format!(
        "registries:\n  - host: \"{a}\"\n    insecure: true\nimages:\n  - name: \"{a}/base/shared:1\"\n    schedule: \"* * * * * *\"\n"
    );
    // One node name for both, as two processes on one host without
    // LINEAGED_NODE_ID get: each run's instance id still tells them apart.
    let one = daemon_on(Some(&pg.url), "same-host", &yaml, listener().await).await;
    let two = daemon_on(Some(&pg.url), "same-host", &yaml, listener().await).await;
    let image = format!("{a}/base/shared:1");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let polls = one
        .daemon
        .store
        .digest_history(&image, 1000)
        .await
        .unwrap()
        .len();
    let holder = one
        .daemon
        .store
        .lease_holder(lineaged::watch::WATCH_LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(holder.holder.starts_with("same-host:"), "{holder:?}");
    // One poller at one check per second: about 5, never the ~10 two would make.
    assert!((2..=7).contains(&polls), "{polls} observations in 5 s");
    one.stop().await;
    two.stop().await;
    pg.drop_db().await;
}

/// Waits until the daemon has observed `image` once.
async fn wait_baseline(store: &lineaged::store::Store, image: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store
        .image_state(image)
        .await
        .unwrap()
        .unwrap()
        .current_digest
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "no baseline observed for {image}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
