//! Validation of `policy:`: rules (globs, mode, apply_to, signature
//! authorities with their keys read at load, scan thresholds), the scan
//! command, and the shorthands `require_signature` / `scan.max_severity`,
//! which become a last rule for every image's deploy.

use std::path::PathBuf;

use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use super::raw::*;
use super::validate::Ctx;
use super::*;

/// The longest scan (under the gate worker's 15-minute lease).
const MAX_SCAN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(14 * 60);

/// The longest wait for a signature (the verify job's retries cover it).
const MAX_SIGNATURE_GRACE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// The largest key file read (a PEM public key is a few hundred bytes).
const MAX_KEY_FILE: u64 = 64 * 1024;

pub(super) fn policy(ctx: &mut Ctx, raw: Option<(usize, Spanned<RawPolicy>)>) -> Policy {
    let Some((f, p)) = raw else {
        return Policy::default();
    };
    let p = p.value;
    let mut rules = Vec::new();
    // Where the first scan gate is asked for: a missing command is
    // reported there.
    let mut scan_at = None;
    for r in &p.rules {
        // Rules fed by Harbor's events need no command.
        let by_command = r
            .value
            .scan
            .as_ref()
            .is_some_and(|s| s.source.as_ref().is_none_or(|v| v.value == "command"));
        if by_command {
            scan_at = scan_at.or(Some(r.referenced));
        }
        if let Some(rule) = rule(ctx, f, r) {
            rules.push(rule);
        }
    }
    let mut scan = ScanSettings::default();
    let mut shorthand_scan = None;
    if let Some(s) = &p.scan {
        if let Some(m) = &s.max_severity {
            shorthand_scan = severity(ctx, f, m);
            scan_at = scan_at.or(Some(m.referenced));
        }
        if let Some(argv) = &s.command {
            let argv: Vec<String> = argv.iter().filter_map(|a| ctx.text(f, a)).collect();
            if argv.is_empty() {
                if let Some(first) = s.command.as_ref().and_then(|c| c.first()) {
                    ctx.err(f, first.referenced, "scan.command is empty");
                }
            } else if !argv.iter().any(|a| a.contains("{ref}")) {
                if let Some(first) = s.command.as_ref().and_then(|c| c.first()) {
                    ctx.err(
                        f,
                        first.referenced,
                        "scan.command must contain `{ref}` (replaced by repo@digest)",
                    );
                }
            } else {
                scan.command = Some(argv);
            }
        }
        if let Some(t) = ctx.duration(f, &s.timeout) {
            // The gate worker's lease is 15 minutes: a longer scan would be
            // taken over (and run twice) while it runs.
            if t > MAX_SCAN_TIMEOUT || t.is_zero() {
                if let Some(at) = s.timeout.as_ref() {
                    ctx.err(f, at.referenced, "scan.timeout must be between 1s and 14m");
                }
            } else {
                scan.timeout = t;
            }
        }
    }
    let shorthand_key = p
        .require_signature
        .as_ref()
        .and_then(|s| cosign_key(ctx, f, &s.public_key_file));
    if shorthand_key.is_some() || shorthand_scan.is_some() {
        rules.push(PolicyRule {
            images: vec!["**".into()],
            mode: GateMode::Enforce,
            apply_to: ApplyTo {
                deploy: true,
                cascade: false,
            },
            signatures: shorthand_key.map(|a| SignatureRule {
                required: 1,
                authorities: vec![a],
            }),
            approval: None,
            deploy_window: None,
            scan: shorthand_scan.map(|max_severity| ScanRule {
                max_severity,
                ignore_unfixed: false,
                source: ScanSource::Command,
            }),
            origin: "policy (require_signature / scan.max_severity)".into(),
        });
    }
    // Harbor events and attestations may report scans later; until then a
    // scan gate without a command could only time out, so say it now.
    if let Some(at) = scan_at
        && scan.command.is_none()
    {
        ctx.err(
            f,
            at,
            "a scan gate needs policy.scan.command (e.g. [trivy, image, --format, json, --quiet, \"{ref}\"])",
        );
    }
    let mut signature_grace = DEFAULT_SIGNATURE_GRACE;
    if let Some(g) = ctx.duration(f, &p.signature_grace) {
        if g > MAX_SIGNATURE_GRACE {
            if let Some(at) = p.signature_grace.as_ref() {
                ctx.err(f, at.referenced, "signature_grace must be at most 5m");
            }
        } else {
            signature_grace = g;
        }
    }
    let hash = policy_hash(p.trusted_registries_only, &rules, &scan);
    Policy {
        trusted_registries_only: p.trusted_registries_only,
        rules,
        scan,
        signature_grace,
        hash,
    }
}

