//! Tekton Triggers: the generic JSON body POSTed to an EventListener,
//! signed the way Tekton's GitHub interceptor checks
//! (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`) when a
//! secret is set; 202 with the `eventID`.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::request::{CiRequest, CiRun, DispatchError, Trigger, base};
use crate::config::{Backend, BackendKind};

/// The `X-GitHub-Event` sent, so a GitHub interceptor's `eventTypes` can
/// select lineaged's events.
pub const EVENT: &str = "lineaged-rebuild";

pub fn request(b: &Backend, t: &Trigger) -> Result<CiRequest, DispatchError> {
    let url = base(
        b.url
            .as_deref()
            .or(b.api_url.as_deref())
            .ok_or_else(|| DispatchError::Invalid("tekton: no url".into()))?,
    )
    .to_string();
    let body = serde_json::to_vec(&super::webhook::rebuild_body(t)).unwrap_or_default();
    let mut r = CiRequest::new(
        BackendKind::Tekton,
        url,
        super::request::Body::Json(body.clone()),
    )
    .header("x-github-event", EVENT)
    .header("webhook-id", t.idempotency_key);
    if let Some(secret) = &b.secret {
        r = r.header(
            "x-hub-signature-256",
            signature(secret.expose().as_bytes(), &body),
        );
        r.secrets.push(secret.expose().to_string());
    }
    Ok(r)
}

/// `sha256=<hex>` over the raw body.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// 202: the `eventID` (the EventListener's log key for this event).
pub fn run(body: &Value) -> CiRun {
    CiRun {
        id: body.get("eventID").map(super::id_text),
        ..CiRun::default()
    }
}
