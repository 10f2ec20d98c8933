//! Durable state: images, edges, digest history, rollouts, the job queue,
//! the event log and leader leases, in Postgres (several replicas) or SQLite
//! (embedded, single node), chosen by the URL scheme.
//!
//! One `Store` type dispatches to the backend's pool. Most SQL is shared (both
//! backends take `$N` parameters and the schema keeps one set of column
//! types); where the SQL differs (the claim, wake-ups) each backend has its
//! own. An enum rather than a trait object keeps async methods simple and
//! lets callers hold a backend-neutral transaction ([`Tx`]).

mod approvals;
mod changes;
mod gates;
mod health;
mod lease;
mod notify;
mod queue;
mod retry;
mod rollouts;
mod sync;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

pub use approvals::ApprovalRecord;
pub use changes::{BaseAnnotation, ChangeRecord, Observation, StaleParent};
pub use health::{
    GraphState, ImageFilter, ImageListed, ImageState, ImageStatus, RegistryHealth, StatusCounts,
    health_state,
};
pub use lease::LeaseHolder;
pub use queue::{ClaimedJob, Enqueued, Failure, JobRecord, JobState, JobWaiter, NewJob};
pub use retry::retry_delay;
pub use rollouts::{RolloutImage, RolloutRecord};
pub use sync::{DigestSource, DigestUpdate, EventRecord, NewEvent, SyncSummary};

/// Milliseconds since the Unix epoch; the store's clock unit. Queue and lease
/// functions take `now` as a parameter so tests control time.
pub type Millis = i64;

/// The wall clock in [`Millis`].
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Serialises a column that holds JSON text as the JSON itself, so the API
/// shows objects, not strings of JSON. Text that is not JSON stays a string.
pub(crate) fn raw_json<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => v.serialize(s),
        Err(_) => text.serialize(s),
    }
}

/// Postgres advisory-lock key that serialises rollout engine steps across
/// replicas (SQLite's `BEGIN IMMEDIATE` does it on one node).
const ENGINE_LOCK: i64 = 0x6c69_6e65_6167; // "lineag"

/// Postgres channel that wakes idle workers when a job is enqueued.
pub(crate) const JOBS_CHANNEL: &str = "lineaged_jobs";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL scheme `{0}` (use sqlite://FILE or postgres://…)")]
    UnsupportedUrl(String),
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("job {0} is not held by this worker (lease lost, cancelled or finished)")]
    LeaseLost(i64),
    #[error("job {0} not found")]
    JobNotFound(i64),
    #[error("job {id} cannot be {action} in state {state}")]
    InvalidState {
        id: i64,
        action: &'static str,
        state: String,
    },
    #[error("a pending job for `{key}` already exists (job {existing})")]
    PendingExists { key: String, existing: i64 },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A short, bounded name for metrics labels.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::UnsupportedUrl(_) => "unsupported_url",
            StoreError::Connect(_) => "connect",
            StoreError::Migrate(_) => "migrate",
            StoreError::Db(_) => "db",
            StoreError::LeaseLost(_) => "lease_lost",
            StoreError::JobNotFound(_) => "not_found",
            StoreError::InvalidState { .. } => "invalid_state",
            StoreError::PendingExists { .. } => "pending_exists",
            StoreError::Corrupt(_) => "corrupt",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

/// The store. Cheap to clone (pools are shared).
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: Pool,
    /// In-process wake-up for SQLite (single node) and for Postgres workers
    /// in the same process as the enqueuer.
    pub(crate) local_wake: Arc<tokio::sync::Notify>,
}

/// A transaction on either backend, so several writes (a state change and
/// the job it causes) commit together.
pub enum Tx {
    Pg(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

impl Tx {
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Pg(t) => t.commit().await?,
            Tx::Sqlite(t) => t.commit().await?,
        }
        Ok(())
    }
}

/// Runs the same generic sqlx code against whichever pool the store has.
macro_rules! on_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Pg($p) => $body,
            $crate::store::Pool::Sqlite($p) => $body,
        }
    };
}
/// Runs the same generic sqlx code inside either kind of transaction.
macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx {
            $crate::store::Tx::Pg(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::store::Tx::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}
pub(crate) use on_pool;
pub(crate) use on_tx;

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub max_connections: u32,
    /// How long to keep retrying an unreachable database at start-up.
    pub connect_deadline: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            max_connections: 10,
            connect_deadline: Duration::from_secs(30),
        }
    }
}

