//! Supply-chain gates against the real `docker-registry`: cosign signatures
//! made by a signer that follows the cosign spec, a scanner stand-in that
//! prints Trivy and Grype JSON, trusted registries; every refusal with its
//! reason, `mode: warn`, `required: 2`; `lineaged verify` as a user runs it.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lineaged::config::{Config, load_str};
use lineaged::policy::{GateResult, Gatekeeper, Purpose};
use lineaged::registry::{ImageRef, RegistryClient};
use support::registry::TestRegistry;
use support::signer::{Layer, Signer, layer, push_signatures};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/scan");

struct Env {
    reg: TestRegistry,
    dir: tempfile::TempDir,
    a: Signer,
    b: Signer,
}

impl Env {
    async fn new() -> Env {
        let e = Env {
            reg: TestRegistry::start(Default::default()).await,
            dir: tempfile::tempdir().unwrap(),
            a: Signer::new(),
            b: Signer::new(),
        };
        std::fs::write(e.dir.path().join("a.pub"), e.a.public_pem()).unwrap();
        std::fs::write(e.dir.path().join("b.pub"), e.b.public_pem()).unwrap();
        e
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// Pushes `repo:1`; returns its reference and digest.
    async fn image(&self, repo: &str) -> (ImageRef, String) {
        let (r, d, _) = self.image_sized(repo).await;
        (r, d)
    }

    /// The same, with the manifest's size (for referrers' `subject`).
    async fn image_sized(&self, repo: &str) -> (ImageRef, String, usize) {
        let (d, size) = self
            .reg
            .push_image(
                repo,
                "1",
                &format!("{repo} {}", rand::random::<u64>()),
                ("linux", "amd64"),
                BTreeMap::new(),
                BTreeMap::new(),
            )
            .await;
        (
            ImageRef::parse(&format!("{}/{repo}:1", self.reg.addr)).unwrap(),
            d,
            size,
        )
    }

    /// A scanner that logs the reference it was given and prints `fixture`.
    fn scanner(&self, fixture: &str) -> String {
        let script = self.path("scan.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$1\" >> {}\ncat {FIXTURES}/{fixture}\n",
                self.path("scanned.log")
            ),
        )
        .unwrap();
        script
    }

    fn config(&self, policy: &str) -> Config {
        let yaml = format!(
            "registries:\n  - {{ host: \"{}\", insecure: true }}\npolicy:\n{policy}",
            self.reg.addr
        );
        match load_str("gates.yaml", &yaml, &|_| None) {
            Ok(c) => c,
            Err(e) => panic!("{yaml}\n{e}"),
        }
    }

    fn gates(&self, cfg: Config) -> Gatekeeper {
        let cfg = Arc::new(cfg);
        let client = RegistryClient::new(&cfg.registries, Duration::from_secs(10)).unwrap();
        Gatekeeper::new(cfg, Arc::new(client))
    }
}

fn signature_rule(keys: &[&str], required: usize, mode: &str) -> String {
    let auth: Vec<String> = keys
        .iter()
        .map(|k| format!("          - cosign: {{ public_key_file: \"{k}\" }}\n"))
        .collect();
    format!(
        "  rules:\n    - images: [\"**\"]\n      mode: {mode}\n      signatures:\n        required: {required}\n        authorities:\n{}",
        auth.concat()
    )
}

