//! Registry health and per-image check results, for status and backoff.

use super::{Millis, Store, StoreError, on_pool};

/// A registry's health as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct RegistryHealth {
    pub host: String,
    pub state: String,
    pub consecutive_errors: i32,
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
    pub last_success_at: Option<Millis>,
    pub next_attempt_at: Option<Millis>,
    pub ratelimit_remaining: Option<i64>,
    pub ratelimit_limit: Option<i64>,
    pub updated_at: Millis,
}

impl RegistryHealth {
    /// A registry nothing has been asked of yet.
    pub fn unchecked(host: &str) -> RegistryHealth {
        RegistryHealth {
            host: host.to_string(),
            state: "unchecked".into(),
            consecutive_errors: 0,
            last_error: None,
            last_error_at: None,
            last_success_at: None,
            next_attempt_at: None,
            ratelimit_remaining: None,
            ratelimit_limit: None,
            updated_at: 0,
        }
    }
}

/// healthy: the last call worked; degraded: 1–2 failures in a row; down: 3+.
pub fn health_state(consecutive_errors: i32) -> &'static str {
    match consecutive_errors {
        0 => "healthy",
        1 | 2 => "degraded",
        _ => "down",
    }
}

const UPSERT: &str = "INSERT INTO registry_health (host, state, consecutive_errors, last_error, last_error_at, last_success_at, next_attempt_at, ratelimit_remaining, ratelimit_limit, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (host) DO UPDATE SET
    state = excluded.state,
    consecutive_errors = excluded.consecutive_errors,
    last_error = COALESCE(excluded.last_error, registry_health.last_error),
    last_error_at = COALESCE(excluded.last_error_at, registry_health.last_error_at),
    last_success_at = COALESCE(excluded.last_success_at, registry_health.last_success_at),
    next_attempt_at = excluded.next_attempt_at,
    ratelimit_remaining = COALESCE(excluded.ratelimit_remaining, registry_health.ratelimit_remaining),
    ratelimit_limit = COALESCE(excluded.ratelimit_limit, registry_health.ratelimit_limit),
    updated_at = excluded.updated_at";

