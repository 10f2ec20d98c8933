//! Peers for the places images are deployed to, following the documented
//! APIs and asserting what they receive:
//!
//! - `/k8s`: a Kubernetes API server for `apps/v1` Deployments (GET and
//!   PATCH with `application/strategic-merge-patch+json`; containers merge
//!   by name, `metadata.generation` moves when the spec changes, and the
//!   rollout status advances one step per GET, as a controller would);
//! - `/argo`: Argo CD's `ApplicationService` (GET, PATCH with an
//!   `ApplicationPatchRequest` of `patchType: merge`, POST `…/sync`; the
//!   application reports a running operation, then Synced/Healthy with the
//!   live images in `status.summary.images`);
//! - `/flux/hook/…`: a notification-controller Receiver of type
//!   `generic-hmac`, checking `X-Signature`.
//!
//! Every request must carry `Authorization: Bearer TOKEN` (the Receiver
//! checks its HMAC instead). Objects whose name starts with `broken` fail:
//! a Deployment past its progress deadline, a Degraded application.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::fleet::{SECRET, TOKEN};

/// A `kubernetes` deploy backend on the peer (`{plat}`: its URL).
pub const K8S: &str = r#"{ kind: kubernetes, api_url: "{plat}/k8s", token_env: T_CI_TOKEN }"#;
/// Each deployed image's `deploy:` on [`K8S`]: `deployment/<name>` in `shop`.
pub const K8S_ENTRY: &str =
    "{ backend: deployer, namespace: shop, workload: deployment/{name}, container: app }";

#[derive(Default)]
pub struct Platform {
    /// Deployments by `namespace/name`.
    pub deployments: Mutex<HashMap<String, Value>>,
    /// Applications by name.
    pub apps: Mutex<HashMap<String, Value>>,
    /// Every write received: (what, target, body).
    pub writes: Mutex<Vec<(String, String, Value)>>,
    /// Receiver calls with a valid signature.
    pub flux: Mutex<Vec<Value>>,
    /// GETs an object needs, after a change, to report it rolled out.
    pub steps: Mutex<u32>,
    /// Notifications received: (sink kind, body, webhook-id).
    pub notes: Mutex<Vec<(String, Value, String)>>,
    /// GETs of Kubernetes workloads (a watched deploy's looks).
    pub looks: std::sync::atomic::AtomicUsize,
    /// Statuses the notification sinks answer first (then success).
    pub note_answers: Mutex<std::collections::VecDeque<u16>>,
}

impl Platform {
    pub async fn start() -> (Arc<Platform>, String) {
        let p = Arc::new(Platform {
            steps: Mutex::new(3),
            ..Default::default()
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let me = p.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let me = me.clone();
                async move { me.handle(method, uri, headers, body) }
            },
        );
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (p, format!("http://{addr}"))
    }