#[tokio::test]
async fn cosign_signatures_pass_and_every_bad_one_is_refused_with_its_reason() {
    let e = Env::new().await;
    let gates = e.gates(e.config(&signature_rule(&[&e.path("a.pub")], 1, "enforce")));
    let check = |img: (ImageRef, String)| {
        let gates = &gates;
        async move {
            gates
                .evaluate(&img.0, &img.1, Purpose::Deploy)
                .await
                .unwrap()
        }
    };

    let signed = e.image("apps/signed").await;
    push_signatures(
        &e.reg,
        "apps/signed",
        &signed.1,
        &[layer(&e.a, &signed.0, &signed.1)],
    )
    .await;
    let ev = check(signed.clone()).await;
    assert_eq!(ev.refusal(), None, "{ev:?}");
    assert_eq!(ev.verdicts[0].gate, "signature");
    assert_eq!(ev.verdicts[0].result, GateResult::Passed);

    let unsigned = e.image("apps/unsigned").await;
    let ev = check(unsigned.clone()).await;
    let r = ev.refusal_text().unwrap();
    assert!(
        r.contains("no cosign signature") && r.contains(".sig tag"),
        "{r}"
    );

    let wrong_key = e.image("apps/wrongkey").await;
    push_signatures(
        &e.reg,
        "apps/wrongkey",
        &wrong_key.1,
        &[layer(&e.b, &wrong_key.0, &wrong_key.1)],
    )
    .await;
    let r = check(wrong_key).await.refusal_text().unwrap();
    assert!(r.contains("does not verify with this key"), "{r}");

    // A valid signature, but over a payload that names another digest.
    let tampered = e.image("apps/tampered").await;
    let other = e.image("apps/other").await;
    push_signatures(
        &e.reg,
        "apps/tampered",
        &tampered.1,
        &[layer(&e.a, &tampered.0, &other.1)],
    )
    .await;
    let r = check(tampered.clone()).await.refusal_text().unwrap();
    assert!(
        r.contains(&format!("payload signs {}, not {}", other.1, tampered.1)),
        "{r}"
    );

    // The payload changed after signing.
    let edited = e.image("apps/edited").await;
    let mut l = layer(&e.a, &edited.0, &edited.1);
    l.payload.extend_from_slice(b" ");
    push_signatures(&e.reg, "apps/edited", &edited.1, &[l]).await;
    let r = check(edited).await.refusal_text().unwrap();
    assert!(r.contains("does not verify"), "{r}");

    // Garbage in the signature annotation and in the payload.
    let garbage = e.image("apps/garbage").await;
    push_signatures(
        &e.reg,
        "apps/garbage",
        &garbage.1,
        &[
            Layer {
                payload: layer(&e.a, &garbage.0, &garbage.1).payload,
                signature: "%%% not base64".into(),
            },
            Layer {
                payload: b"{not json".to_vec(),
                signature: e.a.sign_bytes(b"{not json"),
            },
        ],
    )
    .await;
    let r = check(garbage).await.refusal_text().unwrap();
    assert!(
        r.contains("layer 0: signature is not base64")
            && r.contains("layer 1: payload is not JSON"),
        "{r}"
    );

    // A signature manifest far larger than any real one.
    let huge = e.image("apps/huge").await;
    let mut layers: Vec<Layer> = Vec::new();
    let big = layer(&e.a, &huge.0, &huge.1);
    let fat = "A".repeat(300 * 1024);
    layers.push(Layer {
        payload: big.payload,
        signature: format!("{}{fat}", big.signature),
    });
    push_signatures(&e.reg, "apps/huge", &huge.1, &layers).await;
    let r = check(huge).await.refusal_text().unwrap();
    assert!(r.contains("larger than 262144 bytes"), "{r}");
}

#[tokio::test]
async fn required_two_with_one_valid_is_refused_and_warn_mode_lets_it_through() {
    let e = Env::new().await;
    let img = e.image("apps/one").await;
    push_signatures(&e.reg, "apps/one", &img.1, &[layer(&e.a, &img.0, &img.1)]).await;
    let keys = [e.path("a.pub"), e.path("b.pub")];
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();

    let two = e.gates(e.config(&signature_rule(&keys, 2, "enforce")));
    let ev = two.evaluate(&img.0, &img.1, Purpose::Deploy).await.unwrap();
    let r = ev.refusal_text().unwrap();
    assert!(
        r.starts_with("signature gate: 1 of 2 required signatures verified"),
        "{r}"
    );
    assert_eq!(ev.verdicts[0].evidence["verified"], 1);

    let warn = e.gates(e.config(&signature_rule(&keys, 2, "warn")));
    let ev = warn
        .evaluate(&img.0, &img.1, Purpose::Deploy)
        .await
        .unwrap();
    assert_eq!(ev.refusal(), None);
    assert_eq!(ev.verdicts[0].result, GateResult::Warned);

    // Both keys sign: passes.
    let both = e.image("apps/both").await;
    push_signatures(
        &e.reg,
        "apps/both",
        &both.1,
        &[layer(&e.a, &both.0, &both.1), layer(&e.b, &both.0, &both.1)],
    )
    .await;
    assert_eq!(
        two.evaluate(&both.0, &both.1, Purpose::Deploy)
            .await
            .unwrap()
            .refusal(),
        None
    );
}

