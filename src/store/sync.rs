//! Config sync (images and edges), digest observations and the event log.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::{Millis, Store, StoreError, Tx, on_pool, on_tx};
use crate::config::Image;

/// Rows per multi-row statement: well under SQLite's parameter limit.
const CHUNK: usize = 1000;

/// What a config sync changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSummary {
    pub added: usize,
    pub reactivated: usize,
    pub deactivated: usize,
    pub edges: usize,
}

/// Where an observed digest came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestSource {
    Poll,
    Push,
    Callback,
    Reconcile,
}

impl DigestSource {
    pub fn as_str(self) -> &'static str {
        match self {
            DigestSource::Poll => "poll",
            DigestSource::Push => "push",
            DigestSource::Callback => "callback",
            DigestSource::Reconcile => "reconcile",
        }
    }
}

/// What an observation meant for the image's current digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestUpdate {
    /// The first digest ever seen: a baseline, not a change.
    Baseline,
    Unchanged,
    Changed {
        old: String,
    },
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: String,
    pub image: Option<String>,
    pub rollout_id: Option<i64>,
    pub job_id: Option<i64>,
    pub data: Value,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct EventRecord {
    pub id: i64,
    pub at: Millis,
    pub kind: String,
    pub image: Option<String>,
    pub rollout_id: Option<i64>,
    pub job_id: Option<i64>,
    /// The event's data, as a JSON object.
    #[serde(serialize_with = "super::raw_json")]
    #[schema(value_type = Object)]
    pub data: String,
}

#[derive(sqlx::FromRow)]
struct ImageRow {
    name: String,
    active: bool,
}

impl Store {
    /// Makes the stored images and edges match the config, in one
    /// transaction. Images no longer configured become inactive; their
    /// history stays.
    pub async fn sync_config(
        &self,
        images: &[Image],
        now: Millis,
    ) -> Result<SyncSummary, StoreError> {
        let existing: Vec<ImageRow> = on_pool!(self, p => sqlx::query_as("SELECT name, active FROM images").fetch_all(p).await?);
        let existing: HashMap<String, bool> =
            existing.into_iter().map(|r| (r.name, r.active)).collect();
        let wanted: HashSet<String> = images.iter().map(|i| i.name.to_string()).collect();
        let mut summary = SyncSummary::default();
        for name in &wanted {
            match existing.get(name) {
                None => summary.added += 1,
                Some(false) => summary.reactivated += 1,
                Some(true) => {}
            }
        }
        let gone: Vec<&String> = existing
            .iter()
            .filter(|(n, a)| **a && !wanted.contains(*n))
            .map(|(n, _)| n)
            .collect();
        summary.deactivated = gone.len();

        let rows: Vec<(String, bool)> = images
            .iter()
            .map(|i| (i.name.to_string(), i.is_managed()))
            .collect();
        let edges: Vec<(String, String)> = images
            .iter()
            .flat_map(|i| {
                i.parents
                    .iter()
                    .map(move |p| (i.name.to_string(), p.to_string()))
            })
            .collect();
        summary.edges = edges.len();

        let mut tx = self.begin().await?;
        on_tx!(&mut tx, c => {
            for chunk in rows.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new("INSERT INTO images (name, managed, active, updated_at) ");
                qb.push_values(chunk, |mut b, (name, managed)| {
                    b.push_bind(name).push_bind(*managed).push_bind(true).push_bind(now);
                });
                qb.push(" ON CONFLICT (name) DO UPDATE SET managed = excluded.managed, active = excluded.active, updated_at = excluded.updated_at");
                qb.build().execute(&mut *c).await?;
            }
            for chunk in gone.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new("UPDATE images SET active = FALSE, updated_at = ");
                qb.push_bind(now).push(" WHERE name IN (");
                let mut sep = qb.separated(", ");
                for n in chunk {
                    sep.push_bind(n.as_str());
                }
                qb.push(")");
                qb.build().execute(&mut *c).await?;
            }
            sqlx::query("DELETE FROM edges").execute(&mut *c).await?;
            for chunk in edges.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new("INSERT INTO edges (child, parent) ");
                qb.push_values(chunk, |mut b, (child, parent)| {
                    b.push_bind(child).push_bind(parent);
                });
                qb.build().execute(&mut *c).await?;
            }
        });
        tx.commit().await?;
        Ok(summary)
    }

    /// Names of active images, sorted.
    pub async fn active_images(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_scalar("SELECT name FROM images WHERE active ORDER BY name").fetch_all(p).await?),
        )
    }

    /// Names of inactive (removed from config) images, sorted.
    pub async fn inactive_images(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_scalar("SELECT name FROM images WHERE NOT active ORDER BY name").fetch_all(p).await?),
        )
    }

    /// Stored edges as (child, parent), sorted.
    pub async fn edges(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_as("SELECT child, parent FROM edges ORDER BY child, parent").fetch_all(p).await?),
        )
    }

    /// Records an observation of `image`'s digest and moves its current
    /// digest (every observation is kept as history); a change is written
    /// to the outbox in the same transaction. See [`Store::observe`].
    pub async fn record_digest(
        &self,
        image: &str,
        digest: &str,
        platform: &str,
        source: DigestSource,
        now: Millis,
    ) -> Result<DigestUpdate, StoreError> {
        let o = super::Observation {
            image,
            digest,
            top_digest: None,
            // No race to guard against: the caller's value is the newest.
            asked_at: Millis::MAX,
            platform,
            source,
            settle_ms: 0,
            base: None,
        };
        self.observe(&o, now).await
    }

    /// The digest history of an image, newest first.
    pub async fn digest_history(
        &self,
        image: &str,
        limit: i64,
    ) -> Result<Vec<(String, String, Millis)>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT digest, source, observed_at FROM digest_observations WHERE image = $1 ORDER BY id DESC LIMIT $2")
            .bind(image).bind(limit).fetch_all(p).await?))
    }

    /// Appends to the event log; returns the event id (monotonic).
    pub async fn append_event(&self, e: &NewEvent, now: Millis) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        let id = self.append_event_in(&mut tx, e, now).await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn append_event_in(
        &self,
        tx: &mut Tx,
        e: &NewEvent,
        now: Millis,
    ) -> Result<i64, StoreError> {
        Ok(on_tx!(tx, c => sqlx::query_scalar(
            "INSERT INTO events (at, kind, image, rollout_id, job_id, data) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
            .bind(now).bind(&e.kind).bind(&e.image).bind(e.rollout_id).bind(e.job_id).bind(e.data.to_string())
            .fetch_one(c).await?))
    }

    /// The newest event's id (0 when the log is empty).
    pub async fn last_event_id(&self) -> Result<i64, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM events").fetch_one(p).await?),
        )
    }

    /// Events with `after_id < id <= up_to`, oldest first.
    pub async fn events_between(
        &self,
        after_id: i64,
        up_to: i64,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT id, at, kind, image, rollout_id, job_id, data FROM events WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3")
            .bind(after_id).bind(up_to).bind(limit).fetch_all(p).await?))
    }

    /// Events after `after_id`, oldest first.
    pub async fn events_after(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT id, at, kind, image, rollout_id, job_id, data FROM events WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after_id).bind(limit).fetch_all(p).await?))
    }
}
