//! The gate worker: claims `verify` jobs, runs the gates (or takes the
//! cached verdict for the digest under the current policy) and hands the
//! evaluation to the engine, which records it and moves the image in one
//! transaction. Gates that cannot run yet (registry outage) are retried
//! with the queue's backoff; a gate never passes on an error.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Evaluation, Gatekeeper, Purpose};
use crate::config::Config;
use crate::registry::{ImageRef, RegistryClient};
use crate::rollout::{Engine, JobKind, JobPayload};
use crate::store::{Failure, JobRecord, JobState, Store, now_millis};

const LEASE: Duration = Duration::from_secs(15 * 60);
const KINDS: [&str; 1] = [JobKind::Verify.as_str()];
/// Gate checks run at once (each is a few registry reads or a scan).
const PARALLEL: i64 = 8;
/// How long a cached scan pass holds.
pub const SCAN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a check produced no verdict.
enum Checked {
    /// Something may still arrive: check again at `until`.
    Wait {
        until: i64,
        note: String,
    },
    Failed(Failure),
}

pub struct GateWorker {
    cfg: Arc<Config>,
    store: Store,
    engine: Arc<Engine>,
    gates: Gatekeeper,
    worker: String,
}

impl GateWorker {
    /// `node`: this process's instance id (`node::Identity`); the worker
    /// claims as `{node}/gates`.
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        engine: Arc<Engine>,
        client: Arc<RegistryClient>,
        node: &str,
    ) -> GateWorker {
        GateWorker {
            gates: Gatekeeper::new(cfg.clone(), client).with_reports(store.clone()),
            cfg,
            store,
            engine,
            worker: format!("{node}/gates"),
        }
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut waiter = self.store.job_waiter().await.ok();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let room = PARALLEL - tasks.len() as i64;
            let claimed = if room > 0 {
                match self
                    .store
                    .claim_kinds(&self.worker, &KINDS, room, LEASE, now_millis())
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "claim failed; retrying");
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            let idle = claimed.is_empty();
            for job in claimed {
                let me = self.clone();
                tasks.spawn(async move { me.check(job).await });
            }
            while tasks.try_join_next().is_some() {}
            if idle {
                let timeout = Duration::from_millis(500);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tasks.join_next(), if !tasks.is_empty() => {}
                    _ = async {
                        match waiter.as_mut() {
                            Some(w) => { w.wait(timeout).await; }
                            None => tokio::time::sleep(timeout).await,
                        }
                    } => {}
                }
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    #[tracing::instrument(skip_all, fields(job = job.id, image = job.image.as_deref().unwrap_or("")))]
    async fn check(&self, job: JobRecord) {
        let outcome = self.evaluate(&job).await;
        let recorded = match outcome {
            Err(Checked::Wait { until, note }) => {
                tracing::info!(reason = %note, "waiting");
                self.store
                    .defer_job(job.id, &self.worker, until, &note, now_millis())
                    .await
                    .map(|_| ())
            }
            Err(Checked::Failed(f)) => {
                match self.engine.on_delivery_failed(&job, &self.worker, &f).await {
                    Ok(JobState::Pending) => {
                        tracing::warn!(attempt = job.attempt, error = ?f, "gates could not run; will retry");
                        Ok(())
                    }
                    Ok(state) => {
                        tracing::warn!(?state, error = ?f, "gates could not run; refused");
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Ok(ev) => {
                let refused = ev.refusal_text();
                let r = self
                    .engine
                    .on_verified(&job, &self.worker, &ev, &self.cfg.policy.hash)
                    .await
                    .map(|_| ());
                match &refused {
                    Some(why) => {
                        tracing::info!(digest = %ev.digest, reason = %why, "image refused")
                    }
                    None => tracing::info!(digest = %ev.digest, "gates passed"),
                }
                r
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "cannot record the verdict; the job is retried when its lease ends");
        }
    }

    /// The evaluation for the job's digest: cached under the current
    /// policy, else the gates run now.
    async fn evaluate(&self, job: &JobRecord) -> Result<Evaluation, Checked> {
        let permanent = |error: String| Checked::Failed(Failure::Permanent { error });
        let p = match JobPayload::decode(&job.kind, &job.payload) {
            Ok(JobPayload::Verify(p)) => p,
            Ok(_) => return Err(permanent("not a verify job".into())),
            Err(e) => return Err(permanent(e.to_string())),
        };
        let image =
            ImageRef::parse(&p.image).map_err(|e| permanent(format!("{}: {e}", p.image)))?;
        let digest = match self.engine.verify_target(&p).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err(Checked::Failed(Failure::Retry {
                    error: format!("no digest of {} observed yet", p.image),
                    retry_after: None,
                }));
            }
            Err(e) => {
                return Err(Checked::Failed(Failure::Retry {
                    error: e.to_string(),
                    retry_after: None,
                }));
            }
        };
        match self
            .store
            .gate_result(&p.image, &digest, &self.cfg.policy.hash)
            .await
        {
            Ok(Some((text, at))) => {
                // A pass holds until the policy changes; a scan's pass only
                // for a day (new CVEs are published against old digests);
                // a refusal is checked again (it may have been a scanner
                // outage, or the digest was signed since).
                if let Ok(ev) = serde_json::from_str::<Evaluation>(&text) {
                    // Scans (new CVEs) and Notation passes (certificates
                    // and signatures expire) are held a day.
                    let notation = ev.verdicts.iter().any(|v| {
                        v.evidence["authorities"].as_array().is_some_and(|a| {
                            a.iter().any(|x| {
                                x["authority"]
                                    .as_str()
                                    .is_some_and(|n| n.starts_with("notation"))
                            })
                        })
                    });
                    let scanned = notation || ev.verdicts.iter().any(|v| v.gate == "scan");
                    let fresh = !scanned || now_millis() - at < SCAN_TTL.as_millis() as i64;
                    if ev.refusal().is_none() && fresh {
                        tracing::debug!(%digest, "cached verdict");
                        return Ok(ev);
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read cached verdicts; checking"),
        }
        let ev = self
            .gates
            .evaluate(&image, &digest, Purpose::All)
            .await
            .map_err(|e| {
                Checked::Failed(Failure::Retry {
                    retry_after: e.retry_after(),
                    error: e.to_string(),
                })
            })?;
        // CI pushes the image, then signs it; Harbor scans after the push:
        // what does not exist yet is waited for (checked again) for
        // `signature_grace` / `scan.timeout` after the check began, then
        // refused.
        let waited = Duration::from_millis((now_millis() - job.created_at).max(0) as u64);
        if let Some((sig, scan)) = ev.waiting_for() {
            let p = &self.cfg.policy;
            let wait = match (sig, scan) {
                (true, true) => p.signature_grace.max(p.scan.timeout),
                (true, false) => p.signature_grace,
                _ => p.scan.timeout,
            };
            if waited < wait {
                let what = if scan { "scan result" } else { "signature" };
                // Checked again every 10 s (or at the deadline), attempts
                // untouched; an arriving Harbor report wakes it at once.
                let next = (wait - waited).min(Duration::from_secs(10));
                return Err(Checked::Wait {
                    until: now_millis() + next.as_millis() as i64,
                    note: format!(
                        "no {what} for {digest} yet; waiting up to {}s",
                        wait.as_secs()
                    ),
                });
            }
        }
        Ok(ev)
    }
}
