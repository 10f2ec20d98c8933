//! Supply-chain gates: before an image is deployed, or used as the parent
//! of the next wave, it must come from a trusted registry, carry the
//! signatures its rule asks for, and pass its vulnerability scan.
//!
//! [`Gatekeeper::evaluate`] decides for one image digest and purpose. A
//! gate never passes on an error: registry trouble that may pass is an
//! `Err` (the job retries with backoff); anything else is a refusal with
//! its reason and evidence. `mode: warn` turns refusals into warnings.

pub mod attest;
pub mod bundle;
pub mod cosign;
pub mod harbor;
pub mod keys;
pub mod notation;
pub mod referrers;
pub mod scan;
pub mod worker;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{Authority, Config, GateMode, PolicyRule};
use crate::registry::{ImageRef, RegistryClient, RegistryError};

/// Why an image is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// Before it is deployed (`apply_to: deploy`).
    Deploy,
    /// Before children build on it (`apply_to: cascade`).
    Cascade,
    /// Every gate its rule has (`lineaged verify`).
    All,
}

/// A gate's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateResult {
    Passed,
    Refused,
    /// Refused, but the rule is `mode: warn`: recorded, let through.
    Warned,
}

impl GateResult {
    pub fn as_str(self) -> &'static str {
        match self {
            GateResult::Passed => "passed",
            GateResult::Refused => "refused",
            GateResult::Warned => "warned",
        }
    }
}

/// One gate's verdict with its reason and evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// `trusted_registry`, `signature` or `scan`.
    pub gate: String,
    pub result: GateResult,
    pub reason: String,
    pub evidence: Value,
}

/// Every gate that applied to one digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub image: String,
    pub digest: String,
    pub purpose: Purpose,
    /// Where the rule that applied was written, if one did.
    pub rule: Option<String>,
    pub verdicts: Vec<Verdict>,
}

impl Evaluation {
    /// Refused only because something may still arrive: no signature
    /// exists yet (none of the authorities found one; the signer may still
    /// run) or no registry scan report yet. `(signature, scan)` say which.
    pub fn waiting_for(&self) -> Option<(bool, bool)> {
        let refused: Vec<&Verdict> = self
            .verdicts
            .iter()
            .filter(|v| v.result == GateResult::Refused)
            .collect();
        let sig = |v: &&Verdict| v.gate == "signature" && v.evidence["missing"] == true;
        let scan = |v: &&Verdict| v.gate == "scan" && v.evidence["pending"] == true;
        (!refused.is_empty() && refused.iter().all(|v| sig(v) || scan(v)))
            .then(|| (refused.iter().any(sig), refused.iter().any(scan)))
    }

    /// The first enforced refusal, if any.
    pub fn refusal(&self) -> Option<&Verdict> {
        self.verdicts
            .iter()
            .find(|v| v.result == GateResult::Refused)
    }

    /// `gate: reason` of the first refusal: the image's reason in a rollout.
    pub fn refusal_text(&self) -> Option<String> {
        self.refusal()
            .map(|v| format!("{} gate: {}", v.gate, v.reason))
    }
}

impl Gatekeeper {
    /// A `source: harbor` scan: the report Harbor sent for the digest.
    /// None yet is a pending refusal the gate worker waits out (up to
    /// `policy.scan.timeout`).
    async fn harbor_scan(
        &self,
        image: &ImageRef,
        digest: &str,
        rule: &crate::config::ScanRule,
    ) -> Verdict {
        let verdict = |result, reason: String, evidence| Verdict {
            gate: "scan".into(),
            result,
            reason,
            evidence,
        };
        let Some(store) = &self.reports else {
            return verdict(
                GateResult::Refused,
                "Harbor scan results are kept by the daemon (`lineaged verify` cannot read them)"
                    .into(),
                Value::Null,
            );
        };
        match store
            .scan_report(digest, "harbor", &image.to_string())
            .await
        {
            Ok(Some((text, _))) => match serde_json::from_str::<harbor::Report>(&text) {
                Ok(r) => {
                    let (ok, reason) = harbor::judge(&r, rule);
                    let result = if ok {
                        GateResult::Passed
                    } else {
                        GateResult::Refused
                    };
                    verdict(
                        result,
                        reason,
                        serde_json::to_value(&r).unwrap_or(Value::Null),
                    )
                }
                Err(e) => verdict(
                    GateResult::Refused,
                    format!("stored Harbor report is unreadable: {e}"),
                    Value::Null,
                ),
            },
            Ok(None) => verdict(
                GateResult::Refused,
                format!("scan timed out: no Harbor scan result for {digest}"),
                json!({ "pending": true }),
            ),
            Err(e) => verdict(
                GateResult::Refused,
                format!("scan timed out: cannot read Harbor scan results: {e}"),
                json!({ "pending": true }),
            ),
        }
    }
}

