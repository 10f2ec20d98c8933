//! Deploys lineaged carries out itself: Argo CD applications and
//! Kubernetes workloads are set to the built digest and watched until they
//! report it rolled out; a Flux Receiver is called once (Flux reconciles
//! from Git). The generic webhook deploy stays in `dispatch::webhook`.
//!
//! Argo CD and Kubernetes deploys are reconcilers: each attempt reads the
//! target, changes it only if it does not already name the digest, and
//! reports [`Progress`]. A crash between the change and the watch costs
//! nothing: the next attempt finds the change made and goes on watching.

pub mod argocd;
pub mod flux;
mod kubeconfig;
pub mod kubernetes;

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::config::{Backend, BackendKind, Config};
use crate::dispatch::DispatchError;
use crate::dispatch::request::{classify, read_capped, scrub, scrub_text};
use crate::registry::ImageRef;
use crate::rollout::DeployPayload;

/// Where a reconciled deploy stands after one look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The target runs the digest.
    Done {
        detail: String,
        /// Where a person sees it (the Argo CD application page).
        url: Option<String>,
    },
    /// Changed (or changing): look again later. The text says what it
    /// waits for and is shown in the job.
    Waiting(String),
}

/// The clients of the backends that lineaged deploys through itself, built
/// once at start. A backend whose client cannot be built (a CA file gone, a
/// kubeconfig without a server) fails its deploys with that reason.
pub struct Deployers {
    clients: HashMap<String, Result<Client, String>>,
}

/// An API endpoint with its credentials.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    auth: Auth,
}

/// How requests authenticate. A token file is read on every request:
/// Kubernetes rotates projected service-account tokens.
#[derive(Clone)]
enum Auth {
    None,
    Bearer(crate::config::Secret),
    BearerFile(std::path::PathBuf),
}

impl Deployers {
    pub fn new(cfg: &Config) -> Deployers {
        let clients = cfg
            .backends
            .iter()
            .filter(|(_, b)| matches!(b.kind, BackendKind::Argocd | BackendKind::Kubernetes))
            .map(|(n, b)| (n.clone(), Client::for_backend(b)))
            .collect();
        Deployers { clients }
    }

    /// One look at the deploy of `p` through `b`: change the target if it
    /// does not name the digest yet, then report how far it got.
    pub async fn reconcile(
        &self,
        b: &Backend,
        p: &DeployPayload,
    ) -> Result<Progress, DispatchError> {
        let client = match self.clients.get(&b.name) {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(DispatchError::Invalid(e.clone())),
            None => {
                return Err(DispatchError::Invalid(format!(
                    "backend `{}` (kind {}) does not deploy by reconciling",
                    b.name,
                    b.kind.as_str()
                )));
            }
        };
        let target = Target::of(p)?;
        match b.kind {
            BackendKind::Argocd => argocd::reconcile(client, b, &target).await,
            BackendKind::Kubernetes => kubernetes::reconcile(client, b, &target).await,
            other => Err(DispatchError::Invalid(format!(
                "backend kind {} does not deploy by reconciling",
                other.as_str()
            ))),
        }
    }
}

/// What a deploy sets: the image's repository at the built digest.
pub struct Target<'a> {
    pub payload: &'a DeployPayload,
    /// `registry/repository`, no tag.
    pub repository: String,
    /// `registry/repository@sha256:…`.
    pub reference: String,
}

impl<'a> Target<'a> {
    pub fn of(p: &'a DeployPayload) -> Result<Target<'a>, DispatchError> {
        let r = ImageRef::parse(&p.image)
            .map_err(|e| DispatchError::Invalid(format!("image {}: {e}", p.image)))?;
        crate::registry::validate_digest(&p.digest)
            .map_err(|e| DispatchError::Invalid(format!("digest {}: {e}", p.digest)))?;
        let repository = format!("{}/{}", r.registry(), r.repository());
        Ok(Target {
            payload: p,
            reference: format!("{repository}@{}", p.digest),
            repository,
        })
    }
}

impl Client {
    fn for_backend(b: &Backend) -> Result<Client, String> {
        match b.kind {
            BackendKind::Kubernetes => kubeconfig::client(b),
            _ => {
                let base = b
                    .url
                    .clone()
                    .ok_or_else(|| format!("backend `{}` has no url", b.name))?;
                let ca = b.ca_file.as_deref().map(read_pem).transpose()?;
                let http = http_client(ca, None, false)?;
                let auth = b.token.clone().map_or(Auth::None, Auth::Bearer);
                Ok(Client { http, base, auth })
            }
        }
    }