impl Store {
    /// Records a registry's health after a call. `error` None = success.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_registry_health(
        &self,
        host: &str,
        consecutive_errors: i32,
        error: Option<&str>,
        next_attempt_at: Option<Millis>,
        budget: Option<(i64, i64)>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (err_at, ok_at) = if error.is_some() {
            (Some(now), None)
        } else {
            (None, Some(now))
        };
        on_pool!(self, p => sqlx::query(UPSERT)
            .bind(host).bind(health_state(consecutive_errors)).bind(consecutive_errors)
            .bind(error).bind(err_at).bind(ok_at).bind(next_attempt_at)
            .bind(budget.map(|b| b.0)).bind(budget.map(|b| b.1)).bind(now)
            .execute(p).await?.rows_affected());
        Ok(())
    }

    pub async fn registry_health(&self) -> Result<Vec<RegistryHealth>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_as("SELECT * FROM registry_health ORDER BY host").fetch_all(p).await?),
        )
    }

    /// One registry's health, if it was ever recorded.
    pub async fn registry_health_of(
        &self,
        host: &str,
    ) -> Result<Option<RegistryHealth>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_as("SELECT * FROM registry_health WHERE host = $1")
            .bind(host).fetch_optional(p).await?),
        )
    }

    /// A failed check of one image (the registry may be fine: e.g. a 404).
    pub async fn record_check_error(
        &self,
        image: &str,
        error: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        on_pool!(self, p => sqlx::query("UPDATE images SET last_error = $2, last_checked_at = $3, updated_at = $3 WHERE name = $1")
            .bind(image).bind(error).bind(now).execute(p).await?.rows_affected());
        Ok(())
    }

    /// `image_state` inside a transaction (no second connection needed:
    /// on SQLite a writer must not wait on the pool).
    pub async fn image_state_in(
        &self,
        tx: &mut super::Tx,
        image: &str,
    ) -> Result<Option<ImageState>, StoreError> {
        Ok(super::on_tx!(tx, c => sqlx::query_as(
            "SELECT name, managed, active, current_digest, last_checked_at, last_changed_at, last_error, base_name, base_digest FROM images WHERE name = $1")
            .bind(image).fetch_optional(&mut *c).await?))
    }

    /// Active images by name after `after` (cursor), with their derived
    /// state, filtered by what the caller sets in `f`.
    pub async fn images_page(
        &self,
        after: &str,
        limit: i64,
        f: &ImageFilter,
    ) -> Result<Vec<ImageListed>, StoreError> {
        let prefix = f.registry.as_ref().map(|r| format!("{r}/"));
        Ok(on_pool!(self, p => sqlx::query_as(IMAGES_PAGE)
            .bind(after).bind(f.managed).bind(prefix).bind(f.state.map(ImageStatus::as_str)).bind(limit).bind(f.stale)
            .fetch_all(p).await?))
    }

    /// Counts for `/metrics` and `lineaged status`.
    pub async fn status_counts(&self) -> Result<StatusCounts, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(STATUS_COUNTS).fetch_one(p).await?))
    }

    /// The newest jobs for an image.
    pub async fn jobs_for_image(
        &self,
        image: &str,
        limit: i64,
    ) -> Result<Vec<super::JobRecord>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_as("SELECT * FROM jobs WHERE image = $1 ORDER BY id DESC LIMIT $2")
            .bind(image).bind(limit).fetch_all(p).await?),
        )
    }

    /// The image's entries in the newest rollouts.
    pub async fn rollout_entries_for_image(
        &self,
        image: &str,
        limit: i64,
    ) -> Result<Vec<super::RolloutImage>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_as("SELECT * FROM rollout_images WHERE image = $1 ORDER BY rollout_id DESC LIMIT $2")
            .bind(image).bind(limit).fetch_all(p).await?),
        )
    }

    /// Current digest, base digest and last error of an image.
    pub async fn image_state(&self, image: &str) -> Result<Option<ImageState>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT name, managed, active, current_digest, last_checked_at, last_changed_at, last_error, base_name, base_digest FROM images WHERE name = $1")
            .bind(image).fetch_optional(p).await?))
    }

    /// What graph views colour images by: stored state, staleness and the
    /// image's newest rollout entry, for up to a few hundred names (in
    /// chunks of 500; the order is not kept).
    pub async fn graph_states(&self, names: &[String]) -> Result<Vec<GraphState>, StoreError> {
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(500) {
            let list = super::placeholders(1, chunk.len());
            let sql = format!("{GRAPH_STATES} WHERE i.name IN ({list})");
            out.extend(on_pool!(self, p => {
                let mut q = sqlx::query_as(&sql);
                for n in chunk {
                    q = q.bind(n);
                }
                q.fetch_all(p).await?
            }));
        }
        Ok(out)
    }
}

/// An image as graph views colour it (see `Store::graph_states`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GraphState {
    pub name: String,
    pub current_digest: Option<String>,
    pub last_checked_at: Option<Millis>,
    pub last_error: Option<String>,
    pub stale: bool,
    /// The image's newest rollout entry: its rollout, state and reason,
    /// and whether that rollout still runs.
    pub rollout_id: Option<i64>,
    pub entry_state: Option<String>,
    pub entry_reason: Option<String>,
    pub rollout_running: Option<bool>,
}

/// One image's stored state.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct ImageState {
    pub name: String,
    pub managed: bool,
    pub active: bool,
    pub current_digest: Option<String>,
    pub last_checked_at: Option<Millis>,
    pub last_changed_at: Option<Millis>,
    pub last_error: Option<String>,
    pub base_name: Option<String>,
    pub base_digest: Option<String>,
}

/// Filters of the image list (all optional).
#[derive(Debug, Clone, Default)]
pub struct ImageFilter {
    pub managed: Option<bool>,
    /// A registry host: only images on it.
    pub registry: Option<String>,
    pub state: Option<ImageStatus>,
    /// Only stale (true) or only fresh (false) images.
    pub stale: Option<bool>,
}

/// What an image needs, derived from stored state (first match wins):
/// `rebuilding` (in a running rollout, not finished), `error` (the last
/// check failed), `stale` (built on a base digest its parent no longer has),
/// `unchecked` (never checked), `ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageStatus {
    Rebuilding,
    Error,
    Stale,
    Unchecked,
    Ok,
}

