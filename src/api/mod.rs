//! The HTTP API (axum): health, the status API under `/api/v1` (read
//! endpoints, live events, operator actions), registry push hooks, CI
//! callbacks, `/metrics` and the OpenAPI document.
//!
//! Every route is declared once in [`routes`]: the router is built from that
//! table and the OpenAPI document is tested against it.

mod actions;
mod approvals;
mod auth;
mod doc;
mod error;
mod graph;
mod hooks;
mod hub;
mod jobs;
mod observe;
mod read;
mod ui;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};

use crate::config::Config;
use crate::store::Store;
use crate::watch::WatchHandle;

pub use doc::openapi;
pub use error::{ApiError, P, Q};
pub use hub::EventHub;

/// Push bodies larger than this are refused with 413.
pub const MAX_HOOK_BODY: usize = 1024 * 1024;
/// Operator action and CI callback bodies larger than this get 413.
pub const MAX_ACTION_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    /// Built once from `cfg.images` (100,000 images take ~0.3 s).
    pub lineage: Arc<crate::lineage::Lineage>,
    pub store: Store,
    pub watch: Option<WatchHandle>,
    pub engine: Option<Arc<crate::rollout::Engine>>,
    /// The registry client callbacks check reported digests with.
    pub registry: Option<Arc<crate::registry::RegistryClient>>,
    /// Set once the store is migrated and the config synced.
    pub ready: Arc<AtomicBool>,
    /// Shared reader of the event log for SSE clients.
    pub events: Arc<EventHub>,
}

/// One route: method, axum path, the path as the OpenAPI document writes
/// it, and the handler with its body limit.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub doc_path: &'static str,
    handler: MethodRouter<AppState>,
}

fn route(
    method: Method,
    path: &'static str,
    doc_path: &'static str,
    handler: MethodRouter<AppState>,
) -> Route {
    Route {
        method,
        path,
        doc_path,
        handler,
    }
}

/// Every route the daemon serves.
pub fn routes() -> Vec<Route> {
    let limit = |n| DefaultBodyLimit::max(n);
    vec![
        route(Method::GET, "/", "/", get(ui::dashboard)),
        route(Method::GET, "/ui/{file}", "/ui/{file}", get(ui::asset)),
        route(Method::GET, "/healthz", "/healthz", get(healthz)),
        route(Method::GET, "/readyz", "/readyz", get(readyz)),
        route(Method::GET, "/metrics", "/metrics", get(observe::metrics)),
        route(
            Method::GET,
            "/api/v1/openapi.json",
            "/api/v1/openapi.json",
            get(doc::openapi_json),
        ),
        route(
            Method::GET,
            "/api/v1/images",
            "/api/v1/images",
            get(read::images),
        ),
        // A reference has slashes: `{*image}` takes it URL-encoded or not.
        // POST is the rebuild action (`…/{image}/rebuild`).
        route(
            Method::GET,
            "/api/v1/images/{*image}",
            "/api/v1/images/{image}",
            get(read::image),
        ),
        route(
            Method::POST,
            "/api/v1/images/{*image}",
            "/api/v1/images/{image}/rebuild",
            post(actions::rebuild).layer(limit(MAX_ACTION_BODY)),
        ),
        route(
            Method::GET,
            "/api/v1/rollouts",
            "/api/v1/rollouts",
            get(read::rollouts),
        ),
        route(
            Method::GET,
            "/api/v1/rollouts/{id}",
            "/api/v1/rollouts/{id}",
            get(read::rollout),
        ),
        route(
            Method::POST,
            "/api/v1/rollouts/{id}/cancel",
            "/api/v1/rollouts/{id}/cancel",
            post(actions::cancel_rollout).layer(limit(MAX_ACTION_BODY)),
        ),
        route(Method::GET, "/api/v1/jobs", "/api/v1/jobs", get(read::jobs)),
        route(
            Method::GET,
            "/api/v1/approvals",
            "/api/v1/approvals",
            get(approvals::list),
        ),
        route(
            Method::POST,
            "/api/v1/approvals/{id}/approve",
            "/api/v1/approvals/{id}/approve",
            post(approvals::approve).layer(limit(MAX_ACTION_BODY)),
        ),
        route(
            Method::POST,
            "/api/v1/approvals/{id}/reject",
            "/api/v1/approvals/{id}/reject",
            post(approvals::reject).layer(limit(MAX_ACTION_BODY)),
        ),
        route(
            Method::GET,
            "/api/v1/jobs/{id}",
            "/api/v1/jobs/{id}",
            get(read::job),
        ),
        route(
            Method::POST,
            "/api/v1/jobs/{id}/retry",
            "/api/v1/jobs/{id}/retry",
            post(actions::retry_job).layer(limit(MAX_ACTION_BODY)),
        ),
        route(
            Method::POST,
            "/api/v1/jobs/{id}/result",
            "/api/v1/jobs/{id}/result",
            post(jobs::job_result).layer(limit(MAX_ACTION_BODY)),
        ),
        route(
            Method::GET,
            "/api/v1/registries",
            "/api/v1/registries",
            get(read::registries),
        ),
        route(
            Method::GET,
            "/api/v1/graph",
            "/api/v1/graph",
            get(graph::graph),
        ),
        route(
            Method::GET,
            "/api/v1/events",
            "/api/v1/events",
            get(read::events),
        ),
        route(
            Method::POST,
            "/api/v1/hooks/registry/{source}",
            "/api/v1/hooks/registry/{source}",
            post(hooks::registry_hook).layer(limit(MAX_HOOK_BODY)),
        ),
    ]
}

pub fn router(state: AppState) -> Router {
    let mut r: Router<AppState> = Router::new();
    // Two table rows may share an axum path (GET and POST on `{*image}`).
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for rt in routes() {
        match by_path.iter_mut().find(|(p, _)| *p == rt.path) {
            Some((_, m)) => *m = std::mem::take(m).merge(rt.handler),
            None => by_path.push((rt.path, rt.handler)),
        }
    }
    for (p, m) in by_path {
        r = r.route(p, m);
    }
    let cors = cors(&state.cfg.api.cors_origins);
    let r = r
        .fallback(fallback)
        .route_layer(axum::middleware::from_fn(track))
        .with_state(state);
    match cors {
        Some(c) => r.layer(c),
        None => r,
    }
}

/// CORS for browser dashboards: the configured origins (or `*`) may call
/// the API with a bearer token; nothing when none is configured.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

/// Counts requests by route template and status (never the raw path).
async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let resp = next.run(req).await;
    crate::metrics::metrics().http(
        method.as_str(),
        &route,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

async fn fallback(method: Method, uri: axum::http::Uri) -> Response {
    crate::metrics::metrics().http(method.as_str(), "unmatched", 404, 0.0);
    ApiError::NoRoute(format!("no route {method} {}", uri.path())).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// How long readiness waits for the database.
const READY_PING: std::time::Duration = std::time::Duration::from_secs(2);

/// Ready once migrated and synced, and while the database answers: a
/// replica that lost it leaves the load balancer until it is back.
async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    if !s.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into());
    }
    match tokio::time::timeout(READY_PING, s.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreachable: {}\n", crate::error_chain(&e)),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "database unreachable: no answer in {} s\n",
                READY_PING.as_secs()
            ),
        ),
    }
}
