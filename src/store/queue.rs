//! The durable job queue: enqueue with coalescing, claim with leases,
//! heartbeat, fenced complete/fail, retry with backoff, rescue, cancel.

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgListener;

use super::{JOBS_CHANNEL, Millis, Pool, Store, StoreError, Tx, on_pool, on_tx, retry_delay};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Pending,
    Running,
    Succeeded,
    /// Failed permanently (a 4xx from CI, a failed build): no retry.
    Failed,
    /// Attempts used up.
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Pending,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    /// Jobs with the same key coalesce while one is pending.
    pub unique_key: Option<String>,
    pub image: Option<String>,
    pub rollout_id: Option<i64>,
    pub priority: i32,
    pub payload: Value,
    pub reasons: Vec<String>,
    pub max_attempts: i32,
    pub run_at: Millis,
}

impl NewJob {
    pub fn new(kind: &str, now: Millis) -> NewJob {
        NewJob {
            kind: kind.to_string(),
            unique_key: None,
            image: None,
            rollout_id: None,
            priority: 0,
            payload: Value::Object(Default::default()),
            reasons: Vec::new(),
            max_attempts: 10,
            run_at: now,
        }
    }
}

/// The outcome of an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: i64,
    /// False when it merged into a pending job with the same key.
    pub inserted: bool,
}

/// A job row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRecord {
    pub id: i64,
    pub kind: String,
    pub unique_key: Option<String>,
    pub idempotency_key: String,
    pub image: Option<String>,
    pub rollout_id: Option<i64>,
    pub state: String,
    pub priority: i32,
    pub payload: String,
    pub reasons: String,
    pub enqueue_count: i32,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: Millis,
    pub locked_by: Option<String>,
    pub locked_until: Option<Millis>,
    pub last_error: Option<String>,
    pub result: Option<String>,
    /// The CI run the trigger started, when the CI named it.
    pub run_id: Option<String>,
    pub run_url: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
}

impl JobRecord {
    pub fn state(&self) -> Option<JobState> {
        JobState::parse(&self.state)
    }

    pub fn reasons(&self) -> Vec<String> {
        serde_json::from_str(&self.reasons).unwrap_or_default()
    }
}

/// A job this worker holds until `locked_until` (extend with heartbeat).
pub type ClaimedJob = JobRecord;

/// How a job attempt failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Worth retrying (timeouts, 5xx, 429): back off, honouring the hint.
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (a 4xx, a failed build).
    Permanent { error: String },
}

const ENQUEUE_PG: &str = "INSERT INTO jobs (kind, unique_key, idempotency_key, image, rollout_id, state, priority, payload, reasons, max_attempts, run_at, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10, $11, $11)
ON CONFLICT (unique_key) WHERE state = 'pending' AND unique_key IS NOT NULL DO UPDATE SET
    reasons = (jobs.reasons::jsonb || excluded.reasons::jsonb)::text,
    payload = excluded.payload,
    priority = LEAST(jobs.priority, excluded.priority),
    run_at = LEAST(jobs.run_at, excluded.run_at),
    rollout_id = COALESCE(excluded.rollout_id, jobs.rollout_id),
    enqueue_count = jobs.enqueue_count + 1,
    updated_at = excluded.updated_at
RETURNING id, enqueue_count";

const ENQUEUE_SQLITE: &str = "INSERT INTO jobs (kind, unique_key, idempotency_key, image, rollout_id, state, priority, payload, reasons, max_attempts, run_at, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10, $11, $11)
ON CONFLICT (unique_key) WHERE state = 'pending' AND unique_key IS NOT NULL DO UPDATE SET
    reasons = (SELECT json_group_array(value) FROM (
        SELECT value FROM json_each(jobs.reasons) UNION ALL SELECT value FROM json_each(excluded.reasons))),
    payload = excluded.payload,
    priority = MIN(jobs.priority, excluded.priority),
    run_at = MIN(jobs.run_at, excluded.run_at),
    rollout_id = COALESCE(excluded.rollout_id, jobs.rollout_id),
    enqueue_count = jobs.enqueue_count + 1,
    updated_at = excluded.updated_at
RETURNING id, enqueue_count";

