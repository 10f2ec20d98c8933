//! The deploy-window stage: `built → waiting_for_window → deploying` when
//! a deploy falls due outside its image's `deploy_window` (the step puts
//! it there, with the next opening); at the opening the row is built again
//! and the step deploys it. Time is a parameter.

use serde_json::json;

use super::{Engine, ImageState};
use crate::store::{Millis, StoreError};

impl Engine {
    /// Whether a deploy job still has an image deploying through it: a
    /// watched deploy whose image moved on (cancelled, removed from the
    /// config, failed by its timeout) must stop looking.
    pub async fn deploy_wanted(&self, job: &crate::store::JobRecord) -> Result<bool, StoreError> {
        Ok(self
            .store
            .rollout_image_for_job(job.id)
            .await?
            .is_some_and(|ri| {
                ri.state == ImageState::Deploying && ri.deploy_job_id == Some(job.id)
            }))
    }

    /// Deploys whose window has opened by `now` go out. Returns how many.
    pub async fn open_windows(&self, now: Millis) -> Result<usize, StoreError> {
        let mut n = 0;
        for candidate in self.store.opened_windows(now).await? {
            let _g = self.lock.lock().await;
            let mut tx = self.store.begin_engine().await?;
            // Re-read under the lock: a newer change may have moved it.
            let Some(mut ri) = self
                .store
                .rollout_image_in(&mut tx, candidate.rollout_id, &candidate.image)
                .await?
            else {
                continue;
            };
            if ri.state != ImageState::WaitingForWindow || ri.not_before.is_none_or(|t| t > now) {
                continue;
            }
            ri.state = ImageState::Built;
            ri.not_before = None;
            ri.updated_at = now;
            self.store.save_rollout_image_in(&mut tx, &ri).await?;
            self.event(
                &mut tx,
                "deploy_window_opened",
                (Some(&ri.image), Some(ri.rollout_id), None),
                json!({}),
                now,
            )
            .await?;
            self.advance_from(&mut tx, ri.rollout_id, &ri.image, now)
                .await?;
            tx.commit().await?;
            self.store.wake_local();
            n += 1;
        }
        Ok(n)
    }
}
