//! Deploys to where workloads run, through `lineaged serve` against peers
//! of the Kubernetes API, Argo CD and a Flux Receiver (`support::platform`):
//! base push → rebuild → the workload or application set to the built
//! digest, the other containers and images kept, and the deploy done only
//! when the target reports the new version rolled out. A failed rollout
//! and a timeout fail the deploy with the target's own words. SIGKILLs
//! while deploys are under way patch nothing twice, on both backends.

mod support;

use std::sync::Arc;
use std::time::Duration;

use lineaged::store::{RolloutImage, Store};
use support::TestDb;
use support::fleet::{Lineage, Serve, TOKEN, World, rollouts_finished, until};
use support::platform::{K8S, Platform};

const DEPLOYED: [&str; 2] = ["team/w", "team/x"];

async fn world(db: &str, plat: &str, backend: &str, entry: &str) -> World {
    World::with_deployer(
        Lineage::issue(),
        db,
        &DEPLOYED,
        "webhook",
        "",
        &backend.replace("{plat}", plat),
        entry,
    )
    .await
}

async fn rows(store: &Store) -> Vec<RolloutImage> {
    let r = store.rollouts(1).await.unwrap().remove(0);
    store.rollout_images(r.id).await.unwrap()
}

fn row<'a>(rows: &'a [RolloutImage], w: &World, repo: &str) -> &'a RolloutImage {
    rows.iter().find(|r| r.image == w.full(repo)).unwrap()
}

