//! The rollout engine: a change opens (or joins) the running rollout; each
//! affected managed image is rebuilt once, after every affected parent in
//! the rollout succeeded, never on a failed parent.
//!
//! Every step is one store transaction, so a crash between steps loses
//! nothing: the state it resumes from is the state it committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::config::{Config, Image};
use crate::lineage::Lineage;
use crate::registry::ImageRef;
use crate::store::{Millis, NewEvent, NewJob, RolloutImage, Store, StoreError, Tx, now_millis};
use crate::watch::DigestChanged;

/// Job kind of a rebuild trigger.
pub const REBUILD: &str = "rebuild";

/// Builds of one image per rollout before a silent CI fails it for good.
pub const MAX_BUILD_ATTEMPTS: i32 = 3;

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildResult {
    Succeeded { digest: Option<String> },
    Failed { reason: String },
}

/// Why a manual rebuild was refused.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("image is not in the lineage")]
    Unknown,
    #[error("image has no build: lineaged cannot rebuild it")]
    NotBuildable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What cancelling a rollout did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    NotFound,
    /// It had already finished, in this state.
    Finished(String),
    Cancelled {
        images: usize,
        jobs: usize,
    },
}

pub struct Engine {
    cfg: Arc<Config>,
    store: Store,
    lineage: Arc<Lineage>,
    images: HashMap<ImageRef, usize>,
    /// Serialises engine steps in this process (Postgres row locks do it
    /// across replicas).
    lock: tokio::sync::Mutex<()>,
}

impl Engine {
    /// `lineage` must be built from `cfg.images`.
    pub fn new(cfg: Arc<Config>, store: Store, lineage: Arc<Lineage>) -> Engine {
        let images = cfg
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| (img.name.clone(), i))
            .collect();
        Engine {
            cfg,
            store,
            lineage,
            images,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    fn image(&self, name: &str) -> Option<&Image> {
        let r = ImageRef::parse(name).ok()?;
        self.images.get(&r).map(|&i| &self.cfg.images[i])
    }

    /// A tracked digest moved: add the affected images to the running
    /// rollout (opening one if none runs) and trigger what is ready. A
    /// managed image that is building and now carries its new base is done.
    pub async fn on_change(&self, change: &DigestChanged) -> Result<(), StoreError> {
        let _g = self.lock.lock().await;
        let now = now_millis();
        let plan = match self.lineage.plan(std::slice::from_ref(&change.image)) {
            Ok(p) => p,
            Err(_) => return Ok(()),
        };
        // Completion seen in the registry: the rebuilt image's base
        // annotation names its parent's current digest.
        if self.lineage.is_managed(&change.image) == Some(true) {
            self.complete_from_registry(&change.image, &change.new, now)
                .await?;
            // Our own rebuild showing up: its descendants are already in
            // the rollout (or were rebuilt on it).
            if self.is_own_build(&change.image, &change.new).await? {
                return Ok(());
            }
        }
        if plan.waves.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        let cause = json!({ "image": change.image.to_string(), "old": change.old, "new": change.new, "source": change.source.as_str() });
        let (rollout, created) = self.store.open_rollout_in(&mut tx, &cause, now).await?;
        let again = format!("{} moved again", change.image);
        self.merge_plan(&mut tx, rollout, &plan.waves, &again, now)
            .await?;
        let kind = if created {
            "rollout_started"
        } else {
            "rollout_joined"
        };
        let event = NewEvent {
            kind: kind.into(),
            image: Some(change.image.to_string()),
            rollout_id: Some(rollout),
            job_id: None,
            data: json!({ "images": plan.image_count(), "cause": cause }),
        };
        self.store.append_event_in(&mut tx, &event, now).await?;
        self.advance(&mut tx, rollout, now).await?;
        tx.commit().await?;
        self.store.wake_local();
        Ok(())
    }

    /// Adds planned waves to a rollout. An image already in it and not yet
    /// triggered reads the newest parents when it is; one queued or building
    /// is built once more afterwards (never two builds at once); a finished
    /// one waits again.
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
                let ri = match current.remove(&name) {
                    None => RolloutImage::new(rollout, &name, wave_no, now),
                    Some(mut ri) => {
                        match ri.state.as_str() {
                            "waiting" => {}
                            "queued" | "building" => ri.rerun = true,
                            _ => {
                                ri.state = "waiting".into();
                                ri.reason = Some(again.to_string());
                                ri.job_id = None;
                            }
                        }
                        ri.wave = ri.wave.max(wave_no);
                        ri.updated_at = now;
                        ri
                    }
                };
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
        let Some(img) = self.images.get(image).map(|&i| &self.cfg.images[i]) else {
            return Err(RebuildError::Unknown);
        };
        if img.build.is_none() {
            return Err(RebuildError::NotBuildable);
        }
        let _g = self.lock.lock().await;
        let now = now_millis();
        let plan = self
            .lineage
            .plan_rebuild(std::slice::from_ref(image))
            .map_err(|_| RebuildError::Unknown)?;
        let mut tx = self.store.begin().await?;
        let cause = json!({ "requested": image.to_string(), "by": by });
        let (rollout, _) = self.store.open_rollout_in(&mut tx, &cause, now).await?;
        let again = format!("rebuild requested by {by}");
        self.merge_plan(&mut tx, rollout, &plan.waves, &again, now)
            .await?;
        let event = NewEvent {
            kind: "rollout_requested".into(),
            image: Some(image.to_string()),
            rollout_id: Some(rollout),
            job_id: None,
            data: json!({ "images": plan.image_count(), "cause": cause }),
        };
        self.store.append_event_in(&mut tx, &event, now).await?;
        self.advance(&mut tx, rollout, now).await?;
        tx.commit().await?;
        self.store.wake_local();
        tracing::info!(image = %image, by, rollout, images = plan.image_count(), "rebuild requested");
        Ok((rollout, plan.image_count()))
    }

