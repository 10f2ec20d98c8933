//! The watcher: polls every image on its schedule (leader replica only),
//! re-checks pushed images at once, records every observation, and reports
//! `DigestChanged` when a tracked digest differs from the stored one.

mod push;
mod schedule;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Image};
use crate::registry::{ImageRef, RegistryClient, RegistryError};
use crate::store::{
    BaseAnnotation, DigestSource, DigestUpdate, Millis, NewEvent, Observation, Store, health_state,
    now_millis, retry_delay,
};

pub use push::{PushSource, Pushed, parse as parse_push};
pub use schedule::Schedule;

/// Name of the lease whose holder runs the polling schedule.
pub const WATCH_LEASE: &str = "watcher";

/// A tracked digest moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestChanged {
    pub image: ImageRef,
    pub old: String,
    pub new: String,
    pub source: DigestSource,
}

/// How other components talk to a running watcher.
#[derive(Clone)]
pub struct WatchHandle {
    recheck: mpsc::Sender<(ImageRef, DigestSource)>,
    /// Digests push events announced, until a re-check sees them.
    expected: Arc<std::sync::Mutex<HashMap<ImageRef, String>>>,
    changes: broadcast::Sender<DigestChanged>,
    /// True once every image was checked after start-up (or this replica
    /// did not lead the polling at start-up, so another one holds fresh
    /// digests).
    swept: tokio::sync::watch::Receiver<bool>,
}

impl WatchHandle {
    /// Asks for an immediate check of a tracked image (a push event).
    /// False when the queue is full (the schedule will still catch it).
    pub fn recheck(&self, image: ImageRef, source: DigestSource) -> bool {
        self.recheck.try_send((image, source)).is_ok()
    }

    /// A re-check for a push that announced `digest`: if the registry does
    /// not show it yet (some notify before the tag moves), check again
    /// shortly. What is recorded is always what the registry answers.
    pub fn recheck_expecting(
        &self,
        image: ImageRef,
        source: DigestSource,
        digest: Option<String>,
    ) -> bool {
        if let Some(d) = digest
            && let Ok(mut m) = self.expected.lock()
        {
            m.insert(image.clone(), d);
        }
        self.recheck(image, source)
    }

    /// Every `DigestChanged` from now on (a wake-up: the change itself is
    /// in the store's outbox).
    pub fn subscribe(&self) -> broadcast::Receiver<DigestChanged> {
        self.changes.subscribe()
    }

    /// Resolves once the start-up sweep is done (see `swept`), so nothing
    /// is triggered on digests older than the registry's.
    pub async fn swept(&self) {
        let mut rx = self.swept.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The node's name; `daemon::start` gives the watcher this process's
    /// unique instance id (`node::Identity`) to hold the lease with.
    pub node_id: String,
    pub lease_ttl: Duration,
    /// Checks running at once across registries (each registry also has
    /// its own `concurrency` cap).
    pub max_in_flight: usize,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            node_id: default_node_id(),
            lease_ttl: Duration::from_secs(15),
            max_in_flight: 64,
        }
    }
}

/// `LINEAGED_NODE_ID`, else the host name: the node's stable name, so a
/// restarted daemon frees what its previous run left running instead of
/// waiting for the leases (`node::Identity`). Each process adds its pid and
/// a nonce for leases and claims, so replicas on one host need no setting.
/// `/` (the worker-suffix separator in `locked_by`) becomes `-`.
pub fn default_node_id() -> String {
    let name = match std::env::var("LINEAGED_NODE_ID") {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        _ => std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "lineaged".to_string()),
    };
    name.replace('/', "-")
}

#[derive(Default)]
struct RegistryState {
    consecutive_errors: i32,
    next_attempt: Millis,
    /// When a success was last written to the store: a healthy registry
    /// shows as healthy (with its last success) without a write per check.
    recorded_at: Millis,
}

/// How often a healthy registry's success is written.
const HEALTH_REFRESH_MS: Millis = 60_000;

struct Outcome {
    index: usize,
    source: DigestSource,
    registry: String,
    result: Result<Option<DigestChanged>, RegistryError>,
    /// The tag's top-level digest the registry answered, when it answered.
    seen: Option<String>,
}

