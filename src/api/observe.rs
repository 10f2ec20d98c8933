//! `GET /metrics`: Prometheus text format. Open unless `api.metrics_token`
//! is set; then it needs `Authorization: Bearer <metrics token>`.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::metrics::{esc, header as help, metrics as process};

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 401, description = "metrics_token is set and was not presented")))]
pub async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(want) = &s.cfg.api.metrics_token {
        super::auth::check_secret(&headers, want)?;
    }
    let mut out = String::with_capacity(16 * 1024);
    help(
        &mut out,
        "lineaged_build_info",
        "gauge",
        "Version of the running daemon.",
    );
    out.push_str(&format!(
        "lineaged_build_info{{version=\"{}\",backend=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION"),
        s.store.backend()
    ));
    help(
        &mut out,
        "lineaged_ready",
        "gauge",
        "1 once the store is migrated and the config synced.",
    );
    out.push_str(&format!(
        "lineaged_ready {}\n",
        u8::from(s.ready.load(std::sync::atomic::Ordering::Relaxed))
    ));
    process().render(&mut out);
    // Shared state, read from the store: every replica reports the same.
    let jobs = s.store.job_counts().await?;
    help(
        &mut out,
        "lineaged_jobs",
        "gauge",
        "Jobs in the queue, by state.",
    );
    for st in [
        "pending",
        "running",
        "succeeded",
        "failed",
        "dead",
        "cancelled",
    ] {
        let n = jobs.iter().find(|(k, _)| k == st).map_or(0, |(_, n)| *n);
        out.push_str(&format!("lineaged_jobs{{state=\"{st}\"}} {n}\n"));
    }
    let c = s.store.status_counts().await?;
    help(
        &mut out,
        "lineaged_images",
        "gauge",
        "Active tracked images, by kind.",
    );
    out.push_str(&format!(
        "lineaged_images{{kind=\"managed\"}} {}\n",
        c.images_managed
    ));
    out.push_str(&format!(
        "lineaged_images{{kind=\"external\"}} {}\n",
        c.images_external
    ));
    help(
        &mut out,
        "lineaged_stale_images",
        "gauge",
        "Managed images built on a base digest their parent no longer has.",
    );
    out.push_str(&format!("lineaged_stale_images {}\n", c.images_stale));
    help(
        &mut out,
        "lineaged_failing_images",
        "gauge",
        "Images whose last check failed.",
    );
    out.push_str(&format!("lineaged_failing_images {}\n", c.images_failing));
    help(
        &mut out,
        "lineaged_rollouts_running",
        "gauge",
        "Rollouts in progress.",
    );
    out.push_str(&format!(
        "lineaged_rollouts_running {}\n",
        c.rollouts_running
    ));
    let regs = s.store.registry_health().await?;
    help(
        &mut out,
        "lineaged_registry_up",
        "gauge",
        "1 when the registry's last call worked.",
    );
    for r in &regs {
        out.push_str(&format!(
            "lineaged_registry_up{{registry=\"{}\"}} {}\n",
            esc(&r.host),
            u8::from(r.consecutive_errors == 0)
        ));
    }
    help(
        &mut out,
        "lineaged_registry_consecutive_errors",
        "gauge",
        "Failed registry calls in a row.",
    );
    for r in &regs {
        out.push_str(&format!(
            "lineaged_registry_consecutive_errors{{registry=\"{}\"}} {}\n",
            esc(&r.host),
            r.consecutive_errors
        ));
    }
    help(
        &mut out,
        "lineaged_registry_ratelimit_remaining",
        "gauge",
        "Requests left in the registry's rate-limit window (when it says).",
    );
    for r in &regs {
        if let Some(n) = r.ratelimit_remaining {
            out.push_str(&format!(
                "lineaged_registry_ratelimit_remaining{{registry=\"{}\"}} {n}\n",
                esc(&r.host)
            ));
        }
    }
    help(
        &mut out,
        "lineaged_registry_ratelimit_limit",
        "gauge",
        "Size of the registry's rate-limit window (when it says).",
    );
    for r in &regs {
        if let Some(n) = r.ratelimit_limit {
            out.push_str(&format!(
                "lineaged_registry_ratelimit_limit{{registry=\"{}\"}} {n}\n",
                esc(&r.host)
            ));
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