#[tokio::test]
async fn rules_apply_by_glob_and_purpose_and_untrusted_registries_are_refused() {
    let e = Env::new().await;
    let img = e.image("apps/web").await;
    let other = e.image("tools/cli").await;
    let policy = format!(
        "  trusted_registries_only: true\n  rules:\n    - images: [\"{}/apps/**\"]\n      apply_to: [cascade]\n      signatures: {{ authorities: [{{ cosign: {{ public_key_file: \"{}\" }} }}] }}\n",
        e.reg.addr,
        e.path("a.pub")
    );
    let gates = e.gates(e.config(&policy));
    // Cascade applies to apps/**: unsigned → refused; the registry is not trusted either.
    let ev = gates
        .evaluate(&img.0, &img.1, Purpose::Cascade)
        .await
        .unwrap();
    let gates_seen: Vec<(&str, GateResult)> = ev
        .verdicts
        .iter()
        .map(|v| (v.gate.as_str(), v.result))
        .collect();
    assert_eq!(
        gates_seen,
        vec![
            ("trusted_registry", GateResult::Refused),
            ("signature", GateResult::Refused)
        ]
    );
    assert!(
        ev.refusal_text()
            .unwrap()
            .contains(&format!("registry {} is not trusted", e.reg.addr))
    );
    // Deploy is not in apply_to: only the registry check.
    let ev = gates
        .evaluate(&img.0, &img.1, Purpose::Deploy)
        .await
        .unwrap();
    assert_eq!(ev.verdicts.len(), 1);
    // tools/** matches no rule.
    let ev = gates
        .evaluate(&other.0, &other.1, Purpose::Cascade)
        .await
        .unwrap();
    assert_eq!(ev.rule, None);
    // Trusted: the registry gate passes.
    let yaml = format!(
        "registries:\n  - {{ host: \"{}\", insecure: true, trusted: true }}\npolicy:\n  trusted_registries_only: true\n",
        e.reg.addr
    );
    let cfg = load_str("t.yaml", &yaml, &|_| None).unwrap();
    let ev = e
        .gates(cfg)
        .evaluate(&other.0, &other.1, Purpose::Deploy)
        .await
        .unwrap();
    assert_eq!(ev.verdicts[0].result, GateResult::Passed);
}

fn scan_policy(e: &Env, fixture: &str, max: &str, ignore_unfixed: bool) -> String {
    format!(
        "  scan: {{ command: [\"sh\", \"{}\", \"{{ref}}\"], timeout: 5s }}\n  rules:\n    - images: [\"**\"]\n      scan: {{ max_severity: {max}, ignore_unfixed: {ignore_unfixed} }}\n",
        e.scanner(fixture)
    )
}

