//! The Flux deploy: a POST to a notification-controller Receiver of type
//! `generic-hmac` (`/hook/<sha256 of token+name+namespace>`), signed
//! `X-Signature: sha256=<hex HMAC-SHA256 of the body>` with the
//! Receiver's token, which Flux checks with go-github's `ValidateSignature`.
//! A 2xx means Flux reconciles the Receiver's resources now; what it
//! deploys is what Git (or an ImagePolicy) says, so the workload must
//! reference the image by a tag the rebuild moved, or be updated in Git.

use serde_json::json;

use crate::config::{Backend, BackendKind};
use crate::dispatch::request::{Body, CiRequest, DispatchError, base};
use crate::rollout::DeployPayload;
use crate::store::JobRecord;

pub fn request(
    b: &Backend,
    job: &JobRecord,
    p: &DeployPayload,
) -> Result<CiRequest, DispatchError> {
    let url = base(
        b.url
            .as_deref()
            .ok_or_else(|| DispatchError::Invalid("flux: no url".into()))?,
    )
    .to_string();
    let secret = b
        .secret
        .as_ref()
        .ok_or_else(|| DispatchError::Invalid("flux: no secret (the Receiver's token)".into()))?;
    let body = serde_json::to_vec(&json!({
        "type": "deploy",
        "image": p.image,
        "digest": p.digest,
        "rollout_id": p.rollout_id,
        "job_id": job.id,
        "idempotency_key": job.idempotency_key,
    }))
    .unwrap_or_default();
    let mut r = CiRequest::new(BackendKind::Flux, url, Body::Json(body.clone())).header(
        "x-signature",
        crate::dispatch::tekton::signature(secret.expose().as_bytes(), &body),
    );
    r.secrets.push(secret.expose().to_string());
    Ok(r)
}
