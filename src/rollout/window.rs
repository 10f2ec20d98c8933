//! The deploy-window stage: `built → waiting_for_window → deploying` when
//! a deploy falls due outside its image's `deploy_window` (the step puts
//! it there, with the next opening); at the opening the row is built again
//! and the step deploys it. Time is a parameter.

use serde_json::json;

use super::{Engine, ImageState};
use crate::store::{Millis, NewJob, RolloutImage, StoreError, Tx};

impl Engine {
    /// The deploy job of `r`'s built digest, or, outside its image's deploy
    /// window, `r` waiting for the opening (and None).
    pub(super) async fn deploy_or_wait(
        &self,
        tx: &mut Tx,
        r: &mut RolloutImage,
        now: Millis,
    ) -> Result<Option<NewJob>, StoreError> {
        let window = self.image(&r.image).and_then(|i| i.deploy_window.as_ref());
        if let Some(w) = window
            && let Some(opens) = w.next_opening(now)
        {
            r.state = ImageState::WaitingForWindow;
            r.not_before = Some(opens);
            r.updated_at = now;
            let at = (Some(r.image.as_str()), Some(r.rollout_id), None);
            let data = json!({ "opens_at": opens, "window": w.text });
            self.event(tx, "deploy_waiting_for_window", at, data, now)
                .await?;
            return Ok(None);
        }
        Ok(self.deploy_job(r, now))
    }

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
