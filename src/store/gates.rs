//! Cached gate verdicts, per image, digest and policy hash.

use super::{Millis, Store, StoreError, Tx, on_pool, on_tx};
use crate::policy::Evaluation;

impl Store {
    /// Records (or replaces) the evaluation of a digest under a policy.
    pub async fn save_gate_result_in(
        &self,
        tx: &mut Tx,
        ev: &Evaluation,
        policy_hash: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(ev).unwrap_or_default();
        on_tx!(tx, c => sqlx::query(
            "INSERT INTO gate_results (image, digest, policy_hash, evaluation, refused, created_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (image, digest, policy_hash) DO UPDATE SET evaluation = excluded.evaluation, refused = excluded.refused, created_at = excluded.created_at")
            .bind(&ev.image).bind(&ev.digest).bind(policy_hash).bind(&text).bind(ev.refusal().is_some()).bind(now)
            .execute(&mut *c).await?.rows_affected());
        Ok(())
    }

    /// The cached evaluation of a digest under a policy: (JSON, when).
    pub async fn gate_result(
        &self,
        image: &str,
        digest: &str,
        policy_hash: &str,
    ) -> Result<Option<(String, Millis)>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT evaluation, created_at FROM gate_results WHERE image = $1 AND digest = $2 AND policy_hash = $3")
            .bind(image).bind(digest).bind(policy_hash).fetch_optional(p).await?))
    }

    /// The evaluation that refused this digest under this policy, if the
    /// newest one did: children never build on it.
    pub async fn gate_refusal_in(
        &self,
        tx: &mut Tx,
        image: &str,
        digest: &str,
        policy_hash: &str,
    ) -> Result<Option<String>, StoreError> {
        let refused: Option<bool> = on_tx!(tx, c => sqlx::query_scalar(
            "SELECT refused FROM gate_results WHERE image = $1 AND digest = $2 AND policy_hash = $3")
            .bind(image).bind(digest).bind(policy_hash).fetch_optional(&mut *c).await?);
        if refused != Some(true) {
            return Ok(None);
        }
        Ok(on_tx!(tx, c => sqlx::query_scalar(
            "SELECT evaluation FROM gate_results WHERE image = $1 AND digest = $2 AND policy_hash = $3")
            .bind(image).bind(digest).bind(policy_hash).fetch_optional(&mut *c).await?))
    }

    /// The newest evaluations of an image (JSON), newest first.
    pub async fn gate_results_for(
        &self,
        image: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_scalar(
            "SELECT evaluation FROM gate_results WHERE image = $1 ORDER BY created_at DESC LIMIT $2")
            .bind(image).bind(limit).fetch_all(p).await?))
    }
}

impl Store {
    /// Records a scan report a registry sent for a digest (the newest wins).
    pub async fn save_scan_report(
        &self,
        digest: &str,
        source: &str,
        image: &str,
        report: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        on_pool!(self, p => sqlx::query(
            "INSERT INTO scan_reports (digest, source, image, report, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (digest, source, image) DO UPDATE SET report = excluded.report, created_at = excluded.created_at")
            .bind(digest).bind(source).bind(image).bind(report).bind(now)
            .execute(p).await?.rows_affected());
        Ok(())
    }

    /// The scan report a registry sent for a digest of an image: (JSON, when).
    pub async fn scan_report(
        &self,
        digest: &str,
        source: &str,
        image: &str,
    ) -> Result<Option<(String, Millis)>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT report, created_at FROM scan_reports WHERE digest = $1 AND source = $2 AND image = $3")
            .bind(digest).bind(source).bind(image).fetch_optional(p).await?))
    }
}

impl Store {
    /// Pending verify jobs of `image` become due now: what they wait for
    /// (a scan report) has arrived. Returns how many.
    pub async fn hasten_verify_jobs(&self, image: &str, now: Millis) -> Result<u64, StoreError> {
        let n = on_pool!(self, p => sqlx::query(
            "UPDATE jobs SET run_at = $2 WHERE kind = 'verify' AND state = 'pending' AND image = $1 AND run_at > $2")
            .bind(image).bind(now).execute(p).await?.rows_affected());
        if n > 0 {
            self.wake_local();
        }
        Ok(n)
    }
}

impl Store {
    /// Puts a held job back to pending until `run_at` without using up an
    /// attempt: it waits for something to arrive (a signature, a scan
    /// report); it did not fail. False when the lease was lost.
    pub async fn defer_job(
        &self,
        id: i64,
        worker: &str,
        run_at: Millis,
        note: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let n = on_pool!(self, p => sqlx::query(
            "UPDATE jobs SET state = 'pending', run_at = $3, attempt = attempt - 1, last_error = $4, updated_at = $5, locked_by = NULL, locked_until = NULL
             WHERE id = $1 AND locked_by = $2 AND state = 'running'")
            .bind(id).bind(worker).bind(run_at).bind(note).bind(now)
            .execute(p).await?.rows_affected());
        Ok(n == 1)
    }
}
