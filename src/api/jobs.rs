//! `POST /api/v1/jobs/{id}/result?token=…`: the CI callback.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::rollout::BuildResult;
use crate::store::{DigestSource, now_millis};

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

/// CI reports a build's result (the callback URL carries the job's token).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/result", tag = "jobs",
    params(("id" = i64, Path, description = "Job id"),
        ("token" = String, Query, description = "The callback token the trigger carried")),
    request_body(content = Object, content_type = "application/json",
        description = "`{\"status\": \"succeeded\"|\"failed\", \"digest\": \"sha256:…\", \"log_url\": \"…\"}`"),
    responses((status = 200, description = "Recorded; the image's state", body = Object),
        (status = 400, description = "Malformed result"), (status = 401, description = "Missing or wrong token"),
        (status = 404, description = "No such job"), (status = 413, description = "Body too large")))]
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
    let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap_or_default();
    let want = payload
        .get("callback_token")
        .and_then(|t| t.as_str())
        .unwrap_or("");
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
    let result = match r.status.as_str() {
        "succeeded" => BuildResult::Succeeded {
            digest: r.digest.clone(),
        },
        "failed" => BuildResult::Failed {
            reason: r.log_url.clone().map_or("CI reported failure".into(), |u| {
                format!("CI reported failure: {u}")
            }),
        },
        other => {
            return Err(ApiError::BadRequest(format!(
                "status must be succeeded or failed, got `{other}`"
            )));
        }
    };
    let Some(engine) = &s.engine else {
        return Err(ApiError::NotFound(
            "rollouts are not running on this instance".into(),
        ));
    };
    if let (BuildResult::Succeeded { digest: Some(d) }, Some(image)) = (&result, &job.image) {
        // The new digest is observed (history) before the result moves the rollout.
        let _ = s
            .store
            .record_digest(image, d, "", DigestSource::Callback, now_millis())
            .await;
    }
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
