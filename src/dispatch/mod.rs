//! The dispatcher: claims rebuild and deploy jobs and delivers them to their
//! backends, routing by job kind, retrying with backoff; the same
//! `webhook-id` (the job's idempotency key) on every attempt.

pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Ack, BackendKind, Config};
use crate::rollout::{Delivered, Engine, JobKind, JobPayload};
use crate::store::{Failure, JobRecord, JobState, Store, now_millis};

const LEASE: Duration = Duration::from_secs(120);

/// The job kinds this dispatcher delivers.
const KINDS: [&str; 2] = [JobKind::Rebuild.as_str(), JobKind::Deploy.as_str()];

pub struct Dispatcher {
    cfg: Arc<Config>,
    store: Store,
    engine: Arc<Engine>,
    http: reqwest::Client,
    worker: String,
    permits: HashMap<String, Arc<Semaphore>>,
    callback_base: String,
}

/// What one delivery attempt came to.
enum Delivery {
    /// CI answered 2xx with this status.
    Accepted(u16),
    Failed(Failure),
}

impl Dispatcher {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        engine: Arc<Engine>,
        worker: String,
        callback_base: String,
    ) -> Dispatcher {
        crate::init_tls();
        let http = reqwest::Client::builder()
            .user_agent(concat!("lineaged/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
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
        match self.store.release_worker(&self.worker, now_millis()).await {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(jobs = ?ids, "released jobs a previous run of this node left running")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot release this node's old jobs; they wait for their leases")
            }
        }
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
        // Whether a 2xx means done (a deploy to a backend with `ack: sync`).
        let mut sync = false;
        let outcome = match JobPayload::decode(&job.kind, &job.payload) {
            Err(e) => Delivery::Failed(Failure::Permanent {
                error: e.to_string(),
            }),
            Ok(payload) => match self.cfg.backends.get(payload.backend()) {
                None => Delivery::Failed(Failure::Permanent {
                    error: format!("backend `{}` is no longer configured", payload.backend()),
                }),
                Some(b) if b.kind != BackendKind::Webhook => Delivery::Failed(Failure::Permanent {
                    error: format!("backend kind {} is not implemented yet", b.kind.as_str()),
                }),
                Some(b) => {
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
                    sync = payload.kind() == JobKind::Deploy && b.ack == Ack::Sync;
                    let body = webhook::body(&job, &payload, &callback);
                    self.post_webhook(&job, &body, b).await
                }
            },
        };
        crate::metrics::metrics().dispatched(
            match &outcome {
                Delivery::Accepted(_) => "accepted",
                Delivery::Failed(Failure::Retry { .. }) => "retry",
                Delivery::Failed(Failure::Permanent { .. }) => "failed",
            },
            started.elapsed().as_secs_f64(),
        );
        let took_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Delivery::Accepted(status) => {
                let d = Delivered {
                    status,
                    duration_ms: took_ms,
                    done: sync,
                };
                // Completing the job and moving the image is one
                // transaction: a crash leaves both undone (the trigger is
                // re-sent with the same webhook-id) or both done.
                match retry_db("record the delivery", || {
                    self.engine.on_delivered(&job, &self.worker, &d)
                })
                .await
                {
                    Ok(()) => {}
                    Err(e) => tracing::warn!(error = %e, "delivered, but the lease was lost"),
                }
            }
            Delivery::Failed(f) => match retry_db("record the failure", || {
                self.engine.on_delivery_failed(&job, &self.worker, &f)
            })
            .await
            {
                Ok(JobState::Pending) => {
                    tracing::warn!(attempt = job.attempt, error = ?f, "delivery failed; will retry")
                }
                Ok(state) => tracing::warn!(?state, error = ?f, "delivery failed for good"),
                Err(e) => tracing::warn!(error = %e, "cannot record the failure"),
            },
        }
    }

    async fn post_webhook(
        &self,
        job: &JobRecord,
        body: &Value,
        b: &crate::config::Backend,
    ) -> Delivery {
        let Some(url) = &b.url else {
            return Delivery::Failed(Failure::Permanent {
                error: "webhook backend has no url".into(),
            });
        };
        let body = serde_json::to_vec(body).unwrap_or_default();
        let ts = now_millis() / 1000;
        let mut req = self
            .http
            .post(url)
            .timeout(b.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &job.idempotency_key)
            .header("webhook-timestamp", ts.to_string());
        if let Some(secret) = &b.secret {
            let key = webhook::signing_key(secret.expose());
            req = req.header(
                "webhook-signature",
                webhook::sign(&key, &job.idempotency_key, ts, &body),
            );
        }
        match req.body(body).send().await {
            Ok(r) if r.status().is_success() => Delivery::Accepted(r.status().as_u16()),
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let text: String = r
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect();
                let error = format!("HTTP {status}: {text}");
                if status == 408 || status == 429 || status >= 500 {
                    Delivery::Failed(Failure::Retry { error, retry_after })
                } else {
                    Delivery::Failed(Failure::Permanent { error })
                }
            }
            Err(e) => Delivery::Failed(Failure::Retry {
                error: format!("request failed: {}", e.without_url()),
                retry_after: None,
            }),
        }
    }
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
