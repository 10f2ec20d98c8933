//! Approvals: a person's yes or no before an image is deployed (or built).

use super::{Millis, Store, StoreError, Tx, on_pool, on_tx};

/// One approval request and, once made, its decision.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct ApprovalRecord {
    pub id: i64,
    pub image: String,
    /// `deploy` or `build`.
    pub stage: String,
    /// The built digest a deploy approval is about (none for a build).
    pub digest: Option<String>,
    pub rollout_id: i64,
    /// `pending`, `approved`, `rejected`, `expired` or `superseded` (a newer
    /// build replaced the digest, or the rollout was cancelled).
    pub state: String,
    pub reason: Option<String>,
    pub requested_at: Millis,
    pub expires_at: Millis,
    pub decided_at: Option<Millis>,
    /// The API token's name (`lineaged` for an expiry).
    pub decided_by: Option<String>,
}

impl Store {
    /// A pending approval; returns its id.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_approval_in(
        &self,
        tx: &mut Tx,
        image: &str,
        stage: &str,
        digest: Option<&str>,
        rollout_id: i64,
        expires_at: Millis,
        now: Millis,
    ) -> Result<i64, StoreError> {
        Ok(on_tx!(tx, c => sqlx::query_scalar(
            "INSERT INTO approvals (image, stage, digest, rollout_id, state, requested_at, expires_at)
             VALUES ($1, $2, $3, $4, 'pending', $5, $6) RETURNING id")
            .bind(image).bind(stage).bind(digest).bind(rollout_id).bind(now).bind(expires_at)
            .fetch_one(&mut *c).await?))
    }

    /// The newest decision (approved, rejected or expired) on this digest of
    /// the image for the stage.
    pub async fn approval_decision_in(
        &self,
        tx: &mut Tx,
        image: &str,
        stage: &str,
        digest: &str,
    ) -> Result<Option<ApprovalRecord>, StoreError> {
        Ok(on_tx!(tx, c => sqlx::query_as(
            "SELECT * FROM approvals WHERE image = $1 AND stage = $2 AND digest = $3
             AND state IN ('approved', 'rejected', 'expired') ORDER BY id DESC LIMIT 1")
            .bind(image).bind(stage).bind(digest).fetch_optional(&mut *c).await?))
    }

    /// The approval, locked for this transaction on Postgres.
    pub async fn approval_in(
        &self,
        tx: &mut Tx,
        id: i64,
    ) -> Result<Option<ApprovalRecord>, StoreError> {
        let sql = match tx {
            Tx::Pg(_) => "SELECT * FROM approvals WHERE id = $1 FOR UPDATE",
            Tx::Sqlite(_) => "SELECT * FROM approvals WHERE id = $1",
        };
        Ok(on_tx!(tx, c => sqlx::query_as(sql).bind(id).fetch_optional(&mut *c).await?))
    }

    pub async fn approval(&self, id: i64) -> Result<Option<ApprovalRecord>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_as("SELECT * FROM approvals WHERE id = $1")
            .bind(id).fetch_optional(p).await?),
        )
    }

    /// Approvals in `state` (all when None), newest first.
    pub async fn approvals(
        &self,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT * FROM approvals WHERE ($1 IS NULL OR state = $1) ORDER BY id DESC LIMIT $2")
            .bind(state).bind(limit).fetch_all(p).await?))
    }

    /// Records the decision on a pending approval; false when it was not
    /// pending any more.
    pub async fn decide_approval_in(
        &self,
        tx: &mut Tx,
        id: i64,
        state: &str,
        by: &str,
        reason: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let n = on_tx!(tx, c => sqlx::query(
            "UPDATE approvals SET state = $2, decided_by = $3, reason = $4, decided_at = $5
             WHERE id = $1 AND state = 'pending'")
            .bind(id).bind(state).bind(by).bind(reason).bind(now)
            .execute(&mut *c).await?.rows_affected());
        Ok(n == 1)
    }

    /// Pending approvals past their expiry.
    pub async fn expired_approvals(&self, now: Millis) -> Result<Vec<ApprovalRecord>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT * FROM approvals WHERE state = 'pending' AND expires_at < $1 ORDER BY id LIMIT 500")
            .bind(now).fetch_all(p).await?))
    }
}
