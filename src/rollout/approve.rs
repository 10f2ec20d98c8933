//! The approval stage: `built → awaiting_approval → deploying` (or, with
//! `approval.before: build`, `waiting → awaiting_approval → queued`), or
//! `→ refused` when a person rejects or the request expires. The request,
//! the decision, the image's move and the events are one transaction each;
//! a restart keeps pending requests (they are rows).

use std::time::Duration;

use serde_json::json;

use super::machine::{ApprovalStage, Outcome};
use super::{Engine, ImageState};
use crate::store::{ApprovalRecord, Millis, NewJob, RolloutImage, StoreError, Tx, now_millis};

/// How long a request waits when the config names no `expires`.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// What asking for an approval came to.
pub(super) enum Asked {
    /// A request is pending (or, approved before, the deploy waits for its
    /// window).
    Waiting,
    /// This digest was approved before: its deploy job.
    Deploy(NewJob),
    /// This digest was rejected (or expired) before: refused again.
    Refused,
}

/// The result of an operator's decision.
#[derive(Debug)]
pub enum Decision {
    NotFound,
    /// It was decided already (or expired, or superseded): its state.
    AlreadyDecided(String),
    Decided(ApprovalRecord),
}

impl Engine {
    /// Asks for `r`'s approval before `stage`, unless this digest was
    /// decided on before: a rejected digest is not asked about again, an
    /// approved one deploys.
    pub(super) async fn ask_approval(
        &self,
        tx: &mut Tx,
        r: &mut RolloutImage,
        stage: ApprovalStage,
        now: Millis,
    ) -> Result<Asked, StoreError> {
        let digest = match stage {
            ApprovalStage::Deploy => r.built_digest.clone(),
            ApprovalStage::Build => None,
        };
        let earlier = match &digest {
            Some(d) => {
                self.store
                    .approval_decision_in(tx, &r.image, stage.as_str(), d)
                    .await?
            }
            None => None,
        };
        let at = (Some(r.image.as_str()), Some(r.rollout_id), None);
        r.updated_at = now;
        match earlier {
            Some(a) if a.state == "approved" => {
                r.approved_digest = digest;
                // Still within its deploy window, if it has one.
                match self.deploy_or_wait(tx, r, now).await? {
                    Some(job) => Ok(Asked::Deploy(job)),
                    None => Ok(Asked::Waiting),
                }
            }
            Some(a) => {
                let reason = format!(
                    "approval of this digest was {} earlier (approval {}{})",
                    a.state,
                    a.id,
                    a.decided_by
                        .as_deref()
                        .map(|b| format!(" by {b}"))
                        .unwrap_or_default()
                );
                r.state = ImageState::Refused;
                r.reason = Some(reason.clone());
                let data = json!({ "reason": reason, "approval_id": a.id });
                self.event(tx, "approval_rejected", at, data, now).await?;
                Ok(Asked::Refused)
            }
            None => {
                let expires = self
                    .image(&r.image)
                    .and_then(|i| i.approval)
                    .map_or(DEFAULT_EXPIRY, |a| a.expires);
                let expires_at = now + expires.as_millis() as i64;
                let id = self
                    .store
                    .create_approval_in(
                        tx,
                        &r.image,
                        stage.as_str(),
                        digest.as_deref(),
                        r.rollout_id,
                        expires_at,
                        now,
                    )
                    .await?;
                r.state = ImageState::AwaitingApproval;
                r.approval_id = Some(id);
                r.reason = None;
                let data = json!({ "approval_id": id, "stage": stage, "digest": digest, "expires_at": expires_at });
                self.event(tx, "approval_pending", at, data, now).await?;
                Ok(Asked::Waiting)
            }
        }
    }

    /// An operator approves or rejects approval `id`; `by` is the API
    /// token's name. The image moves on (or is refused, its children
    /// blocked) in the same transaction.
    pub async fn decide_approval(
        &self,
        id: i64,
        approve: bool,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Decision, StoreError> {
        let _g = self.lock.lock().await;
        let now = now_millis();
        let mut tx = self.store.begin_engine().await?;
        let Some(a) = self.store.approval_in(&mut tx, id).await? else {
            return Ok(Decision::NotFound);
        };
        if a.state != "pending" {
            return Ok(Decision::AlreadyDecided(a.state));
        }
        let state = if approve { "approved" } else { "rejected" };
        self.store
            .decide_approval_in(&mut tx, id, state, by, reason, now)
            .await?;
        let outcome = if approve {
            Outcome::Approved {
                stage: ApprovalStage::parse(&a.stage).unwrap_or(ApprovalStage::Deploy),
                by: by.to_string(),
            }
        } else {
            Outcome::Rejected {
                reason: match reason {
                    Some(r) if !r.is_empty() => format!("approval rejected by {by}: {r}"),
                    _ => format!("approval rejected by {by}"),
                },
                by: by.to_string(),
            }
        };
        self.settle(&mut tx, &a, &outcome, now).await?;
        tx.commit().await?;
        self.store.wake_local();
        tracing::info!(
            approval = id,
            image = a.image,
            state,
            by,
            "approval decided"
        );
        Ok(match self.store.approval(id).await? {
            Some(a) => Decision::Decided(a),
            None => Decision::NotFound,
        })
    }

    /// Pending approvals past their expiry are rejected as `expired`: the
    /// image is refused and its children are blocked. Returns how many.
    pub async fn expire_approvals(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for a in self.store.expired_approvals(now_millis()).await? {
            let _g = self.lock.lock().await;
            let now = now_millis();
            let mut tx = self.store.begin_engine().await?;
            let after = Duration::from_millis((a.expires_at - a.requested_at).max(0) as u64);
            let reason = format!(
                "approval expired after {} (rejected)",
                crate::config::format_duration(after)
            );
            if !self
                .store
                .decide_approval_in(&mut tx, a.id, "expired", "lineaged", Some(&reason), now)
                .await?
            {
                continue;
            }
            let outcome = Outcome::Rejected {
                reason,
                by: "lineaged".into(),
            };
            self.settle(&mut tx, &a, &outcome, now).await?;
            tx.commit().await?;
            self.store.wake_local();
            n += 1;
        }
        Ok(n)
    }

    /// Moves the image that waits on `a` (if it still does).
    async fn settle(
        &self,
        tx: &mut Tx,
        a: &ApprovalRecord,
        outcome: &Outcome,
        now: Millis,
    ) -> Result<(), StoreError> {
        let row = self
            .store
            .rollout_image_in(tx, a.rollout_id, &a.image)
            .await?
            .filter(|r| r.state == ImageState::AwaitingApproval && r.approval_id == Some(a.id));
        match row {
            Some(ri) => {
                self.apply_outcome(tx, ri, outcome, None, now).await?;
            }
            None => {
                // Nothing waits on it any more (the rollout was cancelled):
                // the decision is recorded for the digest all the same.
                let kind = outcome.event_kind();
                let data = json!({ "approval_id": a.id, "stale": true });
                self.event(
                    tx,
                    kind,
                    (Some(&a.image), Some(a.rollout_id), None),
                    data,
                    now,
                )
                .await?;
            }
        }
        Ok(())
    }
}
