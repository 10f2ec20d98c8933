//! Moving images through the pipeline: the machine's actions applied,
//! deliveries and results of rebuild and deploy jobs, deadlines, cancel.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::json;

use super::jobs::{DeployPayload, JobKind, JobPayload, ParentDigest, RebuildPayload, new_token};
use super::machine::{self, Action, Outcome};
use super::{CancelOutcome, Engine, ImageState, JobResult, MAX_BUILD_ATTEMPTS, RolloutState};
use crate::store::{
    Failure, JobRecord, JobState, Millis, NewJob, RolloutImage, StoreError, Tx, now_millis,
};

const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(7200);

/// What a delivery attempt came to, as the dispatcher saw it.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The receiver's HTTP status (2xx).
    pub status: u16,
    pub duration_ms: u64,
    /// The receiver's answer means done (a deploy backend with `ack: sync`).
    pub done: bool,
    /// The CI run the trigger started, when the answer named it.
    pub run_id: Option<String>,
    pub run_url: Option<String>,
}

impl Engine {
    /// Asks the machine what the rollout's rows allow and applies it:
    /// blocks, triggers (rebuild jobs), deploys (deploy jobs), images done,
    /// the rollout finished. Jobs are enqueued in the caller's transaction.
    pub(super) async fn advance(
        &self,
        tx: &mut Tx,
        rollout: i64,
        now: Millis,
    ) -> Result<(), StoreError> {
        let rows = self.store.rollout_images_in(tx, rollout).await?;
        let actions = machine::step(&rows, &self.nodes);
        let blocked = self.apply_actions(tx, rollout, rows, actions, now).await?;
        for image in blocked {
            self.advance_from(tx, rollout, &image, now).await?;
        }
        Ok(())
    }