    /// One API call: a 2xx answer as JSON (`null` when empty); anything
    /// else classified (404/403 permanent, 5xx and 429 retried) with the
    /// API's message, credentials scrubbed.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, &Value)>,
        timeout: Duration,
    ) -> Result<Value, DispatchError> {
        let (token, secrets) = match &self.auth {
            Auth::None => (None, Vec::new()),
            Auth::Bearer(s) => (Some(s.expose().to_string()), vec![s.expose().to_string()]),
            Auth::BearerFile(p) => {
                let t = std::fs::read_to_string(p)
                    .map_err(|e| {
                        DispatchError::Invalid(format!("cannot read token {}: {e}", p.display()))
                    })?
                    .trim()
                    .to_string();
                (Some(t.clone()), vec![t])
            }
        };
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .timeout(timeout)
            .header("accept", "application/json");
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        if let Some((content_type, v)) = body {
            req = req
                .header("content-type", content_type)
                .body(serde_json::to_vec(v).unwrap_or_default());
        }
        let r = req
            .send()
            .await
            .map_err(|e| DispatchError::Network(crate::error_chain(&e)))
            .map_err(|e| scrub(e, &secrets))?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        // Bounded: an Argo CD application with its resource tree can be
        // large, but never worth more than this.
        let bytes = read_capped(r, 4 * 1024 * 1024).await;
        if (200..300).contains(&status) {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| {
                DispatchError::Invalid(format!("{url} answered {status} with invalid JSON: {e}"))
            });
        }
        let text = scrub_text(&String::from_utf8_lossy(&bytes), &secrets);
        Err(scrub(classify(status, &headers, text.as_bytes()), &secrets))
    }
}

fn read_pem(p: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// A client trusting `ca` (PEM) besides nothing else when given, with a
/// client certificate when given. Redirects are not followed.
fn http_client(
    ca: Option<Vec<u8>>,
    identity: Option<Vec<u8>>,
    insecure: bool,
) -> Result<reqwest::Client, String> {
    crate::init_tls();
    let mut builder = reqwest::Client::builder()
        .user_agent(crate::dispatch::USER_AGENT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = ca {
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("CA certificate: {e}"))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(pem) = identity {
        builder = builder.identity(
            reqwest::Identity::from_pem(&pem).map_err(|e| format!("client certificate: {e}"))?,
        );
    }
    if insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|e| format!("HTTP client: {e}"))
}

/// How long to wait before looking at a deploy again: soon at first, then
/// every 10 s.
pub fn poll_delay(started_ms: i64, now_ms: i64) -> Duration {
    let age = Duration::from_millis((now_ms - started_ms).max(0) as u64);
    (age / 10).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_soon_then_every_ten_seconds() {
        assert_eq!(poll_delay(0, 0), Duration::from_secs(1));
        assert_eq!(poll_delay(0, 30_000), Duration::from_secs(3));
        assert_eq!(poll_delay(0, 3_600_000), Duration::from_secs(10));
    }

    #[test]
    fn target_is_the_repository_at_the_digest() {
        let d = crate::config::Deploy {
            backend: "k".into(),
            app: None,
            ..Default::default()
        };
        let digest = format!("sha256:{}", "a".repeat(64));
        let p = DeployPayload::new("127.0.0.1:5000/team/api:1.2", &digest, 1, &d, "t".into());
        let t = Target::of(&p).unwrap();
        assert_eq!(t.repository, "127.0.0.1:5000/team/api");
        assert_eq!(t.reference, format!("127.0.0.1:5000/team/api@{digest}"));
        let bad = DeployPayload::new("r/a:1", "sha256:1", 1, &d, "t".into());
        assert!(Target::of(&bad).is_err());
    }
}
