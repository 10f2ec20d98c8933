//! The change outbox, what each image was built on, and staleness.
//!
//! An observation that finds a new digest writes the change in the same
//! transaction (`observe`), so a crash between "recorded" and "planned"
//! loses nothing: the engine consumes due changes in the transaction that
//! plans them.

use super::{DigestSource, DigestUpdate, Millis, Store, StoreError, Tx, on_pool, on_tx};
use crate::rollout::ParentDigest;

/// One observation of an image's tracked digest.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub image: &'a str,
    /// The tracked value (top-level digest, or platform digests).
    pub digest: &'a str,
    /// The tag's top-level digest, when known.
    pub top_digest: Option<&'a str>,
    /// When the registry was asked: an answer older than the image's last
    /// recorded change is history only (see `observe`).
    pub asked_at: Millis,
    pub platform: &'a str,
    pub source: DigestSource,
    /// How long a change must hold before it is due (the settle window).
    pub settle_ms: i64,
    /// OCI base annotations read with this observation, if any.
    pub base: Option<BaseAnnotation>,
}

/// `org.opencontainers.image.base.name` / `.base.digest` of a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseAnnotation {
    /// Normalised reference of the base, when named.
    pub name: Option<String>,
    pub digest: Option<String>,
}

/// A pending (or processed) digest change.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChangeRecord {
    pub id: i64,
    pub image: String,
    pub old_digest: String,
    pub new_digest: String,
    /// The tag's top-level digest, when the observation knew it.
    pub top_digest: Option<String>,
    pub source: String,
    pub observed_at: Millis,
    pub due_at: Millis,
    pub state: String,
    /// Observations that coalesced into this change (settle window).
    pub coalesced: i32,
}

/// A parent whose current digest is not the one the image was built on.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StaleParent {
    pub parent: String,
    pub built_on: String,
    pub current: String,
    pub source: String,
}

