//! Bringing images into the rollout: due changes from the outbox, operator
//! rebuilds, and reconcile of images built on bases nobody planned for.

use std::collections::HashMap;

use super::cause::{Cause, ChangeCause, JoinedData};
use super::machine::{self, Rejoin};
use super::{Engine, ImageState, JobPayload, RebuildError};
use crate::registry::ImageRef;
use crate::store::{ChangeRecord, Millis, RolloutImage, StoreError, Tx, now_millis};

/// Changes planned per transaction: one, so a change is planned (and marked
/// done) exactly when its rollout rows commit.
const CHANGES_PER_STEP: i64 = 1;

impl Engine {
    /// Plans every due change in the outbox, each in its own transaction
    /// that also marks it done. Returns how many were planned.
    pub async fn process_changes(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        loop {
            let _g = self.lock.lock().await;
            let now = now_millis();
            let mut tx = self.store.begin_engine().await?;
            let due = self
                .store
                .due_changes_in(&mut tx, now, CHANGES_PER_STEP)
                .await?;
            if due.is_empty() {
                return Ok(n);
            }
            for change in &due {
                self.apply_change(&mut tx, change, now).await?;
                self.store.finish_change_in(&mut tx, change.id, now).await?;
            }
            tx.commit().await?;
            self.store.wake_local();
            n += due.len();
        }
    }

    /// A tracked digest moved: a managed image that is building and now
    /// carries the base it was triggered with is done; an outside change
    /// adds the affected images to the running rollout (opening one when
    /// none runs) and triggers what is ready.
    async fn apply_change(
        &self,
        tx: &mut Tx,
        change: &ChangeRecord,
        now: Millis,
    ) -> Result<(), StoreError> {
        let Ok(image) = ImageRef::parse(&change.image) else {
            return Ok(());
        };
        if !self.lineage.contains(&image) {
            return Ok(()); // no longer in the config
        }
        if self.lineage.is_managed(&image) == Some(true)
            && (self.complete_from_registry(tx, change, now).await?
                || self.is_own_build(tx, change).await?)
        {
            // Our own rebuild showing up: its descendants are in the
            // rollout already (or were rebuilt on it).
            return Ok(());
        }
        let Ok(mut plan) = self.lineage.plan(std::slice::from_ref(&image)) else {
            return Ok(());
        };
        if plan.waves.is_empty() {
            return Ok(());
        }
        // An external image whose gates apply to cascading is a row of its
        // own, first: verified before anything builds on its new digest.
        let gated = self
            .nodes
            .get(&change.image)
            .is_some_and(|n| !n.stages.build && n.gates.cascade);
        if gated {
            plan.waves.insert(0, vec![image.clone()]);
        }
        let cause = Cause::Change(ChangeCause {
            image: change.image.clone(),
            old: change.old_digest.clone(),
            new: change.new_digest.clone(),
            source: change.source.clone(),
            coalesced: change.coalesced,
        });
        let again = format!("{} moved again", change.image);
        self.join(tx, cause, Some(&change.image), &plan, &again, None, now)
            .await
            .map(|_| ())
    }

    /// Opens (or joins) the running rollout for `cause`, merges the planned
    /// waves into it, records why (`kind`, or `rollout_started` /
    /// `rollout_joined`, with `{images, cause}`) and advances it. Returns
    /// the rollout's id.
    #[allow(clippy::too_many_arguments)]
    async fn join(
        &self,
        tx: &mut Tx,
        cause: Cause,
        image: Option<&str>,
        plan: &crate::lineage::Plan,
        again: &str,
        kind: Option<&str>,
        now: Millis,
    ) -> Result<i64, StoreError> {
        let (rollout, created) = self
            .store
            .open_rollout_in(tx, &cause.to_json(), now)
            .await?;
        self.merge_plan(tx, rollout, &plan.waves, again, now)
            .await?;
        let kind = kind.unwrap_or(if created {
            "rollout_started"
        } else {
            "rollout_joined"
        });
        let data = JoinedData {
            images: plan.image_count(),
            cause,
        };
        let data = serde_json::to_value(&data).unwrap_or_default();
        self.event(tx, kind, (image, Some(rollout), None), data, now)
            .await?;
        self.advance(tx, rollout, now).await?;
        Ok(rollout)
    }

