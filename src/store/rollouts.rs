//! Rollouts and the per-image state inside them.

use super::{Millis, Store, StoreError, Tx, on_pool, on_tx};
use crate::rollout::{ImageState, RolloutState};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct RolloutRecord {
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub state: RolloutState,
    /// What started it (a `Cause`), as a JSON object.
    #[serde(serialize_with = "super::raw_json")]
    #[schema(value_type = Object)]
    pub cause: String,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct RolloutImage {
    pub rollout_id: i64,
    pub image: String,
    pub wave: i32,
    #[sqlx(try_from = "String")]
    pub state: ImageState,
    /// The rebuild job of this image in this rollout.
    pub job_id: Option<i64>,
    pub rerun: bool,
    pub build_deadline: Option<Millis>,
    pub built_digest: Option<String>,
    pub reason: Option<String>,
    #[serde(skip)]
    pub callback_token: Option<String>,
    pub updated_at: Millis,
    pub build_attempts: i32,
    /// The deploy job, once the image is deploying.
    pub deploy_job_id: Option<i64>,
    /// The verify job (supply-chain gates), once the image is verifying.
    pub verify_job_id: Option<i64>,
    /// The digest the gates passed (or only warned on).
    pub verified_digest: Option<String>,
    /// The approval the image waits for (`awaiting_approval`).
    pub approval_id: Option<i64>,
    /// The digest a person approved for deploy.
    pub approved_digest: Option<String>,
    /// A person approved building it (`approval.before: build`).
    pub build_approved: bool,
    /// `waiting_for_window`: when the deploy window opens.
    pub not_before: Option<Millis>,
    /// The CI run of the rebuild job, when its CI named one (read from the
    /// job; only the rollout listing fills it).
    #[sqlx(default)]
    pub run_url: Option<String>,
}

impl RolloutImage {
    pub fn new(rollout_id: i64, image: &str, wave: i32, now: Millis) -> RolloutImage {
        RolloutImage {
            rollout_id,
            image: image.to_string(),
            wave,
            state: ImageState::Waiting,
            job_id: None,
            rerun: false,
            build_deadline: None,
            built_digest: None,
            reason: None,
            callback_token: None,
            updated_at: now,
            build_attempts: 0,
            deploy_job_id: None,
            verify_job_id: None,
            verified_digest: None,
            approval_id: None,
            approved_digest: None,
            build_approved: false,
            not_before: None,
            run_url: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.state.is_finished()
    }
}

const SAVE: &str = "INSERT INTO rollout_images (rollout_id, image, wave, state, job_id, rerun, build_deadline, built_digest, reason, callback_token, updated_at, build_attempts, deploy_job_id, verify_job_id, verified_digest, approval_id, approved_digest, build_approved, not_before)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
ON CONFLICT (rollout_id, image) DO UPDATE SET
    wave = excluded.wave, state = excluded.state, job_id = excluded.job_id, rerun = excluded.rerun,
    build_deadline = excluded.build_deadline, built_digest = excluded.built_digest, reason = excluded.reason,
    callback_token = excluded.callback_token, updated_at = excluded.updated_at, build_attempts = excluded.build_attempts,
    deploy_job_id = excluded.deploy_job_id, verify_job_id = excluded.verify_job_id, verified_digest = excluded.verified_digest,
    approval_id = excluded.approval_id, approved_digest = excluded.approved_digest, build_approved = excluded.build_approved,
    not_before = excluded.not_before";
const SAVE_VALUES: &str =
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)";

impl Store {
    /// The running rollout (locked on Postgres for this transaction), or a
    /// new one with `cause`. Returns (id, created).
    pub async fn open_rollout_in(
        &self,
        tx: &mut Tx,
        cause: &serde_json::Value,
        now: Millis,
    ) -> Result<(i64, bool), StoreError> {
        let sql = match tx {
            Tx::Pg(_) => {
                "SELECT id FROM rollouts WHERE state = 'running' ORDER BY id DESC LIMIT 1 FOR UPDATE"
            }
            Tx::Sqlite(_) => {
                "SELECT id FROM rollouts WHERE state = 'running' ORDER BY id DESC LIMIT 1"
            }
        };
        let open: Option<i64> =
            on_tx!(tx, c => sqlx::query_scalar(sql).fetch_optional(&mut *c).await?);
        if let Some(id) = open {
            return Ok((id, false));
        }
        let id: i64 = on_tx!(tx, c => sqlx::query_scalar(
            "INSERT INTO rollouts (state, cause, created_at) VALUES ('running', $1, $2) RETURNING id")
            .bind(cause.to_string()).bind(now).fetch_one(&mut *c).await?);
        Ok((id, true))
    }

    /// The newest rollout if it is running, locked for this transaction.
    pub async fn running_rollout_in(&self, tx: &mut Tx) -> Result<Option<i64>, StoreError> {
        let sql = match tx {
            Tx::Pg(_) => {
                "SELECT id FROM rollouts WHERE state = 'running' ORDER BY id DESC LIMIT 1 FOR UPDATE"
            }
            Tx::Sqlite(_) => {
                "SELECT id FROM rollouts WHERE state = 'running' ORDER BY id DESC LIMIT 1"
            }
        };
        Ok(on_tx!(tx, c => sqlx::query_scalar(sql).fetch_optional(&mut *c).await?))
    }

    /// Locks a rollout row for this transaction (Postgres) and returns it.
    pub async fn lock_rollout_in(
        &self,
        tx: &mut Tx,
        id: i64,
    ) -> Result<Option<RolloutRecord>, StoreError> {
        let sql = match tx {
            Tx::Pg(_) => "SELECT * FROM rollouts WHERE id = $1 FOR UPDATE",
            Tx::Sqlite(_) => "SELECT * FROM rollouts WHERE id = $1",
        };
        Ok(on_tx!(tx, c => sqlx::query_as(sql).bind(id).fetch_optional(&mut *c).await?))
    }

    pub async fn rollout_images_in(
        &self,
        tx: &mut Tx,
        rollout_id: i64,
    ) -> Result<Vec<RolloutImage>, StoreError> {
        Ok(
            on_tx!(tx, c => sqlx::query_as("SELECT * FROM rollout_images WHERE rollout_id = $1 ORDER BY wave, image")
            .bind(rollout_id).fetch_all(&mut *c).await?),
        )
    }

    pub async fn save_rollout_image_in(
        &self,
        tx: &mut Tx,
        ri: &RolloutImage,
    ) -> Result<(), StoreError> {
        self.save_rollout_images_in(tx, std::slice::from_ref(ri))
            .await
    }

    /// `save_rollout_image_in` for many rows: multi-row upserts of up to
    /// 500 rows (19 parameters each), so planning 10,000 images is 20
    /// statements, not 10,000.
    pub async fn save_rollout_images_in(
        &self,
        tx: &mut Tx,
        rows: &[RolloutImage],
    ) -> Result<(), StoreError> {
        const COLS: usize = 19;
        for chunk in rows.chunks(500) {
            let values = (0..chunk.len())
                .map(|r| {
                    let p: Vec<String> = (1..=COLS).map(|c| format!("${}", r * COLS + c)).collect();
                    format!("({})", p.join(", "))
                })
                .collect::<Vec<_>>()
                .join(", ");
            let (head, tail) = SAVE.split_once(SAVE_VALUES).unwrap_or((SAVE, ""));
            let sql = format!("{head}VALUES {values}{tail}");
            on_tx!(tx, c => {
                let mut q = sqlx::query(&sql);
                for ri in chunk {
                    q = q.bind(ri.rollout_id).bind(&ri.image).bind(ri.wave).bind(ri.state.as_str()).bind(ri.job_id).bind(ri.rerun)
                        .bind(ri.build_deadline).bind(&ri.built_digest).bind(&ri.reason).bind(&ri.callback_token).bind(ri.updated_at).bind(ri.build_attempts)
                        .bind(ri.deploy_job_id).bind(ri.verify_job_id).bind(&ri.verified_digest)
                        .bind(ri.approval_id).bind(&ri.approved_digest).bind(ri.build_approved).bind(ri.not_before);
                }
                q.execute(&mut *c).await?.rows_affected()
            });
        }
        Ok(())
    }

    /// Finishes a running rollout; returns when it started, or None when it
    /// was not running.
    pub async fn finish_rollout_in(
        &self,
        tx: &mut Tx,
        id: i64,
        state: RolloutState,
        now: Millis,
    ) -> Result<Option<Millis>, StoreError> {
        Ok(
            on_tx!(tx, c => sqlx::query_scalar("UPDATE rollouts SET state = $2, finished_at = $3 WHERE id = $1 AND state = 'running' RETURNING created_at")
            .bind(id).bind(state.as_str()).bind(now).fetch_optional(&mut *c).await?),
        )
    }

    /// Cancels pending jobs with these unique keys: called before a new
    /// trigger is enqueued, so it never coalesces into an older job (whose
    /// idempotency key a receiver may already have seen with another
    /// payload). Returns how many it cancelled.
    pub async fn cancel_stale_pending_in(
        &self,
        tx: &mut Tx,
        keys: &[&str],
        now: Millis,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for chunk in keys.chunks(500) {
            n += on_tx!(tx, c => {
                let mut qb = sqlx::QueryBuilder::new(
                    "UPDATE jobs SET state = 'cancelled', last_error = 'superseded by a newer trigger', finished_at = ",
                );
                qb.push_bind(now).push(", updated_at = ").push_bind(now);
                qb.push(" WHERE state = 'pending' AND unique_key IN (");
                let mut sep = qb.separated(", ");
                for k in chunk {
                    sep.push_bind(*k);
                }
                qb.push(")");
                qb.build().execute(&mut *c).await?.rows_affected()
            });
        }
        Ok(n)
    }

    /// Withdraws a job that no worker has ever claimed; false when it was
    /// claimed (now or before: a job back to pending after a failed or
    /// interrupted attempt may have reached its receiver) or ended. On
    /// Postgres the row lock makes this exact: a claim committing first wins
    /// and this returns false.
    pub async fn withdraw_pending_job_in(
        &self,
        tx: &mut Tx,
        id: i64,
        reason: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let n = on_tx!(tx, c => sqlx::query(
            "UPDATE jobs SET state = 'cancelled', last_error = $3, finished_at = $2, updated_at = $2 WHERE id = $1 AND state = 'pending' AND attempt = 0")
            .bind(id).bind(now).bind(reason).execute(&mut *c).await?.rows_affected());
        Ok(n == 1)
    }

    /// Cancels a pending or running job in this transaction; false when it
    /// had already ended.
    pub async fn cancel_job_in(
        &self,
        tx: &mut Tx,
        id: i64,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let n = on_tx!(tx, c => sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = $2, updated_at = $2, locked_by = NULL, locked_until = NULL
             WHERE id = $1 AND state IN ('pending', 'running')")
            .bind(id).bind(now).execute(&mut *c).await?.rows_affected());
        Ok(n == 1)
    }

    /// The rows of a rollout for these images (e.g. an image's parents).
    pub async fn rollout_images_named(
        &self,
        rollout_id: i64,
        images: &[String],
    ) -> Result<Vec<RolloutImage>, StoreError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let list = super::placeholders(2, images.len());
        let sql =
            format!("SELECT * FROM rollout_images WHERE rollout_id = $1 AND image IN ({list})");
        Ok(on_pool!(self, p => {
            let mut q = sqlx::query_as(&sql).bind(rollout_id);
            for i in images {
                q = q.bind(i);
            }
            q.fetch_all(p).await?
        }))
    }

    /// The events that brought images into a rollout (started, joined,
    /// reconciled, requested), oldest first.
    pub async fn rollout_causes(
        &self,
        rollout_id: i64,
    ) -> Result<Vec<super::EventRecord>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT id, at, kind, image, rollout_id, job_id, data FROM events
             WHERE rollout_id = $1 AND kind IN ('rollout_started', 'rollout_joined', 'rollout_requested', 'rollout_reconciled')
             ORDER BY id LIMIT 1000")
            .bind(rollout_id).fetch_all(p).await?))
    }

    /// The rollout image a job (rebuild or deploy) belongs to.
    pub async fn rollout_image_for_job(
        &self,
        job_id: i64,
    ) -> Result<Option<RolloutImage>, StoreError> {
        // Two indexed lookups: an OR over two columns scans the table.
        for sql in [
            "SELECT * FROM rollout_images WHERE job_id = $1 ORDER BY rollout_id DESC LIMIT 1",
            "SELECT * FROM rollout_images WHERE deploy_job_id = $1 ORDER BY rollout_id DESC LIMIT 1",
        ] {
            let r: Option<RolloutImage> =
                on_pool!(self, p => sqlx::query_as(sql).bind(job_id).fetch_optional(p).await?);
            if r.is_some() {
                return Ok(r);
            }
        }
        Ok(None)
    }

    /// The rollout image a job belongs to, by its kind (`rebuild`,
    /// `deploy`, `verify`), inside a transaction.
    pub async fn rollout_image_for_job_in(
        &self,
        tx: &mut Tx,
        job_id: i64,
        kind: &str,
    ) -> Result<Option<RolloutImage>, StoreError> {
        let sql = match kind {
            "deploy" => "SELECT * FROM rollout_images WHERE deploy_job_id = $1",
            "verify" => "SELECT * FROM rollout_images WHERE verify_job_id = $1",
            _ => "SELECT * FROM rollout_images WHERE job_id = $1",
        };
        Ok(on_tx!(tx, c => sqlx::query_as(sql).bind(job_id).fetch_optional(&mut *c).await?))
    }

    /// The rows of a rollout for these images, inside a transaction.
    pub async fn rollout_images_named_in(
        &self,
        tx: &mut Tx,
        rollout_id: i64,
        images: &[&str],
    ) -> Result<Vec<RolloutImage>, StoreError> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(500) {
            let rows: Vec<RolloutImage> = on_tx!(tx, c => {
                let mut qb = sqlx::QueryBuilder::new("SELECT * FROM rollout_images WHERE rollout_id = ");
                qb.push_bind(rollout_id).push(" AND image IN (");
                let mut sep = qb.separated(", ");
                for i in chunk {
                    sep.push_bind(*i);
                }
                qb.push(")");
                qb.build_query_as().fetch_all(&mut *c).await?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    /// How many of a rollout's images are in each state; None when one is
    /// not finished (answered from the (rollout_id, state) index).
    pub async fn rollout_counts_if_finished_in(
        &self,
        tx: &mut Tx,
        rollout_id: i64,
    ) -> Result<Option<Vec<(ImageState, i64)>>, StoreError> {
        let unfinished: Option<i32> = on_tx!(tx, c => sqlx::query_scalar(
            "SELECT 1 FROM rollout_images WHERE rollout_id = $1
               AND state IN ('waiting', 'queued', 'building', 'built', 'verifying', 'awaiting_approval', 'deploying') LIMIT 1")
            .bind(rollout_id).fetch_optional(&mut *c).await?);
        if unfinished.is_some() {
            return Ok(None);
        }
        let rows: Vec<(String, i64)> = on_tx!(tx, c => sqlx::query_as(
            "SELECT state, COUNT(*) FROM rollout_images WHERE rollout_id = $1 GROUP BY state")
            .bind(rollout_id).fetch_all(&mut *c).await?);
        Ok(Some(
            rows.into_iter()
                .filter_map(|(s, n)| ImageState::parse(&s).map(|s| (s, n)))
                .collect(),
        ))
    }

    /// One image's row of a rollout, inside a transaction.
    pub async fn rollout_image_in(
        &self,
        tx: &mut Tx,
        rollout_id: i64,
        image: &str,
    ) -> Result<Option<RolloutImage>, StoreError> {
        Ok(
            on_tx!(tx, c => sqlx::query_as("SELECT * FROM rollout_images WHERE rollout_id = $1 AND image = $2")
            .bind(rollout_id).bind(image).fetch_optional(&mut *c).await?),
        )
    }

    /// The image's entries in the newest rollouts, inside a transaction.
    pub async fn rollout_entries_for_image_in(
        &self,
        tx: &mut Tx,
        image: &str,
        limit: i64,
    ) -> Result<Vec<RolloutImage>, StoreError> {
        Ok(
            on_tx!(tx, c => sqlx::query_as("SELECT * FROM rollout_images WHERE image = $1 ORDER BY rollout_id DESC LIMIT $2")
            .bind(image).bind(limit).fetch_all(&mut *c).await?),
        )
    }

    pub async fn rollout(&self, id: i64) -> Result<Option<RolloutRecord>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_as("SELECT * FROM rollouts WHERE id = $1").bind(id).fetch_optional(p).await?),
        )
    }

    pub async fn rollouts(&self, limit: i64) -> Result<Vec<RolloutRecord>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_as("SELECT * FROM rollouts ORDER BY id DESC LIMIT $1").bind(limit).fetch_all(p).await?),
        )
    }

    /// Rollouts newest first, older than `before` (a cursor; None = from
    /// the newest), optionally in one state.
    pub async fn rollouts_page(
        &self,
        before: Option<i64>,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT * FROM rollouts WHERE id < $1 AND (CAST($2 AS TEXT) IS NULL OR state = CAST($2 AS TEXT)) ORDER BY id DESC LIMIT $3")
            .bind(before.unwrap_or(i64::MAX)).bind(state).bind(limit).fetch_all(p).await?))
    }

    pub async fn rollout_images(&self, rollout_id: i64) -> Result<Vec<RolloutImage>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_as("SELECT ri.*, j.run_url FROM rollout_images ri LEFT JOIN jobs j ON j.id = ri.job_id WHERE ri.rollout_id = $1 ORDER BY ri.wave, ri.image")
            .bind(rollout_id).fetch_all(p).await?),
        )
    }

    /// Rows waiting on a job that ended without the engine hearing of it (a
    /// lease rescue that used up the attempts marks the job dead): queued
    /// on a dead, failed or cancelled rebuild job, or deploying on such a
    /// deploy job. With the job's last error.
    pub async fn orphaned_rows(&self) -> Result<Vec<(RolloutImage, Option<String>)>, StoreError> {
        let mut out = Vec::new();
        for (state, col) in [
            ("queued", "job_id"),
            ("deploying", "deploy_job_id"),
            ("verifying", "verify_job_id"),
        ] {
            let sql = format!(
                "SELECT ri.rollout_id, ri.image, j.last_error FROM rollout_images ri JOIN jobs j ON j.id = ri.{col}
                  WHERE ri.state = '{state}' AND j.state IN ('dead', 'failed', 'cancelled') LIMIT 1000"
            );
            let keys: Vec<(i64, String, Option<String>)> =
                on_pool!(self, p => sqlx::query_as(&sql).fetch_all(p).await?);
            for (rollout, image, error) in keys {
                let row: Option<RolloutImage> = on_pool!(self, p => sqlx::query_as(
                    "SELECT * FROM rollout_images WHERE rollout_id = $1 AND image = $2")
                    .bind(rollout).bind(&image).fetch_optional(p).await?);
                out.extend(row.map(|r| (r, error)));
            }
        }
        Ok(out)
    }

    /// Builds and deploys past their deadline (no result reported in time).
    /// Rows whose deploy window has opened.
    pub async fn opened_windows(&self, now: Millis) -> Result<Vec<RolloutImage>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT * FROM rollout_images WHERE state = 'waiting_for_window' AND not_before <= $1 ORDER BY rollout_id, image LIMIT 1000")
            .bind(now).fetch_all(p).await?))
    }

    pub async fn overdue_builds(&self, now: Millis) -> Result<Vec<RolloutImage>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT * FROM rollout_images WHERE state IN ('building', 'deploying') AND build_deadline < $1 ORDER BY rollout_id, image LIMIT 1000")
            .bind(now).fetch_all(p).await?))
    }
}