impl Store {
    /// Records an observation: history, the image's current digest, its
    /// base annotation, and, when the digest moved, a pending change, all
    /// in one transaction.
    pub async fn observe(
        &self,
        o: &Observation<'_>,
        now: Millis,
    ) -> Result<DigestUpdate, StoreError> {
        let mut tx = self.begin().await?;
        // Locked on Postgres: two replicas observing the same change must
        // not both report it. NO KEY UPDATE, so an engine step inserting
        // rows that reference the image (image_bases) is not blocked by it
        // while this waits for the engine's lock on the pending change.
        // SQLite has one writer at a time.
        let sql = match tx {
            Tx::Pg(_) => {
                "SELECT current_digest, last_changed_at FROM images WHERE name = $1 FOR NO KEY UPDATE"
            }
            Tx::Sqlite(_) => "SELECT current_digest, last_changed_at FROM images WHERE name = $1",
        };
        let row: Option<(Option<String>, Option<Millis>)> =
            on_tx!(&mut tx, c => sqlx::query_as(sql).bind(o.image).fetch_optional(&mut *c).await?);
        // Two observers race (a poll and a CI callback): a registry answer
        // given before the last recorded change, naming a digest the image
        // had before it, is stale and must not move the digest back (a
        // "change" to the previous digest would be planned as an outside
        // change). It stays in the history. A digest never seen before is
        // news, whenever it was asked.
        let stale = match &row {
            Some((Some(cur), Some(changed))) if cur != o.digest && *changed >= o.asked_at => {
                let seen: Option<i32> = on_tx!(&mut tx, c => sqlx::query_scalar(
                    "SELECT 1 FROM digest_observations WHERE image = $1 AND digest = $2 AND observed_at < $3 LIMIT 1")
                    .bind(o.image).bind(o.digest).bind(*changed).fetch_optional(&mut *c).await?);
                seen.is_some()
            }
            _ => false,
        };
        if stale {
            on_tx!(&mut tx, c => sqlx::query("INSERT INTO digest_observations (image, digest, platform, source, observed_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(o.image).bind(o.digest).bind(o.platform).bind(o.source.as_str()).bind(now)
                .execute(&mut *c).await?.rows_affected());
            tx.commit().await?;
            return Ok(DigestUpdate::Unchanged);
        }
        let current = row.map(|(d, _)| d);
        let Some(current) = current else {
            return Err(StoreError::Corrupt(format!(
                "image {} is not in the store; sync the config first",
                o.image
            )));
        };
        let update = match current {
            None => DigestUpdate::Baseline,
            Some(old) if old == o.digest => DigestUpdate::Unchanged,
            Some(old) => DigestUpdate::Changed { old },
        };
        let changed_at = matches!(update, DigestUpdate::Changed { .. }).then_some(now);
        on_tx!(&mut tx, c => {
            sqlx::query("INSERT INTO digest_observations (image, digest, platform, source, observed_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(o.image).bind(o.digest).bind(o.platform).bind(o.source.as_str()).bind(now)
                .execute(&mut *c).await?;
            sqlx::query("UPDATE images SET current_digest = $2, last_checked_at = $3, last_changed_at = COALESCE($4, last_changed_at), last_error = NULL, updated_at = $3 WHERE name = $1")
                .bind(o.image).bind(o.digest).bind(now).bind(changed_at)
                .execute(&mut *c).await?;
        });
        // A callback's digest is lineaged's own build: the engine learns of
        // it through the job's result, so it is no change to plan.
        if let DigestUpdate::Changed { old } = &update
            && o.source != DigestSource::Callback
        {
            // Coalesce into the image's pending change: the first old
            // digest stays, the newest digest wins, the window restarts.
            on_tx!(&mut tx, c => sqlx::query(
                "INSERT INTO changes (image, old_digest, new_digest, top_digest, source, observed_at, due_at, state)
                 VALUES ($1, $2, $3, $7, $4, $5, $6, 'pending')
                 ON CONFLICT (image) WHERE state = 'pending' DO UPDATE SET
                     new_digest = excluded.new_digest, top_digest = excluded.top_digest, source = excluded.source,
                     observed_at = excluded.observed_at, due_at = excluded.due_at, coalesced = changes.coalesced + 1")
                .bind(o.image).bind(old).bind(o.digest).bind(o.source.as_str()).bind(now).bind(now + o.settle_ms.max(0)).bind(o.top_digest)
                .execute(&mut *c).await?.rows_affected());
        }
        // After the outbox row: an engine step holding that row's lock may
        // be writing this image's bases; taking the base rows first here
        // would deadlock with it.
        if let Some(base) = &o.base
            && !matches!(update, DigestUpdate::Unchanged)
        {
            self.record_annotation_in(&mut tx, o.image, base, now)
                .await?;
        }
        if let DigestUpdate::Changed { old } = &update {
            let event = super::NewEvent {
                kind: "digest_changed".into(),
                image: Some(o.image.to_string()),
                rollout_id: None,
                job_id: None,
                data: serde_json::json!({ "old": old, "new": o.digest, "source": o.source.as_str() }),
            };
            self.append_event_in(&mut tx, &event, now).await?;
        }
        tx.commit().await?;
        Ok(update)
    }

    /// Records an image's OCI base annotation on its own (the watcher does
    /// it within `observe`).
    pub async fn record_base(
        &self,
        image: &str,
        base_name: Option<&str>,
        base_digest: Option<&str>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let base = BaseAnnotation {
            name: base_name.map(str::to_string),
            digest: base_digest.map(str::to_string),
        };
        self.record_annotation_in(&mut tx, image, &base, now)
            .await?;
        tx.commit().await
    }

    /// The base annotation as the image's record, and as its base for the
    /// parent it names (or its only parent when it names none).
    async fn record_annotation_in(
        &self,
        tx: &mut Tx,
        image: &str,
        base: &BaseAnnotation,
        now: Millis,
    ) -> Result<(), StoreError> {
        on_tx!(tx, c => {
            sqlx::query("UPDATE images SET base_name = $2, base_digest = $3, updated_at = $4 WHERE name = $1")
                .bind(image).bind(&base.name).bind(&base.digest).bind(now).execute(&mut *c).await?;
            if let Some(d) = &base.digest {
                sqlx::query(
                    "INSERT INTO image_bases (image, parent, digest, source, updated_at)
                     SELECT e.child, e.parent, $3, 'annotation', $4 FROM edges e
                      WHERE e.child = $1 AND ($2 IS NULL OR e.parent = $2)
                        AND ($2 IS NOT NULL OR (SELECT COUNT(*) FROM edges x WHERE x.child = $1) = 1)
                     ON CONFLICT (image, parent) DO UPDATE SET digest = excluded.digest, source = excluded.source, updated_at = excluded.updated_at")
                    .bind(image).bind(&base.name).bind(d).bind(now).execute(&mut *c).await?;
            }
        });
        Ok(())
    }

    /// A successful build: the image is now built on these parent digests.
    pub async fn record_build_bases_in(
        &self,
        tx: &mut Tx,
        image: &str,
        parents: &[ParentDigest],
        now: Millis,
    ) -> Result<(), StoreError> {
        for p in parents {
            let Some(d) = &p.digest else { continue };
            on_tx!(tx, c => sqlx::query(
                "INSERT INTO image_bases (image, parent, digest, source, updated_at) VALUES ($1, $2, $3, 'build', $4)
                 ON CONFLICT (image, parent) DO UPDATE SET digest = excluded.digest, source = excluded.source, updated_at = excluded.updated_at")
                .bind(image).bind(&p.name).bind(d).bind(now).execute(&mut *c).await?.rows_affected());
        }
        Ok(())
    }

    /// Pending changes due at `now`, oldest first, locked for this
    /// transaction on Postgres.
    pub async fn due_changes_in(
        &self,
        tx: &mut Tx,
        now: Millis,
        limit: i64,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let sql = match tx {
            Tx::Pg(_) => {
                "SELECT * FROM changes WHERE state = 'pending' AND due_at <= $1 ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"
            }
            Tx::Sqlite(_) => {
                "SELECT * FROM changes WHERE state = 'pending' AND due_at <= $1 ORDER BY due_at, id LIMIT $2"
            }
        };
        Ok(on_tx!(tx, c => sqlx::query_as(sql).bind(now).bind(limit).fetch_all(&mut *c).await?))
    }

    pub async fn finish_change_in(
        &self,
        tx: &mut Tx,
        id: i64,
        now: Millis,
    ) -> Result<(), StoreError> {
        on_tx!(tx, c => sqlx::query("UPDATE changes SET state = 'done', processed_at = $2 WHERE id = $1")
            .bind(id).bind(now).execute(&mut *c).await?.rows_affected());
        Ok(())
    }

    /// When the next pending change is due (None: nothing pending).
    pub async fn next_change_due(&self) -> Result<Option<Millis>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_scalar("SELECT MIN(due_at) FROM changes WHERE state = 'pending'")
            .fetch_one(p).await?),
        )
    }

    /// Changes, newest first (for tests and the API).
    pub async fn changes(&self, limit: i64) -> Result<Vec<ChangeRecord>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_as("SELECT * FROM changes ORDER BY id DESC LIMIT $1")
            .bind(limit).fetch_all(p).await?),
        )
    }

    /// Stale images reconcile should rebuild: managed, active, a parent's
    /// current digest differs from what the image was built on, and that
    /// change was never planned: no pending change of the parent, no
    /// rollout entry of the image since the parent last changed, not in a
    /// running rollout. Only parents checked since `fresh_since` count, so
    /// a restarted daemon judges against digests it has seen itself.
    pub async fn unplanned_stale_in(
        &self,
        tx: &mut Tx,
        fresh_since: Millis,
    ) -> Result<Vec<String>, StoreError> {
        Ok(on_tx!(tx, c => sqlx::query_scalar(
            "SELECT DISTINCT i.name FROM images i
               JOIN image_bases b ON b.image = i.name
               JOIN edges e ON e.child = i.name AND e.parent = b.parent
               JOIN images p ON p.name = b.parent
              WHERE i.managed AND i.active AND p.current_digest IS NOT NULL AND b.digest <> p.current_digest
                AND p.last_checked_at >= $1
                AND NOT EXISTS (SELECT 1 FROM changes c WHERE c.image = p.name AND c.state = 'pending')
                AND NOT EXISTS (SELECT 1 FROM rollout_images ri WHERE ri.image = i.name
                                  AND ri.updated_at >= COALESCE(p.last_changed_at, 0))
                AND NOT EXISTS (SELECT 1 FROM rollout_images ri JOIN rollouts r ON r.id = ri.rollout_id
                                 WHERE ri.image = i.name AND r.state = 'running'
                                   AND ri.state NOT IN ('done', 'failed', 'deploy_failed', 'blocked', 'refused', 'cancelled'))
              ORDER BY i.name")
            .bind(fresh_since).fetch_all(&mut *c).await?))
    }

    /// The parents an image is stale against (empty: fresh, or unknown).
    pub async fn stale_parents(&self, image: &str) -> Result<Vec<StaleParent>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT b.parent, b.digest AS built_on, p.current_digest AS current, b.source FROM image_bases b
               JOIN edges e ON e.child = b.image AND e.parent = b.parent
               JOIN images p ON p.name = b.parent
              WHERE b.image = $1 AND p.current_digest IS NOT NULL AND b.digest <> p.current_digest
              ORDER BY b.parent")
            .bind(image).fetch_all(p).await?))
    }

    /// What an image was built on, per parent: (parent, digest, source).
    pub async fn image_bases(
        &self,
        image: &str,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT parent, digest, source FROM image_bases WHERE image = $1 ORDER BY parent")
            .bind(image).fetch_all(p).await?))
    }
}