#[tokio::test]
async fn scans_are_judged_from_trivy_and_grype_json() {
    let e = Env::new().await;
    let img = e.image("apps/scanned").await;
    let run = |policy: String| {
        let gates = e.gates(e.config(&policy));
        let img = img.clone();
        async move {
            gates
                .evaluate(&img.0, &img.1, Purpose::Deploy)
                .await
                .unwrap()
        }
    };
    // Trivy: HIGH (fixed), CRITICAL (will_not_fix), LOW.
    let ev = run(scan_policy(&e, "trivy.json", "high", false)).await;
    let r = ev.refusal_text().unwrap();
    assert!(
        r.contains("trivy found 1 over high") && r.contains("CVE-2023-45853 in zlib1g"),
        "{r}"
    );
    assert_eq!(ev.verdicts[0].evidence["counts"]["critical"], 1);
    // The critical has no fix: ignored with ignore_unfixed.
    let ev = run(scan_policy(&e, "trivy.json", "high", true)).await;
    assert_eq!(ev.refusal(), None, "{ev:?}");
    let ev = run(scan_policy(&e, "trivy.json", "medium", true)).await;
    assert!(
        ev.refusal_text()
            .unwrap()
            .contains("CVE-2024-2511 in libssl3")
    );
    // Grype: Medium (fixed), Negligible.
    assert_eq!(
        run(scan_policy(&e, "grype.json", "medium", false))
            .await
            .refusal(),
        None
    );
    assert!(
        run(scan_policy(&e, "grype.json", "low", false))
            .await
            .refusal()
            .is_some()
    );
    // The scanner got repo@digest.
    let log = std::fs::read_to_string(e.path("scanned.log")).unwrap();
    assert_eq!(
        log.lines().next().unwrap(),
        format!("{}/apps/scanned@{}", e.reg.addr, img.1)
    );
    // A scanner printing garbage, and one that hangs: refused, never passed.
    let r = run(scan_policy(&e, "../../../Cargo.toml", "high", false))
        .await
        .refusal_text()
        .unwrap();
    assert!(r.contains("printed no JSON"), "{r}");
    let hang = e.path("hang.sh");
    std::fs::write(&hang, "#!/bin/sh\nsleep 30\n").unwrap();
    let policy = format!(
        "  scan: {{ command: [\"sh\", \"{hang}\", \"{{ref}}\"], timeout: 1s }}\n  rules:\n    - images: [\"**\"]\n      scan: {{ max_severity: high }}\n"
    );
    let started = std::time::Instant::now();
    let r = run(policy).await.refusal_text().unwrap();
    assert_eq!(r, "scan gate: scan timed out after 1s");
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn lineaged(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lineaged"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn lineaged_verify_prints_verdicts_and_exits_by_them() {
    let e = Env::new().await;
    let signed = e.image("apps/signed").await;
    push_signatures(
        &e.reg,
        "apps/signed",
        &signed.1,
        &[layer(&e.a, &signed.0, &signed.1)],
    )
    .await;
    let unsigned = e.image("apps/unsigned").await;
    let cfg = e.path("lineaged.yaml");
    std::fs::write(
        &cfg,
        format!(
            "registries:\n  - {{ host: \"{}\", insecure: true }}\npolicy:\n{}",
            e.reg.addr,
            signature_rule(&[&e.path("a.pub")], 1, "enforce")
        ),
    )
    .unwrap();
    let s = signed.0.to_string();
    let o = lineaged(&["verify", "-c", &cfg, &s]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.starts_with(&format!("PASSED {s}@{}\n", signed.1)),
        "{out}"
    );
    assert!(
        out.contains("ok   signature: 1 of 1 authorities verified"),
        "{out}"
    );
    let by_digest = format!("{}/apps/unsigned@{}", e.reg.addr, unsigned.1);
    let o = lineaged(&["verify", "-c", &cfg, &s, &by_digest]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "REFUSED {}/apps/unsigned:latest@{}",
            e.reg.addr, unsigned.1
        )),
        "{out}"
    );
    assert!(
        out.contains("FAIL signature: 0 of 1 required signatures verified"),
        "{out}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 refused"));
    let o = lineaged(&["verify", "-c", &cfg, "--output", "json", &s]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["verdicts"][0]["result"], "passed");
    let _ = Path::new(&cfg);
}

