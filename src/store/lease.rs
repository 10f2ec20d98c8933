//! Leader leases for singleton duties (the polling schedule, the rescuer):
//! one row per duty naming its holder and expiry. The holder renews before
//! expiry; anyone may take an expired lease. Time is a parameter.

use std::time::Duration;

use super::{Millis, Store, StoreError, on_pool};

/// Take or renew: succeeds for the current holder or when the lease expired.
const ACQUIRE: &str = "INSERT INTO leases (name, holder, expires_at, acquired_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder,
    expires_at = excluded.expires_at,
    acquired_at = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_at ELSE excluded.acquired_at END
WHERE leases.holder = excluded.holder OR leases.expires_at <= excluded.acquired_at
RETURNING holder";

/// Who holds a lease, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaseHolder {
    pub holder: String,
    pub expires_at: Millis,
    pub acquired_at: Millis,
}

impl Store {
    /// Acquires or renews lease `name` for `holder` until `now + ttl`.
    /// Returns whether `holder` now holds it. A holder must stop acting as
    /// leader once `now` reaches the expiry it was granted, even before it
    /// learns someone else took over.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let expires = now + ttl.as_millis() as i64;
        let got: Option<String> = on_pool!(self, p => sqlx::query_scalar(ACQUIRE)
            .bind(name).bind(holder).bind(expires).bind(now)
            .fetch_optional(p).await?);
        Ok(got.as_deref() == Some(holder))
    }

    /// Gives the lease up so another replica can take it at once.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        on_pool!(self, p => sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name).bind(holder).execute(p).await?.rows_affected());
        Ok(())
    }

    pub async fn lease_holder(&self, name: &str) -> Result<Option<LeaseHolder>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT holder, expires_at, acquired_at FROM leases WHERE name = $1")
            .bind(name).fetch_optional(p).await?))
    }
}
