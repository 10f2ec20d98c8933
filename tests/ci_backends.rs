//! Contract tests of the CI backends: each kind's trigger against a peer
//! that records the request and answers as that API documents. Asserts the
//! method, path, query, headers and body exactly; the run the answer names;
//! which failures are permanent and which are retried (with the wait the
//! API asked for); and that the token never shows in an error.

mod support;

use std::time::Duration;

use lineaged::config::{Backend, Config, load_str};
use lineaged::dispatch::{DispatchError, Trigger, http_client, rebuild_request, request};
use lineaged::rollout::ParentDigest;
use serde_json::{Value, json};
use support::ci_peer::{CRUMB, Peer, SESSION, Seen, answer};

const TOKEN: &str = "tok-9f8e7d6c5b4a3921";
const SECRET: &str = "hmac-key-51c0ffee";
const IMAGE: &str = "registry.example.com/team/app:1";
const BASE: &str = "docker.io/library/python:3.12-slim";
const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const CALLBACK: &str = "http://lineaged.example.com/api/v1/jobs/42/result?token=cb-1";
const KEY: &str = "job-42-ab12";

fn config(backend: &str, build: &str) -> Config {
    let yaml = format!(
        "backends:\n  ci: {backend}\nimages:\n  - name: {IMAGE}\n    from: [\"python:3.12-slim\"]\n    build: {build}\n"
    );
    let env = |k: &str| match k {
        "CI_TOKEN" => Some(TOKEN.to_string()),
        "CI_SECRET" => Some(SECRET.to_string()),
        _ => None,
    };
    match load_str("ci.yaml", &yaml, &env) {
        Ok(c) => c,
        Err(e) => panic!("{yaml}\n{e}"),
    }
}

fn parents() -> Vec<ParentDigest> {
    vec![ParentDigest {
        name: BASE.into(),
        digest: Some(DIGEST.into()),
    }]
}

/// Builds the trigger of the config's one managed image and sends it.
async fn fire(
    cfg: &Config,
) -> (
    lineaged::dispatch::CiRequest,
    Result<lineaged::dispatch::CiRun, DispatchError>,
) {
    let image = cfg.images.iter().find(|i| i.is_managed()).unwrap();
    let build = image.build.as_ref().unwrap();
    let backend: &Backend = &cfg.backends[&build.backend];
    let parents = parents();
    let t = Trigger {
        image: IMAGE,
        parents: &parents,
        job_id: 42,
        rollout_id: 7,
        callback_url: CALLBACK.into(),
        idempotency_key: KEY,
        attempt: 1,
        reason: "base python:3.12-slim changed".into(),
        build,
    };
    let req = rebuild_request(backend, &t).unwrap();
    let r = request::send(&http_client(), &req, Duration::from_secs(5)).await;
    (req, r)
}