pub struct Watcher {
    cfg: Arc<Config>,
    store: Store,
    client: Arc<RegistryClient>,
    opts: WatchOptions,
    index: HashMap<ImageRef, usize>,
    schedules: Vec<Option<Schedule>>,
    recheck_rx: mpsc::Receiver<(ImageRef, DigestSource)>,
    handle: WatchHandle,
    registries: HashMap<String, RegistryState>,
    /// Images with a check in flight, and the check to run after it: two
    /// checks of one image at once could record their results out of order.
    busy: std::collections::HashSet<usize>,
    again: HashMap<usize, DigestSource>,
    /// Retries of push-triggered checks that hit a registry error.
    push_retries: HashMap<usize, u32>,
    /// Images not yet checked by the start-up sweep; None before it began.
    sweep: Option<std::collections::HashSet<usize>>,
    swept: tokio::sync::watch::Sender<bool>,
}

impl Watcher {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        client: Arc<RegistryClient>,
        opts: WatchOptions,
    ) -> Watcher {
        let (tx, rx) = mpsc::channel(4096);
        let (changes, _) = broadcast::channel(1024);
        let (swept, swept_rx) = tokio::sync::watch::channel(false);
        let index = cfg
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| (img.name.clone(), i))
            .collect();
        let schedules = cfg
            .images
            .iter()
            .map(|img| Schedule::parse(&img.schedule).ok())
            .collect();
        Watcher {
            cfg,
            store,
            client,
            opts,
            index,
            schedules,
            recheck_rx: rx,
            handle: WatchHandle {
                recheck: tx,
                expected: Arc::default(),
                changes,
                swept: swept_rx,
            },
            registries: HashMap::new(),
            busy: Default::default(),
            again: HashMap::new(),
            push_retries: HashMap::new(),
            sweep: None,
            swept,
        }
    }

    pub fn handle(&self) -> WatchHandle {
        self.handle.clone()
    }

    fn next_fire(&self, i: usize, now: Millis) -> Millis {
        let name = self.cfg.images[i].name.to_string();
        self.schedules[i]
            .as_ref()
            .and_then(|s| s.next_after(now, &name))
            .unwrap_or(now + 300_000)
    }

    /// Runs until `shutdown`. Only the lease holder polls; push re-checks
    /// run on whichever replica received them.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut due: BinaryHeap<Reverse<(Millis, usize)>> = BinaryHeap::new();
        let now = now_millis();
        for i in 0..self.cfg.images.len() {
            due.push(Reverse((self.next_fire(i, now), i)));
        }
        let mut leader = false;
        let mut next_lease = now;
        let mut inflight: JoinSet<Outcome> = JoinSet::new();
        tracing::info!(images = self.cfg.images.len(), node = %self.opts.node_id, "watcher started");
        loop {
            let now = now_millis();
            if now >= next_lease {
                let was = leader;
                leader = match self
                    .store
                    .acquire_lease(WATCH_LEASE, &self.opts.node_id, self.opts.lease_ttl, now)
                    .await
                {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the watcher lease; not polling");
                        false
                    }
                };
                if leader != was {
                    tracing::info!(leader, node = %self.opts.node_id, "watcher leadership changed");
                }
                if self.sweep.is_none() {
                    if leader && !self.cfg.images.is_empty() {
                        // Downtime may have hidden changes: check every image
                        // now, before the engine acts on stored digests.
                        due.clear();
                        for i in 0..self.cfg.images.len() {
                            due.push(Reverse((now, i)));
                        }
                        self.sweep = Some((0..self.cfg.images.len()).collect());
                        tracing::info!(
                            images = self.cfg.images.len(),
                            "start-up sweep: checking every image"
                        );
                    } else {
                        self.sweep = Some(Default::default());
                        let _ = self.swept.send(true);
                    }
                }
                next_lease = now + (self.opts.lease_ttl.as_millis() as i64 / 3).max(100);
            }
            if leader {
                while inflight.len() < self.opts.max_in_flight {
                    let Some(&Reverse((at, i))) = due.peek() else {
                        break;
                    };
                    if at > now {
                        break;
                    }
                    due.pop();
                    let registry = self.cfg.images[i].name.registry().to_string();
                    let gate = self.registries.get(&registry).map_or(0, |r| r.next_attempt);
                    if gate > now {
                        // The registry is backing off: try this image when it may.
                        due.push(Reverse((gate.max(self.next_fire(i, now)), i)));
                        continue;
                    }
                    self.spawn_check(&mut inflight, i, DigestSource::Poll);
                }
            } else {
                // Not the leader: keep the schedule moving without polling.
                while let Some(&Reverse((at, i))) = due.peek() {
                    if at > now {
                        break;
                    }
                    due.pop();
                    due.push(Reverse((self.next_fire(i, now), i)));
                }
            }
            let wake_at = due
                .peek()
                .map_or(next_lease, |Reverse((at, _))| (*at).min(next_lease));
            let sleep = Duration::from_millis((wake_at - now).clamp(1, 60_000) as u64);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some((image, source)) = self.recheck_rx.recv() => {
                    if let Some(&i) = self.index.get(&image) {
                        self.spawn_check(&mut inflight, i, source);
                    }
                }
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Ok(outcome) = done {
                        self.busy.remove(&outcome.index);
                        if let Some(left) = self.sweep.as_mut()
                            && left.remove(&outcome.index)
                            && left.is_empty()
                        {
                            tracing::info!("start-up sweep done");
                            let _ = self.swept.send(true);
                        }
                        if let Some(source) = self.again.remove(&outcome.index) {
                            self.spawn_check(&mut inflight, outcome.index, source);
                        }
                        let retry_at = self.settle(outcome.index, &outcome.registry, &outcome.result).await;
                        // A polled image left the schedule when it was taken;
                        // a push re-check never did.
                        if outcome.source == DigestSource::Poll {
                            let next = self.next_fire(outcome.index, now_millis());
                            due.push(Reverse((retry_at.map_or(next, |r| r.max(next)), outcome.index)));
                        } else if retry_at.is_some() || self.still_expected(outcome.index, outcome.seen.as_deref()) {
                            self.retry_push(outcome.index, outcome.source);
                        } else {
                            self.push_retries.remove(&outcome.index);
                        }
                        if let Ok(Some(change)) = outcome.result {
                            let _ = self.handle.changes.send(change);
                        }
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        inflight.abort_all();
        if leader {
            let _ = self
                .store
                .release_lease(WATCH_LEASE, &self.opts.node_id)
                .await;
        }
        tracing::info!("watcher stopped");
    }

    fn spawn_check(&mut self, set: &mut JoinSet<Outcome>, index: usize, source: DigestSource) {
        if !self.busy.insert(index) {
            // Run once more after the current check; a poll wins over a push
            // so the schedule is kept.
            let entry = self.again.entry(index).or_insert(source);
            if source == DigestSource::Poll {
                *entry = DigestSource::Poll;
            }
            return;
        }
        let image = self.cfg.images[index].clone();
        let client = self.client.clone();
        let store = self.store.clone();
        set.spawn(async move {
            let registry = image.name.registry().to_string();
            let mut seen = None;
            let result = check(&client, &store, &image, source, &mut seen).await;
            Outcome {
                index,
                source,
                registry,
                result,
                seen,
            }
        });
    }

    /// True while a push announced a digest the registry does not show yet.
    fn still_expected(&self, index: usize, seen: Option<&str>) -> bool {
        let image = &self.cfg.images[index].name;
        let Ok(mut m) = self.handle.expected.lock() else {
            return false;
        };
        match (m.get(image), seen) {
            (Some(want), Some(got)) if want != got => true,
            (Some(_), _) => {
                m.remove(image);
                false
            }
            (None, _) => false,
        }
    }

    /// A push said the image moved but the check failed (registries can
    /// answer 500 for a manifest pushed a moment ago): try again soon, a
    /// few times, rather than wait for the schedule.
    fn retry_push(&mut self, index: usize, source: DigestSource) {
        let n = self.push_retries.entry(index).or_insert(0);
        *n += 1;
        if *n > 8 {
            self.push_retries.remove(&index);
            if let Ok(mut m) = self.handle.expected.lock() {
                m.remove(&self.cfg.images[index].name);
            }
            return;
        }
        let delay = Duration::from_millis(25 << (*n - 1).min(6)); // 25 ms … 1.6 s
        let handle = self.handle.clone();
        let image = self.cfg.images[index].name.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            handle.recheck(image, source);
        });
    }

    /// Updates registry health after a check; returns an early retry time
    /// when the registry is backing off.
    async fn settle(
        &mut self,
        index: usize,
        registry: &str,
        result: &Result<Option<DigestChanged>, RegistryError>,
    ) -> Option<Millis> {
        let now = now_millis();
        let image = &self.cfg.images[index];
        let state = self.registries.entry(registry.to_string()).or_default();
        let before = state.consecutive_errors;
        let budget = self
            .client
            .budget(registry)
            .map(|b| (b.remaining as i64, b.limit as i64));
        crate::metrics::metrics().poll(
            registry,
            match result {
                Ok(Some(_)) => "changed",
                Ok(None) => "ok",
                Err(e) if e.retryable() => "error",
                Err(_) => "image_error",
            },
        );
        let (retry_at, error) = match result {
            Err(e) if e.retryable() => {
                state.consecutive_errors += 1;
                let delay = retry_delay(
                    state.consecutive_errors as u32,
                    e.retry_after(),
                    rand::random::<f64>(),
                );
                state.next_attempt = now + delay.as_millis() as i64;
                tracing::warn!(image = %image.name, registry, error = %e, retry_in_ms = delay.as_millis() as u64, "registry check failed; backing off");
                (Some(state.next_attempt.max(now)), Some(e.to_string()))
            }
            Err(e) => {
                // The registry answered; the image is the problem (404, auth).
                state.consecutive_errors = 0;
                state.next_attempt = 0;
                tracing::warn!(image = %image.name, error = %e, "image check failed");
                if let Err(se) = self
                    .store
                    .record_check_error(&image.name.to_string(), &e.to_string(), now)
                    .await
                {
                    tracing::warn!(error = %se, "cannot record check error");
                }
                (None, None)
            }
            Ok(_) => {
                state.consecutive_errors = 0;
                state.next_attempt = 0;
                (None, None)
            }
        };
        let after = state.consecutive_errors;
        let next_attempt = (state.next_attempt > 0).then_some(state.next_attempt);
        let refresh = error.is_none() && now - state.recorded_at >= HEALTH_REFRESH_MS;
        if before != after || error.is_some() || budget.is_some() || refresh {
            state.recorded_at = now;
        }
        if (before != after || error.is_some() || budget.is_some() || refresh)
            && let Err(e) = self
                .store
                .record_registry_health(
                    registry,
                    after,
                    error.as_deref(),
                    next_attempt,
                    budget,
                    now,
                )
                .await
        {
            tracing::warn!(error = %e, "cannot record registry health");
        }
        if health_state(before) != health_state(after) {
            let kind = if after == 0 {
                "registry_recovered"
            } else {
                "registry_degraded"
            };
            let event = NewEvent {
                kind: kind.into(),
                image: None,
                rollout_id: None,
                job_id: None,
                data: serde_json::json!({ "registry": registry, "state": health_state(after), "error": error }),
            };
            let _ = self.store.append_event(&event, now).await;
        }
        retry_at
    }
}

