//! Gates in the pipeline, through `lineaged serve`: the CI peer signs what
//! it builds (cosign, classic) except the repos it is told not to; a rule
//! asks for the signature before deploy and before children build. An
//! unsigned rebuilt parent is refused and its children are never built,
//! the rest finishes; the refusal shows in the API, events, metrics and
//! `lineaged status`. SIGKILLs while images verify, on both backends, lose
//! and double nothing.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::TestDb;
use support::fleet::{Lineage, Serve, World, push_with_kills, rollouts_finished, until};
use support::signer::Signer;

async fn get(url: String) -> Value {
    let r = reqwest::get(&url).await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.json().await.unwrap()
}

/// A world whose managed images (`team/**`) need a signature by the
/// peer's key before deploy and cascade.
async fn gated_world(db_url: &str, deploy: &[&str]) -> (World, tempfile::TempDir) {
    let signer = Arc::new(Signer::new());
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cosign.pub");
    std::fs::write(&key, signer.public_pem()).unwrap();
    let policy = format!(
        "policy:\n  signature_grace: 2s\n  rules:\n    - images: [\"{{registry}}/team/**\"]\n      apply_to: [deploy, cascade]\n      signatures:\n        authorities:\n          - cosign: {{ public_key_file: \"{}\" }}\n",
        key.display()
    );
    let w = World::with(Lineage::issue(), db_url, deploy, "webhook", &policy).await;
    *w.ci.signer.lock().unwrap() = Some(signer);
    (w, keys)
}

