//! The HTTP API (axum): health, readiness and registry push hooks so far.

mod auth;
mod error;
mod hooks;
mod jobs;
mod read;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::config::Config;
use crate::store::Store;
use crate::watch::WatchHandle;

pub use error::ApiError;

/// Push bodies larger than this are refused with 413.
pub const MAX_HOOK_BODY: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    /// Built once from `cfg.images` (100,000 images take ~0.3 s).
    pub lineage: Arc<crate::lineage::Lineage>,
    pub store: Store,
    pub watch: Option<WatchHandle>,
    pub engine: Option<Arc<crate::rollout::Engine>>,
    /// Set once the store is migrated and the config synced.
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/images", get(read::images))
        .route("/api/v1/images/{*image}", get(read::image))
        .route("/api/v1/rollouts", get(read::rollouts))
        .route("/api/v1/rollouts/{id}", get(read::rollout))
        .route("/api/v1/jobs", get(read::jobs))
        .route("/api/v1/jobs/{id}", get(read::job))
        .route("/api/v1/jobs/{id}/retry", post(read::retry_job))
        .route("/api/v1/registries", get(read::registries))
        .route("/api/v1/graph", get(read::graph))
        .route("/api/v1/events", get(read::events))
        .route(
            "/api/v1/jobs/{id}/result",
            post(jobs::job_result).layer(DefaultBodyLimit::max(64 * 1024)),
        )
        .route(
            "/api/v1/hooks/registry/{source}",
            post(hooks::registry_hook).layer(DefaultBodyLimit::max(MAX_HOOK_BODY)),
        )
        .with_state(state)
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
