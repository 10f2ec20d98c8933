//! `lineaged trigger`: the exact CI request a rebuild of one image would
//! make, printed (`--dry-run`, credentials masked) or sent, so a platform
//! engineer can wire a pipeline without waiting for a base to move.

use std::process::ExitCode;
use std::time::Duration;

use super::{EXIT_FAILED, TriggerArgs, load_config};
use crate::dispatch::{Trigger, http_client, rebuild_request, request};
use crate::registry::RegistryClient;
use crate::rollout::ParentDigest;

pub fn trigger(args: &TriggerArgs) -> ExitCode {
    let cfg = match load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(image) = cfg.images.iter().find(|i| i.name == args.image) else {
        eprintln!("error: {} is not in the config", args.image);
        return ExitCode::from(EXIT_FAILED);
    };
    let Some(build) = &image.build else {
        eprintln!(
            "error: {} has no `build:`; only managed images are rebuilt",
            image.name
        );
        return ExitCode::from(EXIT_FAILED);
    };
    let Some(backend) = cfg.backends.get(&build.backend) else {
        eprintln!("error: backend `{}` is not configured", build.backend);
        return ExitCode::from(EXIT_FAILED);
    };
    let rt = match super::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let parents = rt.block_on(parent_digests(&cfg, &image.parents, args.offline));
    let base = cfg
        .api
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", cfg.listen));
    let key = format!("manual-{}", crate::store::now_millis());
    let t = Trigger {
        image: &image.name.to_string(),
        parents: &parents,
        job_id: 0,
        rollout_id: 0,
        callback_url: format!(
            "{}/api/v1/jobs/0/result?token=manual",
            base.trim_end_matches('/')
        ),
        idempotency_key: &key,
        attempt: 1,
        reason: "manual trigger".into(),
        build,
    };
    let req = match rebuild_request(backend, &t) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    println!(
        "# {} through backend `{}` (kind {})",
        image.name,
        backend.name,
        backend.kind.as_str()
    );
    print!("{req}");
    if args.dry_run {
        eprintln!(
            "dry run: nothing sent (job and rollout ids are 0; a real trigger's callback URL names its job)"
        );
        return ExitCode::SUCCESS;
    }
    let http = http_client();
    match rt.block_on(request::send(&http, &req, backend.timeout)) {
        Ok(run) => {
            println!();
            println!(
                "accepted: HTTP {}{}{}",
                run.status,
                run.id.map(|i| format!(", run {i}")).unwrap_or_default(),
                run.url.map(|u| format!(", {u}")).unwrap_or_default()
            );
            eprintln!("note: this trigger is not tracked; its callback (job 0) will be refused");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let how = if e.retryable() {
                "retryable; the daemon would retry with backoff"
            } else {
                "permanent; the daemon would not retry"
            };
            eprintln!("error: {e} ({how})");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// The parents' current digests from their registries; unknown (null) when
/// offline or unreachable, with a warning.
async fn parent_digests(
    cfg: &crate::config::Config,
    parents: &[crate::registry::ImageRef],
    offline: bool,
) -> Vec<ParentDigest> {
    let client = if offline {
        None
    } else {
        match RegistryClient::new(&cfg.registries, Duration::from_secs(10)) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("warning: no registry client ({e}); parent digests left null");
                None
            }
        }
    };
    let mut out = Vec::with_capacity(parents.len());
    for p in parents {
        let platforms = cfg
            .images
            .iter()
            .find(|i| &i.name == p)
            .map(|i| i.platforms.clone())
            .unwrap_or_default();
        let digest = match &client {
            None => None,
            Some(c) => match c.resolve(p, &platforms).await {
                Ok(r) => Some(r.tracked().to_string()),
                Err(e) => {
                    eprintln!("warning: {p}: {e}; its digest is left null");
                    None
                }
            },
        };
        out.push(ParentDigest {
            name: p.to_string(),
            digest,
        });
    }
    out
}