fn rule(ctx: &mut Ctx, f: usize, r: &Spanned<RawRule>) -> Option<PolicyRule> {
    let at = r.referenced;
    let origin = ctx.origin(f, at).to_string();
    let r = &r.value;
    let mut ok = true;
    let mut images = Vec::new();
    for g in &r.images {
        match ctx.text(f, g) {
            Some(v) if !v.contains('/') && v.chars().any(|c| !matches!(c, '*' | '?')) => {
                ctx.err(
                    f,
                    g.referenced,
                    format!("glob `{v}` can match nothing: rules match normalised references (`python:*` is `docker.io/library/python:*`)"),
                );
                ok = false;
            }
            Some(v) if !v.is_empty() => images.push(v),
            Some(_) => {
                ctx.err(f, g.referenced, "an empty glob matches nothing");
                ok = false;
            }
            None => ok = false,
        }
    }
    if images.is_empty() && ok {
        ctx.err(
            f,
            at,
            "a rule needs `images` (globs, e.g. \"registry.example.com/apps/**\")",
        );
        ok = false;
    }
    let mode = match r.mode.as_ref().map(|m| (m, m.value.as_str())) {
        None | Some((_, "enforce")) => GateMode::Enforce,
        Some((_, "warn")) => GateMode::Warn,
        Some((m, other)) => {
            ctx.err(
                f,
                m.referenced,
                format!("mode must be `enforce` or `warn`, got `{other}`"),
            );
            ok = false;
            GateMode::Enforce
        }
    };
    let apply_to = match &r.apply_to {
        None => ApplyTo {
            deploy: true,
            cascade: true,
        },
        Some(list) => {
            let mut a = ApplyTo::default();
            for v in list {
                match v.value.as_str() {
                    "deploy" => a.deploy = true,
                    "cascade" => a.cascade = true,
                    other => {
                        ctx.err(
                            f,
                            v.referenced,
                            format!("apply_to takes `deploy` and `cascade`, got `{other}`"),
                        );
                        ok = false;
                    }
                }
            }
            if !a.deploy && !a.cascade && ok {
                ctx.err(f, at, "apply_to is empty: the rule would never apply");
                ok = false;
            }
            a
        }
    };
    let signatures = match &r.signatures {
        None => None,
        Some(s) => {
            let mut authorities = Vec::new();
            for a in &s.authorities {
                match (&a.value.cosign, &a.value.notation) {
                    (Some(c), None) => match cosign_key(ctx, f, &c.public_key_file) {
                        Some(k) => authorities.push(k),
                        None => ok = false,
                    },
                    (None, Some(n)) => {
                        let store = ctx.text(f, &n.trust_store).map(PathBuf::from);
                        if n.trusted_identities.is_empty() {
                            ctx.err(
                                f,
                                n.trust_store.referenced,
                                "notation needs trusted_identities (\"x509.subject: CN=…, O=…\", or \"*\" for any signer the trust store vouches for)",
                            );
                            ok = false;
                        }
                        let identities: Vec<String> = n
                            .trusted_identities
                            .iter()
                            .filter_map(|i| ctx.text(f, i))
                            .collect();
                        for (id, at) in identities.iter().zip(&n.trusted_identities) {
                            let ok_id = id.trim() == "*"
                                || id.trim().strip_prefix("x509.subject:").is_some_and(|dn| {
                                    !dn.trim().is_empty()
                                        && dn
                                            .split(',')
                                            .all(|p| p.contains('=') && !p.contains('\\'))
                                });
                            if !ok_id {
                                ctx.err(f, at.referenced, format!("trusted identity `{id}`: write `x509.subject: CN=…, O=…` (attributes joined by commas, no escapes) or `*`"));
                                ok = false;
                            }
                        }
                        match store {
                            Some(p) if p.is_dir() => {
                                match crate::policy::notation::load_trust_store(&p) {
                                    Ok(certs) => {
                                        let mut ders: Vec<&[u8]> =
                                            certs.iter().map(|c| c.as_ref()).collect();
                                        ders.sort_unstable();
                                        let mut h = Sha256::new();
                                        for d in ders {
                                            h.update(d);
                                        }
                                        authorities.push(Authority::Notation {
                                            trust_store: p,
                                            trusted_identities: identities,
                                            certs_sha256: format!("{:x}", h.finalize()),
                                        });
                                    }
                                    Err(e) => {
                                        ctx.err(
                                            f,
                                            n.trust_store.referenced,
                                            format!("notation trust store: {e}"),
                                        );
                                        ok = false;
                                    }
                                }
                            }
                            Some(p) => {
                                ctx.err(
                                    f,
                                    n.trust_store.referenced,
                                    format!(
                                        "notation trust store {} is not a directory",
                                        p.display()
                                    ),
                                );
                                ok = false;
                            }
                            None => ok = false,
                        }
                    }
                    _ => {
                        ctx.err(f, a.referenced, "an authority is `cosign: {public_key_file}` or `notation: {trust_store, trusted_identities}`, exactly one");
                        ok = false;
                    }
                }
            }
            let required = s.required.as_ref().map_or(1, |r| r.value);
            // One key listed twice is one signer: it must not count twice.
            let mut seen = std::collections::HashSet::new();
            for a in &authorities {
                if let Authority::Cosign { key_pem, key_file } = a
                    && !seen.insert(crate::policy::keys::P256Key::from_pem(key_pem).ok())
                {
                    ctx.err(
                        f,
                        at,
                        format!(
                            "cosign key {} is listed twice in one rule",
                            key_file.display()
                        ),
                    );
                    ok = false;
                }
            }
            if authorities.is_empty() && ok {
                ctx.err(f, at, "signatures needs at least one authority");
                ok = false;
            }
            if required == 0 || required > s.authorities.len() {
                let loc = s.required.as_ref().map_or(at, |r| r.referenced);
                ctx.err(f, loc, format!("required must be between 1 and the number of authorities ({}), got {required}", s.authorities.len()));
                ok = false;
            }
            Some(SignatureRule {
                required,
                authorities,
            })
        }
    };
    let scan = match &r.scan {
        None => None,
        Some(s) => {
            let source = match s.source.as_ref().map(|v| (v, v.value.as_str())) {
                None | Some((_, "command")) => ScanSource::Command,
                Some((_, "harbor")) => ScanSource::Harbor,
                Some((_, "attestation")) => ScanSource::Attestation,
                Some((v, other)) => {
                    ctx.err(
                        f,
                        v.referenced,
                        format!("scan.source must be `command`, `harbor` or `attestation`, got `{other}`"),
                    );
                    ok = false;
                    ScanSource::Command
                }
            };
            match severity(ctx, f, &s.max_severity) {
                Some(max_severity) => Some(ScanRule {
                    max_severity,
                    ignore_unfixed: s.ignore_unfixed,
                    source,
                }),
                None => {
                    ok = false;
                    None
                }
            }
        }
    };
    let cosign_keys = signatures.as_ref().is_some_and(|s| {
        s.authorities
            .iter()
            .any(|a| matches!(a, Authority::Cosign { .. }))
    });
    if scan
        .as_ref()
        .is_some_and(|s| s.source == ScanSource::Attestation)
        && !cosign_keys
        && ok
    {
        ctx.err(f, at, "scan.source: attestation needs `signatures` with a cosign authority (its key verifies the attestation)");
        ok = false;
    }
    let approval = ctx.approval(f, &r.approval);
    let deploy_window = ctx.window(f, &r.deploy_window);
    if signatures.is_none()
        && scan.is_none()
        && approval.is_none()
        && r.deploy_window.is_none()
        && ok
    {
        ctx.err(
            f,
            at,
            "a rule needs `signatures`, `scan`, `approval` or `deploy_window`",
        );
        ok = false;
    }
    ok.then_some(PolicyRule {
        images,
        mode,
        apply_to,
        signatures,
        scan,
        approval,
        deploy_window,
        origin,
    })
}

