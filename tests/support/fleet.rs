//! `lineaged serve` as separate processes (killed with SIGKILL, stopped
//! with SIGTERM, several replicas on one database), a lineage in the real
//! registry, and a CI peer that verifies Standard Webhooks signatures,
//! "builds" by pushing the rebuilt image with OCI base annotations, and
//! calls back like `curl --retry`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lineaged::dispatch::webhook;
use lineaged::registry::manifest::{BASE_DIGEST, BASE_NAME};
use lineaged::store::{OpenOptions, Store, now_millis};
use serde_json::Value;

use super::registry::TestRegistry;

pub const SECRET: &str = "fleet-ci-secret";
pub const TOKEN: &str = "fleet-ci-token-7d1e";

/// The CI systems the peer speaks: the backend and build YAML of each,
/// with the peer's base URL substituted for `{ci}`.
pub const CI_KINDS: [(&str, &str, &str); 7] = [
    (
        "webhook",
        r#"{ kind: webhook, url: "{ci}/build", secret_env: T_CI_SECRET }"#,
        "{ backend: ci }",
    ),
    (
        "github_actions",
        r#"{ kind: github_actions, api_url: "{ci}/gh", repository: acme/images, token_env: T_CI_TOKEN }"#,
        "{ backend: ci, workflow: rebuild.yml }",
    ),
    (
        "gitlab",
        r#"{ kind: gitlab, url: "{ci}/gl", project: acme/images, token_env: T_CI_TOKEN }"#,
        "{ backend: ci }",
    ),
    (
        "jenkins",
        r#"{ kind: jenkins, url: "{ci}/jk", username: robot, token_env: T_CI_TOKEN }"#,
        "{ backend: ci, job: images/rebuild }",
    ),
    (
        "azure_pipelines",
        r#"{ kind: azure_pipelines, api_url: "{ci}/az", organization: acme, project: images, pipeline: "7", token_env: T_CI_TOKEN }"#,
        "{ backend: ci }",
    ),
    (
        "buildkite",
        r#"{ kind: buildkite, api_url: "{ci}/bk", organization: acme, token_env: T_CI_TOKEN }"#,
        "{ backend: ci, pipeline: rebuild }",
    ),
    (
        "tekton",
        r#"{ kind: tekton, url: "{ci}/tk", secret_env: T_CI_SECRET }"#,
        "{ backend: ci }",
    ),
];

/// One trigger as the CI received it.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub kind: String,
    pub image: String,
    pub webhook_id: String,
    /// (parent, digest) the trigger carried; for a deploy, ("", digest).
    pub parents: Vec<(String, String)>,
}

/// The CI (and deploy receiver) peer.
pub struct Ci {
    pub triggers: Mutex<Vec<Trigger>>,
    /// Webhook ids already acted on: a redelivery is acknowledged and
    /// ignored, as the Standard Webhooks spec asks of consumers.
    seen: Mutex<HashSet<String>>,
    /// Push the rebuilt image but never call back.
    pub silent: AtomicBool,
    pub build_time: Mutex<Duration>,
    /// Statuses the deploy receiver answers first (then 202).
    pub deploy_answers: Mutex<std::collections::VecDeque<u16>>,
    /// Statuses a CI API answers a rebuild trigger first (then its success).
    pub build_answers: Mutex<std::collections::VecDeque<u16>>,
    /// Requests that broke their API's contract, and how.
    pub mismatches: Mutex<Vec<String>>,
    /// Signs what it builds (cosign, classic tag), except these repos.
    pub signer: Mutex<Option<Arc<super::signer::Signer>>>,
    pub unsigned: Mutex<HashSet<String>>,
    reg: Arc<TestRegistry>,
}