const CLAIM_PG: &str = "WITH due AS (
    SELECT id FROM jobs j
    WHERE state = 'pending' AND run_at <= $1
      AND (unique_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM jobs r WHERE r.state = 'running' AND r.unique_key = j.unique_key))
    ORDER BY priority, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET state = 'running', attempt = attempt + 1, locked_by = $3, locked_until = $4, updated_at = $1
FROM due WHERE jobs.id = due.id
RETURNING jobs.*";

// SQLite has one writer at a time: the single statement is the claim.
// INDEXED BY: without statistics SQLite's planner picks `jobs_state` and
// sorts every pending job per claim (7x slower at 10,000 pending jobs).
const CLAIM_SQLITE: &str = "UPDATE jobs SET state = 'running', attempt = attempt + 1, locked_by = $3, locked_until = $4, updated_at = $1
WHERE id IN (
    SELECT id FROM jobs AS j INDEXED BY jobs_due
    WHERE state = 'pending' AND run_at <= $1
      AND (unique_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM jobs AS r INDEXED BY jobs_running_key WHERE r.state = 'running' AND r.unique_key = j.unique_key))
    ORDER BY priority, run_at, id
    LIMIT $2)
RETURNING *";

fn new_idempotency_key(kind: &str) -> String {
    format!("{kind}-{:032x}", rand::random::<u128>())
}

impl Store {
    /// Enqueues a job, coalescing into the pending job with the same
    /// `unique_key` if there is one (its reasons merge, the newest payload
    /// wins, the earliest `run_at` and lowest priority stay).
    pub async fn enqueue(&self, job: &NewJob, now: Millis) -> Result<Enqueued, StoreError> {
        let mut tx = self.begin().await?;
        let e = self.enqueue_in(&mut tx, job, now).await?;
        tx.commit().await?;
        self.local_wake.notify_waiters();
        Ok(e)
    }

    /// Enqueues inside the caller's transaction: the job exists exactly when
    /// the caller's other writes commit. Call [`Store::wake_local`] after the
    /// commit (Postgres listeners are woken by the commit itself).
    pub async fn enqueue_in(
        &self,
        tx: &mut Tx,
        job: &NewJob,
        now: Millis,
    ) -> Result<Enqueued, StoreError> {
        let e = self.upsert_job(tx, job, now).await?;
        if let Tx::Pg(t) = tx {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(JOBS_CHANNEL)
                .execute(&mut **t)
                .await?;
        }
        Ok(e)
    }

    /// The coalescing insert of one job (no wake-up).
    async fn upsert_job(
        &self,
        tx: &mut Tx,
        job: &NewJob,
        now: Millis,
    ) -> Result<Enqueued, StoreError> {
        let sql = match tx {
            Tx::Pg(_) => ENQUEUE_PG,
            Tx::Sqlite(_) => ENQUEUE_SQLITE,
        };
        let reasons = serde_json::to_string(&job.reasons).unwrap_or_else(|_| "[]".into());
        let (id, count): (i64, i32) = on_tx!(tx, c => sqlx::query_as(sql)
            .bind(&job.kind)
            .bind(&job.unique_key)
            .bind(new_idempotency_key(&job.kind))
            .bind(&job.image)
            .bind(job.rollout_id)
            .bind(job.priority)
            .bind(job.payload.to_string())
            .bind(reasons)
            .bind(job.max_attempts.max(1))
            .bind(job.run_at)
            .bind(now)
            .fetch_one(c)
            .await?);
        Ok(Enqueued {
            id,
            inserted: count == 1,
        })
    }

