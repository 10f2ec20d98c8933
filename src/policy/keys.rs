//! Public keys for signature checks, parsed strictly; the arithmetic is
//! ring's.

use base64::Engine as _;

/// DER prefix of a SubjectPublicKeyInfo holding an uncompressed ECDSA
/// P-256 point: SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 },
/// BIT STRING (0 unused bits) }. DER is canonical, so every such key starts
/// with exactly these bytes.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// An ECDSA P-256 public key (the uncompressed point).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct P256Key(Vec<u8>);

impl P256Key {
    /// From a PEM `PUBLIC KEY` (as `cosign generate-key-pair` writes).
    pub fn from_pem(pem: &str) -> Result<P256Key, String> {
        let body: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN PUBLIC KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END PUBLIC KEY-----"))
            .collect();
        if body.is_empty() {
            return Err("no PEM `PUBLIC KEY` block".into());
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|e| format!("PEM body is not base64: {e}"))?;
        P256Key::from_spki_der(&der)
    }

    pub fn from_spki_der(der: &[u8]) -> Result<P256Key, String> {
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(P256Key(point.to_vec())),
            _ => Err("not an ECDSA P-256 public key (the only key type supported)".into()),
        }
    }

    /// Verifies a DER-encoded ECDSA-P256/SHA-256 signature over `msg`.
    pub fn verify(&self, msg: &[u8], sig_der: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &self.0)
            .verify(msg, sig_der)
            .is_ok()
    }

    /// The SubjectPublicKeyInfo DER (for tests and display).
    pub fn spki_der(&self) -> Vec<u8> {
        let mut v = P256_SPKI_PREFIX.to_vec();
        v.extend_from_slice(&self.0);
        v
    }

    /// From the raw uncompressed point (ring's key pair public key).
    pub fn from_point(point: &[u8]) -> Result<P256Key, String> {
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(point);
        P256Key::from_spki_der(&der)
    }

    /// PEM `PUBLIC KEY`.
    pub fn to_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.spki_der());
        let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END PUBLIC KEY-----\n");
        out
    }
}

/// DER prefix of a SubjectPublicKeyInfo holding an uncompressed P-384 point.
const P384_SPKI_PREFIX: [u8; 23] = [
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];

/// Verifies a JWS-style (fixed `r||s`) ECDSA signature with the EC key of
/// `spki`: ES256 needs a P-256 key, ES384 a P-384 one.
pub fn verify_ec_fixed(spki: &[u8], alg: &str, msg: &[u8], sig: &[u8]) -> Result<bool, String> {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
    let (prefix, point_len, algorithm): (
        &[u8],
        usize,
        &'static dyn ring::signature::VerificationAlgorithm,
    ) = match alg {
        "ES256" => (&P256_SPKI_PREFIX, 65, &ECDSA_P256_SHA256_FIXED),
        "ES384" => (&P384_SPKI_PREFIX, 97, &ECDSA_P384_SHA384_FIXED),
        other => return Err(format!("{other} is not an EC algorithm")),
    };
    let point = spki
        .strip_prefix(prefix)
        .filter(|p| p.len() == point_len)
        .ok_or_else(|| format!("the certificate's key does not fit {alg}"))?;
    Ok(UnparsedPublicKey::new(algorithm, point)
        .verify(msg, sig)
        .is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    #[test]
    fn round_trips_and_verifies_with_ring() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let key = P256Key::from_point(pair.public_key().as_ref()).unwrap();
        let parsed = P256Key::from_pem(&key.to_pem()).unwrap();
        assert_eq!(parsed, key);
        let sig = pair.sign(&rng, b"payload").unwrap();
        assert!(key.verify(b"payload", sig.as_ref()));
        assert!(!key.verify(b"payload!", sig.as_ref()));
        assert!(!key.verify(b"payload", b"\x30\x00"));
    }

    #[test]
    fn refuses_other_keys_and_garbage() {
        assert!(P256Key::from_pem("hello").is_err());
        assert!(
            P256Key::from_pem("-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----").is_err()
        );
        // An Ed25519 SPKI.
        let ed = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert!(P256Key::from_pem(ed).unwrap_err().contains("P-256"));
    }
}
