//! Read endpoints under `/api/v1`: images, rollouts, jobs, registries and
//! the live event stream.

use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde_json::{Value, json};

use super::auth::authorize;
use super::{ApiError, AppState, P, Q};
use crate::config::Role;
use crate::registry::ImageRef;
use crate::rollout::{Cause, ChangeCause, JoinedData, RolloutState};
use crate::store::{EventRecord, ImageFilter, ImageStatus, JobRecord, JobState, RolloutImage};

const MAX_LIMIT: i64 = 1000;

pub(super) fn limit(l: Option<i64>) -> Result<i64, ApiError> {
    match l {
        None => Ok(100),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "limit must be 1..={MAX_LIMIT}, got {n}"
        ))),
    }
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImagesQuery {
    /// Page size, 1..=1000 (default 100).
    limit: Option<i64>,
    /// Cursor: the `next` of the previous page.
    after: Option<String>,
    /// Only managed (true) or only external (false) images.
    managed: Option<bool>,
    /// Only stale (true) or only fresh (false) images.
    stale: Option<bool>,
    /// Only images on this registry host, e.g. `docker.io`.
    registry: Option<String>,
    /// Only images in this state: rebuilding, error, stale, unchecked, ok.
    state: Option<String>,
}

/// A page of images.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ImagesPage {
    images: Vec<crate::store::ImageListed>,
    /// Cursor for the next page (`after=`), null on the last page.
    next: Option<String>,
}

/// List tracked images, by name.
#[utoipa::path(get, path = "/api/v1/images", tag = "images", params(ImagesQuery),
    responses((status = 200, body = ImagesPage), (status = 400, description = "Bad parameter"),
        (status = 401, description = "No or unknown token")),
    security(("bearer" = [])))]
pub async fn images(
    State(s): State<AppState>,
    headers: HeaderMap,
    Q(q): Q<ImagesQuery>,
) -> Result<Json<ImagesPage>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let n = limit(q.limit)?;
    let state = match q.state.as_deref() {
        Some(st) => Some(ImageStatus::parse(st).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "state: expected one of rebuilding, error, stale, unchecked, ok; got `{st}`"
            ))
        })?),
        None => None,
    };
    let registry = match q.registry.as_deref() {
        None => None,
        Some(r) => {
            let host = r.trim().trim_end_matches('/').to_ascii_lowercase();
            // Validated like the host part of a reference.
            ImageRef::parse(&format!("{host}/x"))
                .ok()
                .filter(|i| i.registry() == host)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("registry: not a registry host: `{r}`"))
                })?;
            Some(host)
        }
    };
    let filter = ImageFilter {
        managed: q.managed,
        registry,
        state,
        stale: q.stale,
    };
    let rows = s
        .store
        .images_page(q.after.as_deref().unwrap_or(""), n, &filter)
        .await?;
    let next = (rows.len() as i64 == n)
        .then(|| rows.last().map(|r| r.image.name.clone()))
        .flatten();
    Ok(Json(ImagesPage { images: rows, next }))
}

fn rfc3339(at: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| at.to_string())
}

fn short(d: &str) -> &str {
    // sha256: plus 12 hex digits, like `docker images`.
    d.get(..19).unwrap_or(d)
}