    /// `enqueue_in` for many jobs, with one wake-up notification.
    pub async fn enqueue_many_in(
        &self,
        tx: &mut Tx,
        jobs: &[NewJob],
        now: Millis,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            out.push(self.upsert_job(tx, job, now).await?);
        }
        if let (Tx::Pg(t), false) = (&mut *tx, jobs.is_empty()) {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(JOBS_CHANNEL)
                .execute(&mut **t)
                .await?;
        }
        Ok(out)
    }

    /// Wakes waiters in this process (after committing an `enqueue_in`).
    pub fn wake_local(&self) {
        self.local_wake.notify_waiters();
    }

    /// Claims up to `limit` due jobs for `worker`, leased until `now + lease`.
    /// Never two running jobs with the same key. Safe across replicas.
    pub async fn claim(
        &self,
        worker: &str,
        limit: i64,
        lease: Duration,
        now: Millis,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        self.claim_kinds(worker, &[], limit, lease, now).await
    }

    /// `claim` of only the given job kinds (empty: every kind): a worker
    /// claims what it runs.
    pub async fn claim_kinds(
        &self,
        worker: &str,
        kinds: &[&'static str],
        limit: i64,
        lease: Duration,
        now: Millis,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let until = now + lease.as_millis() as i64;
        let base = match self.pool {
            Pool::Pg(_) => CLAIM_PG,
            Pool::Sqlite(_) => CLAIM_SQLITE,
        };
        // Kinds are the program's own constants (JobKind::as_str), never
        // input: inlined as literals, so each backend keeps one statement.
        let sql = if kinds.is_empty() {
            base.to_string()
        } else {
            let list = kinds
                .iter()
                .filter(|k| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                .map(|k| format!("'{k}'"))
                .collect::<Vec<_>>()
                .join(", ");
            base.replace(
                "WHERE state = 'pending' AND run_at <= $1",
                &format!("WHERE state = 'pending' AND run_at <= $1 AND kind IN ({list})"),
            )
        };
        let mut jobs: Vec<JobRecord> = on_pool!(self, p => sqlx::query_as(&sql)
            .bind(now)
            .bind(limit)
            .bind(worker)
            .bind(until)
            .fetch_all(p)
            .await?);
        jobs.sort_by_key(|j| (j.priority, j.run_at, j.id));
        Ok(jobs)
    }

    /// Extends the lease of a held job. `LeaseLost` when it is no longer ours.
    pub async fn heartbeat(
        &self,
        id: i64,
        worker: &str,
        lease: Duration,
        now: Millis,
    ) -> Result<(), StoreError> {
        let until = now + lease.as_millis() as i64;
        let n = on_pool!(self, p => sqlx::query(
            "UPDATE jobs SET locked_until = $3, updated_at = $4 WHERE id = $1 AND locked_by = $2 AND state = 'running'")
            .bind(id).bind(worker).bind(until).bind(now)
            .execute(p).await?.rows_affected());
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(id))
        }
    }

    /// Marks a held job succeeded. Refused (`LeaseLost`) unless this worker
    /// still holds it: a worker whose lease expired cannot finish a job
    /// another worker has taken over.
    pub async fn complete(
        &self,
        id: i64,
        worker: &str,
        result: Option<&Value>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        self.complete_in(&mut tx, id, worker, result, now).await?;
        tx.commit().await
    }

    /// `complete` inside the caller's transaction (with the state change
    /// the delivery causes).
    pub async fn complete_in(
        &self,
        tx: &mut Tx,
        id: i64,
        worker: &str,
        result: Option<&Value>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let result = result.map(Value::to_string);
        let n = on_tx!(tx, c => sqlx::query(
            "UPDATE jobs SET state = 'succeeded', result = $3, finished_at = $4, updated_at = $4, locked_by = NULL, locked_until = NULL
             WHERE id = $1 AND locked_by = $2 AND state = 'running'")
            .bind(id).bind(worker).bind(result).bind(now)
            .execute(&mut *c).await?.rows_affected());
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(id))
        }
    }

    /// Records the CI run a delivered job started.
    pub async fn set_run_in(
        &self,
        tx: &mut Tx,
        id: i64,
        run_id: Option<&str>,
        run_url: Option<&str>,
    ) -> Result<(), StoreError> {
        on_tx!(tx, c => sqlx::query("UPDATE jobs SET run_id = $2, run_url = $3 WHERE id = $1")
            .bind(id).bind(run_id).bind(run_url)
            .execute(&mut *c).await?.rows_affected());
        Ok(())
    }

    /// Marks several held jobs succeeded in one statement (a worker finishing
    /// a batch). Returns the ids it held; the others were refused.
    pub async fn complete_batch(
        &self,
        ids: &[i64],
        worker: &str,
        now: Millis,
    ) -> Result<Vec<i64>, StoreError> {
        let mut done = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            let rows: Vec<i64> = on_pool!(self, p => {
                let mut qb = sqlx::QueryBuilder::new("UPDATE jobs SET state = 'succeeded', finished_at = ");
                qb.push_bind(now).push(", updated_at = ").push_bind(now);
                qb.push(", locked_by = NULL, locked_until = NULL WHERE state = 'running' AND locked_by = ").push_bind(worker);
                qb.push(" AND id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(") RETURNING id");
                qb.build_query_scalar().fetch_all(p).await?
            });
            done.extend(rows);
        }
        done.sort_unstable();
        Ok(done)
    }

    /// Records a failed attempt of a held job: back to pending after the
    /// retry delay, `dead` when attempts are used up, `failed` when
    /// permanent. Returns the job's new state.
    pub async fn fail(
        &self,
        id: i64,
        worker: &str,
        failure: &Failure,
        now: Millis,
    ) -> Result<JobState, StoreError> {
        let mut tx = self.begin().await?;
        let state = self.fail_in(&mut tx, id, worker, failure, now).await?;
        tx.commit().await?;
        Ok(state)
    }

    /// `fail` inside the caller's transaction (with the state change a
    /// failure for good causes).
    pub async fn fail_in(
        &self,
        tx: &mut Tx,
        id: i64,
        worker: &str,
        failure: &Failure,
        now: Millis,
    ) -> Result<JobState, StoreError> {
        // Locked on Postgres: a cancel (or rescue) that commits between this
        // read and the update below must not be overwritten by a requeue.
        // SQLite's write transactions are serial already.
        let sql = match &tx {
            Tx::Pg(_) => {
                "SELECT * FROM jobs WHERE id = $1 AND locked_by = $2 AND state = 'running' FOR UPDATE"
            }
            Tx::Sqlite(_) => {
                "SELECT * FROM jobs WHERE id = $1 AND locked_by = $2 AND state = 'running'"
            }
        };
        let job: Option<JobRecord> = on_tx!(&mut *tx, c => sqlx::query_as(sql)
            .bind(id).bind(worker).fetch_optional(c).await?);
        let job = job.ok_or(StoreError::LeaseLost(id))?;
        let state = match failure {
            Failure::Permanent { error } => {
                finish(tx, id, JobState::Failed, error, now).await?;
                JobState::Failed
            }
            Failure::Retry { error, .. } if job.attempt >= job.max_attempts => {
                let msg = format!("{error} (attempt {} of {})", job.attempt, job.max_attempts);
                finish(tx, id, JobState::Dead, &msg, now).await?;
                JobState::Dead
            }
            Failure::Retry { error, retry_after } => {
                let delay = retry_delay(job.attempt as u32, *retry_after, rand::random::<f64>());
                requeue(tx, &job, now + delay.as_millis() as i64, error, now).await?
            }
        };
        Ok(state)
    }

    /// Returns running jobs whose lease expired to pending (or `dead` when
    /// their attempts are used up). The leader runs this periodically.
    pub async fn rescue(&self, now: Millis) -> Result<Vec<i64>, StoreError> {
        self.rescue_matching(now, None).await
    }

    /// Frees at once what earlier runs of this node left behind (see
    /// `Identity::is_previous_run`): their running jobs go back to pending
    /// (or `dead` when their attempts are used up), as an expired lease
    /// would, and their leases are dropped. Called at start-up, before this
    /// run claims anything. Returns the freed job ids and lease names.
    pub async fn release_previous_runs(
        &self,
        me: &crate::node::Identity,
        now: Millis,
    ) -> Result<(Vec<i64>, Vec<String>), StoreError> {
        let holders: Vec<String> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT DISTINCT locked_by FROM jobs WHERE state = 'running' AND locked_by IS NOT NULL
               AND substr(locked_by, 1, length($1)) = $1")
            .bind(&me.name).fetch_all(p).await?);
        let mut jobs = Vec::new();
        for h in holders.iter().filter(|h| me.is_previous_run(h)) {
            jobs.extend(self.rescue_matching(now, Some(h)).await?);
        }
        jobs.sort_unstable();
        let leases: Vec<(String, String)> = on_pool!(self, p => sqlx::query_as(
            "SELECT name, holder FROM leases WHERE substr(holder, 1, length($1)) = $1")
            .bind(&me.name).fetch_all(p).await?);
        let mut dropped = Vec::new();
        for (name, holder) in leases.iter().filter(|(_, h)| me.is_previous_run(h)) {
            self.release_lease(name, holder).await?;
            dropped.push(name.clone());
        }
        Ok((jobs, dropped))
    }

    async fn rescue_matching(
        &self,
        now: Millis,
        worker: Option<&str>,
    ) -> Result<Vec<i64>, StoreError> {
        let expired: Vec<JobRecord> = on_pool!(self, p => sqlx::query_as(
            "SELECT * FROM jobs WHERE state = 'running' AND (locked_until < $1 OR locked_by = $2) ORDER BY id LIMIT 1000")
            .bind(now).bind(worker).fetch_all(p).await?);
        let mut rescued = Vec::with_capacity(expired.len());
        for job in expired {
            let mut tx = self.begin().await?;
            // Re-check inside the transaction: a heartbeat may have won.
            // Locked on Postgres, so a complete or cancel committing now is
            // not overwritten by the requeue below.
            let sql = match &tx {
                Tx::Pg(_) => {
                    "SELECT * FROM jobs WHERE id = $1 AND state = 'running' AND (locked_until < $2 OR locked_by = $3) FOR UPDATE"
                }
                Tx::Sqlite(_) => {
                    "SELECT * FROM jobs WHERE id = $1 AND state = 'running' AND (locked_until < $2 OR locked_by = $3)"
                }
            };
            let still: Option<JobRecord> = on_tx!(&mut tx, c => sqlx::query_as(sql)
                .bind(job.id).bind(now).bind(worker).fetch_optional(c).await?);
            let Some(job) = still else { continue };
            let holder = job.locked_by.clone().unwrap_or_default();
            let error = format!("lease of worker {holder} expired");
            if job.attempt >= job.max_attempts {
                finish(&mut tx, job.id, JobState::Dead, &error, now).await?;
            } else {
                requeue(&mut tx, &job, now, &error, now).await?;
            }
            tx.commit().await?;
            rescued.push(job.id);
        }
        if !rescued.is_empty() {
            self.local_wake.notify_waiters();
        }
        Ok(rescued)
    }

    /// Operator retry of a failed, dead or cancelled job: pending again now,
    /// with a fresh attempt budget and the same idempotency key.
    pub async fn retry_job(&self, id: i64, now: Millis) -> Result<(), StoreError> {
        let job = self.job(id).await?.ok_or(StoreError::JobNotFound(id))?;
        if !matches!(
            job.state(),
            Some(JobState::Failed | JobState::Dead | JobState::Cancelled)
        ) {
            return Err(StoreError::InvalidState {
                id,
                action: "retried",
                state: job.state,
            });
        }
        if let Some(key) = &job.unique_key
            && let Some(existing) = self.pending_for_key(key).await?
        {
            return Err(StoreError::PendingExists {
                key: key.clone(),
                existing,
            });
        }
        let n = on_pool!(self, p => sqlx::query(
            "UPDATE jobs SET state = 'pending', attempt = 0, run_at = $2, finished_at = NULL, updated_at = $2
             WHERE id = $1 AND state IN ('failed', 'dead', 'cancelled')")
            .bind(id).bind(now).execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::InvalidState {
                id,
                action: "retried",
                state: "changed concurrently".into(),
            });
        }
        self.local_wake.notify_waiters();
        Ok(())
    }

    /// Cancels a pending or running job. A running job's holder then finds
    /// its lease gone when it reports.
    pub async fn cancel(&self, id: i64, now: Millis) -> Result<(), StoreError> {
        let n = on_pool!(self, p => sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = $2, updated_at = $2, locked_by = NULL, locked_until = NULL
             WHERE id = $1 AND state IN ('pending', 'running')")
            .bind(id).bind(now).execute(p).await?.rows_affected());
        if n == 1 {
            return Ok(());
        }
        match self.job(id).await? {
            None => Err(StoreError::JobNotFound(id)),
            Some(j) => Err(StoreError::InvalidState {
                id,
                action: "cancelled",
                state: j.state,
            }),
        }
    }

    /// A job inside a transaction.
    pub async fn job_in(&self, tx: &mut Tx, id: i64) -> Result<Option<JobRecord>, StoreError> {
        Ok(
            on_tx!(tx, c => sqlx::query_as("SELECT * FROM jobs WHERE id = $1").bind(id).fetch_optional(&mut *c).await?),
        )
    }

    pub async fn job(&self, id: i64) -> Result<Option<JobRecord>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_as("SELECT * FROM jobs WHERE id = $1").bind(id).fetch_optional(p).await?),
        )
    }

    async fn pending_for_key(&self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_scalar(
            "SELECT id FROM jobs WHERE unique_key = $1 AND state = 'pending'")
            .bind(key).fetch_optional(p).await?))
    }

    /// Jobs in id order after `after_id`, optionally in one state.
    pub async fn jobs(
        &self,
        state: Option<JobState>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let state = state.map(JobState::as_str);
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT * FROM jobs WHERE ($1 IS NULL OR state = $1) AND id > $2 ORDER BY id LIMIT $3")
            .bind(state).bind(after_id).bind(limit).fetch_all(p).await?))
    }

    /// How many jobs are in each state.
    pub async fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state").fetch_all(p).await?))
    }

    /// Waits until a job may be ready (an enqueue anywhere, for Postgres
    /// through LISTEN/NOTIFY) or `timeout` passes.
    pub async fn job_waiter(&self) -> Result<JobWaiter, StoreError> {
        let listener = match &self.pool {
            Pool::Pg(p) => {
                let mut l = PgListener::connect_with(p).await?;
                l.listen(JOBS_CHANNEL).await?;
                Some(l)
            }
            Pool::Sqlite(_) => None,
        };
        Ok(JobWaiter {
            listener,
            local: self.local_wake.clone(),
        })
    }
}

