//! Jenkins: `POST {url}/job/{a}/job/{b}/buildWithParameters` with the
//! parameters as form fields; 201 with `Location` naming the queue item.
//!
//! With `username` + token: HTTP basic auth (an API token needs no CSRF
//! crumb). Without a username: a crumb from `/crumbIssuer/api/json` (bound
//! to the session cookie that came with it, so the cookie goes back too),
//! and the token, if any, as the job's remote-trigger `token` field.

use std::time::Duration;

use base64::Engine as _;
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::request::{Body, CiRequest, CiRun, DispatchError, Trigger, base};
use super::segment;
use crate::config::{Backend, BackendKind};

pub fn request(b: &Backend, t: &Trigger) -> Result<CiRequest, DispatchError> {
    let root = base(
        b.url
            .as_deref()
            .or(b.api_url.as_deref())
            .ok_or_else(|| DispatchError::Invalid("jenkins: no url".into()))?,
    );
    let job = t
        .build
        .job
        .as_deref()
        .ok_or_else(|| DispatchError::Invalid("jenkins: no job".into()))?;
    let path: String = job
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| format!("/job/{}", segment(s)))
        .collect();
    let url = format!("{root}{path}/buildWithParameters");
    let token = b.token.as_ref().map(|t| t.expose());
    let mut form: Vec<(String, String, bool)> =
        t.env().into_iter().map(|(k, v)| (k, v, false)).collect();
    let mut r;
    match (&b.username, token) {
        (Some(user), Some(tok)) => {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{tok}"));
            r = CiRequest::new(BackendKind::Jenkins, url, Body::Form(form)).secret_header(
                "authorization",
                format!("Basic {basic}"),
                tok,
            );
            r.secrets.push(basic);
        }
        (_, tok) => {
            if let Some(tok) = tok {
                form.push(("token".into(), tok.to_string(), true));
            }
            r = CiRequest::new(BackendKind::Jenkins, url, Body::Form(form));
            r.secrets.extend(tok.map(str::to_string));
            r.crumb_url = Some(format!("{root}/crumbIssuer/api/json"));
        }
    }
    Ok(r)
}

/// Fetches a CSRF crumb: `(request field, crumb, session cookie)`; `None`
/// when the server issues none (CSRF protection off: 404).
pub async fn crumb(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<Option<(String, String, Option<String>)>, DispatchError> {
    let r = http.get(url).timeout(timeout).send().await.map_err(|e| {
        DispatchError::Network(format!("crumb: {}", crate::error_chain(&e.without_url())))
    })?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = super::request::read_capped(r, 16 * 1024).await;
    if status == 404 {
        return Ok(None);
    }
    if !(200..300).contains(&status) {
        return Err(match super::request::classify(status, &headers, &body) {
            DispatchError::Rejected { status, message } => DispatchError::Rejected {
                status,
                message: format!("crumb issuer: {message}"),
            },
            other => other,
        });
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| DispatchError::Invalid(format!("crumb issuer answered no JSON: {e}")))?;
    let field = v["crumbRequestField"].as_str().unwrap_or("Jenkins-Crumb");
    let crumb = v["crumb"]
        .as_str()
        .ok_or_else(|| DispatchError::Invalid("crumb issuer answered no `crumb`".into()))?;
    // `Set-Cookie: JSESSIONID.x=…; Path=/; HttpOnly` → `JSESSIONID.x=…`
    let cookie: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next())
        .collect();
    let cookie = (!cookie.is_empty()).then(|| cookie.join("; "));
    Ok(Some((field.to_string(), crumb.to_string(), cookie)))
}

/// 201 `Location: {url}/queue/item/{n}/`: the queue item.
pub fn run(headers: &HeaderMap) -> CiRun {
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    CiRun {
        id: location.as_deref().and_then(|l| {
            l.trim_end_matches('/')
                .rsplit_once("/queue/item/")
                .map(|(_, n)| n.to_string())
        }),
        url: location,
        ..CiRun::default()
    }
}
