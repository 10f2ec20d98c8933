//! The generic webhook backend: a JSON body signed per the Standard
//! Webhooks spec (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::request::{Body, CiRequest, CiRun, DispatchError, Trigger};
use crate::config::{Backend, BackendKind};
use crate::rollout::DeployPayload;
use crate::store::JobRecord;

/// The JSON body of a rebuild delivery (also Tekton's):
/// `{type, kind, job_id, image, parents: [{name, digest}], rollout_id,
/// callback_url, idempotency_key, build, attempt}`.
pub fn rebuild_body(t: &Trigger) -> Value {
    json!({
        "type": "rebuild",
        "kind": "rebuild",
        "job_id": t.job_id,
        "image": t.image,
        "parents": t.parents,
        "rollout_id": t.rollout_id,
        "callback_url": t.callback_url,
        "idempotency_key": t.idempotency_key,
        "build": t.build,
        "attempt": t.attempt,
    })
}

/// The JSON body of a deploy delivery: `{type, kind, job_id, image, digest
/// (the built digest), app, environment, inputs, rollout_id, callback_url,
/// attempt}`.
pub fn deploy_body(job: &JobRecord, p: &DeployPayload, callback_url: &str) -> Value {
    json!({
        "type": "deploy",
        "kind": "deploy",
        "job_id": job.id,
        "image": p.image,
        "digest": p.digest,
        "app": p.deploy.app,
        "environment": p.deploy.environment,
        "inputs": p.deploy.inputs,
        "rollout_id": p.rollout_id,
        "callback_url": callback_url,
        "attempt": job.attempt,
    })
}

/// A signed delivery of `body` to the backend's `url`: `webhook-id` is the
/// job's idempotency key on every attempt.
pub fn request(b: &Backend, id: &str, body: &Value) -> Result<CiRequest, DispatchError> {
    let url = b
        .url
        .clone()
        .ok_or_else(|| DispatchError::Invalid("webhook backend has no url".into()))?;
    let body = serde_json::to_vec(body).unwrap_or_default();
    let ts = crate::store::now_millis() / 1000;
    let mut r = CiRequest::new(BackendKind::Webhook, url, Body::Json(body.clone()))
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string());
    if let Some(secret) = &b.secret {
        let key = signing_key(secret.expose());
        r = r.header("webhook-signature", sign(&key, id, ts, &body));
        r.secrets.push(secret.expose().to_string());
    }
    Ok(r)
}

/// A receiver may answer with the run it started: `{"id", "url"}` (or
/// `run_id`/`run_url`); anything else records nothing.
pub fn run(body: &Value) -> CiRun {
    CiRun {
        id: body
            .get("run_id")
            .or_else(|| body.get("id"))
            .map(super::id_text),
        url: body
            .get("run_url")
            .or_else(|| body.get("url"))
            .and_then(Value::as_str)
            .map(str::to_string),
        ..CiRun::default()
    }
}

/// The signing key: `whsec_<base64>` keys are decoded, anything else is
/// used as raw bytes.
pub fn signing_key(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|_| secret.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    }
}

/// `v1,<base64 signature>` for one delivery.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// Checks a `webhook-signature` header (which may list several
/// space-separated signatures) in constant time. For receivers and tests.
pub fn verify(key: &[u8], id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    use subtle::ConstantTimeEq;
    let want = sign(key, id, timestamp, body);
    header
        .split_whitespace()
        .any(|s| bool::from(s.as_bytes().ct_eq(want.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's examples.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let ts = 1614265330;
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, id, ts, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(verify(
            &key,
            id,
            ts,
            body,
            "v1,bogus v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
        assert!(!verify(
            &key,
            id,
            ts + 1,
            body,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
        assert_eq!(signing_key("raw-secret"), b"raw-secret");
    }
}