fn severity(ctx: &mut Ctx, f: usize, s: &S) -> Option<Severity> {
    let found = Severity::parse(&s.value);
    if found.is_none() {
        ctx.err(
            f,
            s.referenced,
            format!(
                "unknown severity `{}` (none, low, medium, high, critical)",
                s.value
            ),
        );
    }
    found
}

/// Reads a cosign public key at load: it must be a PEM `PUBLIC KEY`.
fn cosign_key(ctx: &mut Ctx, f: usize, s: &S) -> Option<Authority> {
    let path = ctx.text(f, s)?;
    let text = match std::fs::metadata(&path) {
        Ok(m) if !m.is_file() => Err(format!("public key {path} is not a file")),
        Ok(m) if m.len() > MAX_KEY_FILE => Err(format!("public key {path} is larger than 64 KiB")),
        Ok(_) => std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read public key {path}: {e}")),
        Err(e) => Err(format!("cannot read public key {path}: {e}")),
    };
    match text {
        Ok(t) if t.contains("-----BEGIN PUBLIC KEY-----") => {
            match crate::policy::keys::P256Key::from_pem(&t) {
                Ok(_) => Some(Authority::Cosign {
                    key_file: PathBuf::from(path),
                    key_pem: t,
                }),
                Err(e) => {
                    ctx.err(f, s.referenced, format!("public key {path}: {e}"));
                    None
                }
            }
        }
        Ok(_) => {
            ctx.err(f, s.referenced, format!("public key {path} is not a PEM `PUBLIC KEY` (as `cosign generate-key-pair` writes)"));
            None
        }
        Err(m) => {
            ctx.err(f, s.referenced, m);
            None
        }
    }
}

/// The policy hash extended with the trusted registries (sorted).
pub(super) fn with_trusted(hash: &str, registries: &[RegistryConfig]) -> String {
    let mut trusted: Vec<&str> = registries
        .iter()
        .filter(|r| r.trusted)
        .map(|r| r.host.as_str())
        .collect();
    trusted.sort_unstable();
    let mut h = Sha256::new();
    h.update(hash.as_bytes());
    for t in trusted {
        h.update(b"\0");
        h.update(t.as_bytes());
    }
    format!("{:x}", h.finalize())
}

fn policy_hash(trusted: bool, rules: &[PolicyRule], scan: &ScanSettings) -> String {
    let mut h = Sha256::new();
    h.update([u8::from(trusted)]);
    h.update(serde_json::to_vec(rules).unwrap_or_default());
    h.update(serde_json::to_vec(scan).unwrap_or_default());
    format!("{:x}", h.finalize())
}
