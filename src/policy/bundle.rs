//! Sigstore bundles (cosign v3, `specs/BUNDLE_SPEC.md`) attached as OCI 1.1
//! referrers of artifact type `application/vnd.dev.sigstore.bundle.v0.3+json`:
//! the bundle's DSSE envelope (payload type `application/vnd.in-toto+json`)
//! is verified over the DSSE pre-authentication encoding with the
//! configured key, and the in-toto statement's `subject[].digest.sha256`
//! must be the image's digest. Key-signed bundles without a transparency
//! log entry are accepted (offline).

use base64::Engine as _;
use serde_json::Value;

use super::cosign::Check;
use super::keys::P256Key;
use super::referrers;
use crate::registry::{ImageRef, RegistryClient, RegistryError};

pub const BUNDLE_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// A bundle is a few KiB.
pub const MAX_BUNDLE: usize = 256 * 1024;

/// The DSSE pre-authentication encoding:
/// `"DSSEv1" SP len(type) SP type SP len(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Checks the image's bundle referrers against `key`.
pub async fn verify(
    client: &RegistryClient,
    image: &ImageRef,
    digest: &str,
    key: &P256Key,
) -> Result<Check, RegistryError> {
    let found = match referrers::list(client, image, digest, BUNDLE_TYPE).await {
        Ok(f) => f,
        Err(e) if e.retryable() => return Err(e),
        Err(e) => {
            return Ok(Check {
                verified: false,
                detail: format!("referrers: {e}"),
                layers: 0,
                missing: false,
            });
        }
    };
    if found.is_empty() {
        return Ok(Check {
            verified: false,
            detail: "no sigstore bundle referrer".into(),
            layers: 0,
            missing: true,
        });
    }
    let mut why = Vec::new();
    for (i, d) in found.iter().enumerate() {
        let bundle = match referrers::layer_of(client, image, d, &[BUNDLE_TYPE], MAX_BUNDLE).await?
        {
            Ok((_, b)) => b,
            Err(e) => {
                why.push(format!("referrer {i}: {e}"));
                continue;
            }
        };
        match check_bundle(&bundle, digest, key) {
            Ok(()) => {
                return Ok(Check {
                    verified: true,
                    detail: format!("sigstore bundle {} verifies", d.digest),
                    layers: found.len(),
                    missing: false,
                });
            }
            Err(e) => why.push(format!("referrer {i}: {e}")),
        }
    }
    Ok(Check {
        verified: false,
        detail: why.join("; "),
        layers: found.len(),
        missing: false,
    })
}

/// The in-toto predicate of an image signature made by cosign v3.
pub const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// Verifies one bundle document as a signature of `digest`: any other
/// statement the key signed (an SBOM, a scan) is not a signature.
pub fn check_bundle(bundle: &[u8], digest: &str, key: &P256Key) -> Result<(), String> {
    let st = bundle_statement(bundle, digest, &[key])?;
    let t = st
        .get("predicateType")
        .and_then(Value::as_str)
        .unwrap_or("");
    if t != SIGN_PREDICATE {
        return Err(format!(
            "the bundle attests {t:?}, not an image signature ({SIGN_PREDICATE})"
        ));
    }
    Ok(())
}

/// The in-toto statement of a bundle whose DSSE envelope one of `keys`
/// signed and whose subjects include `digest`.
pub fn bundle_statement(bundle: &[u8], digest: &str, keys: &[&P256Key]) -> Result<Value, String> {
    let v: Value =
        serde_json::from_slice(bundle).map_err(|e| format!("bundle is not JSON: {e}"))?;
    let media = v.get("mediaType").and_then(Value::as_str).unwrap_or("");
    if !media.starts_with("application/vnd.dev.sigstore.bundle") {
        return Err(format!("not a sigstore bundle (mediaType {media:?})"));
    }
    let Some(env) = v.get("dsseEnvelope") else {
        return Err(
            "the bundle has no DSSE envelope (message-signature bundles are not supported)".into(),
        );
    };
    dsse_statement(env, digest, keys)
}

/// Verifies a DSSE envelope (`{payloadType, payload, signatures: [{sig}]}`,
/// base64) over its pre-authentication encoding with any of `keys`, and
/// returns its in-toto statement when the subjects include `digest`.
pub fn dsse_statement(env: &Value, digest: &str, keys: &[&P256Key]) -> Result<Value, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload_type = env.get("payloadType").and_then(Value::as_str).unwrap_or("");
    if payload_type != IN_TOTO {
        return Err(format!(
            "DSSE payload type is {payload_type:?}, not {IN_TOTO}"
        ));
    }
    let payload = env
        .get("payload")
        .and_then(Value::as_str)
        .and_then(|p| b64.decode(p).ok())
        .ok_or("DSSE payload is missing or not base64")?;
    let message = pae(payload_type, &payload);
    let sigs: Vec<Vec<u8>> = env
        .get("signatures")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.get("sig").and_then(Value::as_str))
                .filter_map(|s| b64.decode(s).ok())
                .collect()
        })
        .unwrap_or_default();
    if sigs.is_empty() {
        return Err("DSSE envelope has no signatures".into());
    }
    if !sigs
        .iter()
        .any(|s| keys.iter().any(|k| k.verify(&message, s)))
    {
        return Err("DSSE signature does not verify with this key".into());
    }
    let statement: Value = serde_json::from_slice(&payload)
        .map_err(|e| format!("in-toto statement is not JSON: {e}"))?;
    let want = digest.strip_prefix("sha256:").unwrap_or(digest);
    let subjects = statement.get("subject").and_then(Value::as_array);
    let names = subjects.is_some_and(|s| {
        s.iter()
            .any(|s| s.pointer("/digest/sha256").and_then(Value::as_str) == Some(want))
    });
    if !names {
        return Err(format!(
            "the in-toto statement's subjects do not include {digest}"
        ));
    }
    Ok(statement)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }
}
