//! The deploy stage through the webhook backend: a rebuilt image with
//! `deploy:` gets a signed deploy webhook carrying its built digest and goes
//! `built → deploying → done`, visible in the API and the events; a deploy
//! receiver that refuses fails the deploy, not the build; a change that
//! settles for a while causes one rollout.

mod support;

use std::time::Duration;

use lineaged::store::Store;
use serde_json::Value;
use support::TestDb;
use support::fleet::{Lineage, Serve, World, rollouts_finished};

const BACKENDS: [&str; 2] = ["sqlite", "postgres"];

async fn get(url: String) -> Value {
    let r = reqwest::get(&url).await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.json().await.unwrap()
}

/// Event kinds of one image, in log order.
async fn kinds(store: &Store, image: &str) -> Vec<String> {
    store
        .events_after(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.image.as_deref() == Some(image))
        .map(|e| {
            let data: Value = serde_json::from_str(&e.data).unwrap();
            match data["kind"].as_str() {
                Some(k) if e.kind == "job_dispatched" => format!("job_dispatched:{k}"),
                _ => e.kind,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_image_is_deployed_with_its_built_digest() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let w = World::new(Lineage::issue(), db.url(), &["team/w"]).await;
        let serve = Serve::start(&w.cfg, "node-1");
        let store = w.store_when_observed().await;
        w.push_base("base/a").await;
        let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
        assert_eq!(states, vec!["succeeded"], "{backend}");
        let wname = w.full("team/w");
        let deploys = w.ci.ids("deploy");
        assert_eq!(deploys.len(), 1, "{backend}: only W deploys: {deploys:?}");
        assert_eq!(deploys[&wname].len(), 1, "{backend}");
        let carried =
            w.ci.triggers
                .lock()
                .unwrap()
                .iter()
                .find(|t| t.kind == "deploy")
                .unwrap()
                .parents[0]
                .1
                .clone();
        let current = store
            .image_state(&wname)
            .await
            .unwrap()
            .unwrap()
            .current_digest;
        assert_eq!(
            Some(carried.clone()),
            current,
            "{backend}: the built digest is deployed"
        );

        // The API shows the stages; causes and event data are objects.
        let list = get(format!("{}/rollouts", w.api())).await;
        let r = &list["rollouts"][0];
        assert!(r["cause"].is_object(), "{backend}: cause is JSON: {r}");
        let detail = get(format!("{}/rollouts/{}", w.api(), r["id"])).await;
        let rows: Vec<&Value> = detail["waves"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|w| w.as_array().unwrap())
            .collect();
        let wrow = rows.iter().find(|i| i["image"] == wname.as_str()).unwrap();
        assert_eq!(wrow["state"], "done", "{backend}: {wrow}");
        assert_eq!(wrow["built_digest"], carried.as_str());
        assert!(wrow["deploy_job_id"].is_i64(), "{backend}: {wrow}");
        let job = get(format!("{}/jobs/{}", w.api(), wrow["deploy_job_id"])).await;
        assert_eq!(job["kind"], "deploy", "{backend}: {job}");
        assert!(
            !job.to_string().contains("callback_token"),
            "{backend}: the callback secret is never shown"
        );
        let events: Value = get(format!("{}/images/{}", w.api(), urlencode(&wname))).await;
        assert!(
            events["rollouts"][0]["state"] == "done",
            "{backend}: {events}"
        );

        let metrics = reqwest::get(w.api().replace("/api/v1", "/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics
                .contains("lineaged_stage_results_total{stage=\"deploy\",result=\"succeeded\"} 1"),
            "{backend}: {metrics}"
        );

        // In the order things happened.
        assert_eq!(
            kinds(&store, &wname).await,
            vec![
                "job_dispatched:rebuild",
                "job_accepted",
                "digest_changed",
                "job_succeeded",
                "job_dispatched:deploy",
                "deploy_accepted",
                "deploy_succeeded",
                "image_done",
            ],
            "{backend}"
        );
        serve.stop();
        db.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_receiver_that_refuses_fails_the_deploy_not_the_build() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let w = World::new(Lineage::issue(), db.url(), &["team/w"]).await;
        let serve = Serve::start(&w.cfg, "node-1");
        let store = w.store_when_observed().await;
        let wname = w.full("team/w");
        // 503 twice: retried with the same webhook-id, then deployed.
        w.ci.deploy_answers.lock().unwrap().extend([503, 503]);
        w.push_base("base/a").await;
        let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
        assert_eq!(states, vec!["succeeded"], "{backend}");
        let attempts: Vec<String> =
            w.ci.triggers
                .lock()
                .unwrap()
                .iter()
                .filter(|t| t.kind.starts_with("deploy"))
                .map(|t| t.webhook_id.clone())
                .collect();
        assert_eq!(attempts.len(), 3, "{backend}: two refusals, one delivery");
        assert!(
            attempts.iter().all(|a| *a == attempts[0]),
            "{backend}: one webhook-id"
        );

        // 422: the deploy fails for good, the build stands.
        w.ci.deploy_answers.lock().unwrap().push_back(422);
        w.push_base("base/a").await;
        let states = rollouts_finished(&store, 2, Duration::from_secs(60)).await;
        assert_eq!(states[0], "partially_failed", "{backend}");
        let id = store.rollouts(1).await.unwrap()[0].id;
        let rows = store.rollout_images(id).await.unwrap();
        let st = |repo: &str| {
            rows.iter()
                .find(|r| r.image == w.full(repo))
                .map(|r| (r.state.to_string(), r.reason.clone().unwrap_or_default()))
                .unwrap()
        };
        let (state, reason) = st("team/w");
        assert_eq!(state, "deploy_failed", "{backend}: {rows:?}");
        assert!(
            reason.contains("HTTP 422"),
            "{backend}: the response is kept: {reason}"
        );
        let wrow = rows.iter().find(|r| r.image == wname).unwrap();
        assert!(
            wrow.built_digest.is_some(),
            "{backend}: built, not deployed"
        );
        // Its child still builds on it.
        assert_eq!(st("team/e").0, "done", "{backend}");
        serve.stop();
        db.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_within_the_settle_window_cause_one_rollout() {
    let db = TestDb::new("sqlite").await;
    let w = World::new(Lineage::issue(), db.url(), &[]).await;
    let text = std::fs::read_to_string(&w.cfg).unwrap();
    std::fs::write(
        &w.cfg,
        text.replace(
            r#"defaults: { schedule: "* * * * * *" }"#,
            r#"defaults: { schedule: "* * * * * *", settle: "3s" }"#,
        ),
    )
    .unwrap();
    let serve = Serve::start(&w.cfg, "node-1");
    let store = w.store_when_observed().await;
    // A release pushed three times in a row (one architecture at a time).
    let mut last = String::new();
    for _ in 0..3 {
        last = w.push_base("base/a").await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(
        store.rollouts(5).await.unwrap().is_empty(),
        "settling: no rollout yet"
    );
    rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(store.rollouts(5).await.unwrap().len(), 1);
    let a = w.full("base/a");
    let change: Vec<_> = store
        .changes(50)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.image == a)
        .collect();
    assert_eq!(change.len(), 1, "one change of A: {change:?}");
    assert!(change[0].coalesced >= 2, "{change:?}");
    assert_eq!(change[0].new_digest, last);
    let p = w.full("team/p");
    let ids = w.ci.ids("rebuild");
    assert_eq!(ids[&p].len(), 1, "P built once");
    serve.stop();
    db.finish().await;
}

fn urlencode(s: &str) -> String {
    s.replace('/', "%2F").replace(':', "%3A")
}

/// Deploy callbacks are idempotent: a digest in the report is ignored, a
/// repeat changes nothing, a contradicting later report does not move the
/// image back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_callbacks_are_idempotent_and_never_regress() {
    let db = TestDb::new("postgres").await;
    let w = World::new(Lineage::issue(), db.url(), &["team/w"]).await;
    // Nobody calls back: builds complete from the registry (base
    // annotations), the deploy waits for the callbacks below.
    w.ci.silent
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let serve = Serve::start(&w.cfg, "node-1");
    let store = w.store_when_observed().await;
    w.push_base("base/a").await;
    let wname = w.full("team/w");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let job = loop {
        let jobs = store.jobs(None, 0, 100).await.unwrap();
        if let Some(j) = jobs.into_iter().find(|j| {
            j.kind == "deploy"
                && j.image.as_deref() == Some(wname.as_str())
                && j.state == "succeeded"
        }) {
            break j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "W's deploy never delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let token = serde_json::from_str::<Value>(&job.payload).unwrap()["callback_token"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("{}/jobs/{}/result?token={token}", w.api(), job.id);
    let http = reqwest::Client::new();
    let post = |body: Value| http.post(&url).json(&body).send();
    let with_digest = serde_json::json!({ "status": "succeeded", "digest": format!("sha256:{}", "0".repeat(64)) });
    for _ in 0..2 {
        let r = post(with_digest.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["state"], "done");
    }
    let r = post(serde_json::json!({ "status": "failed" }))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["state"],
        "done",
        "no regression"
    );
    let r = post(serde_json::json!({ "status": "deployed" }))
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        400,
        "a bad status is a 400 with a reason"
    );
    rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    serve.stop();
    db.finish().await;
}