/// The cosign keys of a rule's authorities (attestations are verified with
/// them).
fn signing_keys(rule: Option<&crate::config::SignatureRule>) -> Vec<keys::P256Key> {
    rule.map(|r| r.authorities.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|a| match a {
            Authority::Cosign { key_pem, .. } => keys::P256Key::from_pem(key_pem).ok(),
            Authority::Notation { .. } => None,
        })
        .collect()
}

/// A gate's name as a metric label (bounded).
pub fn gate_label(gate: &str) -> &'static str {
    match gate {
        "trusted_registry" => "trusted_registry",
        "signature" => "signature",
        "scan" => "scan",
        _ => "other",
    }
}

/// Gates that may pass later (registry outage, rate limit): retry.
#[derive(Debug, thiserror::Error)]
#[error("cannot check yet: {0}")]
pub struct GateError(#[from] pub RegistryError);

impl GateError {
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.0.retry_after()
    }
}

/// Which gates apply to an image for a purpose: the registry check under
/// `trusted_registries_only`, and its first matching rule if it applies.
pub fn applies(cfg: &Config, image: &ImageRef, purpose: Purpose) -> bool {
    untrusted(cfg, image) || rule_for(cfg, image, purpose).is_some()
}

fn untrusted(cfg: &Config, image: &ImageRef) -> bool {
    cfg.policy.trusted_registries_only && !cfg.registry(image.registry()).is_some_and(|r| r.trusted)
}

fn rule_for<'c>(cfg: &'c Config, image: &ImageRef, purpose: Purpose) -> Option<&'c PolicyRule> {
    let rule = cfg.policy.rule_for(&image.to_string())?;
    let applies = match purpose {
        Purpose::Deploy => rule.apply_to.deploy,
        Purpose::Cascade => rule.apply_to.cascade,
        Purpose::All => true,
    };
    applies.then_some(rule)
}

/// Runs the gates.
pub struct Gatekeeper {
    cfg: Arc<Config>,
    client: Arc<RegistryClient>,
    /// Where registry-sent scan reports (Harbor) are kept; without it a
    /// `source: harbor` rule refuses.
    reports: Option<crate::store::Store>,
}

impl Gatekeeper {
    pub fn new(cfg: Arc<Config>, client: Arc<RegistryClient>) -> Gatekeeper {
        Gatekeeper {
            cfg,
            client,
            reports: None,
        }
    }

    /// Reads Harbor's scan reports from `store`.
    pub fn with_reports(mut self, store: crate::store::Store) -> Gatekeeper {
        self.reports = Some(store);
        self
    }

    /// The gates for `image` (a tag reference) at `digest`, for `purpose`.
    #[tracing::instrument(skip_all, fields(image = %image, digest, purpose = ?purpose))]
    pub async fn evaluate(
        &self,
        image: &ImageRef,
        digest: &str,
        purpose: Purpose,
    ) -> Result<Evaluation, GateError> {
        let mut verdicts = Vec::new();
        if self.cfg.policy.trusted_registries_only {
            let trusted = !untrusted(&self.cfg, image);
            verdicts.push(Verdict {
                gate: "trusted_registry".into(),
                result: if trusted {
                    GateResult::Passed
                } else {
                    GateResult::Refused
                },
                reason: if trusted {
                    format!("{} is trusted", image.registry())
                } else {
                    format!(
                        "registry {} is not trusted (policy.trusted_registries_only)",
                        image.registry()
                    )
                },
                evidence: json!({ "registry": image.registry() }),
            });
        }
        let rule = rule_for(&self.cfg, image, purpose);
        if let Some(rule) = rule {
            let warn = rule.mode == GateMode::Warn;
            let soften = |mut v: Verdict| {
                if warn && v.result == GateResult::Refused {
                    v.result = GateResult::Warned;
                }
                v
            };
            if let Some(sig) = &rule.signatures {
                verdicts.push(soften(self.signatures(image, digest, sig).await?));
            }
            if let Some(s) = &rule.scan {
                verdicts.push(soften(
                    self.scan(image, digest, s, rule.signatures.as_ref()).await,
                ));
            }
        }
        Ok(Evaluation {
            image: image.to_string(),
            digest: digest.to_string(),
            purpose,
            rule: rule.map(|r| r.origin.clone()),
            verdicts,
        })
    }

