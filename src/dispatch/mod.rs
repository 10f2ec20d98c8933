//! The dispatcher: claims rebuild and deploy jobs and delivers them to their
//! backends, routing by job kind and backend kind, retrying with backoff;
//! the job's idempotency key travels on every attempt.
//!
//! One file per CI system builds its [`request::CiRequest`] from a
//! [`request::Trigger`] and reads the run it started from the answer.

pub mod azure;
pub mod buildkite;
pub mod github;
pub mod gitlab;
pub mod jenkins;
pub mod request;
pub mod tekton;
pub mod webhook;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
pub use request::{CiRequest, CiRun, DispatchError, Trigger};
use reqwest::header::HeaderMap;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Ack, Backend, BackendKind, Config};
use crate::rollout::{Delivered, Engine, JobKind, JobPayload};
use crate::store::{JobRecord, JobState, Store, now_millis};

const LEASE: Duration = Duration::from_secs(120);

/// The job kinds this dispatcher delivers.
const KINDS: [&str; 3] = [
    JobKind::Rebuild.as_str(),
    JobKind::Deploy.as_str(),
    JobKind::Notify.as_str(),
];

pub struct Dispatcher {
    cfg: Arc<Config>,
    store: Store,
    engine: Arc<Engine>,
    http: reqwest::Client,
    worker: String,
    permits: HashMap<String, Arc<Semaphore>>,
    callback_base: String,
    deployers: crate::deploy::Deployers,
}

/// What one delivery attempt came to.
enum Sent {
    /// Accepted (a CI run, a webhook, a Flux Receiver) or, for a
    /// reconciled deploy, rolled out.
    Accepted(CiRun),
    /// A reconciled deploy is under way: look again later.
    Waiting(String),
}

/// `User-Agent` on every request (GitHub requires one).
pub const USER_AGENT: &str = concat!("lineaged/", env!("CARGO_PKG_VERSION"));

/// Path-segment encoding: everything but unreserved characters, so
/// `group/project` becomes `group%2Fproject`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// One URL path segment, percent-encoded.
pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// An id from JSON (a number or a string) as text.
pub(crate) fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The rebuild request for `b`'s kind.
pub fn rebuild_request(b: &Backend, t: &Trigger) -> Result<CiRequest, DispatchError> {
    match b.kind {
        BackendKind::Webhook => webhook::request(b, t.idempotency_key, &webhook::rebuild_body(t)),
        BackendKind::GithubActions => github::request(b, t),
        BackendKind::Gitlab => gitlab::request(b, t),
        BackendKind::Jenkins => jenkins::request(b, t),
        BackendKind::AzurePipelines => azure::request(b, t),
        BackendKind::Buildkite => buildkite::request(b, t),
        BackendKind::Tekton => tekton::request(b, t),
        BackendKind::Argocd | BackendKind::Flux | BackendKind::Kubernetes => {
            Err(DispatchError::Invalid(format!(
                "backend `{}` (kind {}) deploys; it does not build",
                b.name,
                b.kind.as_str()
            )))
        }
    }
}

/// The run an accepted trigger started, read the kind's way.
pub(crate) fn run_of(kind: BackendKind, headers: &HeaderMap, body: &Value) -> CiRun {
    match kind {
        BackendKind::Webhook => webhook::run(body),
        BackendKind::GithubActions => github::run(body),
        BackendKind::Gitlab => gitlab::run(body),
        BackendKind::Jenkins => jenkins::run(headers),
        BackendKind::AzurePipelines => azure::run(body),
        BackendKind::Buildkite => buildkite::run(body),
        BackendKind::Tekton => tekton::run(body),
        BackendKind::Argocd | BackendKind::Flux | BackendKind::Kubernetes => CiRun::default(),
    }
}