    /// Adds planned waves to a rollout (see [`machine::rejoin`]): an image
    /// not yet triggered reads the newest parents when it is; one whose
    /// trigger has not gone out is withdrawn and waits again; one building
    /// or deploying is rerun afterwards; a finished one waits again.
    async fn merge_plan(
        &self,
        tx: &mut Tx,
        rollout: i64,
        waves: &[Vec<ImageRef>],
        again: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut current: HashMap<String, RolloutImage> = self
            .store
            .rollout_images_in(tx, rollout)
            .await?
            .into_iter()
            .map(|r| (r.image.clone(), r))
            .collect();
        let mut batch = Vec::new();
        for (w, wave) in waves.iter().enumerate() {
            for img in wave {
                let name = img.to_string();
                let wave_no = w as i32 + 1;
                let Some(mut ri) = current.remove(&name) else {
                    batch.push(RolloutImage::new(rollout, &name, wave_no, now));
                    continue;
                };
                let approval = self.nodes.get(&name).and_then(|n| n.approval);
                let mut rejoin = machine::rejoin(ri.state, approval);
                if rejoin == Rejoin::Reask {
                    if let Some(a) = ri.approval_id.take() {
                        self.store
                            .decide_approval_in(tx, a, "superseded", "lineaged", Some(again), now)
                            .await?;
                    }
                    rejoin = Rejoin::Restart;
                }
                match rejoin {
                    Rejoin::Keep | Rejoin::Reask => {}
                    Rejoin::WithdrawOrRerun => {
                        let withdrawn = match ri.job_id {
                            Some(job) => {
                                self.store
                                    .withdraw_pending_job_in(tx, job, again, now)
                                    .await?
                            }
                            None => true,
                        };
                        if withdrawn {
                            ri.state = ImageState::Waiting;
                            ri.job_id = None;
                            ri.verify_job_id = None;
                            ri.verified_digest = None;
                            ri.build_attempts = (ri.build_attempts - 1).max(0);
                            ri.reason = Some(again.to_string());
                        } else {
                            ri.rerun = true;
                        }
                    }
                    Rejoin::Rerun => ri.rerun = true,
                    Rejoin::Restart => {
                        ri.state = ImageState::Waiting;
                        ri.reason = Some(again.to_string());
                        ri.job_id = None;
                        ri.deploy_job_id = None;
                        // A new digest is checked anew: a verdict on the
                        // old one says nothing about it.
                        ri.verify_job_id = None;
                        ri.verified_digest = None;
                        ri.approved_digest = None;
                        ri.build_approved = false;
                        ri.build_deadline = None;
                        ri.build_attempts = 0;
                    }
                }
                ri.wave = ri.wave.max(wave_no);
                ri.updated_at = now;
                batch.push(ri);
            }
        }
        self.store.save_rollout_images_in(tx, &batch).await
    }

    /// Operator request: rebuild `image` (managed, with a build) and every
    /// managed descendant, in the running rollout or a new one. Returns the
    /// rollout id and how many images it covers.
    pub async fn request_rebuild(
        &self,
        image: &ImageRef,
        by: &str,
    ) -> Result<(i64, usize), RebuildError> {
        let Some(img) = self.image(&image.to_string()) else {
            return Err(RebuildError::Unknown);
        };
        if img.build.is_none() {
            return Err(RebuildError::NotBuildable);
        }
        let plan = self
            .lineage
            .plan_rebuild(std::slice::from_ref(image))
            .map_err(|_| RebuildError::Unknown)?;
        let _g = self.lock.lock().await;
        let now = now_millis();
        let mut tx = self.store.begin_engine().await?;
        let cause = Cause::Requested {
            requested: image.to_string(),
            by: by.to_string(),
        };
        let again = format!("rebuild requested by {by}");
        let name = image.to_string();
        let rollout = self
            .join(
                &mut tx,
                cause,
                Some(&name),
                &plan,
                &again,
                Some("rollout_requested"),
                now,
            )
            .await?;
        tx.commit().await?;
        self.store.wake_local();
        tracing::info!(image = %image, by, rollout, images = plan.image_count(), "rebuild requested");
        Ok((rollout, plan.image_count()))
    }

