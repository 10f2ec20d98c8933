//! One outgoing trigger as data: every backend turns a [`Trigger`] into a
//! [`CiRequest`] (pure, so `lineaged trigger --dry-run` prints exactly what
//! would be sent), [`send`] performs it, and the backend reads the run it
//! started from the answer.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::config::{Backend, BackendKind, Build};
use crate::rollout::ParentDigest;

/// What every trigger carries, whatever the CI (see
/// [`crate::config::LINEAGED_FIELDS`]). `Debug` hides the callback URL (it
/// carries the job's token).
#[derive(Clone)]
pub struct Trigger<'a> {
    pub image: &'a str,
    pub parents: &'a [ParentDigest],
    pub job_id: i64,
    pub rollout_id: i64,
    pub callback_url: String,
    pub idempotency_key: &'a str,
    pub attempt: i32,
    /// Why the image is rebuilt (the job's reasons), for commit messages.
    pub reason: String,
    pub build: &'a Build,
}

impl fmt::Debug for Trigger<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trigger")
            .field("image", &self.image)
            .field("job_id", &self.job_id)
            .field("rollout_id", &self.rollout_id)
            .field("idempotency_key", &self.idempotency_key)
            .field("callback_url", &"***")
            .finish_non_exhaustive()
    }
}

impl Trigger<'_> {
    /// `[{name, digest}]` as compact JSON: one string where a CI takes
    /// only strings.
    pub fn parents_json(&self) -> String {
        serde_json::to_string(self.parents).unwrap_or_else(|_| "[]".into())
    }

    /// The lineaged fields in [`crate::config::LINEAGED_FIELDS`] order, as
    /// strings.
    pub fn fields(&self) -> [(&'static str, String); 6] {
        [
            ("image", self.image.to_string()),
            ("parents", self.parents_json()),
            ("job_id", self.job_id.to_string()),
            ("rollout_id", self.rollout_id.to_string()),
            ("callback_url", self.callback_url.clone()),
            ("idempotency_key", self.idempotency_key.to_string()),
        ]
    }

    /// Environment-style variables (`LINEAGED_IMAGE`, …) then the user's
    /// `build.inputs`; the config check keeps inputs off the reserved names.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .fields()
            .into_iter()
            .map(|(k, v)| (format!("LINEAGED_{}", k.to_ascii_uppercase()), v))
            .collect();
        out.extend(
            self.build
                .inputs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        out
    }

    /// GitHub-style inputs: the lower-case fields, then `build.inputs`.
    pub fn inputs(&self) -> serde_json::Map<String, Value> {
        let mut out: serde_json::Map<String, Value> = self
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        for (k, v) in &self.build.inputs {
            out.entry(k.clone())
                .or_insert_with(|| Value::String(v.clone()));
        }
        out
    }

    /// The git ref to build: `build.ref`, else `build.branch`, else `main`.
    pub fn git_ref(&self) -> &str {
        self.build
            .git_ref
            .as_deref()
            .or(self.build.branch.as_deref())
            .unwrap_or("main")
    }

    /// The branch to build: `build.branch`, else `build.ref` without
    /// `refs/heads/`, else `main`.
    pub fn branch(&self) -> &str {
        self.build
            .branch
            .as_deref()
            .or_else(|| {
                self.build
                    .git_ref
                    .as_deref()
                    .map(|r| r.strip_prefix("refs/heads/").unwrap_or(r))
            })
            .unwrap_or("main")
    }
}

/// A header value, masked when printed if it is a credential.
#[derive(Clone)]
pub struct Header {
    pub name: &'static str,
    pub value: String,
    pub secret: bool,
}

/// A request body as sent.
#[derive(Clone)]
pub enum Body {
    /// Serialised once, so a signature covers exactly these bytes.
    Json(Vec<u8>),
    /// `application/x-www-form-urlencoded` fields; `secret` ones are masked
    /// when printed.
    Form(Vec<(String, String, bool)>),
}

/// A fully built trigger request. `Debug` is the masked dry-run rendering:
/// credentials never print.
#[derive(Clone)]
pub struct CiRequest {
    pub kind: BackendKind,
    pub url: String,
    pub headers: Vec<Header>,
    pub body: Body,
    /// Jenkins without user credentials: fetch a CSRF crumb (and the session
    /// cookie it is bound to) from this URL first.
    pub crumb_url: Option<String>,
    /// Every credential in this request, scrubbed from any error text.
    pub secrets: Vec<String>,
}

