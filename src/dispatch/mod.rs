//! The dispatcher: claims rebuild jobs and delivers them to CI backends,
//! retrying with backoff; the same `webhook-id` (the job's idempotency key)
//! on every attempt.

pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{BackendKind, Config};
use crate::rollout::Engine;
use crate::store::{Failure, JobRecord, JobState, Store, now_millis};

const LEASE: Duration = Duration::from_secs(120);

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
            let claimed = match self.store.claim(&self.worker, 32, LEASE, now).await {
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

    #[tracing::instrument(skip_all, fields(job = job.id, image = job.image.as_deref().unwrap_or("")))]
    async fn deliver(&self, job: JobRecord) {
        let started = std::time::Instant::now();
        let payload: Value = serde_json::from_str(&job.payload).unwrap_or(Value::Null);
        let backend_name = payload
            .get("backend")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let outcome = match self.cfg.backends.get(&backend_name) {
            None => Delivery::Failed(Failure::Permanent {
                error: format!("backend `{backend_name}` is no longer configured"),
            }),
            Some(b) if b.kind != BackendKind::Webhook => Delivery::Failed(Failure::Permanent {
                error: format!("backend kind {} is not implemented yet", b.kind.as_str()),
            }),
            Some(b) => {
                let permit = self.permits.get(&backend_name).cloned();
                let _p = match permit {
                    Some(s) => s.acquire_owned().await.ok(),
                    None => None,
                };
                self.post_webhook(&job, &payload, b).await
            }
        };
        crate::metrics::metrics().dispatched(
            match &outcome {
                Delivery::Accepted(_) => "accepted",
                Delivery::Failed(Failure::Retry { .. }) => "retry",
                Delivery::Failed(Failure::Permanent { .. }) => "failed",
            },
            started.elapsed().as_secs_f64(),
        );
        let now = now_millis();
        let took_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Delivery::Accepted(status) => {
                // The job's result: what CI answered (shown by /jobs/{id}).
                let delivered =
                    json!({ "delivered": true, "status": status, "duration_ms": took_ms });
                match retry_db("record the delivery", || {
                    self.store
                        .complete(job.id, &self.worker, Some(&delivered), now_millis())
                })
                .await
                {
                    Ok(()) => {
                        if let Err(e) = self.engine.on_triggered(job.id).await {
                            tracing::warn!(error = %e, "cannot mark the image building");
                        }
                        let _ = self
                        .store
                        .append_event(
                            &crate::store::NewEvent {
                                kind: "job_dispatched".into(),
                                image: job.image.clone(),
                                rollout_id: job.rollout_id,
                                job_id: Some(job.id),
                                data: json!({ "attempt": job.attempt, "status": status, "duration_ms": took_ms }),
                            },
                            now,
                        )
                        .await;
                    }
                    Err(e) => tracing::warn!(error = %e, "delivered, but the lease was lost"),
                }
            }
            Delivery::Failed(f) => match retry_db("record the failure", || {
                self.store.fail(job.id, &self.worker, &f, now_millis())
            })
            .await
            {
                Ok(JobState::Pending) => {
                    tracing::warn!(attempt = job.attempt, error = ?f, "delivery failed; will retry")
                }
                Ok(state) => {
                    tracing::warn!(?state, error = ?f, "delivery failed for good");
                    let reason = match &f {
                        Failure::Permanent { error } | Failure::Retry { error, .. } => {
                            error.clone()
                        }
                    };
                    if let Err(e) = self.engine.on_trigger_failed(job.id, &reason).await {
                        tracing::warn!(error = %e, "cannot record the failed trigger");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot record the failure"),
            },
        }
    }

    async fn post_webhook(
        &self,
        job: &JobRecord,
        payload: &Value,
        b: &crate::config::Backend,
    ) -> Delivery {
        let Some(url) = &b.url else {
            return Delivery::Failed(Failure::Permanent {
                error: "webhook backend has no url".into(),
            });
        };
        let token = payload
            .get("callback_token")
            .and_then(Value::as_str)
            .unwrap_or("");
        let body = json!({
            "type": "rebuild",
            "job_id": job.id,
            "image": payload.get("image"),
            "parents": payload.get("parents"),
            "rollout_id": job.rollout_id,
            "callback_url": format!("{}/api/v1/jobs/{}/result?token={token}", self.callback_base, job.id),
            "build": payload.get("build"),
            "attempt": job.attempt,
        });
        let body = serde_json::to_vec(&body).unwrap_or_default();
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
