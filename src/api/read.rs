//! Read endpoints under `/api/v1`: images, rollouts, jobs, registries and
//! the live event stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde_json::{Value, json};

use super::auth::authorize;
use super::{ApiError, AppState};
use crate::config::Role;
use crate::registry::ImageRef;
use crate::store::{JobRecord, JobState};

const MAX_LIMIT: i64 = 1000;

fn limit(l: Option<i64>) -> Result<i64, ApiError> {
    match l {
        None => Ok(100),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "limit must be 1..={MAX_LIMIT}, got {n}"
        ))),
    }
}

#[derive(serde::Deserialize)]
pub struct ImagesQuery {
    limit: Option<i64>,
    after: Option<String>,
    managed: Option<bool>,
}

pub async fn images(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ImagesQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let n = limit(q.limit)?;
    let rows = s
        .store
        .images_page(q.after.as_deref().unwrap_or(""), n, q.managed)
        .await?;
    let next = (rows.len() as i64 == n)
        .then(|| rows.last().map(|r| r.name.clone()))
        .flatten();
    Ok(Json(json!({ "images": rows, "next": next })))
}

pub async fn image(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let r = ImageRef::parse(raw.trim_start_matches('/'))
        .map_err(|e| ApiError::BadRequest(format!("ref: {e}")))?;
    let name = r.to_string();
    let state = s
        .store
        .image_state(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("image {name} is not tracked")))?;
    let lineage = &s.lineage;
    let parents: Vec<String> = lineage
        .parents(&r)
        .iter()
        .map(ToString::to_string)
        .collect();
    let children: Vec<String> = lineage
        .children(&r)
        .iter()
        .map(ToString::to_string)
        .collect();
    // Stale: the recorded base digest is not the named parent's current one.
    let mut stale = json!({ "stale": false });
    if let Some(base) = &state.base_digest {
        for p in &parents {
            if state.base_name.as_ref().is_some_and(|n| n != p) {
                continue;
            }
            let current = s
                .store
                .image_state(p)
                .await?
                .and_then(|st| st.current_digest);
            if current.as_ref().is_some_and(|c| c != base) {
                stale = json!({ "stale": true, "why": format!("built on {p}@{base}, which is now at {}", current.unwrap_or_default()) });
            }
        }
    }
    let history = s.store.digest_history(&name, 10).await?;
    let jobs: Vec<Value> = s
        .store
        .jobs_for_image(&name, 5)
        .await?
        .iter()
        .map(job_json)
        .collect();
    let rollouts = s.store.rollout_entries_for_image(&name, 5).await?;
    let health = s
        .store
        .registry_health()
        .await?
        .into_iter()
        .find(|h| h.host == r.registry());
    Ok(Json(json!({
        "image": state,
        "parents": parents,
        "children": children,
        "stale": stale,
        "digest_history": history.iter().map(|(d, src, at)| json!({ "digest": d, "source": src, "at": at })).collect::<Vec<_>>(),
        "registry": health,
        "jobs": jobs,
        "rollouts": rollouts,
    })))
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    after: Option<i64>,
    state: Option<String>,
}

pub async fn rollouts(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    Ok(Json(
        json!({ "rollouts": s.store.rollouts(limit(q.limit)?).await? }),
    ))
}

pub async fn rollout(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let r = s
        .store
        .rollout(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("rollout {id} not found")))?;
    let images = s.store.rollout_images(id).await?;
    let waves = images.iter().map(|i| i.wave).max().unwrap_or(0);
    let by_wave: Vec<Vec<&crate::store::RolloutImage>> = (1..=waves)
        .map(|w| images.iter().filter(|i| i.wave == w).collect())
        .collect();
    Ok(Json(json!({ "rollout": r, "waves": by_wave })))
}

fn job_json(j: &JobRecord) -> Value {
    // The payload carries the callback token: never shown.
    let mut payload: Value = serde_json::from_str(&j.payload).unwrap_or_default();
    if let Some(o) = payload.as_object_mut() {
        o.remove("callback_token");
    }
    json!({
        "id": j.id, "kind": j.kind, "image": j.image, "rollout_id": j.rollout_id, "state": j.state,
        "attempt": j.attempt, "max_attempts": j.max_attempts, "run_at": j.run_at, "created_at": j.created_at,
        "finished_at": j.finished_at, "last_error": j.last_error, "reasons": j.reasons(), "payload": payload,
    })
}

