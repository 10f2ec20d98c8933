//! Approvals through `lineaged serve`, end to end: base push → rebuild →
//! signature gate → approval (granted through the API, refused from the
//! shell) → the Kubernetes workload patched to the built digest and rolled
//! out. Pending approvals survive a SIGKILL; an expired build approval
//! refuses the image and blocks its children; a newer base withdraws a
//! deploy approval for the digest it replaces.

mod support;

use std::sync::Arc;
use std::time::Duration;

use lineaged::store::{RolloutImage, Store};
use serde_json::{Value, json};
use support::TestDb;
use support::fleet::{Lineage, Serve, TOKEN, World, rollouts_finished, until};
use support::platform::{K8S, K8S_ENTRY, Platform};
use support::signer::Signer;

/// Managed images need the CI's cosign signature before deploy and
/// cascade, and `approval` (YAML flow mapping) before `before`.
async fn world(db: &str, plat: &str, approval: &str) -> (World, Arc<Signer>, tempfile::TempDir) {
    let signer = Arc::new(Signer::new());
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cosign.pub");
    std::fs::write(&key, signer.public_pem()).unwrap();
    let policy = format!(
        "policy:\n  signature_grace: 2s\n  rules:\n    - images: [\"{{registry}}/team/**\"]\n      apply_to: [deploy, cascade]\n      signatures:\n        authorities:\n          - cosign: {{ public_key_file: \"{}\" }}\n      approval: {approval}\n",
        key.display()
    );
    let w = World::with_deployer(
        Lineage::issue(),
        db,
        &["team/w", "team/x"],
        "webhook",
        &policy,
        &K8S.replace("{plat}", plat),
        K8S_ENTRY,
    )
    .await;
    *w.ci.signer.lock().unwrap() = Some(signer.clone());
    // A write token for the release manager (the daemon gets T_CI_TOKEN).
    let w = w.with_write_token();
    (w, signer, keys)
}

