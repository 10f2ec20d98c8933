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
    push_referrer(
        reg,
        repo,
        subject,
        subject_size,
        BUNDLE_TYPE,
        BUNDLE_TYPE,
        bundle,
    )
    .await
}

/// Pushes `blob` as the one layer (`media`) of an OCI 1.1 referrer of
/// `subject` with `artifact_type`, and lists it in the referrers tag
/// fallback index (`sha256-<hex>`, replacing what it held). Returns the
/// referrer manifest's digest.
pub async fn push_referrer(
    reg: &TestRegistry,
    repo: &str,
    subject: &str,
    subject_size: usize,
    artifact_type: &str,
    media: &str,
    blob: &[u8],
) -> String {
    let (empty, esize) = reg.push_blob(repo, b"{}").await;
    let (bdigest, bsize) = reg.push_blob(repo, blob).await;
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "size": esize, "digest": empty },
        "layers": [{ "mediaType": media, "size": bsize, "digest": bdigest }],
        "subject": { "mediaType": OCI_MANIFEST, "size": subject_size, "digest": subject },
    });
    let body = serde_json::to_vec(&m).unwrap();
    let mdigest = format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(&body));
    reg.push_manifest(repo, &mdigest, OCI_MANIFEST, &body).await;
    let index = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{ "mediaType": OCI_MANIFEST, "size": body.len(), "digest": mdigest, "artifactType": artifact_type }],
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

/// A Notation (notary.x509) signer: a CA and a code-signing leaf made with
/// the `openssl` CLI, JWS envelopes signed ES256 with ring.
pub struct NotationSigner {
    pub dir: std::path::PathBuf,
    /// The directory to configure as `trust_store` (holds the CA).
    pub trust_store: std::path::PathBuf,
    pub leaf_der: Vec<u8>,
    pub ca_der: Vec<u8>,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl NotationSigner {
    /// `subject` like `/CN=builder/O=Example`; `eku` the leaf's extended key
    /// usage (`codeSigning` for a good signer).
    pub fn new(dir: &std::path::Path, subject: &str, eku: &str) -> NotationSigner {
        std::fs::create_dir_all(dir.join("ca")).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca/ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=Test Notary CA/O=Example",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
                "-subj",
                subject,
            ],
        );
        std::fs::write(dir.join("leaf.ext"), format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={eku}\n")).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca/ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "leaf.crt",
                "-days",
                "1",
                "-extfile",
                "leaf.ext",
                "-outform",
                "DER",
            ],
        );
        openssl(
            dir,
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", "leaf.key", "-outform", "DER", "-out",
                "leaf.pk8",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-in",
                "ca/ca.crt",
                "-outform",
                "DER",
                "-out",
                "ca.der",
            ],
        );
        let rng = SystemRandom::new();
        let pk8 = std::fs::read(dir.join("leaf.pk8")).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pk8,
            &rng,
        )
        .unwrap();
        NotationSigner {
            dir: dir.to_path_buf(),
            trust_store: dir.join("ca"),
            leaf_der: std::fs::read(dir.join("leaf.crt")).unwrap(),
            ca_der: std::fs::read(dir.join("ca.der")).unwrap(),
            key,
            rng,
        }
    }

    /// A JWS envelope (JSON serialization) signing `target` (digest, size)
    /// as Notation does; `expiry` optional RFC 3339.
    pub fn jws(&self, target: &str, size: usize, expiry: Option<&str>) -> Vec<u8> {
        let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut header = json!({
            "alg": "ES256",
            "crit": ["io.cncf.notary.signingScheme"],
            "cty": "application/vnd.cncf.notary.payload.v1+json",
            "io.cncf.notary.signingScheme": "notary.x509",
            "io.cncf.notary.signingTime": "2026-11-27T10:00:00Z",
        });
        if let Some(e) = expiry {
            header["io.cncf.notary.expiry"] = e.into();
            header["crit"] = json!(["io.cncf.notary.signingScheme", "io.cncf.notary.expiry"]);
        }
        let payload = json!({ "targetArtifact": {
            "mediaType": OCI_MANIFEST, "digest": target, "size": size } });
        let protected = b64u.encode(serde_json::to_vec(&header).unwrap());
        let payload = b64u.encode(serde_json::to_vec(&payload).unwrap());
        let sig = self
            .key
            .sign(&self.rng, format!("{protected}.{payload}").as_bytes())
            .unwrap();
        serde_json::to_vec(&json!({
            "payload": payload,
            "protected": protected,
            "header": {
                "x5c": [b64.encode(&self.leaf_der), b64.encode(&self.ca_der)],
                "io.cncf.notary.signingAgent": "notation-go/1.2.0",
            },
            "signature": b64u.encode(sig.as_ref()),
        }))
        .unwrap()
    }
}

/// Attaches a Notation signature envelope (`media`: `application/jose+json`
/// or `application/cose`) to `subject` as a referrer, listed in the
/// referrers tag fallback index.
pub async fn push_notation(
    reg: &TestRegistry,
    repo: &str,
    subject: &str,
    subject_size: usize,
    envelope: &[u8],
    media: &str,
) {
    use lineaged::policy::notation::NOTARY_TYPE;
    push_referrer(
        reg,
        repo,
        subject,
        subject_size,
        NOTARY_TYPE,
        media,
        envelope,
    )
    .await;
}