impl CiRequest {
    pub fn new(kind: BackendKind, url: String, body: Body) -> CiRequest {
        CiRequest {
            kind,
            url,
            headers: Vec::new(),
            body,
            crumb_url: None,
            secrets: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> CiRequest {
        self.headers.push(Header {
            name,
            value: value.into(),
            secret: false,
        });
        self
    }

    /// A credential header; `raw` is the secret inside `value`.
    pub fn secret_header(mut self, name: &'static str, value: String, raw: &str) -> CiRequest {
        self.secrets.push(raw.to_string());
        self.headers.push(Header {
            name,
            value,
            secret: true,
        });
        self
    }

    pub fn json(v: &Value) -> Body {
        Body::Json(serde_json::to_vec(v).unwrap_or_default())
    }
}

impl fmt::Debug for CiRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The dry-run rendering: method, URL, headers and body, credentials (and
/// anything else in `secrets`, such as the callback token) as `***`.
impl fmt::Display for CiRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::fmt::Write as _;
        let mut out = String::new();
        if let Some(c) = &self.crumb_url {
            let _ = writeln!(
                out,
                "GET {c}    (CSRF crumb; its session cookie is sent back)\n"
            );
        }
        let _ = writeln!(out, "POST {}", self.url);
        let ct = match self.body {
            Body::Json(_) => "application/json",
            Body::Form(_) => "application/x-www-form-urlencoded",
        };
        let _ = writeln!(out, "Content-Type: {ct}");
        for h in &self.headers {
            let v = if h.secret { "***" } else { h.value.as_str() };
            let _ = writeln!(out, "{}: {v}", h.name);
        }
        out.push('\n');
        match &self.body {
            Body::Json(b) => {
                let v: Value = serde_json::from_slice(b).unwrap_or(Value::Null);
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                );
            }
            Body::Form(fields) => {
                for (k, v, secret) in fields {
                    let _ = writeln!(out, "{k}={}", if *secret { "***" } else { v });
                }
            }
        }
        f.write_str(&scrub_text(&out, &self.secrets))
    }
}

/// The run a CI started, as far as its answer tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CiRun {
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Why a trigger was not accepted. Classifies itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// 401/403/404/422 and other 4xx: the token, the target or the request
    /// is wrong; retrying cannot help.
    #[error("HTTP {status}: {message}")]
    Rejected { status: u16, message: String },
    /// 408, 429, a rate limit, 5xx: try again later.
    #[error("HTTP {status}: {message}")]
    Unavailable {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No answer (connect, timeout, TLS).
    #[error("request failed: {0}")]
    Network(String),
    /// The request could not be built (missing config) or the answer made
    /// no sense.
    #[error("{0}")]
    Invalid(String),
    /// The deploy target reports the rollout failed (a Degraded Argo CD
    /// application, a Deployment past its progress deadline).
    #[error("{0}")]
    Failed(String),
}

impl DispatchError {
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            DispatchError::Unavailable { .. } | DispatchError::Network(_)
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DispatchError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            DispatchError::Rejected { .. } => "rejected",
            DispatchError::Unavailable { .. } => "unavailable",
            DispatchError::Network(_) => "network",
            DispatchError::Invalid(_) => "invalid",
            DispatchError::Failed(_) => "failed",
        }
    }

    pub fn into_failure(self) -> crate::store::Failure {
        use crate::store::Failure;
        if self.retryable() {
            Failure::Retry {
                retry_after: self.retry_after(),
                error: self.to_string(),
            }
        } else {
            Failure::Permanent {
                error: self.to_string(),
            }
        }
    }
}

/// The longest run id or URL kept from a CI's answer.
const MAX_RUN_TEXT: usize = 500;

