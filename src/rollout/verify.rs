//! The gate stage of the pipeline: `built → verifying → built (verified) →
//! deploying | done`, or `→ refused`. The verify job is run by the gate
//! worker (`policy::worker`); its verdict, the job's completion, the cached
//! evaluation, the gate events and the image's move are one transaction.

use serde_json::json;

use super::jobs::{JobKind, JobPayload, VerifyPayload};
use super::machine::Outcome;
use super::progress::is_current_job;
use super::{Engine, ImageState};
use crate::policy::{Evaluation, GateResult};
use crate::store::{JobRecord, Millis, NewJob, RolloutImage, StoreError, now_millis};

impl Engine {
    /// The verify job of `r` (the built digest, or the image's current one
    /// for an external row); marks `r` verifying.
    pub(super) fn verify_job(&self, r: &mut RolloutImage, now: Millis) -> NewJob {
        let payload = VerifyPayload {
            image: r.image.clone(),
            digest: r.built_digest.clone(),
            rollout_id: r.rollout_id,
        };
        let mut job = NewJob::new(JobKind::Verify.as_str(), now);
        // Like deploys: finishing an image beats starting another.
        job.priority = -1;
        // Waits for a signer or a Harbor scan are retries: enough of them
        // to cover the longest wait (14 minutes) at the queue's backoff.
        job.max_attempts = 30;
        job.unique_key = Some(JobKind::Verify.unique_key(&r.image));
        job.image = Some(r.image.clone());
        job.rollout_id = Some(r.rollout_id);
        job.reasons = vec![format!("rollout {}: gates", r.rollout_id)];
        job.payload = JobPayload::Verify(payload).to_value();
        r.state = ImageState::Verifying;
        r.reason = None;
        r.updated_at = now;
        job
    }

    /// The gates decided: in one transaction the job completes, the
    /// evaluation is cached, each verdict becomes an event
    /// (`gate_passed`, `gate_refused`, `gate_warned`) and the image moves
    /// on or is refused. Returns the image's state, None when the job
    /// belongs to no current row (a late or repeated verdict).
    pub async fn on_verified(
        &self,
        job: &JobRecord,
        worker: &str,
        ev: &Evaluation,
        policy_hash: &str,
    ) -> Result<Option<ImageState>, StoreError> {
        let _g = self.lock.lock().await;
        let now = now_millis();
        let mut tx = self.store.begin_engine().await?;
        let result = json!({ "digest": ev.digest, "refused": ev.refusal().is_some() });
        self.store
            .complete_in(&mut tx, job.id, worker, Some(&result), now)
            .await?;
        self.store
            .save_gate_result_in(&mut tx, ev, policy_hash, now)
            .await?;
        let ri = self
            .store
            .rollout_image_for_job_in(&mut tx, job.id, JobKind::Verify.as_str())
            .await?;
        // Only a row still waiting on this job takes the verdict (a
        // cancelled or rerun row does not, and gets no gate events).
        let Some(ri) = ri.filter(|r| is_current_job(r, job) && r.state == ImageState::Verifying)
        else {
            tx.commit().await?;
            return Ok(None);
        };
        for v in &ev.verdicts {
            let kind = match v.result {
                GateResult::Passed => "gate_passed",
                GateResult::Refused => "gate_refused",
                GateResult::Warned => "gate_warned",
            };
            self.event(
                &mut tx,
                kind,
                (Some(&ri.image), Some(ri.rollout_id), Some(job.id)),
                json!({ "gate": v.gate, "digest": ev.digest, "reason": v.reason, "evidence": v.evidence }),
                now,
            )
            .await?;
        }
        let outcome = match ev.refusal_text() {
            Some(reason) => Outcome::Refused { reason },
            None => Outcome::Verified {
                digest: ev.digest.clone(),
            },
        };
        let state = self
            .apply_outcome(&mut tx, ri, &outcome, Some(job), now)
            .await?;
        tx.commit().await?;
        // Counted after the commit: a verdict that did not land is not one.
        for v in &ev.verdicts {
            crate::metrics::metrics()
                .gate_result(crate::policy::gate_label(&v.gate), v.result.as_str());
        }
        self.store.wake_local();
        Ok(Some(state))
    }

    /// The digest a verify job checks: the built one, else the image's
    /// current digest as last observed.
    pub async fn verify_target(&self, p: &VerifyPayload) -> Result<Option<String>, StoreError> {
        if let Some(d) = &p.digest {
            return Ok(Some(d.clone()));
        }
        Ok(self
            .store
            .image_state(&p.image)
            .await?
            .and_then(|s| s.current_digest))
    }
}
