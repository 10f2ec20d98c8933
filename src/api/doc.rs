//! The OpenAPI 3.1 document, generated from the handlers' `utoipa::path`
//! annotations. `tests/api.rs` checks it against [`super::routes`] and
//! calls every operation it lists.

use axum::Json;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::{actions, approvals, graph, hooks, jobs, observe, read, ui};

#[derive(OpenApi)]
#[openapi(
    info(title = "lineaged", description = "Status API of lineaged: what it knows about image lineage, digests, rollouts and jobs, and why."),
    paths(
        ui::dashboard, healthz, readyz, openapi_json, observe::metrics,
        read::images, read::image, read::rollouts, read::rollout, read::jobs, read::job,
        read::registries, graph::graph, read::events, ui::asset,
        actions::rebuild, actions::cancel_rollout, actions::retry_job,
        approvals::list, approvals::approve, approvals::reject,
        jobs::job_result, hooks::registry_hook,
    ),
    modifiers(&Bearer),
)]
struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document (built on each call; it is small).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process runs", content_type = "text/plain")))]
#[allow(dead_code)]
fn healthz() {}

/// Readiness: 200 once the store is migrated and the config synced, and
/// while the database answers (within 2 s).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", content_type = "text/plain"),
        (status = 503, description = "Starting, or the database is unreachable (the body says which and why)")))]
#[allow(dead_code)]
fn readyz() {}