impl ImageStatus {
    pub const ALL: [ImageStatus; 5] = [
        ImageStatus::Rebuilding,
        ImageStatus::Error,
        ImageStatus::Stale,
        ImageStatus::Unchecked,
        ImageStatus::Ok,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Rebuilding => "rebuilding",
            ImageStatus::Error => "error",
            ImageStatus::Stale => "stale",
            ImageStatus::Unchecked => "unchecked",
            ImageStatus::Ok => "ok",
        }
    }

    pub fn parse(s: &str) -> Option<ImageStatus> {
        ImageStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A row of the image list: stored state plus the derived status.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct ImageListed {
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub image: ImageState,
    pub state: String,
    pub stale: bool,
}

/// The stale test for one image `i`: a parent's current digest is not the
/// one the image was built on (`image_bases`: its last build's parents, or
/// its base annotation). The same test as `Store::stale_parents`.
macro_rules! stale_exists {
    () => {
        "EXISTS (SELECT 1 FROM image_bases b JOIN edges e ON e.child = b.image AND e.parent = b.parent
           JOIN images p ON p.name = b.parent
           WHERE b.image = i.name AND i.managed AND p.current_digest IS NOT NULL AND b.digest <> p.current_digest)"
    };
}

const IMAGES_PAGE: &str = concat!(
    "SELECT * FROM (
       SELECT t.*, CASE
           WHEN t.rebuilding THEN 'rebuilding'
           WHEN t.last_error IS NOT NULL THEN 'error'
           WHEN t.stale THEN 'stale'
           WHEN t.last_checked_at IS NULL THEN 'unchecked'
           ELSE 'ok' END AS state
       FROM (
         SELECT i.name, i.managed, i.active, i.current_digest, i.last_checked_at, i.last_changed_at,
                i.last_error, i.base_name, i.base_digest,
                ",
    stale_exists!(),
    " AS stale,
                EXISTS (SELECT 1 FROM rollout_images ri JOIN rollouts r ON r.id = ri.rollout_id
                        WHERE ri.image = i.name AND r.state = 'running'
                          AND ri.state NOT IN ('done', 'failed', 'deploy_failed', 'blocked', 'refused', 'cancelled')) AS rebuilding
         FROM images i
         WHERE i.active AND i.name > $1 AND ($2 IS NULL OR i.managed = $2)
           AND (CAST($3 AS TEXT) IS NULL OR substr(i.name, 1, length(CAST($3 AS TEXT))) = CAST($3 AS TEXT))
       ) t
     ) s
     WHERE (CAST($4 AS TEXT) IS NULL OR s.state = CAST($4 AS TEXT))
       AND ($6 IS NULL OR s.stale = $6)
     ORDER BY s.name LIMIT $5"
);

const GRAPH_STATES: &str = concat!(
    "SELECT i.name, i.current_digest, i.last_checked_at, i.last_error, ",
    stale_exists!(),
    " AS stale, ri.rollout_id, ri.state AS entry_state, ri.reason AS entry_reason,
       CASE WHEN r.id IS NULL THEN NULL WHEN r.state = 'running' THEN TRUE ELSE FALSE END AS rollout_running
     FROM images i
     LEFT JOIN rollout_images ri ON ri.image = i.name
       AND ri.rollout_id = (SELECT MAX(x.rollout_id) FROM rollout_images x WHERE x.image = i.name)
     LEFT JOIN rollouts r ON r.id = ri.rollout_id"
);

/// Image and rollout counts (active images only).
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct StatusCounts {
    pub images_managed: i64,
    pub images_external: i64,
    pub images_stale: i64,
    pub images_failing: i64,
    pub rollouts_running: i64,
}

const STATUS_COUNTS: &str = concat!(
    "SELECT
       COALESCE(SUM(CASE WHEN i.managed THEN 1 ELSE 0 END), 0) AS images_managed,
       COALESCE(SUM(CASE WHEN i.managed THEN 0 ELSE 1 END), 0) AS images_external,
       COALESCE(SUM(CASE WHEN ",
    stale_exists!(),
    " THEN 1 ELSE 0 END), 0) AS images_stale,
       COALESCE(SUM(CASE WHEN i.last_error IS NOT NULL THEN 1 ELSE 0 END), 0) AS images_failing,
       (SELECT COUNT(*) FROM rollouts WHERE state = 'running') AS rollouts_running
     FROM images i WHERE i.active"
);