/// cosign v3 signs with a sigstore bundle attached as an OCI 1.1 referrer;
/// distribution 2.8 has no referrers API, so the referrers tag fallback
/// (`sha256-<hex>` index) is what is read here.
#[tokio::test]
async fn sigstore_bundles_found_through_the_referrers_fallback_verify() {
    use support::signer::{bundle, push_bundle};
    let e = Env::new().await;
    let gates = e.gates(e.config(&signature_rule(&[&e.path("a.pub")], 1, "enforce")));
    let (r, d, size) = e.image_sized("apps/v3").await;
    let name = format!("{}/apps/v3", e.reg.addr);
    push_bundle(&e.reg, "apps/v3", &d, size, &bundle(&e.a, &name, &d)).await;
    let ev = gates.evaluate(&r, &d, Purpose::Deploy).await.unwrap();
    assert_eq!(ev.refusal(), None, "{ev:?}");
    assert!(
        ev.verdicts[0].evidence["authorities"][0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("sigstore bundle sha256:")
    );

    // Signed by another key; naming another digest; edited after signing.
    let (r2, d2, s2) = e.image_sized("apps/v3-wrongkey").await;
    push_bundle(
        &e.reg,
        "apps/v3-wrongkey",
        &d2,
        s2,
        &bundle(&e.b, &name, &d2),
    )
    .await;
    let why = gates
        .evaluate(&r2, &d2, Purpose::Deploy)
        .await
        .unwrap()
        .refusal_text()
        .unwrap();
    assert!(
        why.contains("DSSE signature does not verify with this key"),
        "{why}"
    );
    let (r3, d3, s3) = e.image_sized("apps/v3-other").await;
    push_bundle(&e.reg, "apps/v3-other", &d3, s3, &bundle(&e.a, &name, &d)).await;
    let why = gates
        .evaluate(&r3, &d3, Purpose::Deploy)
        .await
        .unwrap()
        .refusal_text()
        .unwrap();
    assert!(
        why.contains(&format!("subjects do not include {d3}")),
        "{why}"
    );
    let (r4, d4, s4) = e.image_sized("apps/v3-edited").await;
    let mut b: serde_json::Value = serde_json::from_slice(&bundle(&e.a, &name, &d4)).unwrap();
    b["dsseEnvelope"]["payloadType"] = "text/plain".into();
    push_bundle(
        &e.reg,
        "apps/v3-edited",
        &d4,
        s4,
        &serde_json::to_vec(&b).unwrap(),
    )
    .await;
    let why = gates
        .evaluate(&r4, &d4, Purpose::Deploy)
        .await
        .unwrap()
        .refusal_text()
        .unwrap();
    assert!(why.contains("DSSE payload type is \"text/plain\""), "{why}");
    // Neither a classic signature nor a bundle: both are named.
    let (r5, d5) = e.image("apps/none").await;
    let why = gates
        .evaluate(&r5, &d5, Purpose::Deploy)
        .await
        .unwrap()
        .refusal_text()
        .unwrap();
    assert!(
        why.contains("no cosign signature") && why.contains("no sigstore bundle referrer"),
        "{why}"
    );
}

/// A registry with the OCI 1.1 referrers API (a peer following the
/// distribution spec): the bundle is found through
/// `GET /v2/<name>/referrers/<digest>?artifactType=…`, not the tag schema.
#[tokio::test]
async fn sigstore_bundles_found_through_the_referrers_api_verify() {
    use axum::http::{StatusCode, Uri};
    use axum::response::IntoResponse;
    use sha2::Digest as _;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use support::signer::bundle;

    let signer = Signer::new();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("a.pub");
    std::fs::write(&key, signer.public_pem()).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let sha = |b: &[u8]| format!("sha256:{:x}", sha2::Sha256::digest(b));
    // The image, the bundle blob, the referrer manifest.
    let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#.to_vec();
    let digest = sha(&image);
    let bundle_blob = bundle(&signer, &format!("{addr}/apps/api"), &digest);
    let referrer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": lineaged::policy::bundle::BUNDLE_TYPE,
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2 },
        "layers": [{ "mediaType": lineaged::policy::bundle::BUNDLE_TYPE, "digest": sha(&bundle_blob), "size": bundle_blob.len() }],
        "subject": { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": image.len() },
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&referrer), "size": referrer.len(), "artifactType": lineaged::policy::bundle::BUNDLE_TYPE }],
    }))
    .unwrap();
    let mut content: HashMap<String, (&'static str, Vec<u8>)> = HashMap::new();
    content.insert(
        format!("/v2/apps/api/manifests/{digest}"),
        ("application/vnd.oci.image.manifest.v1+json", image.clone()),
    );
    content.insert(
        format!("/v2/apps/api/manifests/{}", sha(&referrer)),
        (
            "application/vnd.oci.image.manifest.v1+json",
            referrer.clone(),
        ),
    );
    content.insert(
        format!("/v2/apps/api/blobs/{}", sha(&bundle_blob)),
        ("application/octet-stream", bundle_blob.clone()),
    );
    content.insert(
        format!("/v2/apps/api/referrers/{digest}"),
        ("application/vnd.oci.image.index.v1+json", index),
    );
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let (content, log) = (content.clone(), log.clone());
        async move {
            log.lock().unwrap().push(uri.to_string());
            match content.get(uri.path()) {
                Some((ct, body)) => {
                    let mut r = (StatusCode::OK, body.clone()).into_response();
                    r.headers_mut().insert("content-type", ct.parse().unwrap());
                    r.headers_mut()
                        .insert("docker-content-digest", sha(body).parse().unwrap());
                    r
                }
                None => (
                    StatusCode::NOT_FOUND,
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                )
                    .into_response(),
            }
        }
    });
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let yaml = format!(
        "registries:\n  - {{ host: \"{addr}\", insecure: true }}\npolicy:\n{}",
        signature_rule(&[&key.to_string_lossy()], 1, "enforce")
    );
    let cfg = Arc::new(load_str("api.yaml", &yaml, &|_| None).unwrap());
    let client = RegistryClient::new(&cfg.registries, Duration::from_secs(5)).unwrap();
    let gates = Gatekeeper::new(cfg, Arc::new(client));
    let r = ImageRef::parse(&format!("{addr}/apps/api:1")).unwrap();
    let ev = gates.evaluate(&r, &digest, Purpose::Deploy).await.unwrap();
    assert_eq!(ev.refusal(), None, "{ev:?}");
    let seen = seen.lock().unwrap().clone();
    let want = format!(
        "/v2/apps/api/referrers/{digest}?artifactType=application%2Fvnd.dev.sigstore.bundle.v0.3%2Bjson"
    );
    assert!(seen.contains(&want), "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|u| u.ends_with(&format!("manifests/{}", digest.replacen(':', "-", 1)))),
        "the fallback tag is not read when the API answers: {seen:?}"
    );
}