/// Why an image was (or is being) rebuilt: the chain from the image up to
/// the change that started it, read from its newest rollout and the events
/// that brought images into that rollout.
async fn cause_chain(
    s: &AppState,
    image: &ImageRef,
    entry: &RolloutImage,
) -> Result<Value, ApiError> {
    let rid = entry.rollout_id;
    let causes = s.store.rollout_causes(rid).await?;
    // What moved (newest change per image), who asked, what reconcile found.
    let mut moved: std::collections::HashMap<String, (ChangeCause, i64)> = Default::default();
    let mut requested: std::collections::HashMap<String, (String, i64)> = Default::default();
    let mut reconciled: std::collections::HashSet<String> = Default::default();
    for e in &causes {
        // The type the engine wrote (rollout::JoinedData), read back.
        let Some(joined) = JoinedData::parse(&e.data) else {
            continue;
        };
        match joined.cause {
            Cause::Change(c) => {
                moved.insert(c.image.clone(), (c, e.at));
            }
            Cause::Requested { requested: img, by } => {
                requested.insert(img, (by, e.at));
            }
            Cause::Reconcile { reconcile } => reconciled.extend(reconcile),
        }
    }
    let mut steps = Vec::new();
    let mut text = format!("{image} is in rollout {rid} ({})", entry.state);
    let mut cur = image.clone();
    for _ in 0..64 {
        let name = cur.to_string();
        if let Some((by, at)) = requested.get(&name) {
            let by = if by.is_empty() { "an operator" } else { by };
            steps.push(json!({ "image": name, "requested_by": by, "at": at }));
            text.push_str(&format!(
                ", because {by} requested a rebuild of {name} at {}",
                rfc3339(*at)
            ));
            break;
        }
        if reconciled.contains(&name) {
            steps.push(json!({ "image": name, "reconcile": "built on a base digest its parent no longer has" }));
            text.push_str(&format!(
                ", because {name} was built on an outdated base (reconcile)"
            ));
            break;
        }
        let parents = s.lineage.parents(&cur);
        if let Some(p) = parents.iter().find(|p| moved.contains_key(&p.to_string())) {
            let (c, at) = &moved[&p.to_string()];
            let (old, new, src) = (c.old.as_str(), c.new.as_str(), c.source.as_str());
            steps.push(json!({ "image": name, "because_parent": p.to_string() }));
            steps.push(json!({ "image": p.to_string(), "moved": { "from": old, "to": new, "at": at, "source": src } }));
            text.push_str(&format!(
                ", because {p} moved from {} to {} at {} ({src})",
                short(old),
                short(new),
                rfc3339(*at)
            ));
            break;
        }
        // Only the parents' rows: a rollout may hold thousands of images.
        let names: Vec<String> = parents.iter().map(ToString::to_string).collect();
        let rows = s.store.rollout_images_named(rid, &names).await?;
        let Some((p, pr)) = parents.iter().find_map(|p| {
            rows.iter()
                .find(|r| r.image == p.to_string())
                .map(|r| (p, r))
        }) else {
            steps.push(json!({ "image": name, "unknown": "no parent of it is in the rollout" }));
            break;
        };
        steps.push(json!({ "image": name, "because_parent": p.to_string(), "parent_state": pr.state, "parent_built_digest": pr.built_digest }));
        text.push_str(&format!(
            ", after its parent {p} ({}{})",
            pr.state,
            pr.built_digest
                .as_deref()
                .map(|d| format!(", built {}", short(d)))
                .unwrap_or_default()
        ));
        cur = p.clone();
    }
    Ok(
        json!({ "rollout_id": rid, "state": entry.state, "reason": entry.reason, "chain": steps, "text": text }),
    )
}

/// Whether an image is built on its parent's current digest.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Staleness {
    stale: bool,
    /// e.g. "built on docker.io/library/python:3.12-slim@sha256:…, which is now at sha256:…"
    why: Option<String>,
}

/// One digest observation.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Observation {
    digest: String,
    /// poll, push, callback or reconcile.
    source: String,
    at: i64,
}

/// Everything about one image, and why it was last rebuilt.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ImageDetail {
    image: crate::store::ImageState,
    parents: Vec<String>,
    children: Vec<String>,
    stale: Staleness,
    /// Why it was (or is being) rebuilt: `{rollout_id, state, reason,
    /// text, chain: [...]}`; null when no rollout included it.
    #[schema(value_type = Object, nullable)]
    cause: Value,
    /// Newest first (up to 10).
    digest_history: Vec<Observation>,
    /// Health of the image's registry, when it was ever called.
    registry: Option<crate::store::RegistryHealth>,
    /// Its newest jobs (up to 5).
    jobs: Vec<JobView>,
    /// Its entries in the newest rollouts (up to 5).
    rollouts: Vec<RolloutImage>,
    /// The newest supply-chain gate evaluations of its digests (up to 5):
    /// `{image, digest, purpose, rule, verdicts: [{gate, result, reason,
    /// evidence}]}`.
    #[schema(value_type = Vec<Object>)]
    gates: Vec<Value>,
}

