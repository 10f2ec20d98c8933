//! Bad input never panics, and what is accepted is what the specs accept:
//! seeded random inputs on stable Rust (no nightly fuzzer here) for the
//! config loader, image references (against distribution/reference's
//! grammar), every push-event parser and the Standard Webhooks signer and
//! verifier. (CI callback bodies are fuzzed over HTTP in tests/api.rs.)
//!
//! Cases per target: `LINEAGED_FUZZ_CASES` (default below, sized for the
//! test command on 2 cores); `scripts/fuzz.sh` runs many more with a fresh
//! seed. `LINEAGED_FUZZ_SEED` replays a run; a failure prints the seed, the
//! case and its input. A failure found is kept as a fixed case here.

use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};

use lineaged::config::load_str;
use lineaged::dispatch::webhook::{sign, signing_key, verify};
use lineaged::registry::ImageRef;
use lineaged::watch::{PushSource, parse_push};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use regex::Regex;

fn cases(default: usize) -> usize {
    std::env::var("LINEAGED_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("LINEAGED_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x011e_a9ed)
}

/// Runs `check` on `n` generated inputs; a panic (or failed assertion)
/// reports the seed, the case number and the input.
fn fuzz<T: Debug>(
    target: &str,
    n: usize,
    mut generate: impl FnMut(&mut StdRng) -> T,
    check: impl Fn(&T),
) {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed ^ target.len() as u64);
    for case in 0..n {
        let input = generate(&mut rng);
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "{target}: case {case} of seed {seed} (LINEAGED_FUZZ_SEED={seed}) failed: {msg}\ninput: {input:?}"
            );
        }
    }
    eprintln!("{target}: {n} cases, seed {seed}");
}

/// Byte-level mutations of `text`: flips, inserts of YAML/JSON-significant
/// bytes, deletions, duplicated and truncated ranges.
fn mutate(rng: &mut StdRng, text: &[u8]) -> Vec<u8> {
    const SPECIAL: &[u8] = b":-{}[]\"',\n #&*!|>%@\t\\\x00\xff0123456789";
    let mut b = text.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if b.is_empty() {
            b.push(SPECIAL[rng.random_range(0..SPECIAL.len())]);
            continue;
        }
        let i = rng.random_range(0..b.len());
        match rng.random_range(0..6) {
            0 => b[i] ^= 1 << rng.random_range(0..8),
            1 => b.insert(i, SPECIAL[rng.random_range(0..SPECIAL.len())]),
            2 => {
                let end = (i + rng.random_range(1..40)).min(b.len());
                b.drain(i..end);
            }
            3 => {
                let end = (i + rng.random_range(1..80)).min(b.len());
                let piece = b[i..end].to_vec();
                let at = rng.random_range(0..=b.len());
                b.splice(at..at, piece);
            }
            4 => b.truncate(i),
            _ => b[i] = SPECIAL[rng.random_range(0..SPECIAL.len())],
        }
    }
    b
}

fn env(name: &str) -> Option<String> {
    name.starts_with("FUZZ_")
        .then(|| "secret-from-env".to_string())
}

#[test]
fn the_config_loader_never_panics_on_mutated_or_random_input() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut corpus: Vec<Vec<u8>> = ["config/example.yaml", "config/compose/lineaged.yaml"]
        .iter()
        .chain(
            [
                "config/lineage.d/00-platform.yaml",
                "config/lineage.d/team-api.yaml",
            ]
            .iter(),
        )
        .map(|p| std::fs::read(format!("{root}/{p}")).unwrap())
        .collect();
    corpus.push(lineaged::lineage::generate_yaml(40, 3).into_bytes());
    fuzz(
        "config",
        cases(1500),
        |rng| {
            if rng.random_bool(0.1) {
                // Random bytes.
                let n = rng.random_range(0..200);
                (0..n).map(|_| rng.random::<u8>()).collect::<Vec<u8>>()
            } else {
                let base = &corpus[rng.random_range(0..corpus.len())];
                mutate(rng, base)
            }
        },
        |bytes| {
            let text = String::from_utf8_lossy(bytes);
            if let Err(e) = load_str("fuzz.yaml", &text, &env) {
                let msg = e.to_string();
                assert!(!msg.trim().is_empty(), "an empty error");
                assert!(!msg.contains("secret-from-env"), "a secret in: {msg}");
            }
        },
    );
}

