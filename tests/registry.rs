//! Digest resolution against a real `docker-registry`, cross-checked with skopeo.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lineaged::config::{Platform, RegistryAuth, RegistryConfig, Secret};
use lineaged::registry::manifest::{BASE_DIGEST, BASE_NAME};
use lineaged::registry::{ImageRef, RegistryClient, RegistryError};
use support::registry::{RegistryOptions, TestRegistry, skopeo_digest};

fn insecure(addr: &str, auth: Option<RegistryAuth>) -> Vec<RegistryConfig> {
    vec![RegistryConfig {
        host: addr.to_string(),
        trusted: true,
        insecure: true,
        auth,
        concurrency: 4,
        rate_limit: None,
    }]
}

fn r(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

fn platform(s: &str) -> Platform {
    let v: Vec<&str> = s.split('/').collect();
    Platform {
        os: v[0].into(),
        architecture: v[1].into(),
        variant: None,
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn single_arch_digests_match_skopeo_and_follow_pushes() {
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    let client = RegistryClient::new(&insecure(&reg.addr, None), Duration::from_secs(10)).unwrap();
    let (d1, _) = reg
        .push_image(
            "base/python",
            "3.12",
            "v1",
            ("linux", "amd64"),
            map(&[]),
            map(&[]),
        )
        .await;
    let image = r(&format!("{}/base/python:3.12", reg.addr));
    assert_eq!(client.head_digest(&image).await.unwrap(), d1);
    assert_eq!(skopeo_digest(&reg.addr, "base/python:3.12", None), d1);
    // unchanged tag: same digest every time
    assert_eq!(client.head_digest(&image).await.unwrap(), d1);
    let (d2, _) = reg
        .push_image(
            "base/python",
            "3.12",
            "v2",
            ("linux", "amd64"),
            map(&[]),
            map(&[]),
        )
        .await;
    assert_ne!(d1, d2);
    assert_eq!(client.head_digest(&image).await.unwrap(), d2);
    assert_eq!(client.resolve(&image, &[]).await.unwrap().tracked(), d2);
    // by digest
    let pinned = r(&format!("{}/base/python@{d1}", reg.addr));
    assert_eq!(client.head_digest(&pinned).await.unwrap(), d1);

    match client
        .head_digest(&r(&format!("{}/base/python:nope", reg.addr)))
        .await
    {
        Err(e @ RegistryError::NotFound { .. }) => assert!(!e.retryable()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn multi_arch_tracks_platforms_inside_the_index() {
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    let client = RegistryClient::new(&insecure(&reg.addr, None), Duration::from_secs(10)).unwrap();
    let amd = reg
        .push_image(
            "base/debian",
            "amd-1",
            "amd v1",
            ("linux", "amd64"),
            map(&[]),
            map(&[]),
        )
        .await;
    let arm = reg
        .push_image(
            "base/debian",
            "arm-1",
            "arm v1",
            ("linux", "arm64"),
            map(&[]),
            map(&[]),
        )
        .await;
    let idx1 = reg
        .push_index(
            "base/debian",
            "12",
            &[(("linux", "amd64"), amd.clone()), (("linux", "arm64"), arm)],
        )
        .await;
    let image = r(&format!("{}/base/debian:12", reg.addr));
    assert_eq!(client.head_digest(&image).await.unwrap(), idx1);
    assert_eq!(skopeo_digest(&reg.addr, "base/debian:12", None), idx1);
    let amd_only = [platform("linux/amd64")];
    let both = [platform("linux/amd64"), platform("linux/arm64")];
    let before = client.resolve(&image, &amd_only).await.unwrap();
    assert_eq!(before.digest, idx1);
    assert_eq!(before.tracked(), amd.0);

    // arm64 changes: the index moves, the amd64 digest does not.
    let arm2 = reg
        .push_image(
            "base/debian",
            "arm-2",
            "arm v2",
            ("linux", "arm64"),
            map(&[]),
            map(&[]),
        )
        .await;
    let idx2 = reg
        .push_index(
            "base/debian",
            "12",
            &[
                (("linux", "amd64"), amd.clone()),
                (("linux", "arm64"), arm2.clone()),
            ],
        )
        .await;
    assert_ne!(idx1, idx2);
    let after = client.resolve(&image, &amd_only).await.unwrap();
    assert_eq!(after.digest, idx2);
    assert_eq!(
        after.tracked(),
        before.tracked(),
        "an arm64-only change is not a change for amd64"
    );
    assert_eq!(client.resolve(&image, &[]).await.unwrap().tracked(), idx2);
    let both_res = client.resolve(&image, &both).await.unwrap();
    assert_eq!(
        both_res.tracked(),
        format!("linux/amd64={},linux/arm64={}", amd.0, arm2.0)
    );

    // An index still missing a platform (pushed one at a time) is not reported.
    reg.push_index("base/debian", "13", &[(("linux", "amd64"), amd)])
        .await;
    match client
        .resolve(&r(&format!("{}/base/debian:13", reg.addr)), &both)
        .await
    {
        Err(RegistryError::PlatformMissing { platform, .. }) => assert_eq!(platform, "linux/arm64"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn base_annotations_from_manifest_index_or_config_labels() {
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    let client = RegistryClient::new(&insecure(&reg.addr, None), Duration::from_secs(10)).unwrap();
    let base = [
        (BASE_NAME, "docker.io/library/python:3.12"),
        (
            BASE_DIGEST,
            "sha256:1111111111111111111111111111111111111111111111111111111111111111",
        ),
    ];
    reg.push_image(
        "apps/api",
        "annotated",
        "a",
        ("linux", "amd64"),
        map(&base),
        map(&[]),
    )
    .await;
    let got = client
        .base_annotations(&r(&format!("{}/apps/api:annotated", reg.addr)), &[])
        .await
        .unwrap();
    assert_eq!(got.name.as_deref(), Some("docker.io/library/python:3.12"));
    assert_eq!(got.digest.as_deref(), Some(base[1].1));

    reg.push_image(
        "apps/api",
        "labelled",
        "b",
        ("linux", "amd64"),
        map(&[]),
        map(&base),
    )
    .await;
    let got = client
        .base_annotations(&r(&format!("{}/apps/api:labelled", reg.addr)), &[])
        .await
        .unwrap();
    assert_eq!(
        got.digest.as_deref(),
        Some(base[1].1),
        "config label fallback"
    );

    let child = reg
        .push_image(
            "apps/api",
            "child",
            "c",
            ("linux", "amd64"),
            map(&base),
            map(&[]),
        )
        .await;
    reg.push_index("apps/api", "multi", &[(("linux", "amd64"), child)])
        .await;
    let got = client
        .base_annotations(
            &r(&format!("{}/apps/api:multi", reg.addr)),
            &[platform("linux/amd64")],
        )
        .await
        .unwrap();
    assert_eq!(got.digest.as_deref(), Some(base[1].1), "through the index");

    reg.push_image(
        "apps/api",
        "plain",
        "d",
        ("linux", "amd64"),
        map(&[]),
        map(&[]),
    )
    .await;
    assert!(
        client
            .base_annotations(&r(&format!("{}/apps/api:plain", reg.addr)), &[])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn basic_auth_with_htpasswd() {
    let reg = TestRegistry::start(RegistryOptions {
        basic_auth: Some(("ci".into(), "s3cret-pw".into())),
        notify: None,
    })
    .await;
    let (d, _) = reg
        .push_image(
            "private/app",
            "1",
            "p",
            ("linux", "amd64"),
            map(&[]),
            map(&[]),
        )
        .await;
    let image = r(&format!("{}/private/app:1", reg.addr));

    let anonymous =
        RegistryClient::new(&insecure(&reg.addr, None), Duration::from_secs(10)).unwrap();
    let err = anonymous.head_digest(&image).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(!err.retryable());

    let wrong = RegistryAuth::Basic {
        username: "ci".into(),
        password: Secret::new("wrong-pw"),
    };
    let client =
        RegistryClient::new(&insecure(&reg.addr, Some(wrong)), Duration::from_secs(10)).unwrap();
    let err = client.head_digest(&image).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(
        !format!("{err} {err:?}").contains("wrong-pw"),
        "secret leaked: {err}"
    );

    let right = RegistryAuth::Basic {
        username: "ci".into(),
        password: Secret::new("s3cret-pw"),
    };
    let client =
        RegistryClient::new(&insecure(&reg.addr, Some(right)), Duration::from_secs(10)).unwrap();
    assert_eq!(client.head_digest(&image).await.unwrap(), d);
    assert_eq!(
        skopeo_digest(&reg.addr, "private/app:1", Some(("ci", "s3cret-pw"))),
        d
    );
}

#[tokio::test]
async fn an_unreachable_registry_is_a_retryable_transport_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let client = RegistryClient::new(&insecure(&addr, None), Duration::from_secs(2)).unwrap();
    let err = client
        .head_digest(&r(&format!("{addr}/x:1")))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Transport { .. }), "{err:?}");
    assert!(err.retryable());
    assert_eq!(err.metric_label(), "transport");
    // What users see (logs, the registries API, the dashboard, `status`)
    // keeps the cause: not just "error sending request".
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{addr}: connection failed: error sending request"))
            && shown.contains("Connection refused"),
        "{shown}"
    );
}

#[tokio::test]
async fn resolve_command_prints_digests_and_names_failures() {
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    let (d, _) = reg
        .push_image(
            "base/alpine",
            "3",
            "x",
            ("linux", "amd64"),
            map(&[]),
            map(&[]),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, format!("registries:\n  - host: \"{}\"\n    insecure: true\nimages:\n  - name: \"{}/base/alpine:3\"\n", reg.addr, reg.addr)).unwrap();
    let bin = env!("CARGO_BIN_EXE_lineaged");
    let ok_ref = format!("{}/base/alpine:3", reg.addr);
    let out = std::process::Command::new(bin)
        .args(["resolve", "-c"])
        .arg(&cfg)
        .arg(&ok_ref)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{ok_ref} {d}\n")
    );

    let missing = format!("{}/base/alpine:404", reg.addr);
    let out = std::process::Command::new(bin)
        .args(["resolve", "-c"])
        .arg(&cfg)
        .args([&ok_ref, &missing])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&d));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("error: {missing}:")) && err.contains("not found"),
        "{err}"
    );
    assert!(err.contains("1 of 2 reference(s) failed"), "{err}");
}

/// A token-auth registry peer (no real token server ships in Debian): 401
/// with a Bearer challenge, a token endpoint that checks basic credentials,
/// Docker Hub style rate-limit headers on manifests.
async fn token_registry() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let token_calls = Arc::new(AtomicUsize::new(0));
    let head_calls = Arc::new(AtomicUsize::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let realm = format!("http://{addr}/token");
    let (tc, hc) = (token_calls.clone(), head_calls.clone());
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::get(move |q: axum::extract::Query<std::collections::HashMap<String, String>>, h: HeaderMap| {
                let tc = tc.clone();
                async move {
                    tc.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(q.get("scope").map(String::as_str), Some("repository:team/app:pull"));
                    assert_eq!(q.get("service").map(String::as_str), Some("test-registry"));
                    // base64("ci:tok-pw")
                    let ok = h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Basic Y2k6dG9rLXB3");
                    if !ok {
                        return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
                    }
                    axum::Json(serde_json::json!({"token": "T0KEN", "expires_in": 300})).into_response()
                }
            }),
        )
        .route(
            "/v2/team/app/manifests/{tag}",
            axum::routing::head(move |h: HeaderMap| {
                let (hc, realm) = (hc.clone(), realm.clone());
                async move {
                    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer T0KEN") {
                        let challenge = format!(r#"Bearer realm="{realm}",service="test-registry",scope="repository:team/app:pull""#);
                        return (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response();
                    }
                    let n = hc.fetch_add(1, Ordering::SeqCst);
                    let remaining = 5u64.saturating_sub(n as u64);
                    (
                        StatusCode::OK,
                        [
                            ("docker-content-digest", format!("sha256:{}", "a".repeat(64))),
                            ("ratelimit-limit", "100;w=2".to_string()),
                            ("ratelimit-remaining", format!("{remaining};w=2")),
                        ],
                    )
                        .into_response()
                }
            }),
        );
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, token_calls, head_calls)
}

#[tokio::test]
async fn bearer_tokens_are_fetched_once_and_rate_limit_headers_slow_requests_down() {
    let (addr, token_calls, head_calls) = token_registry().await;
    let image = r(&format!("{addr}/team/app:1"));

    let anonymous = RegistryClient::new(&insecure(&addr, None), Duration::from_secs(5)).unwrap();
    assert!(matches!(
        anonymous.head_digest(&image).await,
        Err(RegistryError::Unauthorized { .. })
    ));

    let creds = RegistryAuth::Basic {
        username: "ci".into(),
        password: Secret::new("tok-pw"),
    };
    let client =
        RegistryClient::new(&insecure(&addr, Some(creds)), Duration::from_secs(5)).unwrap();
    token_calls.store(0, Ordering::SeqCst);
    let started = std::time::Instant::now();
    for _ in 0..4 {
        assert_eq!(
            client.head_digest(&image).await.unwrap(),
            format!("sha256:{}", "a".repeat(64))
        );
    }
    assert_eq!(
        token_calls.load(Ordering::SeqCst),
        1,
        "token cached until expiry"
    );
    assert_eq!(head_calls.load(Ordering::SeqCst), 4);
    let budget = client.budget(&addr).unwrap();
    assert_eq!(
        (budget.remaining, budget.limit, budget.window),
        (2, 100, Duration::from_secs(2))
    );
    // Under 10 % of the budget left: requests are spread over the window
    // (2 s / remaining), so the later calls were paced, not sent at once.
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_slow_registry_times_out_as_a_retryable_error() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let app = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        "too late"
    });
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let client = RegistryClient::new(&insecure(&addr, None), Duration::from_millis(500)).unwrap();
    let started = std::time::Instant::now();
    let err = client
        .head_digest(&r(&format!("{addr}/x/y:1")))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    match &err {
        RegistryError::Transport { kind, .. } => assert_eq!(*kind, "timed out"),
        other => panic!("{other:?}"),
    }
    assert!(err.retryable());
}