/// One image: digest, lineage, staleness, history, registry health, jobs,
/// rollouts and why it was last rebuilt.
#[utoipa::path(get, path = "/api/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "Image reference, URL-encoded (normalised like the config: `python:3.12` is `docker.io/library/python:3.12`)")),
    responses((status = 200, description = "The image", body = ImageDetail),
        (status = 400, description = "Malformed reference"), (status = 401, description = "No or unknown token"),
        (status = 404, description = "Not tracked (the message has the normalised reference)")),
    security(("bearer" = [])))]
pub async fn image(
    State(s): State<AppState>,
    headers: HeaderMap,
    P(raw): P<String>,
) -> Result<Json<ImageDetail>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let r = ImageRef::parse(raw.trim_start_matches('/'))
        .map_err(|e| ApiError::BadRequest(format!("image: {e}")))?;
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
    let mut stale = Staleness {
        stale: false,
        why: None,
    };
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
                stale = Staleness {
                    stale: true,
                    why: Some(format!(
                        "built on {p}@{base}, which is now at {}",
                        current.unwrap_or_default()
                    )),
                };
            }
        }
    }
    // Independent reads, concurrently (each on its own pool connection).
    let (history, jobs, rollouts, health, gates) = tokio::try_join!(
        s.store.digest_history(&name, 10),
        s.store.jobs_for_image(&name, 5),
        s.store.rollout_entries_for_image(&name, 5),
        s.store.registry_health_of(r.registry()),
        s.store.gate_results_for(&name, 5),
    )?;
    let gates: Vec<Value> = gates
        .iter()
        .filter_map(|g| serde_json::from_str(g).ok())
        .collect();
    let jobs: Vec<JobView> = jobs.iter().map(job_view).collect();
    let cause = match rollouts.first() {
        Some(e) => cause_chain(&s, &r, e).await?,
        None => Value::Null,
    };
    Ok(Json(ImageDetail {
        image: state,
        parents,
        children,
        stale,
        cause,
        digest_history: history
            .into_iter()
            .map(|(digest, source, at)| Observation { digest, source, at })
            .collect(),
        registry: health,
        jobs,
        rollouts,
        gates,
    }))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1..=1000 (default 100).
    limit: Option<i64>,
    /// Cursor (jobs): the `next` of the previous page.
    after: Option<i64>,
    /// Jobs only: pending, running, succeeded, failed, dead, cancelled.
    state: Option<String>,
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RolloutsQuery {
    /// Page size, 1..=1000 (default 100).
    limit: Option<i64>,
    /// Cursor: the `next` of the previous page (older rollouts).
    after: Option<i64>,
    /// Only rollouts in this state: running, succeeded, failed,
    /// partially_failed, cancelled.
    state: Option<String>,
}

/// A page of rollouts, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RolloutsPage {
    rollouts: Vec<crate::store::RolloutRecord>,
    /// Cursor for the next (older) page, null on the last page.
    next: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/rollouts", tag = "rollouts", params(RolloutsQuery),
    responses((status = 200, description = "Newest rollouts first", body = RolloutsPage),
        (status = 400, description = "Bad parameter"), (status = 401, description = "No or unknown token")),
    security(("bearer" = [])))]