impl Store {
    /// Connects (retrying with backoff until `connect_deadline`, logging each
    /// failure) and applies the migrations. SQLite files are created if
    /// missing and use WAL.
    pub async fn open(url: &str, opts: &OpenOptions) -> Result<Store, StoreError> {
        let store = Store::connect(url, opts).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without migrating.
    pub async fn connect(url: &str, opts: &OpenOptions) -> Result<Store, StoreError> {
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let co = PgConnectOptions::from_str(url).map_err(StoreError::Connect)?;
            let pool = connect_with_retry(opts, "postgres", || {
                PgPoolOptions::new()
                    .max_connections(opts.max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(co.clone())
            })
            .await?;
            Pool::Pg(pool)
        } else if url.starts_with("sqlite:") {
            let co = SqliteConnectOptions::from_str(url)
                .map_err(StoreError::Connect)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // WAL + NORMAL: commits survive a crash of lineaged; a power
                // loss may undo the last commits but never corrupts the file.
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let pool = connect_with_retry(opts, "sqlite", || {
                SqlitePoolOptions::new()
                    .max_connections(opts.max_connections.clamp(1, 8))
                    .connect_with(co.clone())
            })
            .await?;
            Pool::Sqlite(pool)
        } else {
            let scheme = url.split(':').next().unwrap_or("").to_string();
            return Err(StoreError::UnsupportedUrl(scheme));
        };
        Ok(Store {
            pool,
            local_wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Applies pending migrations; a no-op when up to date. Returns how many
    /// were applied.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let before = self.applied_migrations().await.unwrap_or(0);
        match &self.pool {
            Pool::Pg(p) => sqlx::migrate!("migrations/postgres").run(p).await,
            Pool::Sqlite(p) => sqlx::migrate!("migrations/sqlite").run(p).await,
        }
        .map_err(StoreError::Migrate)?;
        let after = self.applied_migrations().await?;
        Ok(after.saturating_sub(before))
    }

    async fn applied_migrations(&self) -> Result<usize, StoreError> {
        let n: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM _sqlx_migrations WHERE success"
        ).fetch_one(p).await?);
        Ok(n as usize)
    }

    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Pg(_) => "postgres",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match &self.pool {
            Pool::Pg(p) => Tx::Pg(p.begin().await?),
            // IMMEDIATE takes the write lock up front: two deferred
            // transactions that both read and then write would deadlock,
            // and SQLite answers one of them "database is locked" at once.
            Pool::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    /// A transaction for one rollout engine step: on Postgres it holds the
    /// engine's advisory lock until commit, so steps of several replicas
    /// never interleave (two cannot open two rollouts for one change).
    pub async fn begin_engine(&self) -> Result<Tx, StoreError> {
        let mut tx = self.begin().await?;
        if let Tx::Pg(t) = &mut tx {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(ENGINE_LOCK)
                .execute(&mut **t)
                .await?;
        }
        Ok(tx)
    }

    /// One round trip to the database (`SELECT 1`), for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: i32 = on_pool!(self, p => sqlx::query_scalar("SELECT 1").fetch_one(p).await?);
        Ok(())
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }
}

/// `$first, $first+1, …`: `n` bind parameters for an `IN (…)` list.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn connect_with_retry<P, F, Fut>(
    opts: &OpenOptions,
    backend: &str,
    mut connect: F,
) -> Result<P, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<P, sqlx::Error>>,
{
    let deadline = tokio::time::Instant::now() + opts.connect_deadline;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match connect().await {
            Ok(p) => return Ok(p),
            Err(e) => {
                let delay =
                    retry_delay(attempt, None, rand::random::<f64>()).min(Duration::from_secs(5));
                if tokio::time::Instant::now() + delay >= deadline {
                    return Err(StoreError::Connect(e));
                }
                tracing::warn!(backend, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "database unreachable, retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
