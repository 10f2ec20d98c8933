//! `lineaged verify`: the supply-chain gates for given references, so users
//! can debug keys, policies and scanners without waiting for a rollout.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::{EXIT_FAILED, Output, VerifyArgs, load_config};
use crate::policy::{Evaluation, GateResult, Gatekeeper, Purpose};
use crate::registry::RegistryClient;

pub fn verify(args: &VerifyArgs) -> ExitCode {
    let cfg = match load_config(&args.config) {
        Ok(c) => Arc::new(c),
        Err(code) => return code,
    };
    let client = match RegistryClient::new(&cfg.registries, Duration::from_secs(30)) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let rt = match super::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let gates = Gatekeeper::new(cfg.clone(), client.clone());
    let purpose = match args.purpose.as_str() {
        "deploy" => Purpose::Deploy,
        "cascade" => Purpose::Cascade,
        _ => Purpose::All,
    };
    let mut refused = 0;
    let mut failed = 0;
    let mut all = Vec::new();
    rt.block_on(async {
        for r in &args.refs {
            let digest = match r.digest() {
                Some(d) => d.to_string(),
                None => match client.head_digest(r).await {
                    Ok(d) => d,
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: {r}: {e}");
                        continue;
                    }
                },
            };
            // Rules match the tag reference; a digest reference is judged
            // under its repository's name.
            let full = r.to_string();
            let named = crate::registry::ImageRef::parse(full.split('@').next().unwrap_or(&full))
                .unwrap_or_else(|_| r.clone());
            match gates.evaluate(&named, &digest, purpose).await {
                Ok(e) => {
                    if e.refusal().is_some() {
                        refused += 1;
                    }
                    if args.output == Output::Text {
                        print!("{}", text(&e));
                    }
                    all.push(e);
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {r}: {e}");
                }
            }
        }
    });
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    }
    if refused + failed > 0 {
        eprintln!(
            "{refused} refused, {failed} could not be checked, of {} reference(s)",
            args.refs.len()
        );
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

fn text(e: &Evaluation) -> String {
    let verdict = if e.refusal().is_some() {
        "REFUSED"
    } else {
        "PASSED"
    };
    let mut out = format!("{verdict} {}@{}\n", e.image, e.digest);
    if let Some(r) = &e.rule {
        out.push_str(&format!("  rule: {r}\n"));
    }
    if e.verdicts.is_empty() {
        out.push_str("  no gate applies to this image\n");
    }
    for v in &e.verdicts {
        let mark = match v.result {
            GateResult::Passed => "ok  ",
            GateResult::Refused => "FAIL",
            GateResult::Warned => "warn",
        };
        out.push_str(&format!("  {mark} {}: {}\n", v.gate, v.reason));
    }
    out
}
