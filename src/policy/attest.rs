//! cosign vulnerability attestations (predicate
//! `https://cosign.sigstore.dev/attestation/vuln/v1`, what `cosign attest
//! --type vuln` makes): a DSSE envelope over an in-toto statement whose
//! `predicate.scanner.result` is the scanner's own report (Trivy or Grype
//! JSON). Found as a layer of the manifest at tag `sha256-<hex>.att`
//! (media type `application/vnd.dsse.envelope.v1+json`) or as a sigstore
//! bundle referrer; verified with the rule's cosign keys like signatures.

use serde_json::Value;

use super::bundle::{BUNDLE_TYPE, bundle_statement, dsse_statement};
use super::keys::P256Key;
use super::{referrers, scan};
use crate::registry::manifest::Manifest;
use crate::registry::{ImageRef, RegistryClient, RegistryError, validate_digest};

pub const VULN_PREDICATE: &str = "https://cosign.sigstore.dev/attestation/vuln/v1";
pub const DSSE_LAYER: &str = "application/vnd.dsse.envelope.v1+json";
/// An attestation carries a whole scan report.
pub const MAX_ATTESTATION: usize = 8 * 1024 * 1024;
const MAX_MANIFEST: usize = 256 * 1024;
const MAX_LAYERS: usize = 32;

/// The tag cosign stores attestations under.
pub fn attestation_tag(digest: &str) -> String {
    format!("{}.att", digest.replacen(':', "-", 1))
}

/// What looking for a vulnerability attestation came to.
#[derive(Debug)]
pub enum Found {
    /// A verified attestation's report, and where it came from.
    Report(scan::Report, String),
    /// Attestations exist but none verified or parsed: why.
    Invalid(String),
    /// None at all (yet).
    Missing,
}

/// The statement's scan report, if it is a vulnerability attestation.
fn report_of(statement: &Value) -> Result<scan::Report, String> {
    let t = statement
        .get("predicateType")
        .and_then(Value::as_str)
        .unwrap_or("");
    if t != VULN_PREDICATE {
        return Err(format!(
            "predicate {t:?} is not a vulnerability attestation"
        ));
    }
    let result = statement
        .pointer("/predicate/scanner/result")
        .ok_or("the attestation has no predicate.scanner.result")?;
    scan::parse(&serde_json::to_vec(result).unwrap_or_default())
}

pub async fn vuln_report(
    client: &RegistryClient,
    image: &ImageRef,
    digest: &str,
    keys: &[&P256Key],
) -> Result<Found, RegistryError> {
    let mut why = Vec::new();
    let mut seen = 0;
    let tag = attestation_tag(digest);
    match client.manifest_limited(image, &tag, MAX_MANIFEST).await {
        Err(RegistryError::NotFound { .. }) => {}
        Err(e) if e.retryable() => return Err(e),
        Err(e) => why.push(format!("{tag}: {e}")),
        Ok((body, _, _)) => match serde_json::from_slice::<Manifest>(&body) {
            Err(e) => why.push(format!("{tag} is not JSON: {e}")),
            Ok(m) => {
                // cosign appends: the newest attestation is the last layer.
                for (i, l) in m
                    .layers
                    .iter()
                    .filter(|l| l.media_type == DSSE_LAYER)
                    .rev()
                    .take(MAX_LAYERS)
                    .enumerate()
                {
                    seen += 1;
                    if validate_digest(&l.digest).is_err() || l.size as usize > MAX_ATTESTATION {
                        why.push(format!("{tag} layer {i}: invalid digest or too large"));
                        continue;
                    }
                    let blob = match client.blob(image, &l.digest, MAX_ATTESTATION).await {
                        Ok(b) => b,
                        Err(e) if e.retryable() => return Err(e),
                        Err(e) => {
                            why.push(format!("{tag} layer {i}: {e}"));
                            continue;
                        }
                    };
                    let statement = serde_json::from_slice::<Value>(&blob)
                        .map_err(|e| format!("envelope is not JSON: {e}"))
                        .and_then(|env| dsse_statement(&env, digest, keys));
                    match statement {
                        // Other attestations (SBOM, provenance) share the tag.
                        Ok(st)
                            if st.get("predicateType").and_then(Value::as_str)
                                != Some(VULN_PREDICATE) =>
                        {
                            seen -= 1;
                        }
                        Ok(st) => match report_of(&st) {
                            Ok(r) => {
                                return Ok(Found::Report(
                                    r,
                                    format!("{tag} layer {i} from the end"),
                                ));
                            }
                            Err(e) => why.push(format!("{tag} layer {i} from the end: {e}")),
                        },
                        Err(e) => why.push(format!("{tag} layer {i} from the end: {e}")),
                    }
                }
            }
        },
    }
    let bundles = match referrers::list(client, image, digest, BUNDLE_TYPE).await {
        Ok(b) => b,
        Err(e) if e.retryable() => return Err(e),
        Err(e) => {
            why.push(format!("referrers: {e}"));
            Vec::new()
        }
    };
    for (i, d) in bundles.iter().enumerate() {
        let blob =
            match referrers::layer_of(client, image, d, &[BUNDLE_TYPE], MAX_ATTESTATION).await? {
                Ok((_, b)) => b,
                Err(e) => {
                    why.push(format!("bundle {i}: {e}"));
                    continue;
                }
            };
        match bundle_statement(&blob, digest, keys) {
            // Signature bundles are not vulnerability attestations: skip them.
            Ok(st) if st.get("predicateType").and_then(Value::as_str) != Some(VULN_PREDICATE) => {}
            Ok(st) => {
                seen += 1;
                match report_of(&st) {
                    Ok(r) => return Ok(Found::Report(r, format!("bundle {}", d.digest))),
                    Err(e) => why.push(format!("bundle {i}: {e}")),
                }
            }
            Err(e) => {
                seen += 1;
                why.push(format!("bundle {i}: {e}"));
            }
        }
    }
    Ok(if seen == 0 && why.is_empty() {
        Found::Missing
    } else {
        Found::Invalid(why.join("; "))
    })
}
