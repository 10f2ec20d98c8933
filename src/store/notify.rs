//! The notifier's cursor over the event log, and digest history it quotes.

use super::{Store, StoreError, Tx, on_pool, on_tx};

impl Store {
    /// The last event id the notifier has handled.
    pub async fn notify_cursor(&self) -> Result<i64, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_scalar::<_, i64>(
            "SELECT position FROM cursors WHERE name = 'notify'")
            .fetch_optional(p).await?)
        .unwrap_or(0))
    }

    /// The cursor, locked for this transaction on Postgres (replicas take
    /// turns; the second reads where the first left it).
    pub async fn lock_notify_cursor_in(&self, tx: &mut Tx) -> Result<i64, StoreError> {
        let sql = match tx {
            Tx::Pg(_) => "SELECT position FROM cursors WHERE name = 'notify' FOR UPDATE",
            Tx::Sqlite(_) => "SELECT position FROM cursors WHERE name = 'notify'",
        };
        Ok(on_tx!(tx, c => sqlx::query_scalar::<_, i64>(sql)
            .fetch_optional(&mut *c).await?)
        .unwrap_or(0))
    }

    pub async fn set_notify_cursor_in(&self, tx: &mut Tx, position: i64) -> Result<(), StoreError> {
        on_tx!(tx, c => sqlx::query(
            "INSERT INTO cursors (name, position) VALUES ('notify', $1)
             ON CONFLICT (name) DO UPDATE SET position = excluded.position")
            .bind(position).execute(&mut *c).await?.rows_affected());
        Ok(())
    }

    /// Moves the cursor to the log's end (no sinks hear anything).
    pub async fn notify_cursor_to_end(&self) -> Result<(), StoreError> {
        on_pool!(self, p => sqlx::query(
            "UPDATE cursors SET position = (SELECT COALESCE(MAX(id), 0) FROM events) WHERE name = 'notify'")
            .execute(p).await?.rows_affected());
        Ok(())
    }

    /// The image's digest before `not` (its tag's top-level digest), if
    /// it had another.
    pub async fn previous_digest(
        &self,
        image: &str,
        not: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_scalar(
            "SELECT digest FROM digest_observations WHERE image = $1 AND platform = '' AND digest <> $2 ORDER BY id DESC LIMIT 1")
            .bind(image).bind(not).fetch_optional(p).await?))
    }
}