    /// Reconcile: managed images built on a parent digest that is no longer
    /// current, where that change was never planned (see
    /// `Store::unplanned_stale_in`), get a rollout of their rebuild and
    /// their descendants'. Level-triggered: after a crash or a missed
    /// event, this is what still knows.
    pub async fn reconcile(&self) -> Result<usize, StoreError> {
        let _g = self.lock.lock().await;
        let now = now_millis();
        let mut tx = self.store.begin_engine().await?;
        let todo: Vec<ImageRef> = self
            .store
            .unplanned_stale_in(&mut tx, self.started_at)
            .await?
            .iter()
            .filter_map(|n| ImageRef::parse(n).ok())
            .filter(|r| self.lineage.contains(r))
            .collect();
        if todo.is_empty() {
            return Ok(0);
        }
        let Ok(plan) = self.lineage.plan_rebuild(&todo) else {
            return Ok(0);
        };
        let cause = Cause::Reconcile {
            reconcile: todo.iter().map(ToString::to_string).collect(),
        };
        let again = "reconcile: built on an outdated base";
        let rollout = self
            .join(
                &mut tx,
                cause,
                None,
                &plan,
                again,
                Some("rollout_reconciled"),
                now,
            )
            .await?;
        tx.commit().await?;
        self.store.wake_local();
        tracing::info!(
            images = todo.len(),
            rollout,
            "reconcile: stale images rebuilt"
        );
        Ok(todo.len())
    }

    /// Completion seen in the registry: the image is queued or building in
    /// the running rollout, and its new digest's base annotation names the
    /// parent digest its trigger carried. True when it completed the build.
    async fn complete_from_registry(
        &self,
        tx: &mut Tx,
        change: &ChangeRecord,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let Some(state) = self.store.image_state_in(tx, &change.image).await? else {
            return Ok(false);
        };
        let Some(base_digest) = state.base_digest.clone() else {
            return Ok(false);
        };
        let Some(rollout) = self.store.running_rollout_in(tx).await? else {
            return Ok(false);
        };
        let entry = self
            .store
            .rollout_entries_for_image_in(tx, &change.image, 1)
            .await?
            .into_iter()
            .find(|r| {
                r.rollout_id == rollout
                    && matches!(r.state, ImageState::Queued | ImageState::Building)
            });
        let Some(ri) = entry else {
            return Ok(false);
        };
        let Some(job) = ri.job_id else {
            return Ok(false);
        };
        let Some(job) = self.store.job_in(tx, job).await? else {
            return Ok(false);
        };
        let Ok(JobPayload::Rebuild(p)) = JobPayload::decode(&job.kind, &job.payload) else {
            return Ok(false);
        };
        let built_on_trigger = p.parents.iter().any(|pd| {
            state.base_name.as_ref().is_none_or(|n| *n == pd.name)
                && pd.digest.as_deref() == Some(base_digest.as_str())
        });
        if !built_on_trigger {
            return Ok(false);
        }
        // The top-level digest: what a deploy rolls out (the tracked value
        // may list platform digests).
        let digest = change
            .top_digest
            .clone()
            .unwrap_or_else(|| change.new_digest.clone());
        let outcome = machine::Outcome::Built {
            digest: Some(digest),
        };
        self.apply_outcome(tx, ri, &outcome, Some(&job), now)
            .await?;
        Ok(true)
    }

    /// Whether a new digest of a managed image is lineaged's own doing: a
    /// build it recorded, or one it is waiting for (queued or building: CI
    /// may push before it calls back). Digests CI reports by callback never
    /// reach the outbox.
    async fn is_own_build(&self, tx: &mut Tx, change: &ChangeRecord) -> Result<bool, StoreError> {
        Ok(self
            .store
            .rollout_entries_for_image_in(tx, &change.image, 3)
            .await?
            .iter()
            .any(|ri| {
                let built = ri.built_digest.as_deref();
                built == Some(change.new_digest.as_str())
                    || (built.is_some() && built == change.top_digest.as_deref())
                    || matches!(ri.state, ImageState::Queued | ImageState::Building)
            }))
    }
}
