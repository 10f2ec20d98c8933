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