fn state_of(rows: &[lineaged::store::RolloutImage], w: &World, repo: &str) -> String {
    rows.iter()
        .find(|r| r.image == w.full(repo))
        .map(|r| r.state.to_string())
        .unwrap_or_else(|| "absent".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_rebuilt_parent_is_refused_and_its_children_are_not_built() {
    for backend in ["sqlite", "postgres"] {
        let db = TestDb::new(backend).await;
        let (w, _keys) = gated_world(db.url(), &["team/x"]).await;
        // W is built unsigned. base/a: P, then X and W, then E (on X and W).
        w.ci.unsigned.lock().unwrap().insert("team/w".into());
        let serve = Serve::start(&w.cfg, "gate-node");
        let store = w.store_when_observed().await;
        w.push_base("base/a").await;
        let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
        assert_eq!(states, vec!["partially_failed"], "{backend}");
        let rollout = store.rollouts(1).await.unwrap().remove(0);
        let rows = store.rollout_images(rollout.id).await.unwrap();
        let s = |r: &str| state_of(&rows, &w, r);
        assert_eq!(
            (s("team/p"), s("team/x"), s("team/w"), s("team/e")),
            (
                "done".into(),
                "done".into(),
                "refused".into(),
                "blocked".into()
            ),
            "{backend}"
        );
        let wrow = rows.iter().find(|r| r.image == w.full("team/w")).unwrap();
        let reason = wrow.reason.clone().unwrap();
        assert!(
            reason.starts_with("signature gate: 0 of 1 required signatures verified")
                && reason.contains("no cosign signature"),
            "{backend}: {reason}"
        );
        let erow = rows.iter().find(|r| r.image == w.full("team/e")).unwrap();
        let why = erow.reason.clone().unwrap();
        assert!(
            why.starts_with(&format!("parent {} refused", w.full("team/w"))),
            "{why}"
        );
        // E was never triggered; X (signed) was deployed once.
        let rebuilt = w.ci.ids("rebuild");
        assert!(
            !rebuilt.contains_key(&w.full("team/e")),
            "{backend}: E built on a refused parent"
        );
        assert_eq!(w.ci.ids("deploy").len(), 1, "{backend}");
        // Events, API, metrics, status.
        let events = store.events_after(0, 10_000).await.unwrap();
        let of = |kind: &str, repo: &str| {
            events
                .iter()
                .filter(|e| e.kind == kind && e.image.as_deref() == Some(&w.full(repo)))
                .count()
        };
        assert_eq!(
            (
                of("gate_refused", "team/w"),
                of("gate_passed", "team/p"),
                of("gate_passed", "team/x")
            ),
            (1, 1, 1),
            "{backend}"
        );
        let detail = get(format!(
            "{}/images/{}",
            w.api(),
            urlencode(&w.full("team/w"))
        ))
        .await;
        assert_eq!(
            detail["gates"][0]["verdicts"][0]["result"], "refused",
            "{detail}"
        );
        assert_eq!(detail["rollouts"][0]["state"], "refused");
        let metrics = reqwest::get(format!("{}/metrics", w.api().trim_end_matches("/api/v1")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics
                .contains("lineaged_gate_results_total{gate=\"signature\",result=\"refused\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("lineaged_gate_results_total{gate=\"signature\",result=\"passed\"} 2"),
            "{metrics}"
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lineaged"))
            .args(["status", "--url", w.api().trim_end_matches("/api/v1")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Refused by gates (newest rollouts) (1)")
                && text.contains("no cosign signature"),
            "{backend}:\n{text}"
        );
        serve.stop();
        db.finish().await;
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// SIGKILLs right after builds land (images verifying), on both backends:
/// every affected image rebuilt under one key per push, every rollout
/// succeeds, the deploy goes out once per push, cached verdicts hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_while_images_verify_double_nothing() {
    for backend in ["sqlite", "postgres"] {
        let db = TestDb::new(backend).await;
        let (w, _keys) = gated_world(db.url(), &["team/w"]).await;
        let mut serve = Serve::start(&w.cfg, "gate-node");
        let store = w.store_when_observed().await;
        for (round, base) in ["base/a", "base/b", "base/a"].into_iter().enumerate() {
            // The build's callback lands ~200 ms after its trigger: kill around it.
            let (next, states) = push_with_kills(
                &w,
                &store,
                serve,
                "gate-node",
                base,
                3,
                (150, 150),
                round + 1,
            )
            .await;
            serve = next;
            assert!(
                states.iter().all(|s| s == "succeeded"),
                "{backend} round {round}: {states:?}"
            );
        }
        // base/a twice: P, X, W, E; base/b: T, X, E.
        let per: std::collections::HashMap<String, usize> =
            w.ci.ids("rebuild")
                .iter()
                .map(|(i, k)| (i.rsplit_once('/').unwrap().1.to_string(), k.len()))
                .collect();
        let want: std::collections::HashMap<String, usize> =
            [("p:1", 2), ("w:1", 2), ("t:1", 1), ("x:1", 3), ("e:1", 3)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        assert_eq!(per, want, "{backend}: rebuild keys per image");
        let deploys: usize = w.ci.ids("deploy").values().map(|k| k.len()).sum();
        assert_eq!(
            deploys, 2,
            "{backend}: W deployed once per push that rebuilt it"
        );
        // Every verdict recorded is a pass.
        let events = store.events_after(0, 100_000).await.unwrap();
        assert_eq!(
            events.iter().filter(|e| e.kind == "gate_refused").count(),
            0,
            "{backend}"
        );
        serve.stop();
        db.finish().await;
    }
}

/// A digest a gate refused stays refused for children in later rollouts:
/// W (unsigned) is refused when base/a moves; when base/b moves later, E
/// (on X and W) is blocked naming W's refused digest, never built on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_digest_is_never_built_on_in_a_later_rollout() {
    let db = TestDb::new("sqlite").await;
    let (w, _keys) = gated_world(db.url(), &[]).await;
    w.ci.unsigned.lock().unwrap().insert("team/w".into());
    let serve = Serve::start(&w.cfg, "gate-node");
    let store = w.store_when_observed().await;
    w.push_base("base/a").await;
    rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    let e_builds = |w: &World| {
        w.ci.ids("rebuild")
            .get(&w.full("team/e"))
            .map_or(0, |k| k.len())
    };
    assert_eq!(e_builds(&w), 0);
    // W's tag now points at the refused digest (the watcher sees the push).
    until(
        "W's rebuilt digest observed",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            let name = w.full("team/w");
            async move { store.digest_history(&name, 10).await.unwrap().len() >= 2 }
        },
    )
    .await;
    w.push_base("base/b").await;
    // base/b's rollout (T, X, E) finishes; reconcile may also have tried E
    // on its own (W moved) in a rollout of its own.
    let t = w.full("team/t");
    until("base/b's rollout finished", Duration::from_secs(60), || {
        let (store, t) = (store.clone(), t.clone());
        async move {
            for r in store.rollouts(10).await.unwrap() {
                let rows = store.rollout_images(r.id).await.unwrap();
                if r.state != "running" && rows.iter().any(|i| i.image == t) {
                    return true;
                }
            }
            false
        }
    })
    .await;
    let mut seen_e = 0;
    let mut rows = Vec::new();
    for r in store.rollouts(10).await.unwrap() {
        let these = store.rollout_images(r.id).await.unwrap();
        if let Some(e) = these.iter().find(|i| i.image == w.full("team/e")) {
            seen_e += 1;
            assert_eq!(e.state.to_string(), "blocked", "rollout {}", r.id);
            let why = e.reason.clone().unwrap();
            assert!(
                why.contains(&w.full("team/w")) && why.contains("refused"),
                "{why}"
            );
        }
        if these.iter().any(|i| i.image == t) {
            rows = these;
        }
    }
    assert!(seen_e >= 2, "E was in base/a's and base/b's rollouts");
    let e = rows.iter().find(|r| r.image == w.full("team/e")).unwrap();
    let why = e.reason.clone().unwrap();
    assert!(
        why.starts_with(&format!("parent {} at sha256:", w.full("team/w")))
            && why.contains("was refused (signature gate"),
        "{why}"
    );
    assert_eq!(e_builds(&w), 0, "E built on a refused parent");
    assert_eq!(state_of(&rows, &w, "team/x"), "done");
    serve.stop();
    db.finish().await;
}

/// An external base under a cascade rule is checked before anything
/// builds on it: unsigned, nothing is rebuilt; signed, the rollout runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_external_base_does_not_cascade() {
    let signer = Arc::new(Signer::new());
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cosign.pub");
    std::fs::write(&key, signer.public_pem()).unwrap();
    let policy = format!(
        "policy:\n  signature_grace: 2s\n  rules:\n    - images: [\"{{registry}}/base/**\"]\n      apply_to: [cascade]\n      signatures:\n        authorities:\n          - cosign: {{ public_key_file: \"{}\" }}\n",
        key.display()
    );
    let db = TestDb::new("postgres").await;
    let w = World::with(Lineage::issue(), db.url(), &[], "webhook", &policy).await;
    let serve = Serve::start(&w.cfg, "gate-node");
    let store = w.store_when_observed().await;
    w.push_base("base/b").await;
    let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(states, vec!["failed"]);
    assert_eq!(w.ci.count(), 0, "nothing built on an unsigned base");
    let rollout = store.rollouts(1).await.unwrap().remove(0);
    let rows = store.rollout_images(rollout.id).await.unwrap();
    assert_eq!(state_of(&rows, &w, "base/b"), "refused");
    assert_eq!(state_of(&rows, &w, "team/t"), "blocked");
    // Signed this time (before the tag moves): T, X and E are rebuilt.
    let push = |tag: &'static str| {
        let reg = w.reg.clone();
        async move {
            reg.push_image(
                "base/b",
                tag,
                "base/b signed",
                ("linux", "amd64"),
                Default::default(),
                Default::default(),
            )
            .await
            .0
        }
    };
    let d = push("staging").await;
    let r = lineaged::registry::ImageRef::parse(&w.full("base/b")).unwrap();
    support::signer::push_signatures(
        &w.reg,
        "base/b",
        &d,
        &[support::signer::layer(&signer, &r, &d)],
    )
    .await;
    assert_eq!(push("1").await, d);
    let states = rollouts_finished(&store, 2, Duration::from_secs(60)).await;
    assert_eq!(states[0], "succeeded", "{states:?}");
    assert_eq!(w.ci.ids("rebuild").len(), 3);
    serve.stop();
    db.finish().await;
}

/// `scan: { source: harbor }`: an image waits in `verifying` until Harbor's
/// SCANNING_COMPLETED event for its digest arrives on the receiver, then
/// passes or is refused by its counts; an event for nothing tracked is a
/// 422 with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harbor_scan_events_decide_the_scan_gate() {
    let policy = "receivers:\n  harbor: { token_env: T_CI_TOKEN }\npolicy:\n  rules:\n    - images: [\"{registry}/team/**\"]\n      apply_to: [cascade]\n      scan: { max_severity: high, source: harbor }\n";
    let db = TestDb::new("sqlite").await;
    let w = World::with(Lineage::issue(), db.url(), &[], "webhook", policy).await;
    let serve = Serve::start(&w.cfg, "gate-node");
    let store = w.store_when_observed().await;
    let hook = format!("{}/hooks/registry/harbor", w.api());
    let http = reqwest::Client::new();
    let send = |repo: &str, digest: &str, counts: serde_json::Value| {
        let body = serde_json::json!({
            "type": "SCANNING_COMPLETED", "occur_at": 1680502375, "operator": "auto",
            "event_data": { "resources": [{
                "digest": digest, "tag": "1", "resource_url": format!("{}/{repo}:1", w.reg.addr),
                "scan_overview": { "application/vnd.security.vulnerability.report; version=1.1": {
                    "report_id": "r1", "scan_status": "Success", "severity": "High", "duration": 2,
                    "summary": { "total": 3, "fixable": 1, "summary": counts },
                    "scanner": { "name": "Trivy", "vendor": "Aqua Security", "version": "v0.50.0" }, "complete_percent": 100 } } }],
                "repository": { "name": repo, "namespace": "team" } },
        });
        http.post(&hook)
            .bearer_auth(support::fleet::TOKEN)
            .json(&body)
            .send()
    };
    // Waits until `repo` verifies; returns its built digest.
    let verifying = |repo: &'static str| {
        let (store, name) = (store.clone(), w.full(repo));
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                for r in store.rollouts(5).await.unwrap() {
                    for i in store.rollout_images(r.id).await.unwrap() {
                        if i.image == name && i.state == lineaged::rollout::ImageState::Verifying {
                            return i.built_digest.unwrap();
                        }
                    }
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} never verified"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    w.push_base("base/b").await;
    let t = verifying("team/t").await;
    // Nothing else is built while T waits for its scan.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(w.ci.ids("rebuild").len(), 1);
    let r = send("team/t", &t, serde_json::json!({ "High": 1, "Low": 2 }))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let x = verifying("team/x").await;
    let r = send("team/x", &x, serde_json::json!({ "Critical": 1, "Low": 2 }))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(states, vec!["partially_failed"]);
    let rollout = store.rollouts(1).await.unwrap().remove(0);
    let rows = store.rollout_images(rollout.id).await.unwrap();
    assert_eq!(state_of(&rows, &w, "team/t"), "done");
    assert_eq!(state_of(&rows, &w, "team/x"), "refused");
    assert_eq!(state_of(&rows, &w, "team/e"), "blocked");
    let why = rows
        .iter()
        .find(|r| r.image == w.full("team/x"))
        .unwrap()
        .reason
        .clone()
        .unwrap();
    assert!(
        why.starts_with("scan gate: Trivy (Harbor) found 1 over high"),
        "{why}"
    );
    // A scan of something lineaged does not track.
    let r = send("other/thing", &t, serde_json::json!({ "Low": 3 }))
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not a tracked repository"),
        "{body}"
    );
    serve.stop();
    db.finish().await;
}

/// A digest judged once is not checked again under the same policy: an
/// external base moves D1 → D2 → back to D1 after D1's signature was
/// replaced by a foreign one; the cached pass holds (while `lineaged
/// verify`, which never caches, refuses D1 now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_is_cached_per_digest_and_policy() {
    let signer = Arc::new(Signer::new());
    let foreign = Signer::new();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cosign.pub");
    std::fs::write(&key, signer.public_pem()).unwrap();
    let policy = format!(
        "policy:\n  signature_grace: 2s\n  rules:\n    - images: [\"{{registry}}/base/**\"]\n      apply_to: [cascade]\n      signatures:\n        authorities:\n          - cosign: {{ public_key_file: \"{}\" }}\n",
        key.display()
    );
    let db = TestDb::new("sqlite").await;
    let w = World::with(Lineage::issue(), db.url(), &[], "webhook", &policy).await;
    let serve = Serve::start(&w.cfg, "gate-node");
    let store = w.store_when_observed().await;
    let r = lineaged::registry::ImageRef::parse(&w.full("base/b")).unwrap();
    let d1 = push_signed(&w, &r, "base/b one", &signer).await;
    assert_eq!(
        rollouts_finished(&store, 1, Duration::from_secs(60)).await,
        vec!["succeeded"]
    );
    push_signed(&w, &r, "base/b two", &signer).await;
    assert_eq!(
        rollouts_finished(&store, 2, Duration::from_secs(60)).await[0],
        "succeeded"
    );
    // D1's signature is now a foreign key's; the tag moves back to D1.
    let l = support::signer::layer(&foreign, &r, &d1);
    support::signer::push_signatures(&w.reg, "base/b", &d1, &[l]).await;
    assert_eq!(push_tag_back(&w, "base/b one").await, d1);
    let states = rollouts_finished(&store, 3, Duration::from_secs(60)).await;
    assert_eq!(states[0], "succeeded", "the cached pass holds: {states:?}");
    let cfg = w.cfg.to_string_lossy().into_owned();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lineaged"))
        .args(["verify", "-c", &cfg, &format!("{}/base/b@{d1}", w.reg.addr)])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    serve.stop();
    db.finish().await;
}

/// Pushes `seed` as base/b:1, signed by `by` before the tag moves.
async fn push_signed(
    w: &World,
    r: &lineaged::registry::ImageRef,
    seed: &str,
    by: &Signer,
) -> String {
    let staged = w
        .reg
        .push_image(
            "base/b",
            "staging",
            seed,
            ("linux", "amd64"),
            Default::default(),
            Default::default(),
        )
        .await
        .0;
    let l = support::signer::layer(by, r, &staged);
    support::signer::push_signatures(&w.reg, "base/b", &staged, &[l]).await;
    push_tag_back(w, seed).await
}

/// Moves base/b:1 back to the image `seed` made (same content, same digest).
async fn push_tag_back(w: &World, seed: &str) -> String {
    w.reg
        .push_image(
            "base/b",
            "1",
            seed,
            ("linux", "amd64"),
            Default::default(),
            Default::default(),
        )
        .await
        .0
}