/// `scan: { source: attestation }`: the scanner's report travels as a
/// cosign vulnerability attestation signed with the rule's key.
#[tokio::test]
async fn vulnerability_attestations_are_verified_and_judged() {
    use support::signer::{push_attestations, vuln_attestation};
    let e = Env::new().await;
    let trivy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/trivy.json")).unwrap())
            .unwrap();
    let policy = |max: &str| {
        format!(
            "  rules:\n    - images: [\"**\"]\n      signatures: {{ authorities: [{{ cosign: {{ public_key_file: \"{}\" }} }}] }}\n      scan: {{ max_severity: {max}, ignore_unfixed: true, source: attestation }}\n",
            e.path("a.pub")
        )
    };
    let (r, d) = e.image("apps/attested").await;
    let name = format!("{}/apps/attested", e.reg.addr);
    push_signatures(&e.reg, "apps/attested", &d, &[layer(&e.a, &r, &d)]).await;
    push_attestations(
        &e.reg,
        "apps/attested",
        &d,
        &[vuln_attestation(&e.a, &name, &d, trivy.clone())],
    )
    .await;
    // Trivy fixture: HIGH (fixed), CRITICAL (no fix), LOW.
    let ev = e
        .gates(e.config(&policy("high")))
        .evaluate(&r, &d, Purpose::Deploy)
        .await
        .unwrap();
    assert_eq!(ev.refusal(), None, "{ev:?}");
    assert!(
        ev.verdicts[1].reason.starts_with(&format!(
            "trivy (attestation {}.att layer 0 from the end) found",
            d.replacen(':', "-", 1)
        )),
        "{}",
        ev.verdicts[1].reason
    );
    let why = e
        .gates(e.config(&policy("medium")))
        .evaluate(&r, &d, Purpose::Deploy)
        .await
        .unwrap()
        .refusal_text()
        .unwrap();
    assert!(
        why.starts_with("scan gate: trivy (attestation") && why.contains("CVE-2024-2511"),
        "{why}"
    );
    // Signed by a key the rule does not trust.
    let (r2, d2) = e.image("apps/other-signer").await;
    push_signatures(&e.reg, "apps/other-signer", &d2, &[layer(&e.a, &r2, &d2)]).await;
    push_attestations(
        &e.reg,
        "apps/other-signer",
        &d2,
        &[vuln_attestation(&e.b, &name, &d2, trivy)],
    )
    .await;
    let why = e
        .gates(e.config(&policy("high")))
        .evaluate(&r2, &d2, Purpose::Deploy)
        .await
        .unwrap()
        .refusal_text()
        .unwrap();
    assert!(
        why.contains("no valid vulnerability attestation") && why.contains("does not verify"),
        "{why}"
    );
    // None yet: a pending refusal the gate worker waits out.
    let (r3, d3) = e.image("apps/unattested").await;
    push_signatures(&e.reg, "apps/unattested", &d3, &[layer(&e.a, &r3, &d3)]).await;
    let ev = e
        .gates(e.config(&policy("high")))
        .evaluate(&r3, &d3, Purpose::Deploy)
        .await
        .unwrap();
    assert_eq!(
        ev.refusal_text().unwrap(),
        format!("scan gate: scan timed out: no vulnerability attestation for {d3}")
    );
    assert_eq!(ev.waiting_for(), Some((false, true)));
}

/// Pushes `repo:1` with the Notation envelope `make(digest, size)` builds
/// and asserts the gates refuse it saying `want`.
async fn notation_refused(
    e: &Env,
    gates: &Gatekeeper,
    repo: &str,
    make: impl FnOnce(&str, usize) -> Vec<u8>,
    media: &str,
    want: &str,
) {
    let (r, d, s) = e.image_sized(repo).await;
    support::signer::push_notation(&e.reg, repo, &d, s, &make(&d, s), media).await;
    let why = gates
        .evaluate(&r, &d, Purpose::Deploy)
        .await
        .unwrap()
        .refusal_text()
        .unwrap();
    assert!(why.contains(want), "{repo}: {why}");
}