/// A worker's wake-up source. Idle workers wait on it instead of polling
/// the database in a tight loop.
pub struct JobWaiter {
    listener: Option<PgListener>,
    local: std::sync::Arc<tokio::sync::Notify>,
}

impl JobWaiter {
    /// Returns true when woken by an enqueue, false on timeout.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        let local = self.local.notified();
        match &mut self.listener {
            Some(l) => tokio::select! {
                r = l.recv() => r.is_ok(),
                _ = local => true,
                _ = tokio::time::sleep(timeout) => false,
            },
            None => tokio::select! {
                _ = local => true,
                _ = tokio::time::sleep(timeout) => false,
            },
        }
    }
}

async fn finish(
    tx: &mut Tx,
    id: i64,
    state: JobState,
    error: &str,
    now: Millis,
) -> Result<(), StoreError> {
    on_tx!(tx, c => sqlx::query(
        "UPDATE jobs SET state = $2, last_error = $3, finished_at = $4, updated_at = $4, locked_by = NULL, locked_until = NULL WHERE id = $1")
        .bind(id).bind(state.as_str()).bind(error).bind(now).execute(c).await?.rows_affected());
    Ok(())
}

/// Back to pending at `run_at`, unless a newer pending job with the same key
/// exists: then that one already covers this work (newer payload), so this
/// job's reasons merge into it and this one ends `cancelled`, superseded.
async fn requeue(
    tx: &mut Tx,
    job: &JobRecord,
    run_at: Millis,
    error: &str,
    now: Millis,
) -> Result<JobState, StoreError> {
    if let Some(key) = &job.unique_key {
        let newer: Option<JobRecord> = on_tx!(tx, c => sqlx::query_as(
            "SELECT * FROM jobs WHERE unique_key = $1 AND state = 'pending'")
            .bind(key).fetch_optional(c).await?);
        if let Some(newer) = newer {
            let mut reasons = job.reasons();
            reasons.extend(newer.reasons());
            let reasons = serde_json::to_string(&reasons).unwrap_or_else(|_| "[]".into());
            on_tx!(tx, c => sqlx::query("UPDATE jobs SET reasons = $2, run_at = $3, updated_at = $4 WHERE id = $1")
                .bind(newer.id).bind(reasons).bind(run_at.min(newer.run_at)).bind(now).execute(c).await?.rows_affected());
            let msg = format!("{error}; superseded by job {}", newer.id);
            finish(tx, job.id, JobState::Cancelled, &msg, now).await?;
            return Ok(JobState::Cancelled);
        }
    }
    on_tx!(tx, c => sqlx::query(
        "UPDATE jobs SET state = 'pending', run_at = $2, last_error = $3, updated_at = $4, locked_by = NULL, locked_until = NULL WHERE id = $1")
        .bind(job.id).bind(run_at).bind(error).bind(now).execute(c).await?.rows_affected());
    Ok(JobState::Pending)
}
