//! A cosign signer that follows `specs/SIGNATURE_SPEC.md`: an ECDSA P-256
//! key pair (ring), simple-signing payloads pushed as layers of the
//! manifest at tag `sha256-<hex>.sig`, each layer's base64 DER signature in
//! `dev.cosignproject.cosign/signature`.

use base64::Engine as _;
use lineaged::policy::cosign::{SIGNATURE_ANNOTATION, SIMPLESIGNING, payload, signature_tag};
use lineaged::policy::keys::P256Key;
use lineaged::registry::ImageRef;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;

use super::registry::TestRegistry;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub struct Signer {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Default for Signer {
    fn default() -> Self {
        Self::new()
    }
}

impl Signer {
    pub fn new() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Signer { pair, rng }
    }

    /// The public key as `cosign generate-key-pair` writes `cosign.pub`.
    pub fn public_pem(&self) -> String {
        P256Key::from_point(self.pair.public_key().as_ref())
            .unwrap()
            .to_pem()
    }

    pub fn sign_bytes(&self, msg: &[u8]) -> String {
        let sig = self.pair.sign(&self.rng, msg).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }
}

/// One signature layer: the payload and the signature to annotate it with.
pub struct Layer {
    pub payload: Vec<u8>,
    pub signature: String,
}

/// The layer `signer` makes for `image@digest`, as cosign would.
pub fn layer(signer: &Signer, image: &ImageRef, digest: &str) -> Layer {
    let p = payload(image, digest);
    Layer {
        signature: signer.sign_bytes(&p),
        payload: p,
    }
}

/// Pushes the signature manifest of `digest` in `repo` with these layers.
pub async fn push_signatures(
    reg: &TestRegistry,
    repo: &str,
    digest: &str,
    layers: &[Layer],
) -> String {
    let (cdigest, csize) = reg.push_blob(repo, b"{}").await;
    let mut descs = Vec::new();
    for l in layers {
        let (d, size) = reg.push_blob(repo, &l.payload).await;
        descs.push(json!({
            "mediaType": SIMPLESIGNING, "size": size, "digest": d,
            "annotations": { SIGNATURE_ANNOTATION: l.signature },
        }));
    }
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "size": csize, "digest": cdigest },
        "layers": descs,
    });
    reg.push_manifest(
        repo,
        &signature_tag(digest),
        OCI_MANIFEST,
        &serde_json::to_vec(&m).unwrap(),
    )
    .await
}

/// A sigstore bundle (v0.3) with a DSSE envelope over an in-toto statement
/// naming `subject_digest`, signed by `signer` (key-signed, no tlog entry:
/// what `cosign sign --new-bundle-format --key` makes offline).
pub fn bundle(signer: &Signer, repo_ref: &str, subject_digest: &str) -> Vec<u8> {
    use lineaged::policy::bundle::{IN_TOTO, pae};
    let hex = subject_digest.trim_start_matches("sha256:");
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{ "name": repo_ref, "digest": { "sha256": hex } }],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    });
    let payload = serde_json::to_vec(&statement).unwrap();
    let sig = signer.sign_bytes(&pae(IN_TOTO, &payload));
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::to_vec(&json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": { "publicKey": { "hint": "" } },
        "dsseEnvelope": {
            "payload": b64.encode(&payload),
            "payloadType": IN_TOTO,
            "signatures": [{ "sig": sig, "keyid": "" }],
        },
    }))
    .unwrap()
}

/// Attaches `bundle` to `subject` (a manifest of `subject_size` bytes) as an
/// OCI 1.1 referrer, and lists it in the referrers tag fallback index
/// (`sha256-<hex>`), as clients do on registries without the referrers API.
pub async fn push_bundle(
    reg: &TestRegistry,
    repo: &str,
    subject: &str,
    subject_size: usize,
    bundle: &[u8],
) -> String {
    use lineaged::policy::bundle::BUNDLE_TYPE;
    let (empty, esize) = reg.push_blob(repo, b"{}").await;
    let (bdigest, bsize) = reg.push_blob(repo, bundle).await;
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": BUNDLE_TYPE,
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "size": esize, "digest": empty },
        "layers": [{ "mediaType": BUNDLE_TYPE, "size": bsize, "digest": bdigest }],
        "subject": { "mediaType": OCI_MANIFEST, "size": subject_size, "digest": subject },
    });
    let body = serde_json::to_vec(&m).unwrap();
    let mdigest = format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(&body));
    reg.push_manifest(repo, &mdigest, OCI_MANIFEST, &body).await;
    let index = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{ "mediaType": OCI_MANIFEST, "size": body.len(), "digest": mdigest, "artifactType": BUNDLE_TYPE }],
    });
    reg.push_manifest(
        repo,
        &lineaged::policy::referrers::fallback_tag(subject),
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&index).unwrap(),
    )
    .await;
    mdigest
}

/// A cosign vulnerability attestation (DSSE over an in-toto statement with
/// predicate `https://cosign.sigstore.dev/attestation/vuln/v1` whose
/// `scanner.result` is `report`), signed by `signer`: the envelope JSON.
pub fn vuln_attestation(
    signer: &Signer,
    repo_ref: &str,
    digest: &str,
    report: serde_json::Value,
) -> Vec<u8> {
    use lineaged::policy::bundle::{IN_TOTO, pae};
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{ "name": repo_ref, "digest": { "sha256": digest.trim_start_matches("sha256:") } }],
        "predicateType": lineaged::policy::attest::VULN_PREDICATE,
        "predicate": {
            "invocation": { "parameters": null, "uri": "", "event_id": "", "builder.id": "" },
            "scanner": { "uri": "pkg:github/aquasecurity/trivy@v0.50.0", "version": "v0.50.0", "result": report },
            "metadata": { "scanStartedOn": "2026-11-20T10:00:00Z", "scanFinishedOn": "2026-11-20T10:00:09Z" },
        },
    });
    let payload = serde_json::to_vec(&statement).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::to_vec(&json!({
        "payloadType": IN_TOTO,
        "payload": b64.encode(&payload),
        "signatures": [{ "keyid": "", "sig": signer.sign_bytes(&pae(IN_TOTO, &payload)) }],
    }))
    .unwrap()
}

/// Pushes attestation envelopes as the manifest at tag `sha256-<hex>.att`.
pub async fn push_attestations(
    reg: &TestRegistry,
    repo: &str,
    digest: &str,
    envelopes: &[Vec<u8>],
) {
    use lineaged::policy::attest::{DSSE_LAYER, attestation_tag};
    let (cdigest, csize) = reg.push_blob(repo, b"{}").await;
    let mut layers = Vec::new();
    for e in envelopes {
        let (d, size) = reg.push_blob(repo, e).await;
        layers.push(json!({ "mediaType": DSSE_LAYER, "size": size, "digest": d,
            "annotations": { "predicateType": lineaged::policy::attest::VULN_PREDICATE } }));
    }
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "size": csize, "digest": cdigest },
        "layers": layers,
    });
    reg.push_manifest(
        repo,
        &attestation_tag(digest),
        OCI_MANIFEST,
        &serde_json::to_vec(&m).unwrap(),
    )
    .await;
}
