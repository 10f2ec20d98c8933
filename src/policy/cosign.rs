//! cosign "classic" signatures (cosign `specs/SIGNATURE_SPEC.md`): the
//! manifest at tag `sha256-<hex>.sig` in the image's repository; each layer
//! of media type `application/vnd.dev.cosign.simplesigning.v1+json` is a
//! simple-signing payload whose base64 DER ECDSA signature is the layer's
//! `dev.cosignproject.cosign/signature` annotation. Offline: no Rekor, no
//! Fulcio; the key is the configured one.

use base64::Engine as _;
use serde_json::{Value, json};

use super::keys::P256Key;
use crate::registry::manifest::Manifest;
use crate::registry::{ImageRef, RegistryClient, RegistryError};

pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// A signature manifest is a few KiB; refuse anything near this.
pub const MAX_MANIFEST: usize = 256 * 1024;
/// A simple-signing payload is a few hundred bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Layers looked at per signature manifest.
pub const MAX_LAYERS: usize = 32;

/// The tag cosign stores an image's signatures under.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// What checking one key against an image came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub verified: bool,
    /// Why not (or which layer verified).
    pub detail: String,
    /// Signature layers looked at.
    pub layers: usize,
    /// There was no signature at all (as opposed to a bad one).
    pub missing: bool,
}

/// Checks the image's cosign signatures against `key`. Registry trouble
/// that may pass (outage, rate limit) is an `Err` to retry; anything else
/// is a `Check` that did not verify, with the reason.
pub async fn verify(
    client: &RegistryClient,
    image: &ImageRef,
    digest: &str,
    key: &P256Key,
) -> Result<Check, RegistryError> {
    let no = |detail: String, layers: usize| Check {
        verified: false,
        detail,
        layers,
        missing: false,
    };
    let tag = signature_tag(digest);
    let (body, _, _) = match client.manifest_limited(image, &tag, MAX_MANIFEST).await {
        Ok(m) => m,
        Err(RegistryError::NotFound { .. }) => {
            return Ok(Check {
                missing: true,
                ..no(format!("no cosign signature (no {tag} tag)"), 0)
            });
        }
        Err(e) if e.retryable() => return Err(e),
        Err(e) => return Ok(no(format!("signature manifest {tag}: {e}"), 0)),
    };
    let m: Manifest = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return Ok(no(format!("signature manifest {tag} is not JSON: {e}"), 0)),
    };
    let layers: Vec<_> = m
        .layers
        .iter()
        .filter(|l| l.media_type == SIMPLESIGNING)
        .take(MAX_LAYERS)
        .collect();
    if layers.is_empty() {
        return Ok(no(format!("{tag} has no simple-signing layers"), 0));
    }
    let mut why = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let Some(sig) = l.annotations.get(SIGNATURE_ANNOTATION) else {
            why.push(format!("layer {i}: no {SIGNATURE_ANNOTATION} annotation"));
            continue;
        };
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig.trim()) else {
            why.push(format!("layer {i}: signature is not base64"));
            continue;
        };
        if crate::registry::validate_digest(&l.digest).is_err() {
            why.push(format!(
                "layer {i}: invalid digest `{}`",
                l.digest.chars().take(80).collect::<String>()
            ));
            continue;
        }
        if l.size as usize > MAX_PAYLOAD {
            why.push(format!(
                "layer {i}: payload of {} bytes is too large",
                l.size
            ));
            continue;
        }
        let payload = match client.blob(image, &l.digest, MAX_PAYLOAD).await {
            Ok(p) => p,
            Err(e) if e.retryable() => return Err(e),
            Err(e) => {
                why.push(format!("layer {i}: {e}"));
                continue;
            }
        };
        match check_payload(&payload, digest) {
            Err(e) => why.push(format!("layer {i}: {e}")),
            Ok(()) if key.verify(&payload, &sig) => {
                return Ok(Check {
                    verified: true,
                    detail: format!("layer {i} of {tag} verifies"),
                    layers: layers.len(),
                    missing: false,
                });
            }
            Ok(()) => why.push(format!(
                "layer {i}: signature does not verify with this key"
            )),
        }
    }
    Ok(no(why.join("; "), layers.len()))
}

/// The payload must be a cosign container image signature for `digest`.
pub fn check_payload(payload: &[u8], digest: &str) -> Result<(), String> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let kind = v.pointer("/critical/type").and_then(Value::as_str);
    if kind != Some(PAYLOAD_TYPE) {
        return Err(format!("payload type is {kind:?}, not `{PAYLOAD_TYPE}`"));
    }
    let signed = v
        .pointer("/critical/image/docker-manifest-digest")
        .and_then(Value::as_str);
    if signed != Some(digest) {
        return Err(format!(
            "payload signs {}, not {digest}",
            signed.unwrap_or("no digest")
        ));
    }
    Ok(())
}

/// A simple-signing payload for `digest` (what `cosign sign` writes), for
/// signers in tests and tools.
pub fn payload(image: &ImageRef, digest: &str) -> Vec<u8> {
    let v = json!({
        "critical": {
            "identity": { "docker-reference": format!("{}/{}", image.registry(), image.repository()) },
            "image": { "docker-manifest-digest": digest },
            "type": PAYLOAD_TYPE,
        },
        "optional": null,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_checks() {
        let d = format!("sha256:{}", "a".repeat(64));
        let img = ImageRef::parse("registry.example.com/app:1").unwrap();
        assert_eq!(check_payload(&payload(&img, &d), &d), Ok(()));
        let other = format!("sha256:{}", "b".repeat(64));
        assert!(
            check_payload(&payload(&img, &d), &other)
                .unwrap_err()
                .contains("signs sha256:aaa")
        );
        assert!(check_payload(b"{]", &d).unwrap_err().contains("not JSON"));
        assert!(
            check_payload(br#"{"critical":{"type":"x"}}"#, &d)
                .unwrap_err()
                .contains("payload type")
        );
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", "a".repeat(64)));
    }
}