async fn pending(w: &World) -> Vec<Value> {
    let v: Value = reqwest::get(format!("{}/approvals?state=pending", w.api()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["approvals"].as_array().cloned().unwrap_or_default()
}

async fn until_pending(w: &World, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{}/approvals?state=pending", w.api())).await
            && let Ok(v) = r.json::<Value>().await
            && v["approvals"].as_array().map_or(0, Vec::len) >= n
        {
            return v["approvals"].as_array().unwrap().clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {n} pending approvals"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(url: String, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(url).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn rows(store: &Store) -> Vec<RolloutImage> {
    let r = store.rollouts(1).await.unwrap().remove(0);
    store.rollout_images(r.id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_waits_for_a_person_and_survives_a_restart() {
    for backend in ["sqlite", "postgres"] {
        let db = TestDb::new(backend).await;
        let (plat, url) = Platform::start().await;
        let (w, _signer, _keys) = world(db.url(), &url, "{ expires: 1h }").await;
        plat.add_workloads(&w, &["team/w", "team/x"]);
        let serve = Serve::start(&w.cfg, "approve-node");
        let store = w.store_when_observed().await;
        w.push_base("base/a").await;
        // X and W are built, signed, verified, and wait for a person.
        let asked = until_pending(&w, 2).await;
        assert!(
            plat.writes.lock().unwrap().is_empty(),
            "{backend}: deployed before approval"
        );
        let id_of = |repo: &str| {
            asked
                .iter()
                .find(|a| a["image"] == w.full(repo))
                .unwrap_or_else(|| panic!("{repo}: {asked:?}"))["id"]
                .as_i64()
                .unwrap()
        };
        let (x_id, w_id) = (id_of("team/x"), id_of("team/w"));
        for a in &asked {
            assert_eq!(a["stage"], "deploy");
            assert!(a["digest"].as_str().unwrap().starts_with("sha256:"));
        }
        // A restart keeps them.
        serve.kill9();
        let serve = Serve::start(&w.cfg, "approve-node");
        until("API back", Duration::from_secs(30), || async {
            reqwest::get(format!("{}/approvals", w.api())).await.is_ok()
        })
        .await;
        assert_eq!(pending(&w).await.len(), 2, "{backend}: lost on restart");
        // No token, no decision.
        let approve_x = format!("{}/approvals/{x_id}/approve", w.api());
        let (status, _) = post(approve_x.clone(), None, json!({})).await;
        assert_eq!(status, 401);
        let (status, body) = post(
            approve_x.clone(),
            Some(TOKEN),
            json!({ "reason": "CAB-881" }),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (&body["state"], &body["decided_by"], &body["reason"]),
            (
                &json!("approved"),
                &json!("release-manager"),
                &json!("CAB-881")
            )
        );
        // Twice is a conflict.
        let (status, body) = post(approve_x, Some(TOKEN), json!({})).await;
        assert_eq!(status, 409, "{body}");
        // W is rejected from the shell.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lineaged"))
            .args([
                "reject",
                &w_id.to_string(),
                "--reason",
                "freeze until Monday",
            ])
            .env("LINEAGED_URL", w.api().trim_end_matches("/api/v1"))
            .env("LINEAGED_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&format!("approval {w_id} rejected")),
            "{out:?}"
        );
        let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
        assert_eq!(states, vec!["partially_failed"], "{backend}");
        let rows = rows(&store).await;
        let state = |repo: &str| {
            rows.iter()
                .find(|r| r.image == w.full(repo))
                .unwrap()
                .clone()
        };
        assert_eq!(state("team/x").state, "done", "{backend}");
        let wr = state("team/w");
        assert_eq!(wr.state, "refused");
        assert_eq!(
            wr.reason.as_deref(),
            Some("approval rejected by release-manager: freeze until Monday")
        );
        // X's workload runs the approved digest; W's was never touched.
        let d = plat.deployment("shop", "x");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            format!(
                "{}/team/x@{}",
                w.reg.addr,
                state("team/x").built_digest.unwrap()
            )
        );
        assert_eq!(d["status"]["updatedReplicas"], 2);
        assert!(plat.writes_to("k8s-patch", "shop/w").is_empty());
        assert_eq!(plat.writes_to("k8s-patch", "shop/x").len(), 1);
        let events = store.events_after(0, 10_000).await.unwrap();
        let count = |k: &str| events.iter().filter(|e| e.kind == k).count();
        assert_eq!(
            (
                count("approval_pending"),
                count("approval_granted"),
                count("approval_rejected"),
                count("gate_passed") >= 2
            ),
            (2, 1, 1, true),
            "{backend}"
        );
        // `lineaged status` shows none pending now; `lineaged approvals
        // --all` lists both decisions.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lineaged"))
            .args(["approvals", "--all"])
            .env("LINEAGED_URL", w.api().trim_end_matches("/api/v1"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("approved") && text.contains("rejected"),
            "{text}"
        );
        serve.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_build_approval_refuses_the_image_and_blocks_its_children() {
    let db = TestDb::new("sqlite").await;
    let (_plat, url) = Platform::start().await;
    let (w, _signer, _keys) = world(db.url(), &url, "{ before: build, expires: 2s }").await;
    let _serve = Serve::start(&w.cfg, "expiry-node");
    let store = w.store_when_observed().await;
    w.push_base("base/a").await;
    let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(states, vec!["failed"]);
    let rows = rows(&store).await;
    let get = |repo: &str| rows.iter().find(|r| r.image == w.full(repo)).unwrap();
    assert_eq!(get("team/p").state, "refused");
    assert_eq!(
        get("team/p").reason.as_deref(),
        Some("approval expired after 2s (rejected)")
    );
    for child in ["team/x", "team/w", "team/e"] {
        assert_eq!(get(child).state, "blocked", "{child}");
    }
    assert!(w.ci.ids("rebuild").is_empty(), "built without approval");
    let all: Value = reqwest::get(format!("{}/approvals?state=expired", w.api()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["approvals"][0]["decided_by"], "lineaged");
    assert_eq!(all["approvals"][0]["stage"], "build");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_base_withdraws_the_approval_of_the_digest_it_replaces() {
    let db = TestDb::new("postgres").await;
    let (plat, url) = Platform::start().await;
    let (w, _signer, _keys) = world(db.url(), &url, "{ expires: 1h }").await;
    plat.add_workloads(&w, &["team/w", "team/x"]);
    let _serve = Serve::start(&w.cfg, "reask-node");
    let store = w.store_when_observed().await;
    w.push_base("base/a").await;
    let first = until_pending(&w, 2).await;
    w.push_base("base/a").await;
    // The old requests are superseded; new ones ask about the new digests.
    let (w2, first) = (&w, &first);
    until("re-asked", Duration::from_secs(60), || async move {
        let p = pending(w2).await;
        p.len() == 2
            && p.iter().all(|a| {
                first
                    .iter()
                    .all(|f| f["id"] != a["id"] && f["digest"] != a["digest"])
            })
    })
    .await;
    let superseded: Value = reqwest::get(format!("{}/approvals?state=superseded", w.api()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(superseded["approvals"].as_array().unwrap().len(), 2);
    for a in pending(&w).await {
        let (status, body) = post(
            format!("{}/approvals/{}/approve", w.api(), a["id"]),
            Some(TOKEN),
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(states, vec!["succeeded"]);
    assert_eq!(plat.writes_to("k8s-patch", "shop/x").len(), 1);
}