pub async fn rollouts(
    State(s): State<AppState>,
    headers: HeaderMap,
    Q(q): Q<RolloutsQuery>,
) -> Result<Json<RolloutsPage>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let n = limit(q.limit)?;
    if let Some(st) = q.state.as_deref()
        && RolloutState::parse(st).is_none()
    {
        let all: Vec<&str> = RolloutState::ALL.iter().map(|s| s.as_str()).collect();
        return Err(ApiError::BadRequest(format!(
            "state: expected one of {}; got `{st}`",
            all.join(", ")
        )));
    }
    let rows = s
        .store
        .rollouts_page(q.after, q.state.as_deref(), n)
        .await?;
    let next = (rows.len() as i64 == n)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Json(RolloutsPage {
        rollouts: rows,
        next,
    }))
}

#[utoipa::path(get, path = "/api/v1/rollouts/{id}", tag = "rollouts", params(("id" = i64, Path, description = "Rollout id")),
    responses((status = 200, description = "The rollout and its images by wave", body = RolloutDetail), (status = 404, description = "No such rollout")),
    security(("bearer" = [])))]
pub async fn rollout(
    State(s): State<AppState>,
    headers: HeaderMap,
    P(id): P<i64>,
) -> Result<Json<RolloutDetail>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let r = s
        .store
        .rollout(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("rollout {id} not found")))?;
    let images = s.store.rollout_images(id).await?;
    let waves = images.iter().map(|i| i.wave).max().unwrap_or(0);
    let by_wave: Vec<Vec<RolloutImage>> = (1..=waves)
        .map(|w| images.iter().filter(|i| i.wave == w).cloned().collect())
        .collect();
    // What started it and what joined it, as sentences with their times.
    let causes = s
        .store
        .rollout_causes(id)
        .await?
        .iter()
        .filter_map(|e| {
            JoinedData::parse(&e.data).map(|j| CauseLine {
                kind: e.kind.clone(),
                at: e.at,
                text: j.cause.sentence(),
            })
        })
        .collect();
    Ok(Json(RolloutDetail {
        rollout: r,
        causes,
        waves: by_wave,
    }))
}

/// A job as the API shows it (the callback token is never shown).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct JobView {
    id: i64,
    kind: String,
    image: Option<String>,
    rollout_id: Option<i64>,
    /// pending, running, succeeded, failed, dead, cancelled.
    state: String,
    attempt: i32,
    max_attempts: i32,
    run_at: i64,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
    locked_by: Option<String>,
    locked_until: Option<i64>,
    last_error: Option<String>,
    /// What CI answered to the trigger: `{delivered, status, duration_ms}`.
    #[schema(value_type = Object)]
    result: Value,
    enqueue_count: i32,
    /// Sent to CI as `webhook-id` (or `LINEAGED_IDEMPOTENCY_KEY`); the same
    /// on every retry.
    idempotency_key: String,
    /// The CI run the trigger started (its id as that CI names it), when
    /// the CI said.
    run_id: Option<String>,
    /// A link to that run.
    run_url: Option<String>,
    reasons: Vec<String>,
    #[schema(value_type = Object)]
    payload: Value,
}

fn job_view(j: &JobRecord) -> JobView {
    let mut payload: Value = serde_json::from_str(&j.payload).unwrap_or_default();
    if let Some(o) = payload.as_object_mut() {
        o.remove("callback_token");
    }
    let result: Value = j
        .result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(Value::Null);
    JobView {
        id: j.id,
        kind: j.kind.clone(),
        image: j.image.clone(),
        rollout_id: j.rollout_id,
        state: j.state.clone(),
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        run_at: j.run_at,
        run_id: j.run_id.clone(),
        run_url: j.run_url.clone(),
        created_at: j.created_at,
        updated_at: j.updated_at,
        finished_at: j.finished_at,
        locked_by: j.locked_by.clone(),
        locked_until: j.locked_until,
        last_error: j.last_error.clone(),
        result,
        enqueue_count: j.enqueue_count,
        idempotency_key: j.idempotency_key.clone(),
        reasons: j.reasons(),
        payload,
    }
}