/// The HTTP client for triggers. Redirects are not followed: a POST must
/// not turn into a GET somewhere else (Jenkins' 303 for an already queued
/// build is read as accepted).
pub fn http_client() -> reqwest::Client {
    crate::init_tls();
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

impl Dispatcher {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        engine: Arc<Engine>,
        worker: String,
        callback_base: String,
    ) -> Dispatcher {
        let http = http_client();
        let deployers = crate::deploy::Deployers::new(&cfg);
        let permits = cfg
            .backends
            .iter()
            .map(|(n, b)| (n.clone(), Arc::new(Semaphore::new(b.concurrency as usize))))
            .collect();
        Dispatcher {
            cfg,
            store,
            engine,
            http,
            worker,
            permits,
            callback_base: callback_base.trim_end_matches('/').to_string(),
            deployers,
        }
    }

    /// Claims and delivers until `shutdown`; in-flight deliveries finish.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut waiter = match self.store.job_waiter().await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "no job wake-ups; polling the queue");
                None
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let now = now_millis();
            if let Err(e) = self.store.rescue(now).await {
                tracing::warn!(error = %e, "rescue failed");
            }
            let claimed = match self
                .store
                .claim_kinds(&self.worker, &KINDS, 32, LEASE, now)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claim failed; retrying");
                    Vec::new()
                }
            };
            let idle = claimed.is_empty();
            for job in claimed {
                let me = self.clone();
                tasks.spawn(async move { me.deliver(job).await });
            }
            while tasks.try_join_next().is_some() {}
            if idle {
                let timeout = Duration::from_millis(500);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
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

    #[tracing::instrument(skip_all, fields(job = job.id, kind = %job.kind, image = job.image.as_deref().unwrap_or("")))]
    async fn deliver(&self, job: JobRecord) {
        let started = std::time::Instant::now();
        // The backend's kind, for the metric label (bounded: seven kinds).
        let mut kind_label = "unknown";
        // Whether a 2xx means done (a deploy to a backend with `ack: sync`).
        let mut sync = false;
        let outcome = match JobPayload::decode(&job.kind, &job.payload) {
            Ok(JobPayload::Notify(p)) => return self.notify(&job, &p, started).await,
            Err(e) => Err(DispatchError::Invalid(e.to_string())),
            Ok(payload) => match self.cfg.backends.get(payload.backend()) {
                None => Err(DispatchError::Invalid(format!(
                    "backend `{}` is no longer configured",
                    payload.backend()
                ))),
                Some(b) => {
                    kind_label = b.kind.as_str();
                    let permit = self.permits.get(payload.backend()).cloned();
                    let _p = match permit {
                        Some(s) => s.acquire_owned().await.ok(),
                        None => None,
                    };
                    let callback = format!(
                        "{}/api/v1/jobs/{}/result?token={}",
                        self.callback_base,
                        job.id,
                        payload.callback_token()
                    );
                    sync = payload.kind() == JobKind::Deploy
                        && (b.ack == Ack::Sync || b.kind == BackendKind::Flux);
                    let req = match &payload {
                        JobPayload::Rebuild(p) => {
                            let reasons = job.reasons();
                            let t = Trigger {
                                image: &p.image,
                                parents: &p.parents,
                                job_id: job.id,
                                rollout_id: p.rollout_id,
                                callback_url: callback,
                                idempotency_key: &job.idempotency_key,
                                attempt: job.attempt,
                                reason: reason_text(&reasons),
                                build: &p.build,
                            };
                            rebuild_request(b, &t)
                        }
                        JobPayload::Deploy(p) if b.kind == BackendKind::Webhook => {
                            webhook::request(
                                b,
                                &job.idempotency_key,
                                &webhook::deploy_body(&job, p, &callback),
                            )
                        }
                        JobPayload::Deploy(p) if b.kind == BackendKind::Flux => {
                            crate::deploy::flux::request(b, &job, p)
                        }
                        JobPayload::Deploy(p)
                            if matches!(b.kind, BackendKind::Argocd | BackendKind::Kubernetes) =>
                        {
                            // lineaged deploys these itself: one look per
                            // attempt, no request to build. A job no image
                            // deploys through any more (cancelled, removed,
                            // timed out, retried by hand) must not touch the
                            // target: it could roll a newer digest back.
                            let looked = if self.engine.deploy_wanted(&job).await.unwrap_or(true) {
                                self.deployers.reconcile(b, p).await
                            } else {
                                Err(DispatchError::Invalid(
                                    "no image deploys through this job any more: rebuild the image to deploy it again".into(),
                                ))
                            };
                            return self
                                .finish(
                                    &job,
                                    kind_label,
                                    started,
                                    looked.map(|pr| match pr {
                                        crate::deploy::Progress::Done { detail, url } => {
                                            tracing::info!(detail, "deploy rolled out");
                                            Sent::Accepted(CiRun {
                                                status: 200,
                                                id: None,
                                                url,
                                            })
                                        }
                                        crate::deploy::Progress::Waiting(note) => {
                                            Sent::Waiting(note)
                                        }
                                    }),
                                    true,
                                )
                                .await;
                        }
                        JobPayload::Deploy(_) => Err(DispatchError::Invalid(format!(
                            "deploys go to webhook, argocd, flux or kubernetes backends, not {}",
                            b.kind.as_str()
                        ))),
                        JobPayload::Verify(_) | JobPayload::Notify(_) => {
                            Err(DispatchError::Invalid(
                                "verify jobs are run by the gate worker, not delivered".into(),
                            ))
                        }
                    };
                    match req {
                        Ok(mut req) => {
                            // The callback token rides in the request too:
                            // never echoed into an error.
                            req.secrets.push(payload.callback_token().to_string());
                            request::send(&self.http, &req, b.timeout).await
                        }
                        Err(e) => Err(e),
                    }
                }
            },
        };
        self.finish(&job, kind_label, started, outcome.map(Sent::Accepted), sync)
            .await
    }

    /// Sends a notification. Its job is completed or failed directly: no
    /// rollout row waits on it, and it writes no event (an event about a
    /// notification would be heard again).
    async fn notify(
        &self,
        job: &JobRecord,
        p: &crate::rollout::NotifyPayload,
        started: std::time::Instant,
    ) {
        let sent = match self.cfg.notifications.iter().find(|s| s.name == p.sink) {
            None => Err(DispatchError::Invalid(format!(
                "notification sink `{}` is no longer configured",
                p.sink
            ))),
            Some(sink) => {
                crate::notify::send::deliver(
                    &self.http,
                    sink,
                    job,
                    &p.message,
                    Duration::from_secs(30),
                )
                .await
            }
        };
        crate::metrics::metrics().dispatched(
            "notify",
            match &sent {
                Ok(_) => "accepted",
                Err(e) if e.retryable() => "retry",
                Err(_) => "failed",
            },
            started.elapsed().as_secs_f64(),
        );
        let now = now_millis();
        let recorded = match sent {
            Ok(status) => {
                let result = serde_json::json!({ "delivered": true, "status": status });
                retry_db("record the notification", || {
                    self.store
                        .complete(job.id, &self.worker, Some(&result), now)
                })
                .await
                .map(|_| ())
            }
            Err(e) => {
                tracing::warn!(sink = p.sink, error = %e, "notification not delivered");
                let f = e.into_failure();
                retry_db("record the failure", || {
                    self.store.fail(job.id, &self.worker, &f, now)
                })
                .await
                .map(|_| ())
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "cannot record the notification");
        }
    }

    /// Records what a delivery attempt came to: accepted (done, when
    /// `sync`), waiting (the job is deferred without using an attempt), or
    /// failed (retried or failed for good).
    async fn finish(
        &self,
        job: &JobRecord,
        kind_label: &'static str,
        started: std::time::Instant,
        outcome: Result<Sent, DispatchError>,
        sync: bool,
    ) {
        crate::metrics::metrics().dispatched(
            kind_label,
            match &outcome {
                Ok(Sent::Accepted(_)) => "accepted",
                Ok(Sent::Waiting(_)) => "waiting",
                Err(e) if e.retryable() => "retry",
                Err(_) => "failed",
            },
            started.elapsed().as_secs_f64(),
        );
        let took_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Ok(Sent::Waiting(note)) if !self.engine.deploy_wanted(job).await.unwrap_or(true) => {
                // Nothing deploys through this job any more: stop watching.
                tracing::info!(note, "deploy no longer wanted; watching stops");
                let f = crate::store::Failure::Permanent {
                    error: format!(
                        "no image deploys through this job any more (last seen: {note})"
                    ),
                };
                if let Err(e) = self
                    .store
                    .fail(job.id, &self.worker, &f, now_millis())
                    .await
                {
                    tracing::warn!(error = %e, "cannot end the deploy job");
                }
            }
            Ok(Sent::Waiting(note)) => {
                let now = now_millis();
                let next = now + crate::deploy::poll_delay(job.created_at, now).as_millis() as i64;
                tracing::info!(note, "deploy under way");
                match retry_db("defer the deploy", || {
                    self.store.defer_job(job.id, &self.worker, next, &note, now)
                })
                .await
                {
                    Ok(true) => self.store.wake_local(),
                    Ok(false) => tracing::warn!("deploy looked at, but the lease was lost"),
                    Err(e) => tracing::warn!(error = %e, "cannot defer the deploy"),
                }
            }
            Ok(Sent::Accepted(run)) => {
                tracing::info!(
                    status = run.status,
                    run_id = run.id.as_deref(),
                    run_url = run.url.as_deref(),
                    "trigger accepted"
                );
                let d = Delivered {
                    status: run.status,
                    duration_ms: took_ms,
                    done: sync,
                    run_id: run.id,
                    run_url: run.url,
                };
                // Completing the job and moving the image is one
                // transaction: a crash leaves both undone (the trigger is
                // re-sent with the same idempotency key) or both done.
                match retry_db("record the delivery", || {
                    self.engine.on_delivered(job, &self.worker, &d)
                })
                .await
                {
                    Ok(()) => {}
                    Err(e) => tracing::warn!(error = %e, "delivered, but the lease was lost"),
                }
            }
            Err(e) => {
                let label = e.metric_label();
                let f = e.into_failure();
                match retry_db("record the failure", || {
                    self.engine.on_delivery_failed(job, &self.worker, &f)
                })
                .await
                {
                    Ok(JobState::Pending) => {
                        tracing::warn!(attempt = job.attempt, error = ?f, label, "delivery failed; will retry")
                    }
                    Ok(state) => {
                        tracing::warn!(?state, error = ?f, label, "delivery failed for good")
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot record the failure"),
                }
            }
        }
    }
}

/// The reasons a job carries, as one short phrase for commit messages.
fn reason_text(reasons: &[String]) -> String {
    let text = match reasons {
        [] => "base changed".to_string(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} and {} more", rest.len()),
    };
    text.chars().take(200).collect()
}

/// Retries a store write through a database hiccup (SQLite busy, a Postgres
/// failover) for a few seconds: the trigger already went out, and letting
/// the lease expire instead would send it again.
async fn retry_db<T, F, Fut>(what: &str, mut op: F) -> Result<T, crate::store::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
{
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        match op().await {
            Err(crate::store::StoreError::Db(e)) if attempt < 10 => {
                tracing::warn!(error = %e, attempt, "cannot {what} yet; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            other => return other,
        }
    }
}
