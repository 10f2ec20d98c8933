//! Notary Project (Notation) signatures: an OCI 1.1 referrer of artifact
//! type `application/vnd.cncf.notary.signature` whose layer is a JWS
//! envelope (`application/jose+json`, JSON serialization) with the signing
//! certificate chain in the unprotected header's `x5c`. Verified offline:
//! the chain to a CA in the trust store with the code-signing extended key
//! usage (rustls-webpki), the signature over `protected.payload` with the
//! leaf's key (PS256/384/512, ES256/384), `signingScheme` `notary.x509`,
//! `expiry`, the payload's `targetArtifact.digest`, and the leaf's subject
//! against `trusted_identities`. COSE envelopes are refused, not skipped.

use std::path::Path;

use base64::Engine as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::Value;
use webpki::{EndEntityCert, KeyUsage};

use super::cosign::Check;
use super::referrers;
use crate::registry::{ImageRef, RegistryClient, RegistryError};

pub const NOTARY_TYPE: &str = "application/vnd.cncf.notary.signature";
pub const JWS: &str = "application/jose+json";
pub const COSE: &str = "application/cose";
pub const PAYLOAD_TYPE: &str = "application/vnd.cncf.notary.payload.v1+json";
/// id-kp-codeSigning, 1.3.6.1.5.5.7.3.3.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
const MAX_ENVELOPE: usize = 256 * 1024;

/// Algorithms a certificate chain may be signed with.
static CHAIN_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// The CA certificates of a trust store directory (PEM or DER files, up to
/// three levels deep, as Notation lays them out: `x509/ca/<name>/*.crt`).
pub fn load_trust_store(dir: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    fn walk(
        dir: &Path,
        depth: usize,
        out: &mut Vec<CertificateDer<'static>>,
    ) -> Result<(), String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && depth < 3 {
                walk(&p, depth + 1, out)?;
            } else if p.is_file() {
                let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                if bytes.len() > 1024 * 1024 {
                    continue;
                }
                let text = String::from_utf8_lossy(&bytes);
                if text.contains("-----BEGIN CERTIFICATE-----") {
                    for block in text.split("-----BEGIN CERTIFICATE-----").skip(1) {
                        let body: String = block
                            .split("-----END CERTIFICATE-----")
                            .next()
                            .unwrap_or("")
                            .split_whitespace()
                            .collect();
                        let der = base64::engine::general_purpose::STANDARD
                            .decode(body)
                            .map_err(|e| format!("{}: not base64: {e}", p.display()))?;
                        out.push(CertificateDer::from(der));
                    }
                } else if bytes.first() == Some(&0x30) {
                    out.push(CertificateDer::from(bytes));
                }
            }
        }
        Ok(())
    }
    // A Notation trust store root: only its `x509/ca` stores vouch for
    // code signing (not `x509/tsa` or `x509/signingAuthority`).
    let ca = dir.join("x509").join("ca");
    let dir = if ca.is_dir() { ca.as_path() } else { dir };
    let mut out = Vec::new();
    walk(dir, 0, &mut out)?;
    if out.is_empty() {
        return Err(format!(
            "trust store {} holds no certificates",
            dir.display()
        ));
    }
    Ok(out)
}