    async fn signatures(
        &self,
        image: &ImageRef,
        digest: &str,
        rule: &crate::config::SignatureRule,
    ) -> Result<Verdict, GateError> {
        let mut verified = 0;
        // Every authority found no signature at all (as opposed to a bad one).
        let mut all_missing = true;
        let mut evidence = Vec::new();
        for a in &rule.authorities {
            let (ok, detail) = match a {
                Authority::Cosign { key_pem, .. } => match keys::P256Key::from_pem(key_pem) {
                    Err(e) => (false, format!("key: {e}")),
                    Ok(key) => {
                        // A classic signature (tag), else a sigstore bundle
                        // (OCI 1.1 referrer): cosign v2 and v3 signers.
                        let c = cosign::verify(&self.client, image, digest, &key).await?;
                        if c.verified {
                            (true, c.detail)
                        } else {
                            let b = bundle::verify(&self.client, image, digest, &key).await?;
                            all_missing &= c.missing && b.missing;
                            if b.verified {
                                (true, b.detail)
                            } else {
                                (false, format!("{}; {}", c.detail, b.detail))
                            }
                        }
                    }
                },
                Authority::Notation {
                    trust_store,
                    trusted_identities,
                    ..
                } => {
                    let c = notation::verify(
                        &self.client,
                        image,
                        digest,
                        trust_store,
                        trusted_identities,
                    )
                    .await?;
                    all_missing &= c.missing;
                    (c.verified, c.detail)
                }
            };
            verified += usize::from(ok);
            evidence.push(json!({ "authority": a.name(), "verified": ok, "detail": detail }));
        }
        let passed = verified >= rule.required;
        let reason = if passed {
            format!(
                "{verified} of {} authorities verified (required {})",
                rule.authorities.len(),
                rule.required
            )
        } else {
            let why: Vec<String> = evidence
                .iter()
                .filter(|e| e["verified"] == false)
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["authority"].as_str().unwrap_or(""),
                        e["detail"].as_str().unwrap_or("")
                    )
                })
                .collect();
            format!(
                "{verified} of {} required signatures verified: {}",
                rule.required,
                why.join("; ")
            )
        };
        Ok(Verdict {
            gate: "signature".into(),
            result: if passed {
                GateResult::Passed
            } else {
                GateResult::Refused
            },
            reason,
            evidence: json!({
                "required": rule.required,
                "verified": verified,
                "missing": !passed && all_missing,
                "authorities": evidence,
            }),
        })
    }

    async fn scan(
        &self,
        image: &ImageRef,
        digest: &str,
        rule: &crate::config::ScanRule,
        signatures: Option<&crate::config::SignatureRule>,
    ) -> Verdict {
        let refuse = |reason: String| Verdict {
            gate: "scan".into(),
            result: GateResult::Refused,
            reason,
            evidence: Value::Null,
        };
        if rule.source == crate::config::ScanSource::Harbor {
            return self.harbor_scan(image, digest, rule).await;
        }
        let (report, origin) = match rule.source {
            crate::config::ScanSource::Attestation => {
                let keys: Vec<keys::P256Key> = signing_keys(signatures);
                let keys: Vec<&keys::P256Key> = keys.iter().collect();
                match attest::vuln_report(&self.client, image, digest, &keys).await {
                    Ok(attest::Found::Report(r, from)) => (r, format!(" (attestation {from})")),
                    Ok(attest::Found::Invalid(why)) => {
                        return refuse(format!("no valid vulnerability attestation: {why}"));
                    }
                    Ok(attest::Found::Missing) => {
                        return Verdict {
                            gate: "scan".into(),
                            result: GateResult::Refused,
                            reason: format!(
                                "scan timed out: no vulnerability attestation for {digest}"
                            ),
                            evidence: json!({ "pending": true }),
                        };
                    }
                    // Registry trouble: the wait (and its retries) covers it.
                    Err(e) => {
                        return Verdict {
                            gate: "scan".into(),
                            result: GateResult::Refused,
                            reason: format!("scan timed out: cannot read attestations: {e}"),
                            evidence: json!({ "pending": true }),
                        };
                    }
                }
            }
            _ => {
                let Some(argv) = &self.cfg.policy.scan.command else {
                    return refuse("no policy.scan.command to scan with".into());
                };
                let reference = format!("{}/{}@{digest}", image.registry(), image.repository());
                let out = match scan::run(argv, &reference, self.cfg.policy.scan.timeout).await {
                    Ok(o) => o,
                    Err(e) => return refuse(e),
                };
                match scan::parse(&out) {
                    Ok(r) => (r, String::new()),
                    Err(e) => return refuse(e),
                }
            }
        };
        let j = scan::judge(&report, rule);
        let counts: Vec<String> = j.counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let counts = if counts.is_empty() {
            "no findings".to_string()
        } else {
            counts.join(", ")
        };
        let reason = if j.passed {
            format!(
                "{}{origin} found {counts}; none over {}",
                j.scanner,
                rule.max_severity.as_str()
            )
        } else {
            format!(
                "{}{origin} found {} over {}{} ({counts}); worst: {}",
                j.scanner,
                j.over_threshold,
                rule.max_severity.as_str(),
                if rule.ignore_unfixed {
                    " with a fix"
                } else {
                    ""
                },
                j.top
                    .first()
                    .map(|f| format!("{} in {}", f.id, f.package))
                    .unwrap_or_default()
            )
        };
        Verdict {
            gate: "scan".into(),
            result: if j.passed {
                GateResult::Passed
            } else {
                GateResult::Refused
            },
            reason,
            evidence: serde_json::to_value(&j).unwrap_or(Value::Null),
        }
    }
}
