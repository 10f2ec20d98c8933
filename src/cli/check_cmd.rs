//! `lineaged check`: the config validated offline, and with `--online` every
//! external base image looked up in its registry.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::{CheckArgs, EXIT_FAILED, load_config, print};
use crate::config::{Config, Image};
use crate::registry::{RegistryClient, RegistryError};

/// Lookups in flight at once; the client's per-registry limits still hold.
const PARALLEL: usize = 16;

pub fn check(args: &CheckArgs) -> ExitCode {
    let cfg = match load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let managed = cfg.managed_count();
    let implicit = cfg.images.iter().filter(|i| i.implicit).count();
    print(&format!(
        "ok: {} images ({managed} managed, {} external of which {implicit} implicit), {} backends, {} registries, from {} file{}\n",
        cfg.images.len(),
        cfg.images.len() - managed,
        cfg.backends.len(),
        cfg.registries.len(),
        cfg.sources.len(),
        if cfg.sources.len() == 1 { "" } else { "s" },
    ));
    for w in cfg.warnings() {
        eprintln!("warning: {w}");
    }
    if !args.online {
        return ExitCode::SUCCESS;
    }
    online(&cfg, Duration::from_secs(args.timeout.max(1)))
}

/// Resolves every external image (the ones nobody here builds) and reports
/// each that does not exist or cannot be looked up, at the place it is named.
fn online(cfg: &Config, timeout: Duration) -> ExitCode {
    let client = match RegistryClient::new(&cfg.registries, timeout) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("error: {}", crate::error_chain(&e));
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let rt = match super::runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let external: Vec<&Image> = cfg.images.iter().filter(|i| !i.is_managed()).collect();
    eprintln!(
        "checking {} external image{} in their registries…",
        external.len(),
        if external.len() == 1 { "" } else { "s" }
    );
    let results = rt.block_on(async {
        let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut tasks = Vec::with_capacity(external.len());
        for img in &external {
            let (client, permits) = (client.clone(), permits.clone());
            let (name, platforms) = (img.name.clone(), img.platforms.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                super::resolve_cmd::resolve_with_retries(&client, &name, &platforms).await
            }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await);
        }
        out
    });
    let (mut missing, mut unchecked) = (0usize, 0usize);
    for (img, result) in external.iter().zip(results) {
        let at = img
            .origin
            .as_ref()
            .map(|o| format!("{o}: "))
            .unwrap_or_default();
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(RegistryError::NotFound { registry, .. })) => {
                missing += 1;
                eprintln!(
                    "{at}{} does not exist ({registry} has no such manifest){}",
                    img.name,
                    children(cfg, img)
                );
            }
            Ok(Err(e)) => {
                unchecked += 1;
                eprintln!(
                    "{at}cannot check {}: {}{}",
                    img.name,
                    crate::error_chain(&e),
                    children(cfg, img)
                );
            }
            Err(e) => {
                unchecked += 1;
                eprintln!("{at}cannot check {}: {e}{}", img.name, children(cfg, img));
            }
        }
    }
    let found = external.len() - missing - unchecked;
    if missing + unchecked == 0 {
        print(&format!("ok: all {found} external images exist\n"));
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "{found} of {} external images exist, {missing} do not, {unchecked} could not be checked",
        external.len()
    );
    ExitCode::from(EXIT_FAILED)
}

/// "; base of a, b" for the managed images naming `img` as a parent.
fn children(cfg: &Config, img: &Image) -> String {
    let mut names: Vec<String> = cfg
        .images
        .iter()
        .filter(|c| c.parents.contains(&img.name))
        .map(|c| c.name.to_string())
        .collect();
    if names.is_empty() {
        return String::new();
    }
    let more = names.len().saturating_sub(3);
    names.truncate(3);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("; base of {}{tail}", names.join(", "))
}