    /// Operator request: stop a running rollout. Images not yet finished
    /// become cancelled and their pending triggers are withdrawn; a build CI
    /// already started runs on, and its late result changes nothing.
    pub async fn cancel_rollout(&self, id: i64, by: &str) -> Result<CancelOutcome, StoreError> {
        let _g = self.lock.lock().await;
        let now = now_millis();
        let mut tx = self.store.begin().await?;
        let Some(r) = self.store.lock_rollout_in(&mut tx, id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        if r.state != "running" {
            return Ok(CancelOutcome::Finished(r.state));
        }
        let mut images = 0;
        let mut jobs = 0;
        for mut ri in self.store.rollout_images_in(&mut tx, id).await? {
            if ri.is_finished() {
                continue;
            }
            if let Some(job) = ri.job_id
                && ri.state == "queued"
                && self.store.cancel_job_in(&mut tx, job, now).await?
            {
                jobs += 1;
            }
            ri.state = "cancelled".into();
            ri.reason = Some(format!("rollout cancelled by {by}"));
            ri.rerun = false;
            ri.build_deadline = None;
            ri.updated_at = now;
            self.store.save_rollout_image_in(&mut tx, &ri).await?;
            images += 1;
        }
        let started = self
            .store
            .finish_rollout_in(&mut tx, id, "cancelled", now)
            .await?;
        for (kind, data) in [
            (
                "rollout_cancelled",
                json!({ "by": by, "images": images, "jobs": jobs }),
            ),
            (
                "rollout_finished",
                json!({ "state": "cancelled", "by": by }),
            ),
        ] {
            let event = NewEvent {
                kind: kind.into(),
                image: None,
                rollout_id: Some(id),
                job_id: None,
                data,
            };
            self.store.append_event_in(&mut tx, &event, now).await?;
        }
        tx.commit().await?;
        if let Some(at) = started {
            crate::metrics::metrics().rollout_finished("cancelled", (now - at) as f64 / 1000.0);
        }
        tracing::info!(rollout = id, by, images, jobs, "rollout cancelled");
        Ok(CancelOutcome::Cancelled { images, jobs })
    }

    /// Reconcile: stale managed images with no work in flight get a
    /// rollout of their own rebuild and their descendants'.
    pub async fn reconcile(&self) -> Result<usize, StoreError> {
        let stale = self.store.stale_images().await?;
        let busy: HashSet<String> = self.store.images_in_flight().await?.into_iter().collect();
        let todo: Vec<ImageRef> = stale
            .iter()
            .filter(|(n, _, _)| !busy.contains(n))
            .filter_map(|(n, _, _)| ImageRef::parse(n).ok())
            .filter(|r| self.lineage.contains(r))
            .collect();
        if todo.is_empty() {
            return Ok(0);
        }
        let _g = self.lock.lock().await;
        let now = now_millis();
        let plan = match self.lineage.plan_rebuild(&todo) {
            Ok(p) => p,
            Err(_) => return Ok(0),
        };
        let mut tx = self.store.begin().await?;
        let cause =
            json!({ "reconcile": todo.iter().map(ToString::to_string).collect::<Vec<_>>() });
        let (rollout, _) = self.store.open_rollout_in(&mut tx, &cause, now).await?;
        let existing: HashSet<String> = self
            .store
            .rollout_images_in(&mut tx, rollout)
            .await?
            .into_iter()
            .map(|r| r.image)
            .collect();
        let mut batch = Vec::new();
        for (w, wave) in plan.waves.iter().enumerate() {
            for img in wave {
                let name = img.to_string();
                if !existing.contains(&name) {
                    batch.push(RolloutImage::new(rollout, &name, w as i32 + 1, now));
                }
            }
        }
        self.store.save_rollout_images_in(&mut tx, &batch).await?;
        let event = NewEvent {
            kind: "rollout_reconciled".into(),
            image: None,
            rollout_id: Some(rollout),
            job_id: None,
            data: cause,
        };
        self.store.append_event_in(&mut tx, &event, now).await?;
        self.advance(&mut tx, rollout, now).await?;
        tx.commit().await?;
        self.store.wake_local();
        tracing::info!(
            images = todo.len(),
            rollout,
            "reconcile: stale images rebuilt"
        );
        Ok(todo.len())
    }

    /// The dispatcher delivered a trigger: the image is building until its
    /// result or the deadline.
    pub async fn on_triggered(&self, job_id: i64) -> Result<(), StoreError> {
        let _g = self.lock.lock().await;
        let Some(mut ri) = self.store.rollout_image_for_job(job_id).await? else {
            return Ok(());
        };
        if ri.state != "queued" {
            return Ok(());
        }
        let now = now_millis();
        let timeout = self
            .image(&ri.image)
            .and_then(|i| i.build.as_ref())
            .map_or(Duration::from_secs(7200), |b| b.build_timeout);
        ri.state = "building".into();
        ri.build_deadline = Some(now + timeout.as_millis() as i64);
        ri.updated_at = now;
        let mut tx = self.store.begin().await?;
        self.store.save_rollout_image_in(&mut tx, &ri).await?;
        let event = NewEvent {
            kind: "job_accepted".into(),
            image: Some(ri.image.clone()),
            rollout_id: Some(ri.rollout_id),
            job_id: Some(job_id),
            data: json!({}),
        };
        self.store.append_event_in(&mut tx, &event, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A trigger could not be delivered (4xx, or retries used up).
    pub async fn on_trigger_failed(&self, job_id: i64, reason: &str) -> Result<(), StoreError> {
        self.finish_job(
            job_id,
            BuildResult::Failed {
                reason: format!("trigger failed: {reason}"),
            },
        )
        .await
        .map(|_| ())
    }

    /// A build result for the image a job triggered (CI callback, deadline).
    /// Returns the image's state afterwards; a repeated report changes nothing.
    pub async fn finish_job(
        &self,
        job_id: i64,
        result: BuildResult,
    ) -> Result<Option<String>, StoreError> {
        let _g = self.lock.lock().await;
        let Some(ri) = self.store.rollout_image_for_job(job_id).await? else {
            return Ok(None);
        };
        if ri.is_finished() {
            return Ok(Some(ri.state));
        }
        let now = now_millis();
        let mut tx = self.store.begin().await?;
        self.store.lock_rollout_in(&mut tx, ri.rollout_id).await?;
        let state = self.apply_result(&mut tx, ri, result, now).await?;
        tx.commit().await?;
        self.store.wake_local();
        Ok(Some(state))
    }

    /// Builds past their deadline fail.
    pub async fn expire_builds(&self) -> Result<usize, StoreError> {
        let overdue = self.store.overdue_builds(now_millis()).await?;
        let n = overdue.len();
        for ri in overdue {
            let Some(job) = ri.job_id else { continue };
            if ri.build_attempts < MAX_BUILD_ATTEMPTS {
                // Retry policy: trigger the build again (a new job, so CI
                // sees a new webhook-id: it is a new build, not a redelivery).
                let _g = self.lock.lock().await;
                let now = now_millis();
                let mut tx = self.store.begin().await?;
                self.store.lock_rollout_in(&mut tx, ri.rollout_id).await?;
                let mut r = ri.clone();
                r.state = "waiting".into();
                r.job_id = None;
                r.build_deadline = None;
                r.reason = Some(format!(
                    "no result before build_timeout (build {} of {MAX_BUILD_ATTEMPTS}); retrying",
                    ri.build_attempts
                ));
                r.updated_at = now;
                self.store.save_rollout_image_in(&mut tx, &r).await?;
                let event = NewEvent {
                    kind: "job_failed".into(),
                    image: Some(r.image.clone()),
                    rollout_id: Some(r.rollout_id),
                    job_id: Some(job),
                    data: json!({ "reason": r.reason, "retry": true }),
                };
                self.store.append_event_in(&mut tx, &event, now).await?;
                self.advance(&mut tx, r.rollout_id, now).await?;
                tx.commit().await?;
                self.store.wake_local();
            } else {
                let reason =
                    format!("no result before build_timeout ({MAX_BUILD_ATTEMPTS} builds)");
                self.finish_job(job, BuildResult::Failed { reason }).await?;
            }
        }
        Ok(n)
    }

    async fn complete_from_registry(
        &self,
        image: &ImageRef,
        digest: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        let name = image.to_string();
        let Some(state) = self.store.image_state(&name).await? else {
            return Ok(());
        };
        // The base annotation names one base (the final stage's): the
        // parent it names, or any parent when it names none, must be at the
        // digest the annotation records.
        let Some(base_digest) = state.base_digest.clone() else {
            return Ok(());
        };
        let mut fresh = false;
        for p in self.lineage.parents(image) {
            let p = p.to_string();
            if state.base_name.as_ref().is_some_and(|n| *n != p) {
                continue;
            }
            let current = self
                .store
                .image_state(&p)
                .await?
                .and_then(|s| s.current_digest);
            fresh |= current.as_deref() == Some(base_digest.as_str());
        }
        if !fresh {
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        let Some(rollout) = self.store.running_rollout_in(&mut tx).await? else {
            return Ok(());
        };
        let ri = self
            .store
            .rollout_images_in(&mut tx, rollout)
            .await?
            .into_iter()
            .find(|r| r.image == name);
        if let Some(ri) = ri.filter(|r| r.state == "building" || r.state == "queued") {
            self.apply_result(
                &mut tx,
                ri,
                BuildResult::Succeeded {
                    digest: Some(digest.to_string()),
                },
                now,
            )
            .await?;
            tx.commit().await?;
            self.store.wake_local();
        }
        Ok(())
    }

    /// Whether a new digest of a managed image is lineaged's own doing: a
    /// build it recorded, or one it is waiting for (queued or building: CI
    /// may push the image before it calls back). Its descendants are then
    /// rebuilt by the rollout when the result arrives, not planned again.
    async fn is_own_build(&self, image: &ImageRef, digest: &str) -> Result<bool, StoreError> {
        let name = image.to_string();
        Ok(self
            .store
            .rollout_entries_for_image(&name, 3)
            .await?
            .iter()
            .any(|ri| {
                ri.built_digest.as_deref() == Some(digest)
                    || matches!(ri.state.as_str(), "queued" | "building")
            }))
    }

    async fn apply_result(
        &self,
        tx: &mut Tx,
        mut ri: RolloutImage,
        result: BuildResult,
        now: Millis,
    ) -> Result<String, StoreError> {
        let rollout = ri.rollout_id;
        let (kind, data) = match &result {
            BuildResult::Succeeded { digest } => {
                ri.built_digest = digest.clone();
                ri.reason = None;
                if std::mem::take(&mut ri.rerun) {
                    // A newer base arrived during the build: once more.
                    ri.state = "waiting".into();
                    ri.job_id = None;
                } else {
                    ri.state = "succeeded".into();
                }
                ("job_succeeded", json!({ "digest": digest }))
            }
            BuildResult::Failed { reason } => {
                ri.state = "failed".into();
                ri.reason = Some(reason.clone());
                ("job_failed", json!({ "reason": reason }))
            }
        };
        ri.updated_at = now;
        self.store.save_rollout_image_in(tx, &ri).await?;
        let event = NewEvent {
            kind: kind.into(),
            image: Some(ri.image.clone()),
            rollout_id: Some(rollout),
            job_id: ri.job_id,
            data,
        };
        self.store.append_event_in(tx, &event, now).await?;
        self.advance(tx, rollout, now).await?;
        Ok(ri.state)
    }

    /// Blocks descendants of failed images, triggers images whose affected
    /// parents all succeeded, and finishes the rollout when nothing is left.
    async fn advance(&self, tx: &mut Tx, rollout: i64, now: Millis) -> Result<(), StoreError> {
        let mut rows: HashMap<String, RolloutImage> = self
            .store
            .rollout_images_in(tx, rollout)
            .await?
            .into_iter()
            .map(|r| (r.image.clone(), r))
            .collect();
        let mut order: Vec<(i32, String)> =
            rows.values().map(|r| (r.wave, r.image.clone())).collect();
        order.sort();
        // Written in batches after the walk: blocked rows at once, triggered
        // rows once their jobs have ids.
        let mut changed: Vec<String> = Vec::new();
        let mut to_trigger: Vec<(String, NewJob)> = Vec::new();
        let mut digests: HashMap<String, Option<String>> = HashMap::new();
        for (_, name) in &order {
            let Some(r) = rows.get(name) else { continue };
            if r.state != "waiting" {
                continue;
            }
            let Ok(image_ref) = ImageRef::parse(name) else {
                continue;
            };
            let in_rollout: Vec<&RolloutImage> = self
                .lineage
                .parents(&image_ref)
                .iter()
                .filter_map(|p| rows.get(&p.to_string()))
                .collect();
            if let Some(bad) = in_rollout
                .iter()
                .find(|p| matches!(p.state.as_str(), "failed" | "blocked"))
            {
                let reason = format!(
                    "parent {} {}{}",
                    bad.image,
                    bad.state,
                    bad.job_id
                        .map(|j| format!(" (job {j})"))
                        .unwrap_or_default()
                );
                let mut r = rows[name].clone();
                r.state = "blocked".into();
                r.reason = Some(reason.clone());
                r.updated_at = now;
                changed.push(name.clone());
                let event = NewEvent {
                    kind: "image_blocked".into(),
                    image: Some(name.clone()),
                    rollout_id: Some(rollout),
                    job_id: None,
                    data: json!({ "reason": reason }),
                };
                self.store.append_event_in(tx, &event, now).await?;
                rows.insert(name.clone(), r);
                continue;
            }
            if !in_rollout.iter().all(|p| p.state == "succeeded") {
                continue;
            }
            let mut r = rows[name].clone();
            if let Some(job) = self
                .trigger(tx, &mut r, &image_ref, &mut digests, now)
                .await?
            {
                to_trigger.push((name.clone(), job));
                rows.insert(name.clone(), r);
            }
        }
        let jobs: Vec<NewJob> = to_trigger.iter().map(|(_, j)| j.clone()).collect();
        let enqueued = self.store.enqueue_many_in(tx, &jobs, now).await?;
        for ((name, _), e) in to_trigger.iter().zip(&enqueued) {
            if let Some(r) = rows.get_mut(name) {
                r.job_id = Some(e.id);
            }
            changed.push(name.clone());
        }
        let batch: Vec<RolloutImage> = changed
            .iter()
            .filter_map(|n| rows.get(n).cloned())
            .collect();
        self.store.save_rollout_images_in(tx, &batch).await?;
        if rows.values().all(RolloutImage::is_finished) {
            let ok = rows.values().filter(|r| r.state == "succeeded").count();
            let state = if ok == rows.len() {
                "succeeded"
            } else if ok == 0 {
                "failed"
            } else {
                "partially_failed"
            };
            if let Some(at) = self
                .store
                .finish_rollout_in(tx, rollout, state, now)
                .await?
            {
                // Counted before the commit: a rollback (rare) over-counts one.
                crate::metrics::metrics().rollout_finished(state, (now - at) as f64 / 1000.0);
            }
            let event = NewEvent {
                kind: "rollout_finished".into(),
                image: None,
                rollout_id: Some(rollout),
                job_id: None,
                data: json!({ "state": state, "images": rows.len(), "succeeded": ok }),
            };
            self.store.append_event_in(tx, &event, now).await?;
        }
        Ok(())
    }

    /// The rebuild trigger of `r` (enqueued by the caller, coalescing per
    /// image); marks `r` queued. None when the image has no build. Parent
    /// digests are read once per walk (`digests`).
    async fn trigger(
        &self,
        tx: &mut Tx,
        r: &mut RolloutImage,
        image: &ImageRef,
        digests: &mut HashMap<String, Option<String>>,
        now: Millis,
    ) -> Result<Option<NewJob>, StoreError> {
        let Some(img) = self.image(&r.image) else {
            return Ok(None);
        };
        let Some(build) = &img.build else {
            return Ok(None);
        };
        let mut parents = Vec::new();
        for p in self.lineage.parents(image) {
            let p = p.to_string();
            let digest = match digests.get(&p) {
                Some(d) => d.clone(),
                None => {
                    let d = self
                        .store
                        .image_state_in(tx, &p)
                        .await?
                        .and_then(|s| s.current_digest);
                    digests.insert(p.clone(), d.clone());
                    d
                }
            };
            parents.push(json!({ "name": p, "digest": digest }));
        }
        let token = format!("{:032x}", rand::random::<u128>());
        let mut job = NewJob::new(REBUILD, now);
        job.unique_key = Some(format!("rebuild:{}", r.image));
        job.image = Some(r.image.clone());
        job.rollout_id = Some(r.rollout_id);
        job.reasons = vec![format!("rollout {}", r.rollout_id)];
        job.payload = json!({
            "image": r.image,
            "parents": parents,
            "rollout_id": r.rollout_id,
            "backend": build.backend,
            "build": build,
            "callback_token": token,
        });
        r.state = "queued".into();
        r.build_attempts += 1;
        r.callback_token = Some(token);
        r.updated_at = now;
        Ok(Some(job))
    }
}