#[test]
fn alias_bombs_are_refused_quickly() {
    // "Billion laughs": each level refers to the one above ten times.
    let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        yaml.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    yaml.push_str("images: *a9\n");
    let t = std::time::Instant::now();
    assert!(load_str("bomb.yaml", &yaml, &env).is_err());
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
}

/// distribution/reference's grammar (reference/regexp.go), anchored: the
/// name (an optional domain and port, then lowercase path components), an
/// optional tag, an optional digest.
fn reference_grammar() -> Regex {
    let alnum = "[a-z0-9]+";
    let sep = "(?:[._]|__|[-]+)";
    let component = format!("{alnum}(?:{sep}{alnum})*");
    let domain_component = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let host = format!(r"(?:{domain_component}(?:\.{domain_component})*|\[[a-fA-F0-9:]+\])");
    let domain = format!("{host}(?::[0-9]+)?");
    let name = format!("(?:{domain}/)?{component}(?:/{component})*");
    let tag = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
    let digest = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
    Regex::new(&format!("^{name}(?::{tag})?(?:@{digest})?$")).unwrap()
}

/// What Docker's `ParseNormalizedNamed` accepts (the grammar, no 64-hex
/// name, at most 255 characters of name).
fn docker_accepts(re: &Regex, s: &str) -> bool {
    let hex64 = s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let name = s.split('@').next().unwrap_or("");
    let name = match name.rfind(':') {
        Some(c) if name.rfind('/').is_none_or(|sl| c > sl) => &name[..c],
        _ => name,
    };
    re.is_match(s) && !hex64 && name.len() <= 255
}