/// `check --online` looks every external base up: a typo in `from:` that
/// the offline check cannot know (`alpne` is close to no declared image) is
/// reported where it is written, and an unreachable registry says why (the
/// refused connection, not just "error sending request").
#[tokio::test]
async fn check_online_reports_missing_bases_and_unreachable_registries() {
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    reg.push_image(
        "base/alpine",
        "3",
        "x",
        ("linux", "amd64"),
        map(&[]),
        map(&[]),
    )
    .await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = &reg.addr;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "registries:\n  - host: \"{a}\"\n    insecure: true\n  - host: \"127.0.0.1:{dead}\"\n    insecure: true\n\
             backends:\n  ci: {{ kind: webhook, url: \"http://127.0.0.1:9/\" }}\n\
             images:\n  - name: \"{a}/app:1\"\n    from: [\"{a}/base/alpne:3\"]\n    build: {{ backend: ci }}\n\
             \x20 - name: \"{a}/tool:1\"\n    from: [\"{a}/base/alpine:3\", \"127.0.0.1:{dead}/x:1\"]\n    build: {{ backend: ci }}\n"
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_lineaged");
    // Offline the typo passes: nothing declared is close to it.
    let out = std::process::Command::new(bin)
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = std::process::Command::new(bin)
        .args(["check", "--online", "--timeout", "5", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let path = cfg.display();
    assert!(
        err.contains(&format!(
            "{path}:9:11: {a}/base/alpne:3 does not exist ({a} has no such manifest)"
        )) && err.contains(&format!("base of {a}/app:1")),
        "{err}"
    );
    assert!(
        err.contains(&format!("cannot check 127.0.0.1:{dead}/x:1"))
            && err.contains("refused")
            && err.contains(&format!("base of {a}/tool:1")),
        "{err}"
    );
    assert!(
        err.contains("1 of 3 external images exist, 1 do not, 1 could not be checked"),
        "{err}"
    );
    assert!(!err.contains(&format!("{a}/base/alpine:3 does")), "{err}");
}

/// `discover registry`: the lineage the OCI base annotations of pushed
/// images imply; an image without them is reported (exit 1).
#[tokio::test]
async fn discover_registry_reads_base_annotations() {
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    let a = reg.addr.clone();
    let (base, _) = reg
        .push_image(
            "base/alpine",
            "3",
            "b",
            ("linux", "amd64"),
            map(&[]),
            map(&[]),
        )
        .await;
    let base_name = format!("{a}/base/alpine:3");
    reg.push_image(
        "team/api",
        "1",
        "api",
        ("linux", "amd64"),
        map(&[(BASE_NAME, &base_name), (BASE_DIGEST, &base)]),
        map(&[]),
    )
    .await;
    // In the config's labels only (what `docker build --label` gives).
    reg.push_image(
        "team/worker",
        "1",
        "worker",
        ("linux", "amd64"),
        map(&[]),
        map(&[(BASE_NAME, "docker.io/library/debian:12")]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!("registries:\n  - host: \"{a}\"\n    insecure: true\n"),
    )
    .unwrap();
    let run = |refs: &[String]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lineaged"))
            .args(["discover", "registry", "-c"])
            .arg(&cfg)
            .args(refs)
            .output()
            .unwrap()
    };
    let out = run(&[format!("{a}/team/api:1"), format!("{a}/team/worker:1")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        format!(
            "images:\n  - name: {a}/team/api:1\n    from:\n      - {base_name}\n      # built on {base}\n  - name: {a}/team/worker:1\n    from:\n      - docker.io/library/debian:12\n"
        )
    );
    let out = run(&[format!("{a}/base/alpine:3")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no org.opencontainers.image.base.name")
            && err.contains("0 of 1 image name their base"),
        "{err}"
    );
}