impl Ci {
    /// Distinct webhook ids per image for a job kind.
    pub fn ids(&self, kind: &str) -> HashMap<String, HashSet<String>> {
        let mut out: HashMap<String, HashSet<String>> = HashMap::new();
        for t in self
            .triggers
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.kind == kind)
        {
            out.entry(t.image.clone())
                .or_default()
                .insert(t.webhook_id.clone());
        }
        out
    }

    pub fn count(&self) -> usize {
        self.triggers.lock().unwrap().len()
    }

    /// Distinct rebuild triggers so far.
    pub fn distinct(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Starts the peer on a free port; returns it and its base URL.
    pub async fn start(reg: Arc<TestRegistry>) -> (Arc<Ci>, String) {
        use axum::http::{HeaderMap, StatusCode};
        let ci = Arc::new(Ci {
            triggers: Mutex::default(),
            seen: Mutex::default(),
            silent: AtomicBool::new(false),
            build_time: Mutex::new(Duration::from_millis(200)),
            deploy_answers: Mutex::default(),
            build_answers: Mutex::default(),
            mismatches: Mutex::default(),
            signer: Mutex::default(),
            unsigned: Mutex::default(),
            reg,
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let handler = {
            let ci = ci.clone();
            move |headers: HeaderMap, body: axum::body::Bytes| {
                let ci = ci.clone();
                async move {
                    let h = |k: &str| headers[k].to_str().unwrap().to_string();
                    let id = h("webhook-id");
                    let ts: i64 = h("webhook-timestamp").parse().unwrap();
                    assert!(
                        webhook::verify(SECRET.as_bytes(), &id, ts, &body, &h("webhook-signature")),
                        "bad webhook signature"
                    );
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    if v["kind"] == "deploy"
                        && let Some(code) = ci.deploy_answers.lock().unwrap().pop_front()
                    {
                        ci.triggers.lock().unwrap().push(Trigger {
                            kind: format!("deploy answered {code}"),
                            image: v["image"].as_str().unwrap().to_string(),
                            webhook_id: id,
                            parents: Vec::new(),
                        });
                        return StatusCode::from_u16(code).unwrap();
                    }
                    ci.received(id, v);
                    StatusCode::ACCEPTED
                }
            }
        };
        let api = {
            let ci = ci.clone();
            move |method: axum::http::Method,
                  uri: axum::http::Uri,
                  headers: HeaderMap,
                  body: axum::body::Bytes| {
                let ci = ci.clone();
                async move {
                    // A request that breaks the API's contract fails the
                    // assertion in `ci_api`: answer 400 with why (the job
                    // fails with it) and keep it for the test to report.
                    let run =
                        std::panic::AssertUnwindSafe(|| ci.ci_api(method, uri, headers, body));
                    match std::panic::catch_unwind(run) {
                        Ok(r) => r,
                        Err(p) => {
                            use axum::response::IntoResponse;
                            let msg = p
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            ci.mismatches.lock().unwrap().push(msg.clone());
                            (StatusCode::BAD_REQUEST, format!("peer: {msg}")).into_response()
                        }
                    }
                }
            }
        };
        let app = axum::Router::new()
            .route("/build", axum::routing::post(handler.clone()))
            .route("/deploy", axum::routing::post(handler))
            .fallback(api);
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (ci, format!("http://{addr}"))
    }

    /// A CI system's trigger API (see [`CI_KINDS`]): checks what that API
    /// requires, reads the lineaged fields out of the kind's request and
    /// answers as the API documents.
    fn ci_api(
        self: &Arc<Self>,
        method: axum::http::Method,
        uri: axum::http::Uri,
        headers: axum::http::HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let path = uri.path().to_string();
        let h = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let bearer = format!("Bearer {TOKEN}");
        let basic = |user: &str| {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{TOKEN}"))
            )
        };
        let json = || serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
        let strings = |v: &Value| -> HashMap<String, String> {
            v.as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| {
                            Some((
                                k.to_ascii_lowercase()
                                    .trim_start_matches("lineaged_")
                                    .to_string(),
                                v.as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let form = || -> HashMap<String, String> {
            let text = String::from_utf8_lossy(&body).to_string();
            reqwest::Url::parse(&format!("http://x/?{text}"))
                .unwrap()
                .query_pairs()
                .map(|(k, v)| {
                    let k = k.trim_start_matches("variables[").trim_end_matches(']');
                    (
                        k.to_ascii_lowercase()
                            .trim_start_matches("lineaged_")
                            .to_string(),
                        v.into_owned(),
                    )
                })
                .collect()
        };
        let prefix = path.split('/').nth(1).unwrap_or("").to_string();
        let (fields, ok): (HashMap<String, String>, (u16, Value)) = match (
            prefix.as_str(),
            method.as_str(),
        ) {
            ("gh", "POST") => {
                assert!(
                    path.ends_with("/repos/acme/images/actions/workflows/rebuild.yml/dispatches"),
                    "{path}"
                );
                assert_eq!(h("authorization"), bearer);
                assert_eq!(h("x-github-api-version"), "2022-11-28");
                let v = json();
                assert_eq!(v["return_run_details"], true);
                (
                    strings(&v["inputs"]),
                    (
                        200,
                        serde_json::json!({"workflow_run_id": 1, "run_url": "http://gh/api/runs/1", "html_url": "http://gh/acme/images/actions/runs/1"}),
                    ),
                )
            }
            ("gl", "POST") => {
                assert_eq!(path, "/gl/api/v4/projects/acme%2Fimages/trigger/pipeline");
                let f = form();
                assert_eq!(f.get("token").map(String::as_str), Some(TOKEN));
                (
                    f,
                    (
                        201,
                        serde_json::json!({"id": 257, "web_url": "http://gl/acme/images/-/pipelines/257", "status": "created"}),
                    ),
                )
            }
            ("jk", "POST") => {
                assert_eq!(path, "/jk/job/images/job/rebuild/buildWithParameters");
                assert_eq!(h("authorization"), basic("robot"));
                (form(), (201, Value::Null))
            }
            ("az", "POST") => {
                assert_eq!(path, "/az/acme/images/_apis/pipelines/7/runs");
                assert_eq!(uri.query(), Some("api-version=7.1"));
                assert_eq!(h("authorization"), basic(""));
                let v = json();
                (
                    strings(&v["templateParameters"]),
                    (
                        200,
                        serde_json::json!({"id": 345, "state": "inProgress", "_links": {"web": {"href": "http://az/acme/images/_build/results?buildId=345"}}}),
                    ),
                )
            }
            ("bk", "POST") => {
                assert_eq!(path, "/bk/v2/organizations/acme/pipelines/rebuild/builds");
                assert_eq!(h("authorization"), bearer);
                let v = json();
                assert_eq!(v["commit"], "HEAD");
                (
                    strings(&v["env"]),
                    (
                        201,
                        serde_json::json!({"id": "f62a", "number": 1, "web_url": "http://bk/acme/rebuild/builds/1"}),
                    ),
                )
            }
            ("tk", "POST") => {
                let sig = lineaged::dispatch::tekton::signature(SECRET.as_bytes(), &body);
                assert_eq!(
                    h("x-hub-signature-256"),
                    sig,
                    "Tekton's GitHub interceptor check"
                );
                let v = json();
                let mut f = strings(&v);
                f.insert("parents".into(), v["parents"].to_string());
                f.insert("job_id".into(), v["job_id"].to_string());
                (
                    f,
                    (
                        202,
                        serde_json::json!({"eventListenerUID": "ea71", "eventID": "14a6"}),
                    ),
                )
            }
            _ => {
                return (
                    axum::http::StatusCode::NOT_FOUND,
                    format!("no CI API at {method} {path}"),
                )
                    .into_response();
            }
        };
        if let Some(code) = self.build_answers.lock().unwrap().pop_front() {
            let message = match code {
                // Echoes what it got, credentials included: lineaged must
                // scrub them from everything it shows.
                401 => serde_json::json!({ "message": format!("Bad credentials: {} {}", h("authorization"), String::from_utf8_lossy(&body)) }).to_string(),
                404 => r#"{"message":"Not Found"}"#.to_string(),
                _ => r#"{"message":"try later"}"#.to_string(),
            };
            self.triggers.lock().unwrap().push(Trigger {
                kind: format!("rebuild answered {code}"),
                image: fields.get("image").cloned().unwrap_or_default(),
                webhook_id: fields.get("idempotency_key").cloned().unwrap_or_default(),
                parents: Vec::new(),
            });
            return (axum::http::StatusCode::from_u16(code).unwrap(), message).into_response();
        }
        let id = fields["idempotency_key"].clone();
        let parents: Value = serde_json::from_str(&fields["parents"]).unwrap();
        let v = serde_json::json!({
            "kind": "rebuild",
            "image": fields["image"],
            "parents": parents,
            "callback_url": fields["callback_url"],
        });
        self.received(id, v);
        let mut r = (
            axum::http::StatusCode::from_u16(ok.0).unwrap(),
            axum::Json(ok.1),
        )
            .into_response();
        if prefix == "jk" {
            r.headers_mut()
                .insert("location", "http://jk/queue/item/1151/".parse().unwrap());
        }
        r
    }

    fn received(self: &Arc<Self>, id: String, v: Value) {
        let kind = v["kind"].as_str().unwrap_or("rebuild").to_string();
        let image = v["image"].as_str().unwrap().to_string();
        let parents: Vec<(String, String)> = if kind == "deploy" {
            vec![(String::new(), v["digest"].as_str().unwrap().to_string())]
        } else {
            v["parents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap().to_string(),
                        p["digest"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        };
        self.triggers.lock().unwrap().push(Trigger {
            kind: kind.clone(),
            image: image.clone(),
            webhook_id: id.clone(),
            parents: parents.clone(),
        });
        if !self.seen.lock().unwrap().insert(id) {
            return; // a redelivery: already acting on it
        }
        let callback = v["callback_url"].as_str().unwrap().to_string();
        let ci = self.clone();
        tokio::spawn(async move {
            let wait = *ci.build_time.lock().unwrap();
            tokio::time::sleep(wait).await;
            let body = if kind == "deploy" {
                serde_json::json!({ "status": "succeeded" })
            } else {
                let (repo, tag) = image.split_once('/').unwrap().1.rsplit_once(':').unwrap();
                let mut ann = BTreeMap::new();
                ann.insert(BASE_NAME.to_string(), parents[0].0.clone());
                ann.insert(BASE_DIGEST.to_string(), parents[0].1.clone());
                let (digest, _) = ci
                    .reg
                    .push_image(
                        repo,
                        tag,
                        &format!("{image} {} {}", now_millis(), rand::random::<u64>()),
                        ("linux", "amd64"),
                        ann,
                        BTreeMap::new(),
                    )
                    .await;
                let signer = ci.signer.lock().unwrap().clone();
                if let Some(signer) = signer
                    && !ci.unsigned.lock().unwrap().contains(repo)
                {
                    let r = lineaged::registry::ImageRef::parse(&image).unwrap();
                    let l = super::signer::layer(&signer, &r, &digest);
                    super::signer::push_signatures(&ci.reg, repo, &digest, &[l]).await;
                }
                serde_json::json!({ "status": "succeeded", "digest": digest })
            };
            if ci.silent.load(Ordering::Relaxed) {
                return;
            }
            let http = reqwest::Client::new();
            let deadline = Instant::now() + Duration::from_secs(90);
            while Instant::now() < deadline {
                let r = http.post(&callback).json(&body).send().await;
                match r {
                    Ok(r) if r.status().is_success() || r.status().as_u16() == 404 => return,
                    _ => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        });
    }
}

/// One `lineaged serve` process.
pub struct Serve {
    pub child: Child,
}

impl Drop for Serve {
    // A failing test must not leave a daemon running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    pub fn start(cfg: &std::path::Path, node: &str) -> Serve {
        Serve::start_logging(cfg, node, None)
    }

    /// With `log`, the daemon logs at debug level into that file. `node`
    /// "" starts it without `LINEAGED_NODE_ID`: named after the host, as
    /// every process on a host is by default.
    pub fn start_logging(
        cfg: &std::path::Path,
        node: &str,
        log: Option<&std::path::Path>,
    ) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lineaged"));
        match node {
            "" => cmd.env_remove("LINEAGED_NODE_ID"),
            n => cmd.env("LINEAGED_NODE_ID", n),
        };
        let child = cmd
            .args(["serve", "-c"])
            .arg(cfg)
            .env("T_CI_SECRET", SECRET)
            .env("T_CI_TOKEN", TOKEN)
            .env("LINEAGED_LOG", if log.is_some() { "debug" } else { "warn" })
            .env("LINEAGED_RECONCILE_INTERVAL", "1s")
            .stdout(Stdio::null())
            .stderr(match (log, std::env::var_os("LINEAGED_TEST_DAEMON_LOG")) {
                (Some(path), _) => Stdio::from(std::fs::File::create(path).unwrap()),
                (None, Some(_)) => Stdio::inherit(),
                (None, None) => Stdio::null(),
            })
            .spawn()
            .unwrap();
        Serve { child }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "clean shutdown: {status:?}");
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A lineage: external bases and managed images (name → parents), all
/// under the test registry.
pub struct Lineage {
    pub bases: Vec<String>,
    /// (repo, parents' repos), in an order where parents come first.
    pub managed: Vec<(String, Vec<String>)>,
}

impl Lineage {
    /// The issue's lineage: bases A and B; P on A, T on B, X on P and T, W
    /// on P, E on X and W (diamonds).
    pub fn issue() -> Lineage {
        let m = |n: &str, ps: &[&str]| (n.to_string(), ps.iter().map(|p| p.to_string()).collect());
        Lineage {
            bases: vec!["base/a".into(), "base/b".into()],
            managed: vec![
                m("team/p", &["base/a"]),
                m("team/t", &["base/b"]),
                m("team/x", &["team/p", "team/t"]),
                m("team/w", &["team/p"]),
                m("team/e", &["team/x", "team/w"]),
            ],
        }
    }

    /// 22 images: bases A and B, 20 managed in five levels, with diamonds
    /// and images of two and three parents.
    pub fn storm() -> Lineage {
        let parents: [&[usize]; 20] = [
            &[100],
            &[101],
            &[100],
            &[101],
            &[100, 101],
            &[0, 1],
            &[1, 2],
            &[2],
            &[3, 4],
            &[0, 4],
            &[2, 3],
            &[5, 6],
            &[7, 8],
            &[9],
            &[10, 5],
            &[6, 9],
            &[8],
            &[11, 12],
            &[13, 14, 15],
            &[17, 18, 16],
        ];
        let name = |i: usize| match i {
            100 => "base/a".to_string(),
            101 => "base/b".to_string(),
            i => format!("team/i{i:02}"),
        };
        Lineage {
            bases: vec!["base/a".into(), "base/b".into()],
            managed: parents
                .iter()
                .enumerate()
                .map(|(i, ps)| (name(i), ps.iter().map(|&p| name(p)).collect()))
                .collect(),
        }
    }

    /// Managed repos that descend from `base`.
    pub fn affected(&self, base: &str) -> HashSet<String> {
        let mut out: HashSet<String> = HashSet::new();
        let mut changed = true;
        while changed {
            changed = false;
            for (n, ps) in &self.managed {
                if !out.contains(n) && ps.iter().any(|p| p == base || out.contains(p)) {
                    out.insert(n.clone());
                    changed = true;
                }
            }
        }
        out
    }
}

/// A registry with a lineage pushed to it, a CI peer and a config file.
pub struct World {
    pub reg: Arc<TestRegistry>,
    pub ci: Arc<Ci>,
    pub lineage: Lineage,
    pub cfg: std::path::PathBuf,
    pub db_url: String,
    pub _dir: tempfile::TempDir,
}

impl World {
    /// `db_url`: the database every replica shares. `deploy`: managed
    /// images whose repo is listed get `deploy:` through the webhook.
    pub async fn new(lineage: Lineage, db_url: &str, deploy: &[&str]) -> World {
        World::with_ci(lineage, db_url, deploy, "webhook").await
    }

    /// The same, rebuilding through the CI kind named (see [`CI_KINDS`]).
    pub async fn with_ci(lineage: Lineage, db_url: &str, deploy: &[&str], kind: &str) -> World {
        World::with(lineage, db_url, deploy, kind, "").await
    }

    /// The same with `extra` appended to the config (a `policy:` section;
    /// `{registry}` becomes the registry's address).
    pub async fn with(
        lineage: Lineage,
        db_url: &str,
        deploy: &[&str],
        kind: &str,
        extra: &str,
    ) -> World {
        World::with_deployer(
            lineage,
            db_url,
            deploy,
            kind,
            extra,
            r#"{ kind: webhook, url: "{ci}/deploy", secret_env: T_CI_SECRET }"#,
            "{ backend: deployer, app: app-of-it, environment: prod }",
        )
        .await
    }

    /// The same, deploying through `deployer` (a backend's flow mapping;
    /// `{ci}` becomes the CI peer's URL) with `entry` as each deployed
    /// image's `deploy:` (`{name}` becomes the repo's last segment).
    pub async fn with_deployer(
        lineage: Lineage,
        db_url: &str,
        deploy: &[&str],
        kind: &str,
        extra: &str,
        deployer: &str,
        entry: &str,
    ) -> World {
        let (_, backend, build) = CI_KINDS.iter().find(|(k, _, _)| *k == kind).unwrap();
        let reg = Arc::new(TestRegistry::start(Default::default()).await);
        let a = reg.addr.clone();
        let mut digests: HashMap<String, String> = HashMap::new();
        for b in &lineage.bases {
            let (d, _) = reg
                .push_image(
                    b,
                    "1",
                    &format!("{b} v0"),
                    ("linux", "amd64"),
                    BTreeMap::new(),
                    BTreeMap::new(),
                )
                .await;
            digests.insert(b.clone(), d);
        }
        for (n, ps) in &lineage.managed {
            let mut ann = BTreeMap::new();
            ann.insert(BASE_NAME.to_string(), format!("{a}/{}:1", ps[0]));
            ann.insert(BASE_DIGEST.to_string(), digests[&ps[0]].clone());
            let (d, _) = reg
                .push_image(
                    n,
                    "1",
                    &format!("{n} v0"),
                    ("linux", "amd64"),
                    ann,
                    BTreeMap::new(),
                )
                .await;
            digests.insert(n.clone(), d);
        }
        let (ci, ci_url) = Ci::start(reg.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("lineaged.yaml");
        let mut yaml = format!(
            r#"database: {{ url: "{db_url}" }}
listen: "127.0.0.1:{port}"
defaults: {{ schedule: "* * * * * *" }}
registries:
  - host: "{a}"
    insecure: true
backends:
  ci: {backend}
  deployer: {deployer}
api: {{ public_read: true }}
images:
"#,
            port = free_port(),
            backend = backend.replace("{ci}", &ci_url),
            deployer = deployer.replace("{ci}", &ci_url),
        );
        for b in &lineage.bases {
            yaml.push_str(&format!("  - name: \"{a}/{b}:1\"\n"));
        }
        for (n, ps) in &lineage.managed {
            let from: Vec<String> = ps.iter().map(|p| format!("\"{a}/{p}:1\"")).collect();
            yaml.push_str(&format!(
                "  - name: \"{a}/{n}:1\"\n    from: [{}]\n    build: {build}\n",
                from.join(", ")
            ));
            if deploy.contains(&n.as_str()) {
                let last = n.rsplit('/').next().unwrap_or(n);
                yaml.push_str(&format!("    deploy: {}\n", entry.replace("{name}", last)));
            }
        }
        yaml.push_str(&extra.replace("{registry}", &a));
        std::fs::write(&cfg, yaml).unwrap();
        World {
            reg,
            ci,
            lineage,
            cfg,
            db_url: db_url.to_string(),
            _dir: dir,
        }
    }

    /// Adds an API token `release-manager` (write role) read from
    /// `T_CI_TOKEN`, which every `Serve` sets.
    pub fn with_write_token(self) -> World {
        let text = std::fs::read_to_string(&self.cfg).unwrap();
        std::fs::write(
            &self.cfg,
            text.replace(
                "api: { public_read: true }",
                "api: { public_read: true, tokens: [{ name: release-manager, role: write, token_env: T_CI_TOKEN }] }",
            ),
        )
        .unwrap();
        self
    }

    /// A config for a second replica: same database, another port.
    pub fn replica_cfg(&self) -> std::path::PathBuf {
        let text = std::fs::read_to_string(&self.cfg).unwrap();
        let port = text
            .lines()
            .find(|l| l.starts_with("listen:"))
            .unwrap()
            .to_string();
        let other = self.cfg.with_file_name("replica.yaml");
        std::fs::write(
            &other,
            text.replace(&port, &format!("listen: \"127.0.0.1:{}\"", free_port())),
        )
        .unwrap();
        other
    }

    /// The daemon's API base URL (`http://127.0.0.1:port/api/v1`).
    pub fn api(&self) -> String {
        let text = std::fs::read_to_string(&self.cfg).unwrap();
        let listen = text
            .lines()
            .find_map(|l| l.strip_prefix("listen: "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        format!("http://{listen}/api/v1")
    }

    pub fn full(&self, repo: &str) -> String {
        format!("{}/{repo}:1", self.reg.addr)
    }

    /// Waits until the CI received a rebuild trigger of `repo`.
    pub async fn until_triggered(&self, repo: &str) {
        let (ci, image) = (self.ci.clone(), self.full(repo));
        until(
            &format!("{repo} triggered"),
            Duration::from_secs(30),
            || {
                let (ci, image) = (ci.clone(), image.clone());
                async move { ci.ids("rebuild").contains_key(&image) }
            },
        )
        .await;
    }

    /// Pushes a new version of a base; returns its digest.
    pub async fn push_base(&self, base: &str) -> String {
        self.reg
            .push_image(
                base,
                "1",
                &format!("{base} {} {}", now_millis(), rand::random::<u64>()),
                ("linux", "amd64"),
                BTreeMap::new(),
                BTreeMap::new(),
            )
            .await
            .0
    }

    /// The store, once the daemon observed every image.
    pub async fn store_when_observed(&self) -> Store {
        let names: Vec<String> = self
            .lineage
            .bases
            .iter()
            .chain(self.lineage.managed.iter().map(|(n, _)| n))
            .map(|r| self.full(r))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let opts = OpenOptions {
                max_connections: 2,
                connect_deadline: Duration::from_secs(2),
            };
            if let Ok(s) = Store::connect(&self.db_url, &opts).await {
                let mut all = true;
                for n in &names {
                    all &= s
                        .image_state(n)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|st| st.current_digest.is_some());
                }
                if all {
                    return s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "daemon never observed every image"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until `n` rollouts exist and none runs; returns their states.
pub async fn rollouts_finished(store: &Store, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let r = store.rollouts(100).await.unwrap();
        if r.len() >= n && r.iter().all(|r| r.state != "running") {
            return r.iter().map(|r| r.state.to_string()).collect();
        }
        if Instant::now() > deadline {
            let mut detail = String::new();
            for x in r.iter().take(3) {
                detail.push_str(&format!(
                    "\n{x:?}\n  {:?}",
                    store
                        .rollout_images(x.id)
                        .await
                        .unwrap()
                        .iter()
                        .map(|i| (i.image.clone(), i.state.to_string(), i.reason.clone()))
                        .collect::<Vec<_>>()
                ));
            }
            panic!("{n} finished rollouts not reached: {detail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pushes `base` and SIGKILLs (then restarts) `serve` after each of the
/// first `kills` new distinct triggers, waiting `after_ms` plus up to
/// `jitter_ms` each time; waits until `rollouts` rollouts finished.
/// Returns the running daemon and the rollouts' states, newest first.
#[allow(clippy::too_many_arguments)]
pub async fn push_with_kills(
    w: &World,
    store: &Store,
    mut serve: Serve,
    node: &str,
    base: &str,
    kills: usize,
    (after_ms, jitter_ms): (u64, u64),
    rollouts: usize,
) -> (Serve, Vec<String>) {
    let start = w.ci.distinct();
    let n = w.lineage.affected(base).len();
    w.push_base(base).await;
    for k in 1..=n.min(kills) {
        let ci = w.ci.clone();
        until(
            &format!("{base}: trigger {k}"),
            Duration::from_secs(60),
            || {
                let ci = ci.clone();
                async move { ci.distinct() >= start + k }
            },
        )
        .await;
        let wait = after_ms + rand::random::<u64>() % jitter_ms.max(1);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        serve.kill9();
        serve = Serve::start(&w.cfg, node);
    }
    let states = rollouts_finished(store, rollouts, Duration::from_secs(90)).await;
    (serve, states)
}

pub async fn until<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
