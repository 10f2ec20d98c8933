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

/// The issue's lineage (bases A, B; P on A, T on B, X on P and T, W on P,
/// E on X and W) built by a CI that signs what it builds, a policy that
/// asks for signatures on team/** and approval before deploys, and the
/// `deploy` images deployed to a Kubernetes stand-in. An unsigned build is
/// refused after 1 s (`signature_grace`).
async fn signed_world(db: &TestDb, deploy: &[&str]) -> (World, Arc<Platform>) {
    let (plat, url) = Platform::start().await;
    let signer = Arc::new(Signer::new());
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cosign.pub");
    std::fs::write(&key, signer.public_pem()).unwrap();
    let policy = format!(
        "policy:\n  signature_grace: 1s\n  rules:\n    - images: [\"{{registry}}/team/**\"]\n      signatures:\n        authorities:\n          - cosign: {{ public_key_file: \"{}\" }}\n      approval: {{ expires: 4h }}\n",
        key.display()
    );
    let w = World::with_deployer(
        Lineage::issue(),
        db.url(),
        deploy,
        "webhook",
        &policy,
        &K8S.replace("{plat}", &url),
        K8S_ENTRY,
    )
    .await;
    // The key file is read at start-up; keep it with the world's files.
    let kept = w.cfg.with_file_name("cosign.pub");
    std::fs::copy(&key, &kept).unwrap();
    let text = std::fs::read_to_string(&w.cfg).unwrap();
    std::fs::write(
        &w.cfg,
        text.replace(&key.display().to_string(), &kept.display().to_string()),
    )
    .unwrap();
    *w.ci.signer.lock().unwrap() = Some(signer);
    let w = w.with_write_token();
    plat.add_workloads(&w, deploy);
    (w, plat)
}

/// playwright-core and Chromium, or a clear failure.
fn browser_dir() -> std::path::PathBuf {
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").exists()
            && Path::new("/usr/bin/chromium").exists(),
        "playwright-core (npm) and chromium (Debian) must be installed; scripts/test.sh installs them"
    );
    browser
}

/// Runs a browser script; its stdout is a JSON report.
async fn run_browser(script: &str, args: &[&str]) -> Value {
    let out = tokio::process::Command::new("node")
        .arg(browser_dir().join(script))
        .args(args)
        .output()
        .await
        .expect("node (Debian nodejs) must be installed");
    assert!(
        out.status.success(),
        "browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A screenshot that is a real PNG; copied to docs/img/ as `name` with
/// `LINEAGED_UPDATE_SCREENSHOTS=1`.
fn keep_screenshot(path: &Path, name: &str) {
    let png = std::fs::read(path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot {name}"
    );
    if std::env::var_os("LINEAGED_UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join(name), &png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_decided_from_the_dashboard_in_chromium() {
    let db = TestDb::new("sqlite").await;
    let (w, plat) = signed_world(&db, &["team/w", "team/x"]).await;
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
    let report = run_browser(
        "approvals.mjs",
        &[&base, TOKEN, "2", shot.to_str().unwrap()],
    )
    .await;
    keep_screenshot(&shot, "dashboard-approvals.png");
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

/// The lineage graph, the rollout page and the image page in Chromium
/// (`tests/browser/graph.mjs`): base A moves; P is rebuilt, X is refused
/// (its build is unsigned), E is blocked behind it, W waits for deploy
/// approval. The drawn graphs match the API node for node (state and
/// colour), a click opens an image's page, and approving W elsewhere turns
/// its node on the open page through the live event stream.
/// `LINEAGED_UPDATE_SCREENSHOTS=1` writes dashboard-{graph,rollout,image}.png
/// to docs/img/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_rollout_and_image_pages_in_chromium() {
    let db = TestDb::new("sqlite").await;
    let (w, plat) = signed_world(&db, &["team/w"]).await;
    w.ci.unsigned.lock().unwrap().insert("team/x".to_string());
    let _serve = Serve::start(&w.cfg, "browser-graph");
    let store = w.store_when_observed().await;
    w.push_base("base/a").await;
    let api = w.api();
    until(
        "P done, X refused, E blocked, W awaiting approval",
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                let Ok(r) = reqwest::get(format!("{api}/rollouts/1")).await else {
                    return false;
                };
                let v: Value = r.json().await.unwrap_or_default();
                let mut states: Vec<String> = v["waves"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|w| w.as_array().unwrap().iter())
                    .map(|i| i["state"].as_str().unwrap_or("").to_string())
                    .collect();
                states.sort();
                states == ["awaiting_approval", "blocked", "done", "refused"]
            }
        },
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let base = api.trim_end_matches("/api/v1").to_string();
    let report = run_browser(
        "graph.mjs",
        &[&base, TOKEN, "1", out.path().to_str().unwrap()],
    )
    .await;
    assert_eq!(report["rollout_nodes"], 5, "{report}");
    assert_eq!(
        report["states"],
        serde_json::json!(["awaiting_approval", "blocked", "ok", "refused"]),
        "{report}"
    );
    for (file, name) in [
        ("graph.png", "dashboard-graph.png"),
        ("rollout.png", "dashboard-rollout.png"),
        ("image.png", "dashboard-image.png"),
    ] {
        keep_screenshot(&out.path().join(file), name);
    }
    // The approval the page watched was recorded, and W deployed once.
    let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(states, vec!["partially_failed"]);
    assert_eq!(plat.writes.lock().unwrap().len(), 1, "W deployed once");
    let a: Value = reqwest::get(format!("{api}/approvals"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["approvals"][0]["id"], report["approved"]);
    assert_eq!(a["approvals"][0]["decided_by"], "release-manager");
}
