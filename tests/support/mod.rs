//! Test support: a fresh database per test, on either backend.
#![allow(dead_code)]

pub mod ci_peer;
pub mod fleet;
pub mod platform;
pub mod registry;
pub mod signer;
pub mod smtp;

use lineaged::store::{OpenOptions, Store};

/// The Postgres server tests use: `TEST_DATABASE_URL` (scripts/test.sh sets
/// it, starting a throwaway cluster when needed) or the machine's server.
pub fn pg_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let prefix = base.rsplit_once('/').map_or(base, |(p, _)| p);
    format!("{prefix}/{db}{query}")
}

/// A database of its own for one test on Postgres.
pub struct PgDb {
    pub url: String,
    pub name: String,
}

impl PgDb {
    pub async fn create() -> PgDb {
        use sqlx::Connection;
        let admin = pg_admin_url();
        let name = format!("lineaged_t_{:016x}", rand::random::<u64>());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("Postgres at {admin} is required for the store tests (scripts/test.sh starts one): {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        PgDb {
            url: with_database(&admin, &name),
            name,
        }
    }

    pub async fn store(&self) -> Store {
        Store::open(&self.url, &OpenOptions::default())
            .await
            .expect("open postgres store")
    }

    /// Drops the database (call at the end of a passing test).
    pub async fn drop_db(self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}

/// A database of its own for one test on SQLite (a file in a temp dir).
pub struct SqliteDb {
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl SqliteDb {
    pub fn create() -> SqliteDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("lineaged.db").display());
        SqliteDb { dir, url }
    }

    pub async fn store(&self) -> Store {
        Store::open(&self.url, &OpenOptions::default())
            .await
            .expect("open sqlite store")
    }
}

pub enum TestDb {
    Pg(PgDb),
    Sqlite(SqliteDb),
}

impl TestDb {
    pub async fn new(backend: &str) -> TestDb {
        match backend {
            "postgres" => TestDb::Pg(PgDb::create().await),
            _ => TestDb::Sqlite(SqliteDb::create()),
        }
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Pg(d) => &d.url,
            TestDb::Sqlite(d) => &d.url,
        }
    }

    pub async fn store(&self) -> Store {
        match self {
            TestDb::Pg(d) => d.store().await,
            TestDb::Sqlite(d) => d.store().await,
        }
    }

    pub async fn finish(self) {
        if let TestDb::Pg(d) = self {
            d.drop_db().await;
        }
    }
}
