//! Notifications: people hear about rollouts in Slack, Teams or any
//! Standard Webhooks receiver.
//!
//! The [`Notifier`] reads the event log past a durable cursor, and for
//! every event a sink hears (its `on:` kinds and `images:` globs) enqueues
//! one `notify` job carrying the finished message, in the transaction that
//! moves the cursor: each message is enqueued once, whatever crashes. The
//! dispatcher delivers notify jobs like any other (retries with backoff,
//! the same `webhook-id` on every attempt); a failing sink shows as a
//! failing job and never holds a rollout back.

pub mod email;
mod message;
pub mod send;

pub use message::{Message, compose, hears};

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, NotifyOn, glob_match};
use crate::rollout::{JobKind, JobPayload, NotifyPayload};
use crate::store::{EventRecord, Millis, NewJob, Store, StoreError, now_millis};

/// How long an id gap in the event log may be a transaction that has not
/// committed yet (Postgres hands out ids before commit) before it is
/// passed over as rolled back.
const GAP_GRACE_MS: i64 = 10_000;

/// Events read per pass.
const BATCH: i64 = 500;

pub struct Notifier {
    cfg: Arc<Config>,
    store: Store,
    /// The dashboard's base URL for links (`api.public_url` or the listen
    /// address).
    base_url: String,
    /// An id gap in the log and when this process first saw it: the grace
    /// is timed by this process's clock, not by a writer's.
    gap: std::sync::Mutex<Option<(i64, Millis)>>,
}

impl Notifier {
    pub fn new(cfg: Arc<Config>, store: Store, base_url: String) -> Notifier {
        Notifier {
            cfg,
            store,
            base_url: base_url.trim_end_matches('/').to_string(),
            gap: std::sync::Mutex::new(None),
        }
    }

    /// Passes over the event log every second until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            // Without sinks the cursor follows the log's end: a sink
            // configured later hears what happens from then on, not history.
            let pass = if self.cfg.notifications.is_empty() {
                self.store.notify_cursor_to_end().await.map(|()| 0)
            } else {
                self.pump(now_millis()).await
            };
            match pass {
                Ok(n) if n > 0 => tracing::debug!(messages = n, "notifications enqueued"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read events for notifications; retrying")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// One pass: the events after the cursor become notify jobs, and the
    /// cursor moves past them, in one transaction (the cursor row is
    /// locked on Postgres: replicas take turns). The messages are composed
    /// before it, so the write lock is held only to enqueue; when another
    /// replica moved the cursor meanwhile, this pass does nothing. `now` is
    /// the clock; returns the jobs enqueued.
    pub async fn pump(&self, now: Millis) -> Result<usize, StoreError> {
        let cursor = self.store.notify_cursor().await?;
        let events = self.store.events_after(cursor, BATCH).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let mut last = cursor;
        let mut jobs = Vec::new();
        for e in &events {
            // A gap may be a transaction still committing: wait for it a
            // while (from when this process first saw it) rather than skip
            // its events for good.
            if e.id != last + 1 {
                let mut gap = self.gap.lock().unwrap_or_else(|p| p.into_inner());
                let seen = match *gap {
                    Some((id, at)) if id == last => at,
                    _ => {
                        *gap = Some((last, now));
                        now
                    }
                };
                if now - seen < GAP_GRACE_MS {
                    break;
                }
            }
            last = e.id;
            for on in hears(e) {
                for sink in self.cfg.notifications.iter().filter(|s| s.on.contains(&on)) {
                    if !self.wanted(sink, e).await? {
                        continue;
                    }
                    let message = compose(e, on, &self.store, &self.base_url).await?;
                    jobs.push(job(&sink.name, e, on, message, now));
                }
            }
        }
        if last == cursor {
            return Ok(0);
        }
        let mut tx = self.store.begin_engine().await?;
        if self.store.lock_notify_cursor_in(&mut tx).await? != cursor {
            // Another replica took this stretch.
            return Ok(0);
        }
        self.store.enqueue_many_in(&mut tx, &jobs, now).await?;
        self.store.set_notify_cursor_in(&mut tx, last).await?;
        tx.commit().await?;
        if !jobs.is_empty() {
            self.store.wake_local();
        }
        Ok(jobs.len())
    }

    /// The sink's `images:` globs: an image event names its image; a
    /// rollout event passes when the rollout holds a matching image.
    async fn wanted(
        &self,
        sink: &crate::config::Sink,
        e: &EventRecord,
    ) -> Result<bool, StoreError> {
        if sink.images.is_empty() {
            return Ok(true);
        }
        let matches = |name: &str| sink.images.iter().any(|g| glob_match(g, name));
        if let Some(image) = &e.image {
            return Ok(matches(image));
        }
        match e.rollout_id {
            Some(r) => Ok(self
                .store
                .rollout_images(r)
                .await?
                .iter()
                .any(|ri| matches(&ri.image))),
            None => Ok(true),
        }
    }
}

fn job(sink: &str, e: &EventRecord, on: NotifyOn, message: Message, now: Millis) -> NewJob {
    let mut job = NewJob::new(JobKind::Notify.as_str(), now);
    // After the rollout's own work.
    job.priority = 1;
    // A sink down for a day still gets its messages (the backoff caps).
    job.max_attempts = 40;
    job.image = e.image.clone();
    job.rollout_id = e.rollout_id;
    job.reasons = vec![format!("{} to {sink}", on.as_str())];
    job.payload = JobPayload::Notify(NotifyPayload {
        sink: sink.to_string(),
        message,
    })
    .to_value();
    job
}