fn parents_json() -> String {
    format!(r#"[{{"name":"{BASE}","digest":"{DIGEST}"}}]"#)
}

/// The LINEAGED_* variables every env-style kind carries, then the user's.
fn env_vars() -> Vec<(String, String)> {
    vec![
        ("LINEAGED_IMAGE".into(), IMAGE.into()),
        ("LINEAGED_PARENTS".into(), parents_json()),
        ("LINEAGED_JOB_ID".into(), "42".into()),
        ("LINEAGED_ROLLOUT_ID".into(), "7".into()),
        ("LINEAGED_CALLBACK_URL".into(), CALLBACK.into()),
        ("LINEAGED_IDEMPOTENCY_KEY".into(), KEY.into()),
        ("flavour".into(), "slim".into()),
    ]
}

fn env_json() -> Value {
    Value::Object(
        env_vars()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    )
}

fn one(peer: &Peer) -> Seen {
    let mut seen = peer.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    seen.remove(0)
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[tokio::test]
async fn github_workflow_dispatch_sends_inputs_and_records_the_run() {
    let (peer, url) = Peer::start().await;
    let cfg = config(
        &format!(
            "{{ kind: github_actions, api_url: \"{url}\", repository: acme/images, token_env: CI_TOKEN }}"
        ),
        "{ backend: ci, workflow: build image.yml, ref: release/1, inputs: { flavour: slim } }",
    );
    // GitHub since 2026: 200 with the run's details.
    peer.script([answer(
        200,
        r#"{"workflow_run_id":22,"run_url":"https://api.github.com/repos/acme/images/actions/runs/22","html_url":"https://github.com/acme/images/actions/runs/22"}"#,
    )]);
    let (_, r) = fire(&cfg).await;
    let run = r.unwrap();
    assert_eq!(run.status, 200);
    assert_eq!(run.id.as_deref(), Some("22"));
    assert_eq!(
        run.url.as_deref(),
        Some("https://github.com/acme/images/actions/runs/22")
    );
    let s = one(&peer);
    assert_eq!(s.method, "POST");
    assert_eq!(
        s.uri,
        "/repos/acme/images/actions/workflows/build%20image.yml/dispatches"
    );
    assert_eq!(
        s.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(s.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(s.header("x-github-api-version"), Some("2022-11-28"));
    assert!(s.header("user-agent").unwrap().starts_with("lineaged/"));
    assert_eq!(s.header("content-type"), Some("application/json"));
    assert_eq!(
        s.json(),
        json!({
            "ref": "release/1",
            "inputs": {
                "image": IMAGE, "parents": parents_json(), "job_id": "42", "rollout_id": "7",
                "callback_url": CALLBACK, "idempotency_key": KEY, "flavour": "slim"
            },
            "return_run_details": true
        })
    );
    // An older server: 204, no run to record.
    peer.script([answer(204, "")]);
    let (_, r) = fire(&cfg).await;
    assert_eq!(
        r.unwrap(),
        lineaged::dispatch::CiRun {
            status: 204,
            id: None,
            url: None
        }
    );
}

#[tokio::test]
async fn github_repository_dispatch_sends_a_client_payload() {
    let (peer, url) = Peer::start().await;
    let cfg = config(
        &format!(
            "{{ kind: github_actions, api_url: \"{url}/api/v3/\", token_env: CI_TOKEN, mode: workflow_dispatch }}"
        ),
        "{ backend: ci, mode: repository_dispatch, repository: acme/app }",
    );
    peer.script([answer(204, "")]);
    fire(&cfg).await.1.unwrap();
    let s = one(&peer);
    assert_eq!(s.uri, "/api/v3/repos/acme/app/dispatches");
    assert_eq!(s.header("x-github-api-version"), Some("2022-11-28"));
    assert_eq!(
        s.json(),
        json!({
            "event_type": "lineaged-rebuild",
            "client_payload": {
                "image": IMAGE, "parents": parents_json(), "job_id": "42", "rollout_id": "7",
                "callback_url": CALLBACK, "idempotency_key": KEY
            }
        })
    );
}

#[tokio::test]
async fn gitlab_trigger_token_posts_form_variables() {
    let (peer, url) = Peer::start().await;
    let cfg = config(
        &format!("{{ kind: gitlab, url: \"{url}\", project: acme/images, token_env: CI_TOKEN }}"),
        "{ backend: ci, branch: main, inputs: { flavour: slim } }",
    );
    peer.script([answer(
        201,
        r#"{"id":257,"iid":118,"project_id":123,"sha":"91e2711a93e5d9e8dddfeb6d003b636b25bf6fc9","ref":"main","status":"created","source":"trigger","web_url":"http://gitlab.example.com/acme/images/-/pipelines/257"}"#,
    )]);
    let run = fire(&cfg).await.1.unwrap();
    assert_eq!(run.id.as_deref(), Some("257"));
    assert_eq!(
        run.url.as_deref(),
        Some("http://gitlab.example.com/acme/images/-/pipelines/257")
    );
    let s = one(&peer);
    assert_eq!(s.method, "POST");
    assert_eq!(s.uri, "/api/v4/projects/acme%2Fimages/trigger/pipeline");
    assert_eq!(
        s.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        s.header("private-token"),
        None,
        "a trigger token goes in the form"
    );
    let mut want = vec![
        ("token".to_string(), TOKEN.to_string()),
        ("ref".into(), "main".into()),
    ];
    want.extend(
        env_vars()
            .into_iter()
            .map(|(k, v)| (format!("variables[{k}]"), v)),
    );
    assert_eq!(s.form(), want);
}

#[tokio::test]
async fn gitlab_api_mode_posts_json_with_private_token() {
    let (peer, url) = Peer::start().await;
    let cfg = config(
        &format!("{{ kind: gitlab, api_url: \"{url}/api/v4\", token_env: CI_TOKEN, mode: api }}"),
        "{ backend: ci, project: \"1234\", ref: v2, inputs: { flavour: slim } }",
    );
    peer.script([answer(
        201,
        r#"{"id":61,"iid":21,"project_id":1234,"ref":"v2","status":"pending","web_url":"https://gitlab.example.com/foo/bar/pipelines/61"}"#,
    )]);
    let run = fire(&cfg).await.1.unwrap();
    assert_eq!(run.id.as_deref(), Some("61"));
    let s = one(&peer);
    assert_eq!(s.uri, "/api/v4/projects/1234/pipeline");
    assert_eq!(s.header("private-token"), Some(TOKEN));
    let vars: Vec<Value> = env_vars()
        .into_iter()
        .map(|(k, v)| json!({ "key": k, "value": v }))
        .collect();
    assert_eq!(s.json(), json!({ "ref": "v2", "variables": vars }));
}

#[tokio::test]
async fn jenkins_with_an_api_token_uses_basic_auth_and_no_crumb() {
    let (peer, url) = Peer::start().await;
    let cfg = config(
        &format!("{{ kind: jenkins, url: \"{url}/\", username: robot, token_env: CI_TOKEN }}"),
        "{ backend: ci, job: images/app build, inputs: { flavour: slim } }",
    );
    peer.script([answer(201, "").with("location", &format!("{url}/queue/item/1151/"))]);
    let run = fire(&cfg).await.1.unwrap();
    assert_eq!(run.status, 201);
    assert_eq!(run.id.as_deref(), Some("1151"));
    assert_eq!(run.url, Some(format!("{url}/queue/item/1151/")));
    let s = one(&peer);
    assert_eq!(s.uri, "/job/images/job/app%20build/buildWithParameters");
    assert_eq!(
        s.header("authorization"),
        Some(basic("robot", TOKEN).as_str())
    );
    assert_eq!(s.header("jenkins-crumb"), None);
    assert_eq!(
        s.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(s.form(), env_vars());
}

#[tokio::test]
async fn jenkins_without_a_user_fetches_a_crumb_and_keeps_its_session() {
    let (peer, url) = Peer::start().await;
    let cfg = config(
        &format!("{{ kind: jenkins, url: \"{url}\", token_env: CI_TOKEN }}"),
        "{ backend: ci, job: app }",
    );
    // An identical build already queued: 303 to that queue item, accepted.
    peer.script([answer(303, "").with("location", &format!("{url}/queue/item/9/"))]);
    let run = fire(&cfg).await.1.unwrap();
    assert_eq!((run.status, run.id.as_deref()), (303, Some("9")));
    let seen = peer.take();
    assert_eq!(seen.len(), 2, "crumb, then the trigger: {seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("GET", "/crumbIssuer/api/json")
    );
    let s = &seen[1];
    assert_eq!(s.uri, "/job/app/buildWithParameters");
    assert_eq!(s.header("jenkins-crumb"), Some(CRUMB));
    assert_eq!(
        s.header("cookie"),
        Some(SESSION),
        "the crumb is bound to its session"
    );
    assert_eq!(s.header("authorization"), None);
    let form = s.form();
    assert_eq!(
        form.last().unwrap(),
        &("token".to_string(), TOKEN.to_string())
    );
}

#[tokio::test]
async fn jenkins_without_csrf_protection_posts_without_a_crumb() {
    let (peer, url) = Peer::start().await;
    peer.no_crumb
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let cfg = config(
        &format!("{{ kind: jenkins, url: \"{url}\" }}"),
        "{ backend: ci, job: app }",
    );
    peer.script([answer(201, "").with("location", &format!("{url}/queue/item/3/"))]);
    let run = fire(&cfg).await.1.unwrap();
    assert_eq!(run.id.as_deref(), Some("3"));
    let seen = peer.take();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].header("jenkins-crumb"), None);
}

#[tokio::test]
async fn a_long_echo_cannot_leave_part_of_a_token() {
    let (peer, url) = Peer::start().await;
    let cfg = config(
        &format!(
            "{{ kind: buildkite, api_url: \"{url}\", organization: acme, token_env: CI_TOKEN }}"
        ),
        "{ backend: ci, pipeline: app }",
    );
    // The token straddles the 300-character cut of the message.
    for pad in 280..300 {
        let body = format!(r#"{{"message":"{}{TOKEN}"}}"#, "x".repeat(pad));
        peer.script([answer(401, &body)]);
        let e = fire(&cfg).await.1.unwrap_err().to_string();
        assert!(!e.contains(&TOKEN[..6]), "pad {pad}: {e}");
    }
}

#[tokio::test]
async fn azure_pipelines_runs_with_template_parameters() {
    let (peer, url) = Peer::start().await;
    let cfg = config(
        &format!(
            "{{ kind: azure_pipelines, api_url: \"{url}\", organization: acme, project: Platform Images, pipeline: \"12\", token_env: CI_TOKEN }}"
        ),
        "{ backend: ci, branch: main, inputs: { flavour: slim } }",
    );
    peer.script([answer(
        200,
        r#"{"_links":{"self":{"href":"https://dev.azure.com/acme/p/_apis/pipelines/12/runs/345"},"web":{"href":"https://dev.azure.com/acme/p/_build/results?buildId=345"}},"id":345,"name":"20261127.1","state":"inProgress","url":"https://dev.azure.com/acme/p/_apis/pipelines/12/runs/345"}"#,
    )]);
    let run = fire(&cfg).await.1.unwrap();
    assert_eq!(run.id.as_deref(), Some("345"));
    assert_eq!(
        run.url.as_deref(),
        Some("https://dev.azure.com/acme/p/_build/results?buildId=345")
    );
    let s = one(&peer);
    assert_eq!(
        s.uri,
        "/acme/Platform%20Images/_apis/pipelines/12/runs?api-version=7.1"
    );
    assert_eq!(s.header("authorization"), Some(basic("", TOKEN).as_str()));
    assert_eq!(
        s.json(),
        json!({
            "resources": { "repositories": { "self": { "refName": "refs/heads/main" } } },
            "templateParameters": env_json(),
        })
    );
}

#[tokio::test]
async fn buildkite_creates_a_build_with_env_and_meta_data() {
    let (peer, url) = Peer::start().await;
    let cfg = config(
        &format!(
            "{{ kind: buildkite, api_url: \"{url}\", organization: my-great-org, token_env: CI_TOKEN }}"
        ),
        "{ backend: ci, pipeline: my-pipeline, branch: main, inputs: { flavour: slim } }",
    );
    peer.script([answer(
        201,
        r#"{"id":"f62a1b4d-10f9-4790-bc1c-e2c3a0c80983","url":"https://api.buildkite.com/v2/organizations/my-great-org/pipelines/my-pipeline/builds/1","web_url":"https://buildkite.com/my-great-org/my-pipeline/builds/1","number":1,"state":"scheduled"}"#,
    )]);
    let run = fire(&cfg).await.1.unwrap();
    assert_eq!(run.id.as_deref(), Some("1"));
    assert_eq!(
        run.url.as_deref(),
        Some("https://buildkite.com/my-great-org/my-pipeline/builds/1")
    );
    let s = one(&peer);
    assert_eq!(
        s.uri,
        "/v2/organizations/my-great-org/pipelines/my-pipeline/builds"
    );
    assert_eq!(
        s.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        s.json(),
        json!({
            "commit": "HEAD",
            "branch": "main",
            "message": format!("lineaged: rebuild {IMAGE} (base python:3.12-slim changed)"),
            "env": env_json(),
            "meta_data": { "lineaged-image": IMAGE, "lineaged-job-id": "42", "lineaged-rollout-id": "7" },
        })
    );
}

#[tokio::test]
async fn tekton_event_listener_gets_a_signed_body() {
    let (peer, url) = Peer::start().await;
    let cfg = config(
        &format!("{{ kind: tekton, url: \"{url}/el\", secret_env: CI_SECRET }}"),
        "{ backend: ci }",
    );
    peer.script([answer(
        202,
        r#"{"eventListener":"listener","namespace":"default","eventListenerUID":"ea71a6e4-9531-43a1-94fe-6136515d938c","eventID":"14a657c3-6816-45bf-b214-4afdaefc4ebd"}"#,
    )]);
    let run = fire(&cfg).await.1.unwrap();
    assert_eq!(
        run.id.as_deref(),
        Some("14a657c3-6816-45bf-b214-4afdaefc4ebd")
    );
    let s = one(&peer);
    assert_eq!(s.uri, "/el");
    assert_eq!(s.header("x-github-event"), Some("lineaged-rebuild"));
    // What Tekton's GitHub interceptor checks: HMAC-SHA256 of the raw body.
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&s.body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        s.header("x-hub-signature-256"),
        Some(format!("sha256={hex}").as_str())
    );
    let v = s.json();
    assert_eq!(v["image"], IMAGE);
    assert_eq!(v["parents"], json!([{ "name": BASE, "digest": DIGEST }]));
    assert_eq!(
        (v["job_id"].as_i64(), v["rollout_id"].as_i64()),
        (Some(42), Some(7))
    );
    assert_eq!(
        (v["callback_url"].as_str(), v["idempotency_key"].as_str()),
        (Some(CALLBACK), Some(KEY))
    );
}

/// Every kind, as a config, with the error bodies its API documents.
fn kinds(url: &str) -> Vec<(&'static str, Config, &'static str)> {
    vec![
        (
            "github_actions",
            config(
                &format!(
                    "{{ kind: github_actions, api_url: \"{url}\", repository: acme/images, token_env: CI_TOKEN }}"
                ),
                "{ backend: ci, workflow: build.yml }",
            ),
            r#"{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest"}"#,
        ),
        (
            "gitlab",
            config(
                &format!(
                    "{{ kind: gitlab, url: \"{url}\", project: acme/images, token_env: CI_TOKEN }}"
                ),
                "{ backend: ci }",
            ),
            r#"{"message":"401 Unauthorized"}"#,
        ),
        (
            "jenkins",
            config(
                &format!(
                    "{{ kind: jenkins, url: \"{url}\", username: robot, token_env: CI_TOKEN }}"
                ),
                "{ backend: ci, job: app }",
            ),
            "<html><head><title>Error 401 Unauthorized</title></head><body></body></html>",
        ),
        (
            "azure_pipelines",
            config(
                &format!(
                    "{{ kind: azure_pipelines, api_url: \"{url}\", organization: acme, project: p, pipeline: \"1\", token_env: CI_TOKEN }}"
                ),
                "{ backend: ci }",
            ),
            r#"{"$id":"1","innerException":null,"message":"TF400813: The user is not authorized to access this resource.","typeName":"Microsoft.TeamFoundation.Framework.Server.UnauthorizedRequestException","typeKey":"UnauthorizedRequestException","errorCode":0,"eventId":3000}"#,
        ),
        (
            "buildkite",
            config(
                &format!(
                    "{{ kind: buildkite, api_url: \"{url}\", organization: acme, token_env: CI_TOKEN }}"
                ),
                "{ backend: ci, pipeline: app }",
            ),
            r#"{"message":"Authentication required. Please supply a valid API Access Token"}"#,
        ),
        (
            "tekton",
            config(
                &format!("{{ kind: tekton, url: \"{url}\", secret_env: CI_SECRET }}"),
                "{ backend: ci }",
            ),
            r#"{"errorMessage":"unauthorized"}"#,
        ),
    ]
}

#[tokio::test]
async fn every_kind_sorts_failures_into_permanent_and_retryable() {
    let (peer, url) = Peer::start().await;
    for (kind, cfg, unauthorized) in kinds(&url) {
        // 401, echoing the credential: permanent, the API's message, no token.
        let echoed = format!("{unauthorized} (got {TOKEN} / {SECRET})");
        peer.script([answer(401, unauthorized)]);
        match fire(&cfg).await.1 {
            Err(e @ DispatchError::Rejected { status: 401, .. }) => {
                assert!(!e.retryable(), "{kind}");
                let text = e.to_string();
                assert!(
                    text.len() > "HTTP 401: ".len() + 5,
                    "{kind}: the API's message: {text}"
                );
                assert!(!text.contains(TOKEN), "{kind}");
            }
            other => panic!("{kind}: 401 → {other:?}"),
        }
        peer.script([answer(401, &echoed)]);
        let e = fire(&cfg).await.1.unwrap_err();
        // Each kind's own credential (Tekton's is the HMAC key).
        let own = if kind == "tekton" { SECRET } else { TOKEN };
        assert!(!e.to_string().contains(own), "{kind}: {e}");
        for (status, body) in [
            (404, r#"{"message":"Not Found"}"#),
            (
                422,
                r#"{"message":"Validation Failed","errors":["No ref found for: nope"]}"#,
            ),
        ] {
            peer.script([answer(status, body)]);
            let e = fire(&cfg).await.1.unwrap_err();
            assert_eq!(
                e,
                DispatchError::Rejected {
                    status,
                    message: if status == 404 {
                        "Not Found".into()
                    } else {
                        "Validation Failed".into()
                    }
                },
                "{kind}"
            );
            let f = e.into_failure();
            assert!(
                matches!(f, lineaged::store::Failure::Permanent { .. }),
                "{kind}"
            );
        }
        peer.script([answer(429, r#"{"message":"Too Many Requests"}"#).with("retry-after", "7")]);
        let e = fire(&cfg).await.1.unwrap_err();
        assert!(e.retryable(), "{kind}");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)), "{kind}");
        // 503, then the API's success answer: retried by the queue, accepted.
        let ok = match kind {
            "github_actions" => answer(204, ""),
            "gitlab" => answer(201, r#"{"id":1,"web_url":"http://gl/p/-/pipelines/1"}"#),
            "jenkins" => answer(201, "").with("location", &format!("{url}/queue/item/5/")),
            "azure_pipelines" => {
                answer(200, r#"{"id":3,"_links":{"web":{"href":"http://az/r/3"}}}"#)
            }
            "buildkite" => answer(201, r#"{"id":"u","number":4,"web_url":"http://bk/b/4"}"#),
            _ => answer(202, r#"{"eventListenerUID":"x","eventID":"e-5"}"#),
        };
        peer.script([answer(503, "upstream unavailable"), ok]);
        let e = fire(&cfg).await.1.unwrap_err();
        assert!(
            matches!(e, DispatchError::Unavailable { status: 503, .. }),
            "{kind}: {e:?}"
        );
        assert!(e.retryable());
        assert!(fire(&cfg).await.1.is_ok(), "{kind}");
        peer.take();
    }
}

#[tokio::test]
async fn github_rate_limits_are_waits_not_refusals() {
    let (peer, url) = Peer::start().await;
    let (_, cfg, _) = kinds(&url).remove(0);
    let reset = lineaged::store::now_millis() / 1000 + 40;
    peer.script([answer(
        403,
        r#"{"message":"API rate limit exceeded for user ID 1."}"#,
    )
    .with("x-ratelimit-remaining", "0")
    .with("x-ratelimit-reset", &reset.to_string())]);
    let e = fire(&cfg).await.1.unwrap_err();
    assert!(e.retryable(), "{e:?}");
    let wait = e.retry_after().unwrap().as_secs();
    assert!(
        (38..=41).contains(&wait),
        "waits until x-ratelimit-reset: {wait}"
    );
}

#[tokio::test]
async fn an_unreachable_ci_is_retried() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(
        &format!(
            "{{ kind: buildkite, api_url: \"http://127.0.0.1:{port}\", organization: acme, token_env: CI_TOKEN }}"
        ),
        "{ backend: ci, pipeline: app }",
    );
    let e = fire(&cfg).await.1.unwrap_err();
    assert!(
        matches!(e, DispatchError::Network(_)) && e.retryable(),
        "{e:?}"
    );
}

#[test]
fn dry_run_rendering_masks_credentials() {
    let cfg = config(
        "{ kind: gitlab, url: \"https://gitlab.example.com\", project: acme/images, token_env: CI_TOKEN }",
        "{ backend: ci }",
    );
    let image = cfg.images.iter().find(|i| i.is_managed()).unwrap();
    let parents = parents();
    let t = Trigger {
        image: IMAGE,
        parents: &parents,
        job_id: 1,
        rollout_id: 1,
        callback_url: CALLBACK.into(),
        idempotency_key: KEY,
        attempt: 1,
        reason: "r".into(),
        build: image.build.as_ref().unwrap(),
    };
    let text = rebuild_request(&cfg.backends["ci"], &t)
        .unwrap()
        .to_string();
    assert!(
        text.starts_with(
            "POST https://gitlab.example.com/api/v4/projects/acme%2Fimages/trigger/pipeline\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("token=***\n") && !text.contains(TOKEN),
        "{text}"
    );
    assert!(
        text.contains(&format!("variables[LINEAGED_IMAGE]={IMAGE}\n")),
        "{text}"
    );
}