    /// A Deployment running `image` in container `app` (plus a sidecar).
    pub fn add_deployment(&self, ns: &str, name: &str, image: &str) {
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": name, "namespace": ns, "generation": 1, "annotations": {} },
            "spec": { "replicas": 2, "template": { "spec": { "containers": [
                { "name": "app", "image": image },
                { "name": "proxy", "image": "envoyproxy/envoy:v1.30" },
            ] } } },
            "status": { "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2 },
        });
        self.deployments
            .lock()
            .unwrap()
            .insert(format!("{ns}/{name}"), json!({ "obj": d, "progress": -1 }));
    }

    /// A Deployment in `shop` per repo (`team/w` → `deployment/w`), running
    /// the image's tag.
    pub fn add_workloads(&self, w: &super::fleet::World, repos: &[&str]) {
        for repo in repos {
            let name = repo.rsplit('/').next().unwrap();
            self.add_deployment("shop", name, &w.full(repo));
        }
    }

    /// An application with a kustomize source overriding `image` and one
    /// other image, Synced and Healthy.
    pub fn add_app(&self, name: &str, image: &str) {
        let a = json!({
            "metadata": { "name": name, "namespace": "argocd" },
            "spec": { "project": "default", "source": {
                "repoURL": "https://git.example/deploy.git", "path": name, "targetRevision": "main",
                "kustomize": { "images": ["redis=mirror.example/redis:7", image] },
            } },
            "status": {
                "sync": { "status": "Synced" }, "health": { "status": "Healthy" },
                "summary": { "images": ["mirror.example/redis:7", image] },
            },
        });
        self.apps
            .lock()
            .unwrap()
            .insert(name.into(), json!({ "obj": a, "progress": -1 }));
    }

    pub fn deployment(&self, ns: &str, name: &str) -> Value {
        self.deployments.lock().unwrap()[&format!("{ns}/{name}")]["obj"].clone()
    }

    pub fn app(&self, name: &str) -> Value {
        self.apps.lock().unwrap()[name]["obj"].clone()
    }

    /// Writes of `what` (`k8s-patch`, `argo-patch`, `argo-sync`) to `target`.
    pub fn writes_to(&self, what: &str, target: &str) -> Vec<Value> {
        self.writes
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, t, _)| w == what && t == target)
            .map(|(_, _, b)| b.clone())
            .collect()
    }

    fn handle(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let path = uri.path().to_string();
        let h = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        for kind in ["slack", "teams", "hooks"] {
            if path.starts_with(&format!("/{kind}/")) {
                return self.note(kind, &path, &h, &body);
            }
        }
        if let Some(rest) = path.strip_prefix("/flux/hook/") {
            let want = lineaged::dispatch::tekton::signature(SECRET.as_bytes(), &body);
            if h("x-signature") != want {
                return (StatusCode::UNAUTHORIZED, "invalid signature").into_response();
            }
            let mut v: Value = serde_json::from_slice(&body).unwrap();
            v["hook"] = json!(rest);
            self.flux.lock().unwrap().push(v);
            return StatusCode::OK.into_response();
        }
        if h("authorization") != format!("Bearer {TOKEN}") {
            return status(401, "Unauthorized", "Unauthorized");
        }
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(400, "BadRequest", &e.to_string()),
            }
        };
        if let Some(rest) = path.strip_prefix("/k8s/apis/apps/v1/namespaces/") {
            let parts: Vec<&str> = rest.split('/').collect();
            let [ns, "deployments", name] = parts[..] else {
                return status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                );
            };
            return self.kube(method, &h("content-type"), ns, name, body);
        }
        if let Some(rest) = path.strip_prefix("/argo/api/v1/applications/") {
            let (name, sync) = match rest.strip_suffix("/sync") {
                Some(n) => (n, true),
                None => (rest, false),
            };
            return self.argo(method, name, sync, body);
        }
        status(404, "NotFound", "no such path")
    }

    /// A Slack incoming webhook (200 `ok`), a Teams workflow webhook (202)
    /// or a Standard Webhooks receiver (checks the signature; 204).
    fn note(&self, kind: &str, path: &str, h: &dyn Fn(&str) -> String, body: &[u8]) -> Response {
        if let Some(code) = self.note_answers.lock().unwrap().pop_front() {
            return (StatusCode::from_u16(code).unwrap(), "try later").into_response();
        }
        if h("content-type") != "application/json" {
            return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
        }
        let mut v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => return (StatusCode::BAD_REQUEST, "invalid_payload").into_response(),
        };
        let id = h("webhook-id");
        match kind {
            "slack" => {
                if !v["text"].is_string() || !v["blocks"].is_array() {
                    return (StatusCode::BAD_REQUEST, "no_text").into_response();
                }
            }
            "teams" => {
                let card = &v["attachments"][0];
                if v["type"] != "message"
                    || card["contentType"] != "application/vnd.microsoft.card.adaptive"
                    || card["content"]["type"] != "AdaptiveCard"
                {
                    return (StatusCode::BAD_REQUEST, "not an adaptive card message")
                        .into_response();
                }
            }
            _ => {
                let ts: i64 = h("webhook-timestamp").parse().unwrap_or(0);
                let key = lineaged::dispatch::webhook::signing_key(SECRET);
                if !lineaged::dispatch::webhook::verify(
                    &key,
                    &id,
                    ts,
                    body,
                    &h("webhook-signature"),
                ) {
                    return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
                }
            }
        }
        // Which sink it was, for the test (not part of any API).
        v["_path"] = json!(path);
        self.notes.lock().unwrap().push((kind.to_string(), v, id));
        match kind {
            "slack" => (StatusCode::OK, "ok").into_response(),
            "teams" => StatusCode::ACCEPTED.into_response(),
            _ => StatusCode::NO_CONTENT.into_response(),
        }
    }

    /// Notifications a sink kind received.
    pub fn notes_of(&self, kind: &str) -> Vec<(Value, String)> {
        self.notes
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _, _)| k == kind)
            .map(|(_, v, i)| (v.clone(), i.clone()))
            .collect()
    }

    fn kube(&self, method: Method, ctype: &str, ns: &str, name: &str, body: Value) -> Response {
        let key = format!("{ns}/{name}");
        let mut all = self.deployments.lock().unwrap();
        let Some(entry) = all.get_mut(&key) else {
            return status(
                404,
                "NotFound",
                &format!("deployments.apps \"{name}\" not found"),
            );
        };
        match method.as_str() {
            "GET" => {
                self.looks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // The controller moves one step per look after a change
                // (progress -1: settled).
                let steps = *self.steps.lock().unwrap() as i64;
                let p = entry["progress"].as_i64().unwrap();
                if p >= 0 {
                    let p = p + 1;
                    entry["progress"] = json!(p);
                    let obj = &mut entry["obj"];
                    let g = obj["metadata"]["generation"].as_i64().unwrap();
                    obj["status"] = if p == 1 {
                        json!({ "observedGeneration": g - 1, "replicas": 2, "updatedReplicas": 0, "availableReplicas": 2 })
                    } else if p < steps {
                        json!({ "observedGeneration": g, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2,
                            "conditions": [{ "type": "Available", "status": "True" }] })
                    } else if name.starts_with("broken") {
                        json!({ "observedGeneration": g, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2,
                            "conditions": [{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                "message": format!("ReplicaSet \"{name}-6b8f\" has timed out progressing.") }] })
                    } else {
                        json!({ "observedGeneration": g, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2 })
                    };
                    if p >= steps {
                        entry["progress"] = json!(-1);
                    }
                }
                Json(entry["obj"].clone()).into_response()
            }
            "PATCH" => {
                if ctype != "application/strategic-merge-patch+json" {
                    return status(
                        415,
                        "UnsupportedMediaType",
                        &format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json; got {ctype}"
                        ),
                    );
                }
                self.writes
                    .lock()
                    .unwrap()
                    .push(("k8s-patch".into(), key.clone(), body.clone()));
                let obj = &mut entry["obj"];
                let before = obj["spec"].clone();
                if let Some(a) = body
                    .pointer("/metadata/annotations")
                    .and_then(Value::as_object)
                {
                    for (k, v) in a {
                        obj["metadata"]["annotations"][k] = v.clone();
                    }
                }
                // Strategic merge: containers by name.
                if let Some(cs) = body
                    .pointer("/spec/template/spec/containers")
                    .and_then(Value::as_array)
                {
                    for c in cs {
                        let n = c["name"].as_str().unwrap();
                        let list = obj["spec"]["template"]["spec"]["containers"]
                            .as_array_mut()
                            .unwrap();
                        match list.iter_mut().find(|x| x["name"] == n) {
                            Some(x) => {
                                for (k, v) in c.as_object().unwrap() {
                                    x[k] = v.clone();
                                }
                            }
                            None => list.push(c.clone()),
                        }
                    }
                }
                if obj["spec"] != before {
                    let g = obj["metadata"]["generation"].as_i64().unwrap() + 1;
                    obj["metadata"]["generation"] = json!(g);
                    entry["progress"] = json!(0);
                }
                Json(entry["obj"].clone()).into_response()
            }
            _ => status(405, "MethodNotAllowed", "method not allowed"),
        }
    }

    fn argo(&self, method: Method, name: &str, sync: bool, body: Value) -> Response {
        let mut all = self.apps.lock().unwrap();
        let Some(entry) = all.get_mut(name) else {
            let m = format!("applications.argoproj.io \"{name}\" not found");
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({ "error": m, "code": 5, "message": m })),
            )
                .into_response();
        };
        match (method.as_str(), sync) {
            ("GET", false) => {
                let steps = *self.steps.lock().unwrap() as i64;
                let p = entry["progress"].as_i64().unwrap();
                if p >= 0 {
                    let p = p + 1;
                    entry["progress"] = json!(p);
                    let obj = &mut entry["obj"];
                    if p >= steps {
                        entry["progress"] = json!(-1);
                        let obj = &mut entry["obj"];
                        obj.as_object_mut().unwrap().remove("operation");
                        let live: Vec<Value> = obj["spec"]["source"]["kustomize"]["images"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|i| json!(i.as_str().unwrap().rsplit('=').next().unwrap()))
                            .collect();
                        obj["status"]["summary"]["images"] = json!(live);
                        obj["status"]["sync"]["status"] = json!("Synced");
                        let source = obj["spec"]["source"].clone();
                        if name.starts_with("broken") {
                            obj["status"]["health"] = json!({ "status": "Degraded",
                                "message": "Deployment \"api\" exceeded its progress deadline" });
                            obj["status"]["operationState"] = json!({ "phase": "Succeeded",
                                "message": "successfully synced (all tasks run)",
                                "syncResult": { "revision": "main", "source": source } });
                        } else {
                            obj["status"]["health"] = json!({ "status": "Healthy" });
                            obj["status"]["operationState"] = json!({ "phase": "Succeeded",
                                "message": "successfully synced (all tasks run)",
                                "syncResult": { "revision": "main", "source": source } });
                        }
                    } else {
                        obj["status"]["operationState"] = json!({ "phase": "Running", "message": "waiting for healthy state of apps/Deployment/api" });
                        obj["status"]["health"] = json!({ "status": "Progressing" });
                    }
                }
                Json(entry["obj"].clone()).into_response()
            }
            ("PATCH", false) => {
                assert_eq!(body["name"], name, "ApplicationPatchRequest.name");
                if body["patchType"] != "merge" {
                    return status(400, "InvalidArgument", "unsupported patch type");
                }
                let patch: Value = serde_json::from_str(body["patch"].as_str().unwrap()).unwrap();
                self.writes
                    .lock()
                    .unwrap()
                    .push(("argo-patch".into(), name.into(), patch.clone()));
                merge(&mut entry["obj"], &patch);
                entry["obj"]["status"]["sync"]["status"] = json!("OutOfSync");
                Json(entry["obj"].clone()).into_response()
            }
            ("POST", true) => {
                assert_eq!(body["name"], name, "ApplicationSyncRequest.name");
                if entry["obj"].get("operation").is_some() {
                    let m = "another operation is already in progress";
                    return (
                        StatusCode::BAD_REQUEST,
                        axum::Json(json!({ "error": m, "code": 9, "message": m })),
                    )
                        .into_response();
                }
                self.writes
                    .lock()
                    .unwrap()
                    .push(("argo-sync".into(), name.into(), body.clone()));
                entry["obj"]["operation"] = json!({ "sync": { "prune": body["prune"] } });
                entry["progress"] = json!(0);
                Json(entry["obj"].clone()).into_response()
            }
            _ => status(405, "MethodNotAllowed", "method not allowed"),
        }
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in p {
                if v.is_null() {
                    target.as_object_mut().unwrap().remove(k);
                } else {
                    merge(&mut target[k], v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A Kubernetes `Status` object (Argo CD answers 401 similarly enough).
fn status(code: u16, reason: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        axum::Json(
            json!({ "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code }),
        ),
    )
        .into_response()
}
