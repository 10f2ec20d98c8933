//! Approvals: list them (read role), approve or reject one (write role,
//! audited with the token's name).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;

use super::actions::{ActionBody, action_body, engine};
use super::auth::authorize;
use super::{ApiError, AppState, P, Q};
use crate::config::Role;
use crate::rollout::Decision;
use crate::store::ApprovalRecord;

const STATES: [&str; 5] = ["pending", "approved", "rejected", "expired", "superseded"];

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApprovalsQuery {
    /// pending, approved, rejected, expired or superseded (default: all).
    state: Option<String>,
    /// Page size, 1..=1000 (default 100).
    limit: Option<i64>,
}

/// Approvals, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Approvals {
    approvals: Vec<ApprovalRecord>,
}

#[utoipa::path(get, path = "/api/v1/approvals", tag = "approvals", params(ApprovalsQuery),
    responses((status = 200, description = "Approvals, newest first", body = Approvals), (status = 400, description = "Unknown state")),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    Q(q): Q<ApprovalsQuery>,
) -> Result<Json<Approvals>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    if let Some(st) = q.state.as_deref()
        && !STATES.contains(&st)
    {
        return Err(ApiError::BadRequest(format!(
            "state: unknown approval state `{st}` (one of {})",
            STATES.join(", ")
        )));
    }
    let limit = super::read::limit(q.limit)?;
    let approvals = s.store.approvals(q.state.as_deref(), limit).await?;
    Ok(Json(Approvals { approvals }))
}

/// Approve: the image goes on to its deploy (or build).
#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", tag = "approvals",
    params(("id" = i64, Path, description = "Approval id")),
    request_body(content = Option<ActionBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "Approved", body = ApprovalRecord),
        (status = 401, description = "No or unknown token"),
        (status = 403, description = "Read-only token"),
        (status = 404, description = "No such approval"),
        (status = 409, description = "Already decided, expired or superseded"),
    ),
    security(("bearer" = [])))]
pub async fn approve(
    State(s): State<AppState>,
    headers: HeaderMap,
    P(id): P<i64>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ApprovalRecord>, ApiError> {
    decide(s, headers, id, body, true).await
}

/// Reject: the image is refused and its children are blocked.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/reject", tag = "approvals",
    params(("id" = i64, Path, description = "Approval id")),
    request_body(content = Option<ActionBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "Rejected", body = ApprovalRecord),
        (status = 401, description = "No or unknown token"),
        (status = 403, description = "Read-only token"),
        (status = 404, description = "No such approval"),
        (status = 409, description = "Already decided, expired or superseded"),
    ),
    security(("bearer" = [])))]
pub async fn reject(
    State(s): State<AppState>,
    headers: HeaderMap,
    P(id): P<i64>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ApprovalRecord>, ApiError> {
    decide(s, headers, id, body, false).await
}

async fn decide(
    s: AppState,
    headers: HeaderMap,
    id: i64,
    body: Result<Bytes, BytesRejection>,
    approve: bool,
) -> Result<Json<ApprovalRecord>, ApiError> {
    let who = authorize(&s, &headers, Role::Write)?.unwrap_or_default();
    let body = action_body(body)?;
    match engine(&s)?
        .decide_approval(id, approve, &who, body.reason.as_deref())
        .await?
    {
        Decision::NotFound => Err(ApiError::NotFound(format!("approval {id} not found"))),
        Decision::AlreadyDecided(state) => Err(ApiError::Conflict(format!(
            "approval {id} is {state}, not pending"
        ))),
        Decision::Decided(a) => Ok(Json(a)),
    }
}
