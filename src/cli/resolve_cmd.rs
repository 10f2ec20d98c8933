//! `lineaged resolve`: digests through the same client the watcher uses, so
//! users can debug registry access and auth with it.

use std::process::ExitCode;
use std::time::Duration;

use super::{EXIT_FAILED, ResolveArgs, load_config};
use crate::registry::{ImageRef, RegistryClient, RegistryError, Resolution};
use crate::store::retry_delay;

const ATTEMPTS: u32 = 3;

pub fn resolve(args: &ResolveArgs) -> ExitCode {
    let cfg = match load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let client =
        match RegistryClient::new(&cfg.registries, Duration::from_secs(args.timeout.max(1))) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        };
    let rt = match super::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut failed = 0;
    rt.block_on(async {
        for r in &args.refs {
            match resolve_with_retries(&client, r, &args.platforms).await {
                Ok(res) => println!("{r} {}", res.tracked()),
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {r}: {}", super::store_cmd::error_chain(&e));
                }
            }
        }
    });
    if failed > 0 {
        eprintln!("{failed} of {} reference(s) failed", args.refs.len());
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

pub(super) async fn resolve_with_retries(
    client: &RegistryClient,
    r: &ImageRef,
    platforms: &[crate::config::Platform],
) -> Result<Resolution, RegistryError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.resolve(r, platforms).await {
            Err(e) if e.retryable() && attempt < ATTEMPTS => {
                let delay = retry_delay(attempt, e.retry_after(), rand::random::<f64>())
                    .min(Duration::from_secs(10));
                tracing::warn!(image = %r, error = %e, retry_in_ms = delay.as_millis() as u64, "retrying");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}
