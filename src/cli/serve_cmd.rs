//! `lineaged serve`: the daemon until SIGINT/SIGTERM; SIGHUP reloads the
//! config (an invalid one is logged and the running config kept).

use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{ConfigArg, EXIT_FAILED, load_config};
use crate::config::{self, Config};
use crate::daemon::{RunOptions, start};

enum Signal {
    Stop,
    Reload,
}

pub fn serve(arg: &ConfigArg) -> ExitCode {
    let cfg = match load_config(arg) {
        Ok(c) => Arc::new(c),
        Err(code) => return code,
    };
    let rt = match super::runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(run(arg.config.clone(), cfg))
}

/// `RunOptions` with the tuning knobs operators may set in the environment:
/// `LINEAGED_RECONCILE_INTERVAL` (how often reconcile and the build
/// deadline check run; default 30s).
fn run_options() -> RunOptions {
    let mut opts = RunOptions::default();
    if let Ok(v) = std::env::var("LINEAGED_RECONCILE_INTERVAL") {
        match config::parse_duration(v.trim()) {
            Ok(d) if !d.is_zero() => opts.reconcile_interval = d,
            _ => {
                tracing::warn!(value = %v, "LINEAGED_RECONCILE_INTERVAL is not a duration like 30s; using the default")
            }
        }
    }
    opts
}

async fn run(path: std::path::PathBuf, mut cfg: Arc<Config>) -> ExitCode {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(signals(tx));
    loop {
        let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", cfg.listen);
                return ExitCode::from(EXIT_FAILED);
            }
        };
        let generation = CancellationToken::new();
        let daemon = match start(cfg.clone(), listener, generation.clone(), run_options()).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {}", super::store_cmd::error_chain(&e));
                return ExitCode::from(EXIT_FAILED);
            }
        };
        let next = loop {
            match rx.recv().await {
                Some(Signal::Reload) => match config::load(&path) {
                    Ok(new) => {
                        tracing::info!(
                            images = new.images.len(),
                            "config reloaded; restarting components"
                        );
                        break Some(Arc::new(new));
                    }
                    Err(e) => {
                        for d in e.diagnostics() {
                            tracing::error!(error = %d, "config reload refused; keeping the running config");
                        }
                    }
                },
                Some(Signal::Stop) | None => break None,
            }
        };
        generation.cancel();
        if let Err(e) = daemon.wait().await {
            eprintln!("error: {}", super::store_cmd::error_chain(&e));
            return ExitCode::from(EXIT_FAILED);
        }
        match next {
            Some(new) => cfg = new,
            None => {
                tracing::info!("stopped");
                return ExitCode::SUCCESS;
            }
        }
    }
}

async fn signals(tx: tokio::sync::mpsc::Sender<Signal>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(Signal::Stop).await;
        return;
    };
    loop {
        let s = tokio::select! {
            _ = tokio::signal::ctrl_c() => Signal::Stop,
            _ = term.recv() => Signal::Stop,
            _ = hup.recv() => Signal::Reload,
        };
        let stop = matches!(s, Signal::Stop);
        if stop {
            tracing::info!("shutting down");
        }
        if tx.send(s).await.is_err() || stop {
            return;
        }
    }
}