fn hex(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

/// A reference built from the grammar: always valid.
fn valid_reference(rng: &mut StdRng) -> String {
    let word = |rng: &mut StdRng, alphabet: &[u8], n: usize| -> String {
        (0..rng.random_range(1..=n))
            .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
            .collect()
    };
    const LOW: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = String::new();
    match rng.random_range(0..4) {
        0 => s.push_str("localhost:5000/"),
        1 => s.push_str(&format!(
            "{}.{}{}/",
            word(rng, LOW, 8),
            word(rng, LOW, 4),
            if rng.random_bool(0.5) {
                format!(":{}", rng.random_range(1..65535))
            } else {
                String::new()
            }
        )),
        _ => {}
    }
    for i in 0..rng.random_range(1..=3) {
        if i > 0 {
            s.push('/');
        }
        s.push_str(&word(rng, LOW, 8));
        if rng.random_bool(0.3) {
            s.push_str([".", "_", "__", "-", "--"][rng.random_range(0..5)]);
            s.push_str(&word(rng, LOW, 5));
        }
    }
    if rng.random_bool(0.7) {
        s.push(':');
        s.push_str(&word(
            rng,
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_",
            1,
        ));
        s.push_str(&word(
            rng,
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-",
            20,
        ));
    }
    if rng.random_bool(0.3) {
        s.push_str(&format!("@sha256:{}", hex(rng, 64)));
    }
    s
}

/// A string of reference-ish characters, or a valid one mutated.
fn noisy_reference(rng: &mut StdRng) -> String {
    if rng.random_bool(0.5) {
        let v = valid_reference(rng);
        return String::from_utf8_lossy(&mutate(rng, v.as_bytes())).into_owned();
    }
    const ALPHABET: &[u8] = b"abcz019AZ./:@_-[]";
    let n = rng.random_range(0..70);
    let mut s: String = (0..n)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    if rng.random_bool(0.1) {
        s = hex(rng, 64);
    }
    s
}

#[test]
fn image_references_are_accepted_only_as_distribution_reference_accepts_them() {
    let re = reference_grammar();
    // Kept cases: Docker refuses a 64-hex name (an image id).
    let id = "a".repeat(64);
    assert!(ImageRef::parse(&id).is_err());
    assert!(!docker_accepts(&re, &id));
    assert!(
        ImageRef::parse(&format!("{id}:1")).is_ok(),
        "only the whole input"
    );
    assert!(ImageRef::parse(&format!("r.io/{}", "a".repeat(260))).is_err());
    // Found by this test: `Registry/app` is a host to Docker only for its
    // capital; lowercased it read back as docker.io/registry/app.
    assert!(ImageRef::parse("lcwlqM/mfx7:tag").is_err());
    // Found by this test: a digest algorithm component must start with a
    // letter (`sha2-6` is no algorithm).
    assert!(ImageRef::parse(&format!("r.io/a@sha2-6:{}", "8".repeat(47))).is_err());
    assert!(ImageRef::parse(&format!("r.io/a@sha3+b64:{}", "8".repeat(47))).is_ok());
    assert_eq!(
        ImageRef::parse("LOCALHOST:5000/app").unwrap().to_string(),
        "localhost:5000/app:latest"
    );
    fuzz(
        "references",
        cases(20_000),
        |rng| {
            if rng.random_bool(0.4) {
                (true, valid_reference(rng))
            } else {
                (false, noisy_reference(rng))
            }
        },
        |(valid, s)| {
            let parsed = ImageRef::parse(s);
            if *valid {
                assert!(docker_accepts(&re, s), "the generator made an invalid one");
                assert!(parsed.is_ok(), "refused a valid reference: {parsed:?}");
            }
            if let Ok(r) = parsed {
                assert!(docker_accepts(&re, s), "accepted what Docker refuses");
                // Normalised once: parsing the normal form gives it back.
                let normal = r.to_string();
                assert!(docker_accepts(&re, &normal), "normal form {normal}");
                assert_eq!(ImageRef::parse(&normal).as_ref(), Ok(&r), "{normal}");
            }
        },
    );
}

/// A JSON value shaped like push payloads: their keys, strings that are
/// references, digests, tags or junk, and wrong types anywhere.
fn json_value(rng: &mut StdRng, depth: u32) -> serde_json::Value {
    use serde_json::Value;
    const KEYS: &[&str] = &[
        "events",
        "action",
        "target",
        "repository",
        "tag",
        "digest",
        "mediaType",
        "request",
        "host",
        "push_data",
        "repo_name",
        "namespace",
        "type",
        "event_data",
        "resources",
        "resource_url",
        "name",
        "package",
        "package_type",
        "package_version",
        "container_metadata",
        "url",
        "id",
        "occur_at",
    ];
    const STRINGS: &[&str] = &[
        "push",
        "pull",
        "PUSH_ARTIFACT",
        "published",
        "CONTAINER",
        "container",
        "app",
        "base/python",
        "sha256:aa",
        "3.12",
        "",
        "127.0.0.1:5000",
        "harbor.example.com/proj/app:v2",
        ":::",
        "@@",
        "application/vnd.oci.image.manifest.v1+json",
        "A/B",
        "../..",
        "x:y@z",
    ];
    let pick = rng.random_range(0..10);
    if depth == 0 || pick < 4 {
        return match rng.random_range(0..6) {
            0 => Value::Null,
            1 => Value::Bool(rng.random()),
            2 => Value::from(rng.random::<i64>()),
            3 => Value::from(format!("sha256:{}", hex(rng, 64))),
            _ => Value::from(STRINGS[rng.random_range(0..STRINGS.len())]),
        };
    }
    if pick < 6 {
        return Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| json_value(rng, depth - 1))
                .collect(),
        );
    }
    let mut m = serde_json::Map::new();
    for _ in 0..rng.random_range(0..6) {
        m.insert(
            KEYS[rng.random_range(0..KEYS.len())].to_string(),
            json_value(rng, depth - 1),
        );
    }
    Value::Object(m)
}