/// The longest wait a rate-limit header may impose on one job.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Performs `req`: the crumb first where asked, then the POST. A 2xx is
/// read by the kind's parser; anything else is classified.
pub async fn send(
    http: &reqwest::Client,
    req: &CiRequest,
    timeout: Duration,
) -> Result<CiRun, DispatchError> {
    let mut post = http.post(&req.url).timeout(timeout);
    if let Some(crumb_url) = &req.crumb_url {
        let issued = super::jenkins::crumb(http, crumb_url, timeout)
            .await
            .map_err(|e| scrub(e, &req.secrets))?;
        if let Some((field, crumb, cookie)) = issued {
            post = post.header(field.as_str(), crumb);
            if let Some(c) = cookie {
                post = post.header("cookie", c);
            }
        }
    }
    for h in &req.headers {
        post = post.header(h.name, &h.value);
    }
    post = match &req.body {
        Body::Json(b) => post
            .header("content-type", "application/json")
            .body(b.clone()),
        Body::Form(fields) => {
            let pairs: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v, _)| (k.as_str(), v.as_str()))
                .collect();
            post.form(&pairs)
        }
    };
    let r = post
        .send()
        .await
        .map_err(|e| DispatchError::Network(crate::error_chain(&e.without_url())))
        .map_err(|e| scrub(e, &req.secrets))?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    // Bounded: an answer is a small JSON document, never worth megabytes.
    let body = read_capped(r, 64 * 1024).await;
    // Jenkins answers 303 (to the same queue item) when an identical build
    // is already queued: accepted, once.
    let queued = req.kind == BackendKind::Jenkins && status == 303;
    if (200..300).contains(&status) || queued {
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let run = super::run_of(req.kind, &headers, &json);
        // What the CI says is stored and shown: bounded, and never a
        // credential.
        let clean = |v: Option<String>| {
            v.map(|v| {
                scrub_text(&v, &req.secrets)
                    .chars()
                    .take(MAX_RUN_TEXT)
                    .collect::<String>()
            })
            .filter(|v| !v.is_empty())
        };
        return Ok(CiRun {
            status,
            id: clean(run.id),
            url: clean(run.url),
        });
    }
    // Scrubbed before the message is shortened, so no cut can leave part
    // of a credential behind.
    let body = scrub_text(&String::from_utf8_lossy(&body), &req.secrets);
    Err(scrub(
        classify(status, &headers, body.as_bytes()),
        &req.secrets,
    ))
}

pub(crate) async fn read_capped(mut r: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = r.chunk().await {
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
            break;
        }
    }
    out
}

/// Sorts a non-2xx answer into retryable or permanent, with the API's own
/// message and any wait it asks for (`Retry-After`, GitHub's
/// `x-ratelimit-reset` when `x-ratelimit-remaining` is 0, Buildkite's
/// `RateLimit-Reset`).
pub fn classify(status: u16, headers: &reqwest::header::HeaderMap, body: &[u8]) -> DispatchError {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let message = api_message(body);
    let now = crate::store::now_millis() / 1000;
    let retry_after = h("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| {
            (h("x-ratelimit-remaining") == Some("0"))
                .then(|| h("x-ratelimit-reset"))
                .flatten()
                .and_then(|v| v.parse::<i64>().ok())
                .map(|reset| (reset - now).max(1) as u64)
        })
        .or_else(|| {
            (status == 429)
                .then(|| h("ratelimit-reset"))
                .flatten()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
    // GitHub answers a spent rate limit with 403 (or 429) and the headers
    // above, a secondary limit with 403 and a message saying so: that 403
    // is a wait (at least a minute, GitHub asks), not a refusal.
    let secondary = status == 403 && message.to_ascii_lowercase().contains("rate limit");
    let retry_after = retry_after.or(secondary.then_some(Duration::from_secs(60)));
    let rate_limited = status == 403 && retry_after.is_some();
    if status == 408 || status == 429 || status >= 500 || rate_limited {
        DispatchError::Unavailable {
            status,
            message,
            retry_after,
        }
    } else {
        DispatchError::Rejected { status, message }
    }
}

/// The error message out of an API's error body: GitHub, Buildkite and
/// Azure DevOps put it in `message`, GitLab in `message` (a string, list or
/// object) or `error`, Tekton in `errorMessage`; anything else is shown as text, shortened.
pub fn api_message(body: &[u8]) -> String {
    let text = |s: &str| -> String {
        let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
        s.chars().take(300).collect()
    };
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let pick = v
            .get("message")
            .or_else(|| v.get("error"))
            .or_else(|| v.get("errorMessage"))
            .or_else(|| v.get("errors"));
        let extra = v
            .get("error_description")
            .and_then(Value::as_str)
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        match pick {
            Some(Value::String(s)) => return text(&format!("{s}{extra}")),
            Some(other) => return text(&other.to_string()),
            None => {}
        }
    }
    let raw = String::from_utf8_lossy(body);
    if raw.trim_start().starts_with('<') {
        // An HTML error page (Jenkins): its title says what went wrong.
        if let Some(t) = raw
            .split_once("<title>")
            .and_then(|(_, r)| r.split_once("</title>"))
        {
            return text(t.0);
        }
        return "(HTML error page)".into();
    }
    if raw.trim().is_empty() {
        return "(empty body)".into();
    }
    text(&raw)
}