/// Checks the image's Notation signatures against a trust store.
pub async fn verify(
    client: &RegistryClient,
    image: &ImageRef,
    digest: &str,
    trust_store: &Path,
    identities: &[String],
) -> Result<Check, RegistryError> {
    let no = |detail: String, missing: bool| Check {
        verified: false,
        detail,
        layers: 0,
        missing,
    };
    let cas = match load_trust_store(trust_store) {
        Ok(c) => c,
        Err(e) => return Ok(no(format!("trust store: {e}"), false)),
    };
    let found = match referrers::list(client, image, digest, NOTARY_TYPE).await {
        Ok(f) => f,
        Err(e) if e.retryable() => return Err(e),
        Err(e) => return Ok(no(format!("referrers: {e}"), false)),
    };
    if found.is_empty() {
        return Ok(no("no Notation signature referrer".into(), true));
    }
    let mut why = Vec::new();
    for (i, d) in found.iter().enumerate() {
        let env = match referrers::layer_of(client, image, d, &[JWS, COSE], MAX_ENVELOPE).await? {
            Ok((media, _)) if media == COSE => {
                why.push(format!(
                    "signature {i}: COSE envelopes are not supported yet (JWS only)"
                ));
                continue;
            }
            Ok((_, b)) => b,
            Err(e) => {
                why.push(format!("signature {i}: {e}"));
                continue;
            }
        };
        match check_jws(&env, digest, &cas, identities, UnixTime::now()) {
            Ok(subject) => {
                return Ok(Check {
                    verified: true,
                    detail: format!("Notation signature {} by {subject} verifies", d.digest),
                    layers: found.len(),
                    missing: false,
                });
            }
            Err(e) => why.push(format!("signature {i}: {e}")),
        }
    }
    Ok(Check {
        verified: false,
        detail: why.join("; "),
        layers: found.len(),
        missing: false,
    })
}

fn b64url(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("not base64url: {e}"))
}

/// Verifies one JWS envelope; returns the signer's subject.
pub fn check_jws(
    env: &[u8],
    digest: &str,
    cas: &[CertificateDer<'_>],
    identities: &[String],
    now: UnixTime,
) -> Result<String, String> {
    let v: Value = serde_json::from_slice(env).map_err(|e| format!("envelope is not JSON: {e}"))?;
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .ok_or(format!("envelope has no `{k}`"))
    };
    let (protected_b64, payload_b64, sig_b64) =
        (text("protected")?, text("payload")?, text("signature")?);
    let header: Value = serde_json::from_slice(&b64url(protected_b64)?)
        .map_err(|e| format!("protected header is not JSON: {e}"))?;
    let h = |k: &str| header.get(k).and_then(Value::as_str);
    // The chain: leaf first, to a CA of the trust store, for code signing.
    let x5c: Vec<CertificateDer<'static>> = v
        .pointer("/header/x5c")
        .and_then(Value::as_array)
        .ok_or("no x5c certificate chain in the unprotected header")?
        .iter()
        .map(|c| {
            c.as_str()
                .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
                .map(CertificateDer::from)
                .ok_or("an x5c entry is not base64 DER".to_string())
        })
        .collect::<Result<_, _>>()?;
    let (leaf, intermediates) = x5c.split_first().ok_or("x5c is empty")?;
    let anchors: Vec<_> = cas
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect();
    let ee = EndEntityCert::try_from(leaf).map_err(|e| format!("leaf certificate: {e}"))?;
    ee.verify_for_usage(
        CHAIN_ALGS,
        &anchors,
        intermediates,
        now,
        KeyUsage::required(CODE_SIGNING),
        None,
        None,
    )
    .map_err(|e| {
        format!("certificate chain does not verify to the trust store for code signing: {e}")
    })?;
    let input = format!("{protected_b64}.{payload_b64}");
    let sig = b64url(sig_b64)?;
    let alg = h("alg").unwrap_or("");
    let ok = match alg {
        "PS256" => ee
            .verify_signature(
                webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
                input.as_bytes(),
                &sig,
            )
            .is_ok(),
        "PS384" => ee
            .verify_signature(
                webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
                input.as_bytes(),
                &sig,
            )
            .is_ok(),
        "PS512" => ee
            .verify_signature(
                webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
                input.as_bytes(),
                &sig,
            )
            .is_ok(),
        "ES256" | "ES384" => {
            // JWS carries r||s; ring verifies that form against the point.
            let spki = ee.subject_public_key_info();
            super::keys::verify_ec_fixed(spki.as_ref(), alg, input.as_bytes(), &sig)?
        }
        other => {
            return Err(format!(
                "algorithm {other:?} is not one of PS256, PS384, PS512, ES256, ES384"
            ));
        }
    };
    if !ok {
        return Err("the JWS signature does not verify with the leaf certificate's key".into());
    }
    // Only now, with the signature good, do the signed headers count.
    match h("io.cncf.notary.signingScheme") {
        Some("notary.x509") => {}
        other => return Err(format!("signing scheme {other:?} is not notary.x509")),
    }
    if h("cty") != Some(PAYLOAD_TYPE) {
        return Err(format!("content type {:?} is not {PAYLOAD_TYPE}", h("cty")));
    }
    // RFC 7515: a critical header this verifier does not understand
    // refuses the signature.
    const UNDERSTOOD: [&str; 3] = [
        "io.cncf.notary.signingScheme",
        "io.cncf.notary.expiry",
        "io.cncf.notary.authenticSigningTime",
    ];
    let crit = header
        .get("crit")
        .and_then(Value::as_array)
        .ok_or("the protected header has no `crit` list")?;
    let mut listed = Vec::new();
    for c in crit {
        let c = c.as_str().ok_or("`crit` holds a non-string")?;
        if !UNDERSTOOD.contains(&c) {
            return Err(format!("unknown critical header `{c}`"));
        }
        listed.push(c);
    }
    if !listed.contains(&"io.cncf.notary.signingScheme") {
        return Err("`crit` does not name io.cncf.notary.signingScheme".into());
    }
    if let Some(exp) = header.get("io.cncf.notary.expiry") {
        let exp = exp
            .as_str()
            .ok_or("io.cncf.notary.expiry is not a string")?;
        if !listed.contains(&"io.cncf.notary.expiry") {
            return Err("io.cncf.notary.expiry is not listed in `crit`".into());
        }
        let t = chrono::DateTime::parse_from_rfc3339(exp)
            .map_err(|e| format!("expiry `{exp}`: {e}"))?;
        if t.timestamp() <= now.as_secs() as i64 {
            return Err(format!("the signature expired at {exp}"));
        }
    }
    let signed_at = h("io.cncf.notary.signingTime").ok_or("no io.cncf.notary.signingTime")?;
    chrono::DateTime::parse_from_rfc3339(signed_at)
        .map_err(|e| format!("signingTime `{signed_at}`: {e}"))?;
    let payload: Value = serde_json::from_slice(&b64url(payload_b64)?)
        .map_err(|e| format!("payload is not JSON: {e}"))?;
    let target = payload
        .pointer("/targetArtifact/digest")
        .and_then(Value::as_str);
    if target != Some(digest) {
        return Err(format!(
            "the payload signs {}, not {digest}",
            target.unwrap_or("no digest")
        ));
    }
    let subject = subject_of(leaf)?;
    if !identity_trusted(&subject, identities) {
        return Err(format!(
            "signer `{}` is not among trusted_identities",
            render(&subject)
        ));
    }
    Ok(render(&subject))
}