#[test]
fn push_parsers_never_panic_and_only_yield_references() {
    let samples: [&[u8]; 5] = [
        br#"{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"base/python","digest":"sha256:aa","tag":"3.12"},"request":{"host":"127.0.0.1:5000"}}]}"#,
        br#"{"push_data":{"tag":"7","pusher":"x"},"repository":{"repo_name":"bitnami/redis"}}"#,
        br#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"digest":"sha256:cc","tag":"v2","resource_url":"harbor.example.com/proj/app:v2"}],"repository":{"name":"app"}}}"#,
        br#"{"id":"1","action":"push","target":{"repository":"app","tag":"v1","digest":"sha256:dd"},"request":{"host":"myreg.azurecr.io"}}"#,
        br#"{"action":"published","package":{"name":"api","namespace":"Org","package_type":"CONTAINER","package_version":{"container_metadata":{"tag":{"name":"v3","digest":"sha256:ee"}}}}}"#,
    ];
    let sources = ["distribution", "dockerhub", "harbor", "acr", "ghcr"];
    let yielded = std::cell::Cell::new(0usize);
    fuzz(
        "push",
        cases(20_000),
        |rng| {
            let source = sources[rng.random_range(0..sources.len())];
            let body = match rng.random_range(0..3) {
                0 => {
                    let sample = samples[rng.random_range(0..samples.len())];
                    mutate(rng, sample)
                }
                1 => serde_json::to_vec(&json_value(rng, 5)).unwrap(),
                _ => {
                    // A sample with one value replaced by a random one.
                    let mut v: serde_json::Value =
                        serde_json::from_slice(samples[rng.random_range(0..samples.len())])
                            .unwrap();
                    if let Some(o) = v.as_object_mut()
                        && let Some(k) = o.keys().nth(rng.random_range(0..o.len().max(1))).cloned()
                    {
                        o.insert(k, json_value(rng, 3));
                    }
                    serde_json::to_vec(&v).unwrap()
                }
            };
            (source, body)
        },
        |(source, body)| {
            let src = PushSource::parse(source).unwrap();
            if let Ok(pushed) = parse_push(src, body) {
                for p in &pushed {
                    assert!(!p.repository.is_empty() && !p.tag.is_empty(), "{p:?}");
                    yielded.set(yielded.get() + 1);
                }
            }
        },
    );
    assert!(
        yielded.get() > 0,
        "no generated payload was ever a push: the generator is useless"
    );
}

#[test]
fn standard_webhooks_signatures_verify_only_unchanged_deliveries() {
    use base64::Engine;
    fuzz(
        "webhooks",
        cases(5_000),
        |rng| {
            let raw: Vec<u8> = (0..rng.random_range(1..48)).map(|_| rng.random()).collect();
            let secret = if rng.random_bool(0.5) {
                format!(
                    "whsec_{}",
                    base64::engine::general_purpose::STANDARD.encode(&raw)
                )
            } else {
                String::from_utf8_lossy(&raw).into_owned()
            };
            let len = rng.random_range(0..20);
            let id = format!("msg_{}", hex(rng, len));
            let ts = rng.random_range(0..4_000_000_000i64);
            let body: Vec<u8> = (0..rng.random_range(0..300))
                .map(|_| rng.random())
                .collect();
            let flip = rng.random_range(0..usize::MAX);
            (secret, id, ts, body, flip)
        },
        |(secret, id, ts, body, flip)| {
            let key = signing_key(secret);
            let sig = sign(&key, id, *ts, body);
            assert!(sig.starts_with("v1,"), "{sig}");
            assert!(verify(&key, id, *ts, body, &sig));
            // Several signatures in the header (key rotation): one matches.
            assert!(verify(
                &key,
                id,
                *ts,
                body,
                &format!("v1,bm9wZQ== {sig} v2,x")
            ));
            assert!(!verify(&key, id, *ts, body, "v1,bm9wZQ=="));
            assert!(!verify(&key, id, *ts, body, ""));
            // Any change to what is signed fails.
            assert!(!verify(&key, id, ts + 1, body, &sig));
            assert!(!verify(&key, &format!("{id}x"), *ts, body, &sig));
            let mut changed = body.clone();
            if changed.is_empty() {
                changed.push(0);
            } else {
                let i = flip % changed.len();
                changed[i] ^= 1 << (flip % 8);
            }
            assert!(!verify(&key, id, *ts, &changed, &sig));
            let mut other = key.clone();
            other.push(1);
            assert!(!verify(&other, id, *ts, body, &sig));
        },
    );
}