/// Notation (Notary Project) JWS signatures as referrers: the chain to the
/// trust store's CA for code signing, the signature with the leaf's key,
/// the signed digest, expiry and trusted_identities; COSE is refused.
#[tokio::test]
async fn notation_signatures_verify_against_the_trust_store() {
    use support::signer::{NotationSigner, push_notation};
    let e = Env::new().await;
    let good = NotationSigner::new(
        &e.dir.path().join("n-good"),
        "/CN=builder/O=Example",
        "codeSigning",
    );
    let stranger = NotationSigner::new(
        &e.dir.path().join("n-other"),
        "/CN=builder/O=Example",
        "codeSigning",
    );
    let server = NotationSigner::new(
        &e.dir.path().join("n-tls"),
        "/CN=builder/O=Example",
        "serverAuth",
    );
    let policy = |identity: &str| {
        format!(
            "  rules:\n    - images: [\"**\"]\n      signatures:\n        authorities:\n          - notation: {{ trust_store: \"{}\", trusted_identities: [\"{identity}\"] }}\n",
            good.trust_store.display()
        )
    };
    let gates = e.gates(e.config(&policy("x509.subject: O=Example, CN=builder")));
    let check = |img: (ImageRef, String)| {
        let gates = &gates;
        async move {
            gates
                .evaluate(&img.0, &img.1, Purpose::Deploy)
                .await
                .unwrap()
        }
    };
    let jose = "application/jose+json";

    let (r, d, s) = e.image_sized("apps/notary").await;
    push_notation(&e.reg, "apps/notary", &d, s, &good.jws(&d, s, None), jose).await;
    let ev = check((r.clone(), d.clone())).await;
    assert_eq!(ev.refusal(), None, "{ev:?}");
    assert!(
        ev.verdicts[0].evidence["authorities"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("by CN=builder, O=Example verifies")
    );
    // The same envelope checked 30 days on: the leaf (valid one day) has
    // expired, and the chain no longer verifies.
    let later = rustls_pki_types::UnixTime::since_unix_epoch(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            + Duration::from_secs(30 * 24 * 3600),
    );
    let ca = rustls_pki_types::CertificateDer::from(good.ca_der.clone());
    let err = lineaged::policy::notation::check_jws(
        &good.jws(&d, s, None),
        &d,
        &[ca],
        &["*".to_string()],
        later,
    )
    .unwrap_err();
    assert!(
        err.contains("certificate chain does not verify") && err.contains("Expired"),
        "{err}"
    );
    // Another identity is not trusted.
    let other_id = e.gates(e.config(&policy("x509.subject: CN=release, O=Example")));
    let why = other_id
        .evaluate(&r, &d, Purpose::Deploy)
        .await
        .unwrap()
        .refusal_text()
        .unwrap();
    assert!(why.contains("is not among trusted_identities"), "{why}");

    notation_refused(
        &e,
        &gates,
        "apps/n-ca",
        |d, s| stranger.jws(d, s, None),
        jose,
        "certificate chain does not verify to the trust store",
    )
    .await;
    notation_refused(
        &e,
        &gates,
        "apps/n-eku",
        |d, s| server.jws(d, s, None),
        jose,
        "for code signing",
    )
    .await;
    notation_refused(
        &e,
        &gates,
        "apps/n-expired",
        |d, s| good.jws(d, s, Some("2026-01-01T00:00:00Z")),
        jose,
        "the signature expired at 2026-01-01T00:00:00Z",
    )
    .await;
    let other_digest = d.clone();
    let good = &good;
    notation_refused(
        &e,
        &gates,
        "apps/n-digest",
        move |_, s| good.jws(&other_digest, s, None),
        jose,
        "the payload signs",
    )
    .await;
    notation_refused(
        &e,
        &gates,
        "apps/n-cose",
        |_, _| b"\xd2\x84".to_vec(),
        "application/cose",
        "COSE envelopes are not supported yet",
    )
    .await;
    notation_refused(
        &e,
        &gates,
        "apps/n-garbage",
        |_, _| b"{not json".to_vec(),
        jose,
        "envelope is not JSON",
    )
    .await;
}
