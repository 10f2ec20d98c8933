//! `lineaged serve`: the store, the watcher and the HTTP API side by side
//! under one cancellation token. Tests start the same thing on port 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, router};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::registry::{RegistryClient, RegistryError};
use crate::rollout::Engine;
use crate::store::{OpenOptions, Store, StoreError, now_millis};
use crate::watch::{WatchHandle, WatchOptions, Watcher};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("HTTP server: {0}")]
    Http(#[source] std::io::Error),
}

/// Which parts to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub watch: bool,
    /// Run the rollout engine and the dispatcher.
    pub rollouts: bool,
    /// How often reconcile and the build-deadline check run.
    pub reconcile_interval: Duration,
    pub watch_options: WatchOptions,
    pub registry_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            watch: true,
            rollouts: true,
            reconcile_interval: Duration::from_secs(30),
            watch_options: WatchOptions::default(),
            registry_timeout: Duration::from_secs(30),
        }
    }
}

/// A running daemon.
pub struct Daemon {
    pub store: Store,
    pub watch: Option<WatchHandle>,
    /// The rollout engine, when rollouts run here.
    pub engine: Option<Arc<Engine>>,
    pub addr: std::net::SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<Result<(), std::io::Error>>,
}

impl Daemon {
    /// Waits until every part has stopped (after the shutdown token fires).
    pub async fn wait(self) -> Result<(), RunError> {
        let served = self.server.await;
        for t in self.tasks {
            let _ = t.await;
        }
        self.store.close().await;
        match served {
            Ok(r) => r.map_err(RunError::Http),
            Err(e) => Err(RunError::Http(std::io::Error::other(e.to_string()))),
        }
    }
}

/// Opens the store (migrating), syncs the config, starts the watcher and
/// serves the API on `listener` until `shutdown` is cancelled.
pub async fn start(
    cfg: Arc<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
    opts: RunOptions,
) -> Result<Daemon, RunError> {
    crate::init_tls();
    let ready = Arc::new(AtomicBool::new(false));
    let store = Store::open(
        cfg.database.url.expose(),
        &OpenOptions {
            max_connections: cfg.database.max_connections,
            ..OpenOptions::default()
        },
    )
    .await?;
    let summary = store.sync_config(&cfg.images, now_millis()).await?;
    tracing::info!(
        backend = store.backend(),
        added = summary.added,
        reactivated = summary.reactivated,
        deactivated = summary.deactivated,
        edges = summary.edges,
        "config synced"
    );

    // Leases and claims are held by this run's instance id; what an earlier
    // run of this node left behind is freed now, not when its leases expire.
    let me = crate::node::Identity::new(&opts.watch_options.node_id);
    match store.release_previous_runs(&me, now_millis()).await {
        Ok((jobs, leases)) if !jobs.is_empty() || !leases.is_empty() => {
            tracing::info!(?jobs, ?leases, node = %me.name, "released what a previous run of this node left")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot release a previous run's jobs; they wait for their leases")
        }
    }
    tracing::info!(instance = %me.instance, "node identity");
    let mut tasks = Vec::new();
    let client = Arc::new(RegistryClient::new(&cfg.registries, opts.registry_timeout)?);
    let watch = if opts.watch {
        let watcher = Watcher::new(
            cfg.clone(),
            store.clone(),
            client.clone(),
            WatchOptions {
                node_id: me.instance.clone(),
                ..opts.watch_options.clone()
            },
        );
        let handle = watcher.handle();
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move { watcher.run(token).await }));
        Some(handle)
    } else {
        None
    };

    let addr = listener.local_addr().map_err(RunError::Http)?;
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let lineage = Arc::new(crate::lineage::Lineage::new(&cfg.images));
    let engine = if opts.rollouts {
        let engine = Arc::new(Engine::new(cfg.clone(), store.clone(), lineage.clone()));
        let callback_base = cfg
            .api
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let notifier =
            crate::notify::Notifier::new(cfg.clone(), store.clone(), callback_base.clone());
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move { notifier.run(token).await }));
        let dispatcher = Arc::new(Dispatcher::new(
            cfg.clone(),
            store.clone(),
            engine.clone(),
            me.instance.clone(),
            callback_base,
        ));
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move { dispatcher.run(token).await }));
        let gates = Arc::new(crate::policy::worker::GateWorker::new(
            cfg.clone(),
            store.clone(),
            engine.clone(),
            client.clone(),
            &me.instance,
        ));
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move { gates.run(token).await }));
        let (e, token, every) = (engine.clone(), shutdown.clone(), opts.reconcile_interval);
        let w = watch.clone();
        tasks.push(tokio::spawn(async move {
            drive_engine(e, w, every, token).await
        }));
        Some(engine)
    } else {
        None
    };
    let state = AppState {
        cfg: cfg.clone(),
        lineage,
        store: store.clone(),
        watch: watch.clone(),
        engine: engine.clone(),
        registry: Some(client),
        ready: ready.clone(),
        events: crate::api::EventHub::start(store.clone(), shutdown.clone()).await,
    };
    let state_engine = engine;
    let token = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(token.cancelled_owned())
            .await
    });
    ready.store(true, Ordering::Relaxed);
    tracing::info!(%addr, "listening");
    Ok(Daemon {
        store,
        watch,
        engine: state_engine,
        addr,
        tasks,
        server,
    })
}

/// How long the engine waits for the watcher's start-up sweep before it
/// acts anyway (a registry that is down must not stop rollouts for ever).
const SWEEP_WAIT: Duration = Duration::from_secs(120);

/// How often the engine looks for changes other replicas recorded (its own
/// watcher wakes it at once).
const CHANGE_POLL: Duration = Duration::from_millis(500);

/// Plans due changes from the outbox (woken by this replica's watcher,
/// polling for the others' and for settle windows that end); reconciles
/// and expires overdue builds every `every`. Starts once the watcher's
/// start-up sweep is done.
async fn drive_engine(
    engine: Arc<Engine>,
    watch: Option<WatchHandle>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut changes = watch.as_ref().map(|w| w.subscribe());
    if let Some(w) = &watch {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = w.swept() => {}
            _ = tokio::time::sleep(SWEEP_WAIT) => {
                tracing::warn!(waited_s = SWEEP_WAIT.as_secs(), "start-up sweep not done; rollouts proceed on stored digests");
            }
        }
    }
    let mut tick = tokio::time::interval(every);
    let mut poll = tokio::time::interval(CHANGE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut periodic = false;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => periodic = true,
            _ = poll.tick() => {}
            change = async {
                match changes.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => if let Err(tokio::sync::broadcast::error::RecvError::Closed) = change {
                changes = None;
            },
        }
        if let Err(e) = engine.process_changes().await {
            tracing::warn!(error = %e, "cannot plan changes; retrying");
        }
        if periodic {
            if let Err(e) = engine.reconcile().await {
                tracing::warn!(error = %e, "reconcile failed");
            }
            if let Err(e) = engine.expire_builds().await {
                tracing::warn!(error = %e, "build deadline check failed");
            }
            if let Err(e) = engine.expire_approvals().await {
                tracing::warn!(error = %e, "approval expiry check failed");
            }
            if let Err(e) = engine.open_windows(crate::store::now_millis()).await {
                tracing::warn!(error = %e, "deploy window check failed");
            }
        }
    }
}

/// `start`, then wait for shutdown.
pub async fn run(
    cfg: Arc<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
    opts: RunOptions,
) -> Result<(), RunError> {
    start(cfg, listener, shutdown, opts).await?.wait().await
}