pub async fn jobs(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let state = match q.state.as_deref() {
        None => None,
        Some(st) => Some(
            JobState::parse(st)
                .ok_or_else(|| ApiError::BadRequest(format!("state: unknown job state `{st}`")))?,
        ),
    };
    let rows = s
        .store
        .jobs(state, q.after.unwrap_or(0), limit(q.limit)?)
        .await?;
    Ok(Json(
        json!({ "jobs": rows.iter().map(job_json).collect::<Vec<_>>(), "next": rows.last().map(|j| j.id) }),
    ))
}

pub async fn job(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let j = s
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    Ok(Json(job_json(&j)))
}

pub async fn registries(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    Ok(Json(
        json!({ "registries": s.store.registry_health().await? }),
    ))
}

#[derive(serde::Deserialize)]
pub struct EventsQuery {
    after: Option<i64>,
}

/// Server-sent events from the event log, oldest first, resumable with
/// `Last-Event-ID` (or `?after=`). Each client reads the log at its own
/// pace, so a slow client never holds the daemon up.
pub async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let start = from_header.or(q.after).unwrap_or(0);
    let store = s.store.clone();
    let stream = futures_util::stream::unfold(
        (store, start, Vec::new()),
        |(store, mut last, mut buf)| async move {
            loop {
                if let Some(e) = buf.pop() {
                    return Some((Ok(e), (store, last, buf)));
                }
                match store.events_after(last, 200).await {
                    Ok(rows) if !rows.is_empty() => {
                        last = rows.last().map_or(last, |r| r.id);
                        buf = rows
                            .into_iter()
                            .rev()
                            .map(|r| {
                                Event::default()
                                    .id(r.id.to_string())
                                    .event(r.kind.clone())
                                    .data(serde_json::to_string(&r).unwrap_or_default())
                            })
                            .collect();
                    }
                    _ => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `POST /api/v1/jobs/{id}/retry` (write role): a failed, dead or cancelled
/// job runs again; audited in the event log with the token's name.
pub async fn retry_job(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    let who = authorize(&s, &headers, Role::Write)?.unwrap_or_default();
    let now = crate::store::now_millis();
    s.store.retry_job(id, now).await.map_err(|e| match e {
        crate::store::StoreError::JobNotFound(_) => {
            ApiError::NotFound(format!("job {id} not found"))
        }
        e @ (crate::store::StoreError::InvalidState { .. }
        | crate::store::StoreError::PendingExists { .. }) => ApiError::Conflict(e.to_string()),
        e => ApiError::Internal(Box::new(e)),
    })?;
    let event = crate::store::NewEvent {
        kind: "job_retried".into(),
        image: None,
        rollout_id: None,
        job_id: Some(id),
        data: json!({ "by": who }),
    };
    s.store.append_event(&event, now).await?;
    Ok(Json(json!({ "job_id": id, "state": "pending" })))
}

#[derive(serde::Deserialize)]
pub struct GraphQuery {
    format: Option<String>,
}

/// `GET /api/v1/graph`: the lineage as JSON, or `?format=dot|mermaid` as text.
pub async fn graph(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<GraphQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    authorize(&s, &headers, Role::Read)?;
    let lineage = &s.lineage;
    let (format, content_type) = match q.format.as_deref().unwrap_or("json") {
        "json" => (crate::lineage::GraphFormat::Json, "application/json"),
        "dot" => (
            crate::lineage::GraphFormat::Dot,
            "text/vnd.graphviz; charset=utf-8",
        ),
        "mermaid" => (
            crate::lineage::GraphFormat::Mermaid,
            "text/plain; charset=utf-8",
        ),
        other => {
            return Err(ApiError::BadRequest(format!(
                "format: expected json, dot or mermaid, got `{other}`"
            )));
        }
    };
    Ok((
        [(axum::http::header::CONTENT_TYPE, content_type)],
        lineage.render(format),
    )
        .into_response())
}