/// `registry/team/x@sha256:…` of the digest the rollout built.
fn built_ref(rows: &[RolloutImage], w: &World, repo: &str) -> String {
    let d = row(rows, w, repo).built_digest.clone().unwrap();
    format!("{}/{repo}@{d}", w.reg.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_workloads_are_patched_to_the_built_digest_and_watched() {
    for backend in ["sqlite", "postgres"] {
        let db = TestDb::new(backend).await;
        let (plat, url) = Platform::start().await;
        let w = world(
            db.url(),
            &url,
            K8S,
            "{ backend: deployer, namespace: shop, workload: deployment/{name}, container: app }",
        )
        .await;
        plat.add_workloads(&w, &DEPLOYED);
        let _serve = Serve::start(&w.cfg, "k8s-node");
        let store = w.store_when_observed().await;
        w.push_base("base/a").await;
        let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
        assert_eq!(states, vec!["succeeded"], "{backend}");
        let rows = rows(&store).await;
        for repo in DEPLOYED {
            let name = repo.rsplit('/').next().unwrap();
            let d = plat.deployment("shop", name);
            let c = &d["spec"]["template"]["spec"]["containers"];
            assert_eq!(c[0]["image"], built_ref(&rows, &w, repo), "{backend}: {d}");
            assert_eq!(c[1]["image"], "envoyproxy/envoy:v1.30", "sidecar kept");
            assert_eq!(
                d["metadata"]["annotations"]["lineaged.dev/rollout"],
                rows[0].rollout_id.to_string()
            );
            // Rolled out before done: the peer needs three looks.
            assert_eq!(d["status"]["updatedReplicas"], 2, "{backend}");
            let patches = plat.writes_to("k8s-patch", &format!("shop/{name}"));
            assert_eq!(patches.len(), 1, "{backend}: {patches:?}");
            assert_eq!(row(&rows, &w, repo).state, "done", "{backend}");
        }
        // Images without deploy: were not touched.
        assert_eq!(plat.writes.lock().unwrap().len(), 2, "{backend}");
        // The registry, polled without a failure, is listed as healthy.
        let regs: serde_json::Value = reqwest::get(format!("{}/registries", w.api()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let reg = regs["registries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["host"] == w.reg.addr)
            .unwrap_or_else(|| panic!("{backend}: registry missing: {regs}"))
            .clone();
        assert_eq!(reg["state"], "healthy", "{reg}");
        assert!(reg["last_success_at"].is_i64(), "{reg}");
        let events = store.events_after(0, 10_000).await.unwrap();
        assert_eq!(
            events
                .iter()
                .filter(|e| e.kind == "deploy_succeeded")
                .count(),
            2,
            "{backend}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_never_completes_times_out_with_the_workloads_status() {
    let db = TestDb::new("sqlite").await;
    let (plat, url) = Platform::start().await;
    let w = world(
        db.url(),
        &url,
        &K8S.replace(" }", ", deploy_timeout: 4s }"),
        "{ backend: deployer, namespace: shop, workload: deployment/{name}, container: app }",
    )
    .await;
    plat.add_deployment("shop", "w", &w.full("team/w"));
    plat.add_deployment("shop", "x", &w.full("team/x"));
    // The workloads never finish rolling out within 4 s.
    *plat.steps.lock().unwrap() = 1000;
    let _serve = Serve::start(&w.cfg, "k8s-node");
    let store = w.store_when_observed().await;
    w.push_base("base/a").await;
    let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(states, vec!["partially_failed"]);
    let rows = rows(&store).await;
    let x = row(&rows, &w, "team/x");
    assert_eq!(x.state, "deploy_failed");
    let why = x.reason.clone().unwrap();
    assert!(
        why.starts_with("not rolled out before the deploy timeout: deployment/x in shop: 1 of 2 new replicas updated"),
        "{why}"
    );
    // No job keeps watching a failed deploy.
    let jobs = store.jobs(None, 0, 1000).await.unwrap();
    assert!(
        jobs.iter()
            .filter(|j| j.kind == "deploy")
            .all(|j| j.state == "cancelled"),
        "{jobs:?}"
    );
    let looks = plat.writes_to("k8s-patch", "shop/x").len();
    assert_eq!(looks, 1);
    // The children still built on X and W (a deploy failure blocks nothing).
    assert_eq!(row(&rows, &w, "team/e").state, "done");
    assert!(!format!("{jobs:?}").contains(TOKEN), "token in a job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_deadline_fails_the_deploy() {
    let db = TestDb::new("sqlite").await;
    let (plat, url) = Platform::start().await;
    let w = world(
        db.url(),
        &url,
        K8S,
        "{ backend: deployer, namespace: shop, workload: deployment/broken-{name}, container: app }",
    )
    .await;
    plat.add_deployment("shop", "broken-w", &w.full("team/w"));
    // X's workload does not exist: 404, the API's message.
    let _serve = Serve::start(&w.cfg, "k8s-node");
    let store = w.store_when_observed().await;
    w.push_base("base/a").await;
    let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(states, vec!["partially_failed"]);
    let rows = rows(&store).await;
    let wr = row(&rows, &w, "team/w");
    assert_eq!(wr.state, "deploy_failed");
    let why = wr.reason.clone().unwrap();
    assert!(
        why.contains("deployment/broken-w in shop: exceeded its progress deadline")
            && why.contains("has timed out progressing"),
        "{why}"
    );
    let xr = row(&rows, &w, "team/x");
    assert_eq!(xr.state, "deploy_failed");
    let why = xr.reason.clone().unwrap();
    assert!(
        why.contains("404") && why.contains("deployments.apps \"broken-x\" not found"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argocd_applications_keep_their_other_images_and_report_synced_and_healthy() {
    for backend in ["sqlite", "postgres"] {
        let db = TestDb::new(backend).await;
        let (plat, url) = Platform::start().await;
        let w = world(
            db.url(),
            &url,
            r#"{ kind: argocd, url: "{plat}/argo", token_env: T_CI_TOKEN }"#,
            "{ backend: deployer, app: \"{name}-app\" }",
        )
        .await;
        plat.add_app("w-app", &w.full("team/w"));
        plat.add_app("x-app", &w.full("team/x"));
        let _serve = Serve::start(&w.cfg, "argo-node");
        let store = w.store_when_observed().await;
        w.push_base("base/a").await;
        let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
        assert_eq!(states, vec!["succeeded"], "{backend}");
        let rows = rows(&store).await;
        for repo in DEPLOYED {
            let app = format!("{}-app", repo.rsplit('/').next().unwrap());
            let a = plat.app(&app);
            assert_eq!(
                a["spec"]["source"]["kustomize"]["images"],
                serde_json::json!(["redis=mirror.example/redis:7", built_ref(&rows, &w, repo)]),
                "{backend}: {a}"
            );
            assert_eq!(a["status"]["health"]["status"], "Healthy");
            assert_eq!(plat.writes_to("argo-patch", &app).len(), 1, "{backend}");
            assert_eq!(plat.writes_to("argo-sync", &app).len(), 1, "{backend}");
            assert_eq!(row(&rows, &w, repo).state, "done", "{backend}");
        }
        // The job links to the application.
        let jobs = store.jobs(None, 0, 1000).await.unwrap();
        let urls: Vec<_> = jobs
            .iter()
            .filter(|j| j.kind == "deploy")
            .filter_map(|j| j.run_url.clone())
            .collect();
        assert!(
            urls.contains(&format!("{url}/argo/applications/w-app")),
            "{urls:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_application_fails_the_deploy() {
    let db = TestDb::new("sqlite").await;
    let (plat, url) = Platform::start().await;
    let w = world(
        db.url(),
        &url,
        r#"{ kind: argocd, url: "{plat}/argo", token_env: T_CI_TOKEN }"#,
        "{ backend: deployer, app: \"broken-{name}\" }",
    )
    .await;
    plat.add_app("broken-w", &w.full("team/w"));
    plat.add_app("broken-x", &w.full("team/x"));
    let _serve = Serve::start(&w.cfg, "argo-node");
    let store = w.store_when_observed().await;
    w.push_base("base/a").await;
    let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(states, vec!["partially_failed"]);
    let rows = rows(&store).await;
    let why = row(&rows, &w, "team/w").reason.clone().unwrap();
    assert!(
        why.starts_with("deploy failed: application broken-w is Degraded on")
            && why.contains("exceeded its progress deadline"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flux_receiver_is_called_once_per_deploy_with_a_valid_signature() {
    let db = TestDb::new("postgres").await;
    let (plat, url) = Platform::start().await;
    let w = world(
        db.url(),
        &url,
        r#"{ kind: flux, url: "{plat}/flux/hook/5f3a", secret_env: T_CI_SECRET }"#,
        "{ backend: deployer }",
    )
    .await;
    let _serve = Serve::start(&w.cfg, "flux-node");
    let store = w.store_when_observed().await;
    w.push_base("base/a").await;
    let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(states, vec!["succeeded"]);
    let rows = rows(&store).await;
    let calls = plat.flux.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for repo in DEPLOYED {
        let c = calls
            .iter()
            .find(|c| c["image"] == w.full(repo))
            .unwrap_or_else(|| panic!("{repo}: {calls:?}"));
        assert_eq!(
            c["digest"].as_str(),
            row(&rows, &w, repo).built_digest.as_deref()
        );
        assert_eq!(c["hook"], "5f3a");
    }
}

/// SIGKILLs while the deploys are being watched: the workloads are patched
/// once each, every image is rebuilt under one key, the rollout finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_during_kubernetes_deploys_patch_nothing_twice() {
    for backend in ["sqlite", "postgres"] {
        let db = TestDb::new(backend).await;
        let (plat, url) = Platform::start().await;
        let w = world(
            db.url(),
            &url,
            K8S,
            "{ backend: deployer, namespace: shop, workload: deployment/{name}, container: app }",
        )
        .await;
        plat.add_workloads(&w, &DEPLOYED);
        *plat.steps.lock().unwrap() = 8;
        let mut serve = Serve::start(&w.cfg, "kill-node");
        let store = w.store_when_observed().await;
        w.push_base("base/a").await;
        let patched = |plat: Arc<Platform>, n: usize| async move {
            until("patches", Duration::from_secs(60), || {
                let p = plat.clone();
                async move {
                    p.writes
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|(k, _, _)| k == "k8s-patch")
                        .count()
                        >= n
                }
            })
            .await
        };
        // Right after the first patch, and while the second is watched.
        patched(plat.clone(), 1).await;
        serve.kill9();
        serve = Serve::start(&w.cfg, "kill-node");
        patched(plat.clone(), 2).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        serve.kill9();
        serve = Serve::start(&w.cfg, "kill-node");
        let states = rollouts_finished(&store, 1, Duration::from_secs(90)).await;
        assert_eq!(states, vec!["succeeded"], "{backend}");
        let rows = rows(&store).await;
        for repo in DEPLOYED {
            let name = repo.rsplit('/').next().unwrap();
            assert_eq!(
                plat.writes_to("k8s-patch", &format!("shop/{name}")).len(),
                1,
                "{backend}: {name} patched twice"
            );
            let d = plat.deployment("shop", name);
            assert_eq!(
                d["spec"]["template"]["spec"]["containers"][0]["image"],
                built_ref(&rows, &w, repo)
            );
        }
        for (image, keys) in w.ci.ids("rebuild") {
            assert_eq!(keys.len(), 1, "{backend}: {image} rebuilt under {keys:?}");
        }
        assert_eq!(
            w.ci.ids("rebuild").len(),
            w.lineage.affected("base/a").len(),
            "{backend}"
        );
        serve.stop();
    }
}

/// A rollout cancelled while its deploys are watched: the deploy jobs end
/// and nobody looks at the workloads any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_rollout_stops_watching_its_deploys() {
    use std::sync::atomic::Ordering;
    let db = TestDb::new("postgres").await;
    let (plat, url) = Platform::start().await;
    let w = world(
        db.url(),
        &url,
        K8S,
        "{ backend: deployer, namespace: shop, workload: deployment/{name}, container: app }",
    )
    .await
    .with_write_token();
    plat.add_workloads(&w, &DEPLOYED);
    *plat.steps.lock().unwrap() = 100_000;
    let _serve = Serve::start(&w.cfg, "cancel-node");
    let store = w.store_when_observed().await;
    w.push_base("base/a").await;
    let p = plat.clone();
    until("both patched and watched", Duration::from_secs(60), || {
        let p = p.clone();
        async move { p.writes.lock().unwrap().len() == 2 && p.looks.load(Ordering::Relaxed) > 6 }
    })
    .await;
    let id = store.rollouts(1).await.unwrap()[0].id;
    let r = reqwest::Client::new()
        .post(format!("{}/rollouts/{id}/cancel", w.api()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = plat.looks.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(plat.looks.load(Ordering::Relaxed), before, "still watching");
    let jobs = store.jobs(None, 0, 1000).await.unwrap();
    assert!(
        jobs.iter()
            .filter(|j| j.kind == "deploy")
            .all(|j| j.state == "cancelled" || j.state == "failed"),
        "{jobs:?}"
    );
}
