//! Operator actions (write role), each audited in the event log with the
//! token's name: rebuild an image, retry a job, cancel a rollout.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::auth::authorize;
use super::{ApiError, AppState, MAX_ACTION_BODY, P};
use crate::config::Role;
use crate::registry::ImageRef;
use crate::rollout::{CancelOutcome, RebuildError};
use crate::store::{NewEvent, StoreError, now_millis};

/// An optional JSON body `{"reason": "…"}`, kept in the audit event.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Why the operator acts (shown in the event log).
    pub reason: Option<String>,
}

pub(super) fn action_body(body: Result<Bytes, BytesRejection>) -> Result<ActionBody, ApiError> {
    let body = super::error::read_body(body, MAX_ACTION_BODY)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ActionBody::default());
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
}

pub(super) fn engine(s: &AppState) -> Result<&crate::rollout::Engine, ApiError> {
    s.engine.as_deref().ok_or_else(|| {
        ApiError::Conflict("rollouts are not running on this instance (--no-rollouts)".into())
    })
}

/// Rebuild an image and every managed descendant (a manual rollout).
#[utoipa::path(post, path = "/api/v1/images/{image}/rebuild", tag = "actions",
    params(("image" = String, Path, description = "Image reference, URL-encoded")),
    request_body(content = Option<ActionBody>, content_type = "application/json"),
    responses(
        (status = 202, description = "Rollout opened or joined", body = Object),
        (status = 400, description = "Malformed reference or body"),
        (status = 401, description = "No or unknown token"),
        (status = 403, description = "Read-only token"),
        (status = 404, description = "Image not tracked"),
        (status = 409, description = "Image cannot be rebuilt (external or no build)"),
        (status = 413, description = "Body too large"),
    ),
    security(("bearer" = [])))]
pub async fn rebuild(
    State(s): State<AppState>,
    headers: HeaderMap,
    P(raw): P<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let raw = raw.trim_start_matches('/');
    let Some(raw) = raw.strip_suffix("/rebuild") else {
        return Err(ApiError::NoRoute(format!(
            "no route POST /api/v1/images/{raw} (POST …/{{image}}/rebuild)"
        )));
    };
    let who = authorize(&s, &headers, Role::Write)?.unwrap_or_default();
    let body = action_body(body)?;
    let r = ImageRef::parse(raw).map_err(|e| ApiError::BadRequest(format!("image: {e}")))?;
    let engine = engine(&s)?;
    let (rollout, images) = engine
        .request_rebuild(&r, &who)
        .await
        .map_err(|e| match e {
            RebuildError::Unknown => ApiError::NotFound(format!("image {r} is not tracked")),
            RebuildError::NotBuildable => ApiError::Conflict(format!(
                "image {r} has no build (an external image, or managed without `build`)"
            )),
            RebuildError::Store(e) => e.into(),
        })?;
    audit(
        &s,
        "rebuild_requested",
        Some(r.to_string()),
        Some(rollout),
        None,
        &who,
        &body,
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "image": r.to_string(), "rollout_id": rollout, "images": images })),
    ))
}

/// Cancel a running rollout.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/cancel", tag = "actions",
    params(("id" = i64, Path, description = "Rollout id")),
    request_body(content = Option<ActionBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "Cancelled", body = Object),
        (status = 401, description = "No or unknown token"),
        (status = 403, description = "Read-only token"),
        (status = 404, description = "No such rollout"),
        (status = 409, description = "Rollout already finished"),
        (status = 413, description = "Body too large"),
    ),
    security(("bearer" = [])))]
pub async fn cancel_rollout(
    State(s): State<AppState>,
    headers: HeaderMap,
    P(id): P<i64>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = authorize(&s, &headers, Role::Write)?.unwrap_or_default();
    let body = action_body(body)?;
    match engine(&s)?.cancel_rollout(id, &who).await? {
        CancelOutcome::NotFound => Err(ApiError::NotFound(format!("rollout {id} not found"))),
        CancelOutcome::Finished(state) => Err(ApiError::Conflict(format!(
            "rollout {id} already finished ({state})"
        ))),
        CancelOutcome::Cancelled { images, jobs } => {
            audit(
                &s,
                "rollout_cancel_requested",
                None,
                Some(id),
                None,
                &who,
                &body,
            )
            .await?;
            Ok(Json(
                json!({ "rollout_id": id, "state": "cancelled", "images_cancelled": images, "jobs_cancelled": jobs }),
            ))
        }
    }
}

/// Run a failed, dead or cancelled job again.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "actions",
    params(("id" = i64, Path, description = "Job id")),
    request_body(content = Option<ActionBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "Pending again", body = Object),
        (status = 401, description = "No or unknown token"),
        (status = 403, description = "Read-only token"),
        (status = 404, description = "No such job"),
        (status = 409, description = "Job not failed, or a pending job has its key"),
        (status = 413, description = "Body too large"),
    ),
    security(("bearer" = [])))]
pub async fn retry_job(
    State(s): State<AppState>,
    headers: HeaderMap,
    P(id): P<i64>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = authorize(&s, &headers, Role::Write)?.unwrap_or_default();
    let body = action_body(body)?;
    s.store
        .retry_job(id, now_millis())
        .await
        .map_err(|e| match e {
            StoreError::JobNotFound(_) => ApiError::NotFound(format!("job {id} not found")),
            e @ (StoreError::InvalidState { .. } | StoreError::PendingExists { .. }) => {
                ApiError::Conflict(e.to_string())
            }
            e => e.into(),
        })?;
    audit(&s, "job_retried", None, None, Some(id), &who, &body).await?;
    Ok(Json(json!({ "job_id": id, "state": "pending" })))
}

async fn audit(
    s: &AppState,
    kind: &str,
    image: Option<String>,
    rollout_id: Option<i64>,
    job_id: Option<i64>,
    who: &str,
    body: &ActionBody,
) -> Result<(), ApiError> {
    let event = NewEvent {
        kind: kind.into(),
        image,
        rollout_id,
        job_id,
        data: json!({ "by": who, "reason": body.reason }),
    };
    s.store.append_event(&event, now_millis()).await?;
    tracing::info!(
        action = kind,
        by = who,
        rollout_id,
        job_id,
        "operator action"
    );
    Ok(())
}