/// A page of jobs, in id order.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct JobsPage {
    jobs: Vec<JobView>,
    /// Cursor for `after=` (the last id of this page).
    next: Option<i64>,
}

/// A rollout and its images by wave.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RolloutDetail {
    rollout: crate::store::RolloutRecord,
    /// What started the rollout and what joined it later, oldest first.
    causes: Vec<CauseLine>,
    /// `waves[0]` is wave 1.
    waves: Vec<Vec<RolloutImage>>,
}

/// One cause of a rollout, as a sentence.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CauseLine {
    /// The event: rollout_started, rollout_joined, rollout_requested or
    /// rollout_reconciled.
    kind: String,
    at: i64,
    /// e.g. "registry.example.com/base:1 moved from sha256:… to sha256:… (push)".
    text: String,
}

/// Every registry's health.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Registries {
    registries: Vec<crate::store::RegistryHealth>,
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, description = "Jobs in id order", body = JobsPage), (status = 400, description = "Unknown state")),
    security(("bearer" = [])))]
pub async fn jobs(
    State(s): State<AppState>,
    headers: HeaderMap,
    Q(q): Q<ListQuery>,
) -> Result<Json<JobsPage>, ApiError> {
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
    Ok(Json(JobsPage {
        jobs: rows.iter().map(job_view).collect(),
        next: rows.last().map(|j| j.id),
    }))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, description = "The job (attempts, last error, what CI answered, timings)", body = JobView), (status = 404, description = "No such job")),
    security(("bearer" = [])))]
pub async fn job(
    State(s): State<AppState>,
    headers: HeaderMap,
    P(id): P<i64>,
) -> Result<Json<JobView>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let j = s
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    Ok(Json(job_view(&j)))
}

#[utoipa::path(get, path = "/api/v1/registries", tag = "registries",
    responses((status = 200, description = "Health and rate-limit budget per registry", body = Registries)),
    security(("bearer" = [])))]
pub async fn registries(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Registries>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let mut registries = s.store.registry_health().await?;
    // Every registry lineaged talks to, checked or not yet.
    let mut hosts: Vec<String> = s.cfg.registries.iter().map(|r| r.host.clone()).collect();
    hosts.extend(s.cfg.images.iter().map(|i| i.name.registry().to_string()));
    hosts.sort();
    hosts.dedup();
    for host in hosts {
        if !registries.iter().any(|r| r.host == host) {
            registries.push(crate::store::RegistryHealth::unchecked(&host));
        }
    }
    registries.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(Json(Registries { registries }))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Start after this event id (like `Last-Event-ID`).
    after: Option<i64>,
    /// Without `after` or `Last-Event-ID`: start with the last `tail`
    /// events instead of the whole log (0 = only new events).
    tail: Option<i64>,
}

/// Server-sent events from the event log, oldest first, resumable with
/// `Last-Event-ID` (or `?after=`). One shared reader feeds every client
/// (`hub`); a client that falls behind reads the log at its own pace, so a
/// slow client never holds the daemon or other clients up.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "Server-sent events: `id` is the event id, `event` its kind, `data` the event as JSON", content_type = "text/event-stream", body = EventRecord)),
    security(("bearer" = [])))]
pub async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    Q(q): Q<EventsQuery>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let start = match (from_header.or(q.after), q.tail) {
        (Some(after), _) => after,
        (None, Some(tail)) if tail >= 0 => (s.store.last_event_id().await? - tail).max(0),
        (None, Some(tail)) => {
            return Err(ApiError::BadRequest(format!(
                "tail: must be >= 0, got {tail}"
            )));
        }
        (None, None) => 0,
    };
    let stream = futures_util::StreamExt::map(s.events.follow(s.store.clone(), start), |r| {
        Ok(Event::default()
            .id(r.id.to_string())
            .event(r.kind.clone())
            .data(serde_json::to_string(&r).unwrap_or_default()))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(s.cfg.api.sse_keepalive)))
}