/// Removes every credential from an error's text: a CI may echo what it
/// was sent.
pub fn scrub(e: DispatchError, secrets: &[String]) -> DispatchError {
    let clean = |s: String| scrub_text(&s, secrets);
    match e {
        DispatchError::Rejected { status, message } => DispatchError::Rejected {
            status,
            message: clean(message),
        },
        DispatchError::Unavailable {
            status,
            message,
            retry_after,
        } => DispatchError::Unavailable {
            status,
            message: clean(message),
            retry_after,
        },
        DispatchError::Network(m) => DispatchError::Network(clean(m)),
        DispatchError::Invalid(m) => DispatchError::Invalid(clean(m)),
        DispatchError::Failed(m) => DispatchError::Failed(clean(m)),
    }
}

/// `text` with every credential (of at least 4 characters) replaced by `***`.
pub fn scrub_text(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|x| x.len() >= 4)
        .fold(text.to_string(), |acc, x| acc.replace(x.as_str(), "***"))
}

/// The backend's token, or an error naming what is missing.
pub fn token(b: &Backend) -> Result<&str, DispatchError> {
    b.token
        .as_ref()
        .map(|t| t.expose())
        .ok_or_else(|| DispatchError::Invalid(format!("backend `{}` has no token", b.name)))
}

/// `base` without a trailing slash.
pub fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn permanent_and_retryable_answers() {
        let none = HeaderMap::new();
        for s in [400, 401, 403, 404, 422] {
            assert!(!classify(s, &none, b"{}").retryable(), "{s}");
        }
        for s in [408, 429, 500, 502, 503] {
            assert!(classify(s, &none, b"").retryable(), "{s}");
        }
        let e = classify(429, &hm(&[("retry-after", "7")]), b"");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        let reset = crate::store::now_millis() / 1000 + 30;
        let gh = hm(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &reset.to_string()),
        ]);
        let e = classify(403, &gh, br#"{"message":"API rate limit exceeded"}"#);
        assert!(e.retryable());
        let wait = e.retry_after().unwrap().as_secs();
        assert!((28..=31).contains(&wait), "{wait}");
        let e = classify(429, &hm(&[("ratelimit-reset", "12")]), b"");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(12)));
        let e = classify(
            403,
            &none,
            br#"{"message":"You have exceeded a secondary rate limit."}"#,
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(60)));
        let huge = classify(503, &hm(&[("retry-after", "999999")]), b"");
        assert_eq!(huge.retry_after(), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn messages_come_from_the_api_body() {
        assert_eq!(
            api_message(br#"{"message":"Not Found","documentation_url":"x"}"#),
            "Not Found"
        );
        assert_eq!(
            api_message(br#"{"message":{"base":["Reference not found"]}}"#),
            r#"{"base":["Reference not found"]}"#
        );
        assert_eq!(
            api_message(br#"{"error":"invalid_token","error_description":"Token was revoked."}"#),
            "invalid_token: Token was revoked."
        );
        assert_eq!(
            api_message(b"<html><head><title>Error 404 Not Found</title></head></html>"),
            "Error 404 Not Found"
        );
        assert_eq!(api_message(b""), "(empty body)");
    }

    #[test]
    fn credentials_are_scrubbed_from_errors() {
        let e = DispatchError::Rejected {
            status: 401,
            message: "bad token s3cr3t-tok".into(),
        };
        let e = scrub(e, &["s3cr3t-tok".into()]);
        assert_eq!(e.to_string(), "HTTP 401: bad token ***");
    }
}