    /// `advance` after one image changed: decides only that image and its
    /// children (reading them and their parents), then down the chain what
    /// a block reaches, and finishes the rollout when nothing is left. A
    /// result costs its neighbourhood, not the whole rollout: 10,000 results
    /// in a 10,000-image rollout stay linear.
    pub(super) async fn advance_from(
        &self,
        tx: &mut Tx,
        rollout: i64,
        image: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut frontier = vec![image.to_string()];
        while !frontier.is_empty() {
            let mut decide: HashSet<String> = frontier.iter().cloned().collect();
            for f in &frontier {
                if let Some(children) = self.children.get(f) {
                    decide.extend(children.iter().cloned());
                }
            }
            let mut context: HashSet<&str> = decide.iter().map(String::as_str).collect();
            for d in &decide {
                if let Some(n) = self.nodes.get(d) {
                    context.extend(n.parents.iter().map(String::as_str));
                }
            }
            let names: Vec<&str> = context.into_iter().collect();
            let rows = self
                .store
                .rollout_images_named_in(tx, rollout, &names)
                .await?;
            let actions = machine::step_in(&rows, &self.nodes, Some(&decide));
            // Blocked (or cancelled) images block their own children next.
            frontier = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Block { image, .. } | Action::Cancel { image, .. } => {
                        Some(image.clone())
                    }
                    _ => None,
                })
                .collect();
            let blocked = self.apply_actions(tx, rollout, rows, actions, now).await?;
            frontier.extend(blocked);
        }
        if let Some(counts) = self
            .store
            .rollout_counts_if_finished_in(tx, rollout)
            .await?
            && let Some(finish) = machine::finish_state(&counts)
        {
            self.apply_actions(tx, rollout, Vec::new(), vec![finish], now)
                .await?;
        }
        Ok(())
    }

    /// Applies the machine's actions to `rows` in the step's transaction.
    /// Returns the images a trigger blocked instead (a parent's digest was
    /// refused by a gate): their children must be decided next.
    async fn apply_actions(
        &self,
        tx: &mut Tx,
        rollout: i64,
        rows: Vec<RolloutImage>,
        actions: Vec<Action>,
        now: Millis,
    ) -> Result<Vec<String>, StoreError> {
        if actions.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows: HashMap<String, RolloutImage> =
            rows.into_iter().map(|r| (r.image.clone(), r)).collect();
        let mut changed: Vec<String> = Vec::new();
        // (image, kind, job), enqueued together after the walk.
        let mut to_enqueue: Vec<(String, JobKind, NewJob)> = Vec::new();
        let mut digests: HashMap<String, Option<String>> = HashMap::new();
        // Triggers that turned into blocks (a parent's digest was refused):
        // their children are decided next.
        let mut blocked_here: Vec<String> = Vec::new();
        for action in actions {
            match action {
                Action::Block { image, reason } | Action::Cancel { image, reason } => {
                    let Some(r) = rows.get_mut(&image) else {
                        continue;
                    };
                    let (state, kind) = if self.nodes.contains_key(&image) {
                        (ImageState::Blocked, "image_blocked")
                    } else {
                        (ImageState::Cancelled, "image_cancelled")
                    };
                    r.state = state;
                    r.reason = Some(reason.clone());
                    r.updated_at = now;
                    // Nobody waits on its approval any more.
                    if let Some(a) = r.approval_id.take() {
                        self.store
                            .decide_approval_in(tx, a, "superseded", "lineaged", Some(&reason), now)
                            .await?;
                    }
                    changed.push(image.clone());
                    self.event(
                        tx,
                        kind,
                        (Some(&image), Some(rollout), None),
                        json!({ "reason": reason }),
                        now,
                    )
                    .await?;
                }
                Action::Trigger { image } => {
                    // Parents whose gates apply to cascading are built on as
                    // the digest that passed, not whatever the tag says now.
                    let pins: HashMap<String, String> = self
                        .nodes
                        .get(&image)
                        .map(|n| n.parents.as_slice())
                        .unwrap_or_default()
                        .iter()
                        .filter(|p| self.nodes.get(*p).is_some_and(|n| n.gates.cascade))
                        .filter_map(|p| {
                            let d = rows.get(p)?.verified_digest.clone()?;
                            Some((p.clone(), d))
                        })
                        .collect();
                    let Some(r) = rows.get_mut(&image) else {
                        continue;
                    };
                    match self.rebuild_job(tx, r, &pins, &mut digests, now).await? {
                        Triggered::Job(job) => {
                            to_enqueue.push((image.clone(), JobKind::Rebuild, job));
                            changed.push(image);
                        }
                        Triggered::Refused(reason) => {
                            r.state = ImageState::Blocked;
                            r.reason = Some(reason.clone());
                            r.updated_at = now;
                            changed.push(image.clone());
                            self.event(
                                tx,
                                "image_blocked",
                                (Some(&image), Some(rollout), None),
                                json!({ "reason": reason }),
                                now,
                            )
                            .await?;
                            blocked_here.push(image);
                        }
                        Triggered::Nothing => {}
                    }
                }
                Action::Verify { image } => {
                    let Some(r) = rows.get_mut(&image) else {
                        continue;
                    };
                    let job = self.verify_job(r, now);
                    to_enqueue.push((image.clone(), JobKind::Verify, job));
                    changed.push(image);
                }
                Action::AwaitApproval { image, stage } => {
                    let Some(r) = rows.get_mut(&image) else {
                        continue;
                    };
                    match self.ask_approval(tx, r, stage, now).await? {
                        super::approve::Asked::Deploy(job) => {
                            to_enqueue.push((image.clone(), JobKind::Deploy, job));
                        }
                        super::approve::Asked::Refused => blocked_here.push(image.clone()),
                        super::approve::Asked::Waiting => {}
                    }
                    changed.push(image);
                }
                Action::Deploy { image } => {
                    let Some(r) = rows.get_mut(&image) else {
                        continue;
                    };
                    if let Some(job) = self.deploy_or_wait(tx, r, now).await? {
                        to_enqueue.push((image.clone(), JobKind::Deploy, job));
                    }
                    changed.push(image);
                }
                Action::DeployFailed { image, reason } => {
                    let Some(r) = rows.get_mut(&image) else {
                        continue;
                    };
                    r.state = ImageState::DeployFailed;
                    r.reason = Some(reason.clone());
                    r.updated_at = now;
                    changed.push(image.clone());
                    self.event(
                        tx,
                        "deploy_failed",
                        (Some(&image), Some(rollout), None),
                        json!({ "reason": reason }),
                        now,
                    )
                    .await?;
                }
                Action::Done { image } => {
                    let Some(r) = rows.get_mut(&image) else {
                        continue;
                    };
                    r.state = ImageState::Done;
                    r.updated_at = now;
                    changed.push(image.clone());
                    self.event(
                        tx,
                        "image_done",
                        (Some(&image), Some(rollout), None),
                        json!({ "digest": r.built_digest }),
                        now,
                    )
                    .await?;
                }
                Action::Finish {
                    state,
                    images,
                    done,
                } => {
                    if let Some(at) = self
                        .store
                        .finish_rollout_in(tx, rollout, state, now)
                        .await?
                    {
                        // Counted before the commit: a rollback (rare) over-counts one.
                        crate::metrics::metrics()
                            .rollout_finished(state.as_str(), (now - at) as f64 / 1000.0);
                    }
                    self.event(
                        tx,
                        "rollout_finished",
                        (None, Some(rollout), None),
                        json!({ "state": state, "images": images, "succeeded": done }),
                        now,
                    )
                    .await?;
                }
            }
        }
        let jobs: Vec<NewJob> = to_enqueue.iter().map(|(_, _, j)| j.clone()).collect();
        // A trigger is a new job with its own webhook-id: a stale pending
        // job of the same image and kind (left by an earlier rollout) is
        // withdrawn, never merged into.
        let keys: Vec<&str> = jobs
            .iter()
            .filter_map(|j| j.unique_key.as_deref())
            .collect();
        let stale = self.store.cancel_stale_pending_in(tx, &keys, now).await?;
        if stale > 0 {
            tracing::warn!(
                rollout,
                jobs = stale,
                "withdrew stale pending jobs before new triggers"
            );
        }
        let enqueued = self.store.enqueue_many_in(tx, &jobs, now).await?;
        for ((image, kind, _), e) in to_enqueue.iter().zip(&enqueued) {
            if let Some(r) = rows.get_mut(image) {
                match kind {
                    JobKind::Rebuild => r.job_id = Some(e.id),
                    JobKind::Deploy => r.deploy_job_id = Some(e.id),
                    JobKind::Verify => r.verify_job_id = Some(e.id),
                    JobKind::Notify => {}
                }
            }
        }
        let batch: Vec<RolloutImage> = changed
            .iter()
            .filter_map(|n| rows.get(n).cloned())
            .collect();
        self.store.save_rollout_images_in(tx, &batch).await?;
        Ok(blocked_here)
    }

    /// The rebuild job of `r` (enqueued by the caller, coalescing per
    /// image); marks `r` queued. Parent digests are read once per walk;
    /// `pins` are the digests of gated parents that passed in this rollout.
    /// A parent whose digest a gate refused (in any rollout) blocks it.
    async fn rebuild_job(
        &self,
        tx: &mut Tx,
        r: &mut RolloutImage,
        pins: &HashMap<String, String>,
        digests: &mut HashMap<String, Option<String>>,
        now: Millis,
    ) -> Result<Triggered, StoreError> {
        let Some(img) = self.image(&r.image) else {
            return Ok(Triggered::Nothing);
        };
        let Some(build) = &img.build else {
            return Ok(Triggered::Nothing);
        };
        let mut parents = Vec::with_capacity(img.parents.len());
        for p in &img.parents {
            let name = p.to_string();
            let digest = match (pins.get(&name), digests.get(&name)) {
                (Some(pin), _) => Some(pin.clone()),
                (None, Some(d)) => d.clone(),
                (None, None) => {
                    let d = self
                        .store
                        .image_state_in(tx, &name)
                        .await?
                        .and_then(|s| s.current_digest);
                    digests.insert(name.clone(), d.clone());
                    d
                }
            };
            let gated = self.nodes.get(&name).is_some_and(|n| n.gates.cascade);
            if gated
                && let Some(d) = &digest
                && let Some(ev) = self
                    .store
                    .gate_refusal_in(tx, &name, d, &self.cfg.policy.hash)
                    .await?
            {
                let why = serde_json::from_str::<crate::policy::Evaluation>(&ev)
                    .ok()
                    .and_then(|e| e.refusal_text())
                    .unwrap_or_else(|| "refused".into());
                return Ok(Triggered::Refused(format!(
                    "parent {name} at {d} was refused ({why})"
                )));
            }
            parents.push(ParentDigest { name, digest });
        }
        let token = new_token();
        let payload = RebuildPayload {
            image: r.image.clone(),
            parents,
            rollout_id: r.rollout_id,
            backend: build.backend.clone(),
            build: build.clone(),
            callback_token: token.clone(),
        };
        let mut job = NewJob::new(JobKind::Rebuild.as_str(), now);
        job.unique_key = Some(JobKind::Rebuild.unique_key(&r.image));
        job.image = Some(r.image.clone());
        job.rollout_id = Some(r.rollout_id);
        job.reasons = vec![format!("rollout {}", r.rollout_id)];
        job.payload = JobPayload::Rebuild(payload).to_value();
        r.state = ImageState::Queued;
        r.build_attempts += 1;
        r.callback_token = Some(token);
        r.reason = None;
        r.updated_at = now;
        Ok(Triggered::Job(job))
    }

    /// The deploy job of `r`'s built digest; marks `r` deploying until the
    /// deploy's deadline.
    pub(super) fn deploy_job(&self, r: &mut RolloutImage, now: Millis) -> Option<NewJob> {
        let deploy = self.image(&r.image)?.deploy.as_ref()?;
        let digest = r.built_digest.clone()?;
        let token = new_token();
        let payload = DeployPayload::new(&r.image, &digest, r.rollout_id, deploy, token);
        let mut job = NewJob::new(JobKind::Deploy.as_str(), now);
        // Before rebuilds: finishing an image beats starting another.
        job.priority = -1;
        job.unique_key = Some(JobKind::Deploy.unique_key(&r.image));
        job.image = Some(r.image.clone());
        job.rollout_id = Some(r.rollout_id);
        job.reasons = vec![format!("rollout {}: deploy {digest}", r.rollout_id)];
        job.payload = JobPayload::Deploy(payload).to_value();
        r.state = ImageState::Deploying;
        r.build_deadline = Some(now + deploy.timeout.as_millis() as i64);
        r.updated_at = now;
        Some(job)
    }

    /// Applies a result to an image's row (a no-op when the row is past
    /// that stage), records what a good build was built on, and advances.
    pub(super) async fn apply_outcome(
        &self,
        tx: &mut Tx,
        mut ri: RolloutImage,
        outcome: &Outcome,
        job: Option<&JobRecord>,
        now: Millis,
    ) -> Result<ImageState, StoreError> {
        if !machine::apply(&mut ri, outcome) {
            return Ok(ri.state);
        }
        // Counted before the commit: a rollback (rare) over-counts one.
        let (stage, result) = match outcome {
            Outcome::Built { .. } => ("build", "succeeded"),
            Outcome::BuildFailed { .. } => ("build", "failed"),
            Outcome::Verified { .. } => ("verify", "succeeded"),
            Outcome::Refused { .. } => ("verify", "failed"),
            Outcome::Deployed => ("deploy", "succeeded"),
            Outcome::DeployFailed { .. } => ("deploy", "failed"),
            Outcome::Approved { .. } => ("approval", "succeeded"),
            Outcome::Rejected { .. } => ("approval", "failed"),
        };
        crate::metrics::metrics().stage_result(stage, result);
        if let (Outcome::Built { .. }, Some(job)) = (outcome, job)
            && let Ok(JobPayload::Rebuild(p)) = JobPayload::decode(&job.kind, &job.payload)
        {
            self.store
                .record_build_bases_in(tx, &ri.image, &p.parents, now)
                .await?;
        }
        ri.updated_at = now;
        self.store.save_rollout_image_in(tx, &ri).await?;
        let data = match outcome {
            Outcome::Built { digest } => {
                json!({ "digest": digest, "rerun": ri.state == ImageState::Waiting })
            }
            Outcome::Deployed => json!({ "digest": ri.built_digest }),
            Outcome::Verified { digest } => json!({ "digest": digest }),
            Outcome::BuildFailed { reason }
            | Outcome::DeployFailed { reason }
            | Outcome::Refused { reason } => {
                json!({ "reason": reason })
            }
            Outcome::Approved { stage, by } => json!({ "stage": stage, "by": by }),
            Outcome::Rejected { reason, by } => json!({ "reason": reason, "by": by }),
        };
        self.event(
            tx,
            outcome.event_kind(),
            (Some(&ri.image), Some(ri.rollout_id), job.map(|j| j.id)),
            data,
            now,
        )
        .await?;
        if ri.state == ImageState::Done {
            let data = json!({ "digest": ri.built_digest });
            self.event(
                tx,
                "image_done",
                (Some(&ri.image), Some(ri.rollout_id), None),
                data,
                now,
            )
            .await?;
        }
        self.advance_from(tx, ri.rollout_id, &ri.image, now).await?;
        // The state after the step (built may have moved on to done).
        Ok(self
            .store
            .rollout_image_in(tx, ri.rollout_id, &ri.image)
            .await?
            .map_or(ri.state, |r| r.state))
    }

    /// The dispatcher delivered a job (2xx): in one transaction the job is
    /// completed (fenced by `worker`'s lease), `job_dispatched` recorded,
    /// and the image moves on: building until its result or deadline, or,
    /// for a deploy acknowledged synchronously, done.
    pub async fn on_delivered(
        &self,
        job: &JobRecord,
        worker: &str,
        d: &Delivered,
    ) -> Result<(), StoreError> {
        let _g = self.lock.lock().await;
        let now = now_millis();
        let mut tx = self.store.begin_engine().await?;
        let result = json!({ "delivered": true, "status": d.status, "duration_ms": d.duration_ms });
        self.store
            .complete_in(&mut tx, job.id, worker, Some(&result), now)
            .await?;
        if d.run_id.is_some() || d.run_url.is_some() {
            self.store
                .set_run_in(&mut tx, job.id, d.run_id.as_deref(), d.run_url.as_deref())
                .await?;
        }
        self.event(
            &mut tx,
            "job_dispatched", (job.image.as_deref(), job.rollout_id, Some(job.id)),
            json!({ "kind": job.kind, "attempt": job.attempt, "status": d.status, "duration_ms": d.duration_ms, "run_id": d.run_id, "run_url": d.run_url }),
            now)
        .await?;
        let kind = JobKind::parse(&job.kind);
        let ri = self
            .store
            .rollout_image_for_job_in(&mut tx, job.id, &job.kind)
            .await?;
        match (kind, ri) {
            (Some(JobKind::Rebuild), Some(mut ri))
                if ri.state == ImageState::Queued && ri.job_id == Some(job.id) =>
            {
                let timeout = self
                    .image(&ri.image)
                    .and_then(|i| i.build.as_ref())
                    .map_or(DEFAULT_BUILD_TIMEOUT, |b| b.build_timeout);
                ri.state = ImageState::Building;
                ri.build_deadline = Some(now + timeout.as_millis() as i64);
                ri.updated_at = now;
                self.store.save_rollout_image_in(&mut tx, &ri).await?;
                self.event(
                    &mut tx,
                    "job_accepted",
                    (Some(&ri.image), Some(ri.rollout_id), Some(job.id)),
                    json!({}),
                    now,
                )
                .await?;
            }
            (Some(JobKind::Deploy), Some(ri))
                if ri.state == ImageState::Deploying && ri.deploy_job_id == Some(job.id) =>
            {
                if d.done {
                    self.apply_outcome(&mut tx, ri, &Outcome::Deployed, Some(job), now)
                        .await?;
                } else {
                    self.event(
                        &mut tx,
                        "deploy_accepted",
                        (Some(&ri.image), Some(ri.rollout_id), Some(job.id)),
                        json!({}),
                        now,
                    )
                    .await?;
                }
            }
            _ => {}
        }
        tx.commit().await?;
        self.store.wake_local();
        Ok(())
    }

    /// A delivery (or a gate check) failed: the job is retried later or,
    /// when the failure is for good (4xx, attempts used up), the image's
    /// build or deploy fails, or the image is refused (a gate that could not
    /// run), in the same transaction. Returns the job's state.
    pub async fn on_delivery_failed(
        &self,
        job: &JobRecord,
        worker: &str,
        failure: &Failure,
    ) -> Result<JobState, StoreError> {
        let _g = self.lock.lock().await;
        let now = now_millis();
        let mut tx = self.store.begin_engine().await?;
        let state = self
            .store
            .fail_in(&mut tx, job.id, worker, failure, now)
            .await?;
        if matches!(state, JobState::Failed | JobState::Dead) {
            let error = match failure {
                Failure::Permanent { error } | Failure::Retry { error, .. } => error.clone(),
            };
            let ri = self
                .store
                .rollout_image_for_job_in(&mut tx, job.id, &job.kind)
                .await?;
            let outcome = match JobKind::parse(&job.kind) {
                Some(JobKind::Rebuild) => Outcome::BuildFailed {
                    reason: format!("trigger failed: {error}"),
                },
                // A gate never passes on an error.
                Some(JobKind::Verify) => Outcome::Refused {
                    reason: format!("gates could not run: {error}"),
                },
                _ => Outcome::DeployFailed {
                    reason: format!("deploy failed: {error}"),
                },
            };
            if let Some(ri) = ri.filter(|r| is_current_job(r, job)) {
                self.apply_outcome(&mut tx, ri, &outcome, Some(job), now)
                    .await?;
            }
        }
        tx.commit().await?;
        self.store.wake_local();
        Ok(state)
    }

    /// A result reported for a job (CI callback, deploy callback). Returns
    /// the image's state afterwards; None when the job is not part of a
    /// rollout. A repeated or late report changes nothing.
    pub async fn finish_job(
        &self,
        job_id: i64,
        result: JobResult,
    ) -> Result<Option<ImageState>, StoreError> {
        let _g = self.lock.lock().await;
        let now = now_millis();
        let mut tx = self.store.begin_engine().await?;
        let Some(job) = self.store.job_in(&mut tx, job_id).await? else {
            return Ok(None);
        };
        let Some(ri) = self
            .store
            .rollout_image_for_job_in(&mut tx, job_id, &job.kind)
            .await?
        else {
            return Ok(None);
        };
        if !is_current_job(&ri, &job) {
            return Ok(Some(ri.state));
        }
        let outcome = match (JobKind::parse(&job.kind), result) {
            (Some(JobKind::Deploy), JobResult::Succeeded { .. }) => Outcome::Deployed,
            (Some(JobKind::Deploy), JobResult::Failed { reason }) => {
                Outcome::DeployFailed { reason }
            }
            (_, JobResult::Succeeded { digest }) => Outcome::Built { digest },
            (_, JobResult::Failed { reason }) => Outcome::BuildFailed { reason },
        };
        let state = self
            .apply_outcome(&mut tx, ri, &outcome, Some(&job), now)
            .await?;
        tx.commit().await?;
        self.store.wake_local();
        Ok(Some(state))
    }

    /// Builds and deploys past their deadline: a build is triggered again
    /// (a new job: CI sees a new webhook-id, it is a new build) up to
    /// `MAX_BUILD_ATTEMPTS`, then fails; a deploy fails.
    pub async fn expire_builds(&self) -> Result<usize, StoreError> {
        let mut n = self.fail_orphans().await?;
        let overdue = self.store.overdue_builds(now_millis()).await?;
        for candidate in overdue {
            let _g = self.lock.lock().await;
            let now = now_millis();
            let mut tx = self.store.begin_engine().await?;
            // Re-read under the lock: a result or another replica may have
            // moved it meanwhile.
            let deploy = candidate.state == ImageState::Deploying;
            let job_id = if deploy {
                candidate.deploy_job_id
            } else {
                candidate.job_id
            };
            let Some(job_id) = job_id else { continue };
            let Some(ri) = self
                .store
                .rollout_image_for_job_in(
                    &mut tx,
                    job_id,
                    if deploy { "deploy" } else { "rebuild" },
                )
                .await?
            else {
                continue;
            };
            if !(ri.build_deadline.is_some_and(|d| d < now)
                && matches!(ri.state, ImageState::Building | ImageState::Deploying))
            {
                continue;
            }
            let job = self.store.job_in(&mut tx, job_id).await?;
            if ri.state == ImageState::Deploying {
                // A deploy lineaged watches itself is still pending: stop
                // it, and say what it last saw.
                let last = job
                    .as_ref()
                    .filter(|j| j.state() == Some(crate::store::JobState::Pending))
                    .and_then(|j| j.last_error.clone());
                self.store.cancel_job_in(&mut tx, job_id, now).await?;
                let outcome = Outcome::DeployFailed {
                    reason: match last {
                        Some(l) => format!("not rolled out before the deploy timeout: {l}"),
                        None => "no deploy result before the deploy timeout".into(),
                    },
                };
                self.apply_outcome(&mut tx, ri, &outcome, job.as_ref(), now)
                    .await?;
            } else if ri.build_attempts < MAX_BUILD_ATTEMPTS {
                let mut r = ri.clone();
                r.state = ImageState::Waiting;
                r.job_id = None;
                r.build_deadline = None;
                r.reason = Some(format!(
                    "no result before build_timeout (build {} of {MAX_BUILD_ATTEMPTS}); retrying",
                    ri.build_attempts
                ));
                r.updated_at = now;
                self.store.save_rollout_image_in(&mut tx, &r).await?;
                self.event(
                    &mut tx,
                    "job_failed",
                    (Some(&r.image), Some(r.rollout_id), ri.job_id),
                    json!({ "reason": r.reason, "retry": true }),
                    now,
                )
                .await?;
                self.advance_from(&mut tx, r.rollout_id, &r.image, now)
                    .await?;
            } else {
                let outcome = Outcome::BuildFailed {
                    reason: format!("no result before build_timeout ({MAX_BUILD_ATTEMPTS} builds)"),
                };
                self.apply_outcome(&mut tx, ri, &outcome, job.as_ref(), now)
                    .await?;
            }
            tx.commit().await?;
            self.store.wake_local();
            n += 1;
        }
        Ok(n)
    }

    /// Rows waiting on a job that ended outside the engine (a lease rescue
    /// that used up the job's attempts): the build or deploy fails with the
    /// job's last error instead of waiting for ever.
    async fn fail_orphans(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for (candidate, error) in self.store.orphaned_rows().await? {
            let _g = self.lock.lock().await;
            let now = now_millis();
            let mut tx = self.store.begin_engine().await?;
            let Some(ri) = self
                .store
                .rollout_image_in(&mut tx, candidate.rollout_id, &candidate.image)
                .await?
            else {
                continue;
            };
            let error = error.unwrap_or_else(|| "job ended without a result".into());
            let (job, outcome) = match ri.state {
                ImageState::Queued => (
                    ri.job_id,
                    Outcome::BuildFailed {
                        reason: format!("trigger failed: {error}"),
                    },
                ),
                ImageState::Deploying => (
                    ri.deploy_job_id,
                    Outcome::DeployFailed {
                        reason: format!("deploy failed: {error}"),
                    },
                ),
                // A gate never passes on an error.
                ImageState::Verifying => (
                    ri.verify_job_id,
                    Outcome::Refused {
                        reason: format!("gates could not run: {error}"),
                    },
                ),
                _ => continue,
            };
            let Some(job) = job else { continue };
            let Some(job) = self.store.job_in(&mut tx, job).await? else {
                continue;
            };
            if !matches!(
                job.state(),
                Some(JobState::Dead | JobState::Failed | JobState::Cancelled)
            ) {
                continue;
            }
            self.apply_outcome(&mut tx, ri, &outcome, Some(&job), now)
                .await?;
            tx.commit().await?;
            self.store.wake_local();
            n += 1;
        }
        Ok(n)
    }

    /// Operator request: stop a running rollout. Images not yet finished
    /// become cancelled and their pending jobs are withdrawn; a build CI
    /// already started runs on, and its late result changes nothing.
    pub async fn cancel_rollout(&self, id: i64, by: &str) -> Result<CancelOutcome, StoreError> {
        let _g = self.lock.lock().await;
        let now = now_millis();
        let mut tx = self.store.begin_engine().await?;
        let Some(r) = self.store.lock_rollout_in(&mut tx, id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        if r.state != RolloutState::Running {
            return Ok(CancelOutcome::Finished(r.state));
        }
        let mut images = 0;
        let mut jobs = 0;
        for mut ri in self.store.rollout_images_in(&mut tx, id).await? {
            if ri.is_finished() {
                continue;
            }
            if let Some(a) = ri.approval_id.take() {
                self.store
                    .decide_approval_in(
                        &mut tx,
                        a,
                        "superseded",
                        by,
                        Some("rollout cancelled"),
                        now,
                    )
                    .await?;
            }
            let pending = match ri.state {
                ImageState::Queued => ri.job_id,
                ImageState::Deploying => ri.deploy_job_id,
                ImageState::Verifying => ri.verify_job_id,
                _ => None,
            };
            if let Some(job) = pending
                && self.store.cancel_job_in(&mut tx, job, now).await?
            {
                jobs += 1;
            }
            ri.state = ImageState::Cancelled;
            ri.reason = Some(format!("rollout cancelled by {by}"));
            ri.rerun = false;
            ri.build_deadline = None;
            ri.updated_at = now;
            self.store.save_rollout_image_in(&mut tx, &ri).await?;
            images += 1;
        }
        let started = self
            .store
            .finish_rollout_in(&mut tx, id, RolloutState::Cancelled, now)
            .await?;
        self.event(
            &mut tx,
            "rollout_cancelled",
            (None, Some(id), None),
            json!({ "by": by, "images": images, "jobs": jobs }),
            now,
        )
        .await?;
        self.event(
            &mut tx,
            "rollout_finished",
            (None, Some(id), None),
            json!({ "state": "cancelled", "by": by }),
            now,
        )
        .await?;
        tx.commit().await?;
        if let Some(at) = started {
            crate::metrics::metrics().rollout_finished("cancelled", (now - at) as f64 / 1000.0);
        }
        tracing::info!(rollout = id, by, images, jobs, "rollout cancelled");
        Ok(CancelOutcome::Cancelled { images, jobs })
    }
}

/// What a trigger came to.
enum Triggered {
    Job(NewJob),
    /// A parent's digest was refused by a gate: the image is blocked.
    Refused(String),
    /// Not buildable (left the config).
    Nothing,
}

/// The job is the one the row is waiting on for its kind (not an older
/// build's late report).
pub(super) fn is_current_job(ri: &RolloutImage, job: &JobRecord) -> bool {
    match JobKind::parse(&job.kind) {
        Some(JobKind::Deploy) => ri.deploy_job_id == Some(job.id),
        Some(JobKind::Verify) => ri.verify_job_id == Some(job.id),
        _ => ri.job_id == Some(job.id),
    }
}
