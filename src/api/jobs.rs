//! `POST /api/v1/jobs/{id}/result?token=…`: the CI (or deploy receiver)
//! callback.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::registry::ImageRef;
use crate::rollout::{JobKind, JobPayload, JobResult};
use crate::store::{DigestSource, Observation, now_millis};

#[derive(serde::Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

#[derive(serde::Deserialize)]
struct ResultBody {
    status: String,
    digest: Option<String>,
    log_url: Option<String>,
}

/// CI reports a build's (or a deploy's) result; the callback URL carries
/// the job's token. A build's reported digest must be what the image's tag
/// points at in the registry (without one, the tag's digest is taken).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/result", tag = "jobs",
    params(("id" = i64, Path, description = "Job id"),
        ("token" = String, Query, description = "The callback token the trigger carried")),
    request_body(content = Object, content_type = "application/json",
        description = "`{\"status\": \"succeeded\"|\"failed\", \"digest\": \"sha256:…\", \"log_url\": \"…\"}`"),
    responses((status = 200, description = "Recorded; the image's state", body = Object),
        (status = 400, description = "Malformed result"), (status = 401, description = "Missing or wrong token"),
        (status = 404, description = "No such job"),
        (status = 409, description = "The reported digest is not what the tag points at"),
        (status = 413, description = "Body too large"),
        (status = 503, description = "The registry cannot be asked now; retry")))]
pub async fn job_result(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<TokenQuery>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let job = s
        .store
        .job(id)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let job = job.ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    let payload = JobPayload::decode(&job.kind, &job.payload).ok();
    let want = payload.as_ref().map_or("", |p| p.callback_token());
    let got = q.token.unwrap_or_default();
    if want.is_empty() || !bool::from(got.as_bytes().ct_eq(want.as_bytes())) {
        return Err(ApiError::Unauthorized(
            "missing or wrong callback token".into(),
        ));
    }
    let body = super::error::read_body(body, super::MAX_ACTION_BODY)?;
    let r: ResultBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed result: {e}")))?;
    if let Some(d) = &r.digest
        && crate::registry::validate_digest(d).is_err()
    {
        return Err(ApiError::BadRequest(format!("invalid digest `{d}`")));
    }
    let Some(engine) = &s.engine else {
        return Err(ApiError::NotFound(
            "rollouts are not running on this instance".into(),
        ));
    };
    let what = if JobKind::parse(&job.kind) == Some(JobKind::Deploy) {
        "deploy"
    } else {
        "build"
    };
    let result = match r.status.as_str() {
        "succeeded" => JobResult::Succeeded {
            digest: r.digest.clone(),
        },
        "failed" => JobResult::Failed {
            reason: r
                .log_url
                .clone()
                .map_or(format!("CI reported the {what} failed"), |u| {
                    format!("CI reported the {what} failed: {u}")
                }),
        },
        other => {
            return Err(ApiError::BadRequest(format!(
                "status must be succeeded or failed, got `{other}`"
            )));
        }
    };
    // A build's result: check the digest against the registry before it
    // moves the rollout, and record what the tag now points at.
    let result = match (&result, &job.image, JobKind::parse(&job.kind)) {
        (JobResult::Succeeded { digest }, Some(image), Some(JobKind::Rebuild)) => {
            let built = check_built(&s, image, digest.as_deref()).await?;
            JobResult::Succeeded {
                digest: Some(built),
            }
        }
        _ => result,
    };
    let state = engine
        .finish_job(id, result)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let state =
        state.ok_or_else(|| ApiError::NotFound(format!("job {id} is not part of a rollout")))?;
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({ "job_id": id, "image": job.image, "state": state })),
    ))
}

/// Resolves `image`'s tag; the reported digest (if any) must be its top-level
/// digest. Records the observation (source `callback`) and returns the
/// built digest.
async fn check_built(
    s: &AppState,
    image: &str,
    reported: Option<&str>,
) -> Result<String, ApiError> {
    let reference = ImageRef::parse(image)
        .map_err(|e| ApiError::Internal(Box::new(std::io::Error::other(e.to_string()))))?;
    let platforms = s
        .engine
        .as_ref()
        .and_then(|e| e.config_image(image))
        .map(|i| i.platforms.clone())
        .unwrap_or_default();
    let Some(client) = &s.registry else {
        // No registry access here: trust the report as before.
        return reported
            .map(str::to_string)
            .ok_or_else(|| ApiError::Conflict("no digest reported and no registry to ask".into()));
    };
    let asked_at = now_millis();
    let res = match client.resolve(&reference, &platforms).await {
        Ok(r) => r,
        Err(e) if e.retryable() => {
            return Err(ApiError::Unavailable(format!(
                "cannot check the built image in its registry now ({}); retry",
                e.metric_label()
            )));
        }
        Err(e) => {
            return Err(ApiError::Conflict(format!(
                "the built image {image} cannot be read from its registry: {e}"
            )));
        }
    };
    if let Some(d) = reported
        && d != res.digest
    {
        return Err(ApiError::Conflict(format!(
            "reported digest {d} is not what {image} points at ({}); push the image before reporting",
            res.digest
        )));
    }
    let tracked = res.tracked();
    let platform = platforms
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let o = Observation {
        image,
        digest: &tracked,
        top_digest: Some(&res.digest),
        asked_at,
        platform: &platform,
        source: DigestSource::Callback,
        settle_ms: 0,
        base: None,
    };
    s.store.observe(&o, now_millis()).await?;
    Ok(res.digest)
}