/// One check: resolve; for a managed image whose digest moved (or is seen
/// for the first time) read its base annotations; then record it all, and
/// the change when there is one, in one transaction.
async fn check(
    client: &RegistryClient,
    store: &Store,
    image: &Image,
    source: DigestSource,
    seen: &mut Option<String>,
) -> Result<Option<DigestChanged>, RegistryError> {
    let asked_at = now_millis();
    let res = client.resolve(&image.name, &image.platforms).await?;
    *seen = Some(res.digest.clone());
    let tracked = res.tracked();
    let platform = image
        .platforms
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let name = image.name.to_string();
    // Only a managed image has base annotations to read: external images
    // cost no extra query per check.
    let stored = if image.is_managed() {
        match store.image_state(&name).await {
            Ok(s) => s.and_then(|s| s.current_digest),
            Err(e) => {
                tracing::error!(image = %name, error = %e, "cannot read the stored digest");
                return Ok(None);
            }
        }
    } else {
        None
    };
    // Read before recording, so the engine that plans the change already
    // knows what the new digest was built on.
    let base = if image.is_managed() && stored.as_deref() != Some(tracked.as_str()) {
        match client.base_annotations(&image.name, &image.platforms).await {
            Ok(base) => Some(BaseAnnotation {
                // Normalised, so it compares with the parent's stored name.
                name: base.name.as_deref().map(|n| {
                    ImageRef::parse(n)
                        .map(|r| r.to_string())
                        .unwrap_or_else(|_| n.to_string())
                }),
                digest: base.digest,
            }),
            Err(e) => {
                tracing::warn!(image = %name, error = %e, "cannot read base annotations");
                None
            }
        }
    } else {
        None
    };
    let now = now_millis();
    let observation = Observation {
        image: &name,
        digest: &tracked,
        top_digest: Some(&res.digest),
        asked_at,
        platform: &platform,
        source,
        settle_ms: image.settle.as_millis() as i64,
        base,
    };
    let update = match store.observe(&observation, now).await {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(image = %name, error = %e, "cannot record digest");
            return Ok(None);
        }
    };
    let DigestUpdate::Changed { old } = update else {
        tracing::debug!(image = %name, digest = %tracked, "unchanged");
        return Ok(None);
    };
    tracing::info!(image = %name, old = %old, new = %tracked, source = source.as_str(), "digest changed");
    crate::metrics::metrics().digest_changed(source.as_str());
    Ok(Some(DigestChanged {
        image: image.name.clone(),
        old,
        new: tracked,
        source,
    }))
}