/// The leaf's subject as (attribute, value) pairs, e.g. ("CN", "builder").
fn subject_of(cert: &CertificateDer<'_>) -> Result<Vec<(String, String)>, String> {
    use x509_cert::der::Decode;
    let c = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("leaf certificate: {e}"))?;
    let mut out = Vec::new();
    for rdn in c.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            // `CN=builder`, as RFC 4514 prints one attribute.
            let s = atv.to_string();
            if let Some((k, v)) = s.split_once('=') {
                out.push((k.trim().to_ascii_uppercase(), v.trim().to_string()));
            }
        }
    }
    Ok(out)
}

fn render(subject: &[(String, String)]) -> String {
    subject
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `*`, or `x509.subject: K=V, K=V…` naming exactly the subject's
/// attributes (in any order).
fn identity_trusted(subject: &[(String, String)], identities: &[String]) -> bool {
    let mut have: Vec<(String, String)> = subject.to_vec();
    have.sort();
    identities.iter().any(|id| {
        if id.trim() == "*" {
            return true;
        }
        let Some(dn) = id.trim().strip_prefix("x509.subject:") else {
            return false;
        };
        let mut want: Vec<(String, String)> = dn
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_uppercase(), v.trim().to_string()))
            .collect();
        want.sort();
        want == have
    })
}
