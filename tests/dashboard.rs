//! The dashboard in a real browser: Debian's Chromium driven by
//! playwright-core (`tests/browser/approvals.mjs`, installed by
//! scripts/test.sh) against `lineaged serve` with two deploys waiting for
//! approval. The page lists them with approve/reject buttons, refuses a
//! decision without a token, approves one and rejects the other with the
//! write token typed into the page; the daemon records both with the
//! token's name. `LINEAGED_UPDATE_SCREENSHOTS=1` writes the screenshot to
//! docs/img/.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::TestDb;
use support::fleet::{Lineage, Serve, TOKEN, World, rollouts_finished, until};
use support::platform::{K8S, K8S_ENTRY, Platform};
use support::signer::Signer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_decided_from_the_dashboard_in_chromium() {
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").exists()
            && Path::new("/usr/bin/chromium").exists(),
        "playwright-core (npm) and chromium (Debian) must be installed; scripts/test.sh installs them"
    );
    let db = TestDb::new("sqlite").await;
    let (plat, url) = Platform::start().await;
    let signer = Arc::new(Signer::new());
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cosign.pub");
    std::fs::write(&key, signer.public_pem()).unwrap();
    let policy = format!(
        "policy:\n  rules:\n    - images: [\"{{registry}}/team/**\"]\n      signatures:\n        authorities:\n          - cosign: {{ public_key_file: \"{}\" }}\n      approval: {{ expires: 4h }}\n",
        key.display()
    );
    let w = World::with_deployer(
        Lineage::issue(),
        db.url(),
        &["team/w", "team/x"],
        "webhook",
        &policy,
        &K8S.replace("{plat}", &url),
        K8S_ENTRY,
    )
    .await;
    *w.ci.signer.lock().unwrap() = Some(signer);
    let w = w.with_write_token();
    plat.add_workloads(&w, &["team/w", "team/x"]);
    let _serve = Serve::start(&w.cfg, "browser-node");
    let store = w.store_when_observed().await;
    w.push_base("base/a").await;
    let api = w.api();
    until("two approvals pending", Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let Ok(r) = reqwest::get(format!("{api}/approvals?state=pending")).await else {
                return false;
            };
            let v: Value = r.json().await.unwrap_or_default();
            v["approvals"].as_array().map_or(0, Vec::len) == 2
        }
    })
    .await;
    let out_dir = tempfile::tempdir().unwrap();
    let shot = out_dir.path().join("dashboard-approvals.png");
    let base = api.trim_end_matches("/api/v1").to_string();
    let out = tokio::process::Command::new("node")
        .arg(browser.join("approvals.mjs"))
        .args([&base, TOKEN, "2", shot.to_str().unwrap()])
        .output()
        .await
        .expect("node (Debian nodejs) must be installed");
    assert!(
        out.status.success(),
        "browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot"
    );
    if std::env::var_os("LINEAGED_UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("dashboard-approvals.png"), &png).unwrap();
    }
    // What the daemon recorded: both decisions, by the token's name.
    let all: Value = reqwest::get(format!("{api}/approvals"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = all["approvals"].as_array().unwrap();
    let approved = list.iter().find(|a| a["id"] == report["approved"]).unwrap();
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["decided_by"], "release-manager");
    assert_eq!(approved["reason"], "checked in Chromium");
    assert!(
        list.iter()
            .any(|a| a["state"] == "rejected" && a["decided_by"] == "release-manager")
    );
    let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(states, vec!["partially_failed"]);
    assert_eq!(plat.writes.lock().unwrap().len(), 1, "one deploy approved");
}
