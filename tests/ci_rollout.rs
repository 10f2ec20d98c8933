//! One rollout through each CI kind, end to end: `lineaged serve`, the real
//! registry, and a peer speaking that CI's API (see `support::fleet`). A
//! base push reaches the peer as that system's request, the peer "builds"
//! (pushes to the registry) and calls back, the rollout finishes; every
//! affected image is triggered once; the run the CI named is on the job
//! and the rollout. A SIGKILL storm through a form-posting kind on both
//! store backends counts idempotency keys per image.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::TestDb;
use support::fleet::{Lineage, Serve, World, push_with_kills, rollouts_finished};

async fn get(url: String) -> Value {
    let r = reqwest::get(&url).await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.json().await.unwrap()
}

/// A base push rebuilds P, X, W and E once each through `kind`; with
/// `busy`, the CI answers 503 first and the queue retries.
async fn one_rollout_through(kind: &str, busy: bool) {
    let db = TestDb::new("sqlite").await;
    let w = World::with_ci(Lineage::issue(), db.url(), &[], kind).await;
    if busy {
        w.ci.build_answers.lock().unwrap().push_back(503);
    }
    let serve = Serve::start(&w.cfg, "ci-node");
    let store = w.store_when_observed().await;
    w.push_base("base/a").await;
    let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(
        *w.ci.mismatches.lock().unwrap(),
        Vec::<String>::new(),
        "{kind}"
    );
    assert_eq!(states, vec!["succeeded"], "{kind}");
    let ids = w.ci.ids("rebuild");
    let affected = w.lineage.affected("base/a");
    assert_eq!(ids.len(), affected.len(), "{kind}: {ids:?}");
    for r in &affected {
        assert_eq!(ids[&w.full(r)].len(), 1, "{kind}: {r} once");
    }
    // The run the CI named: on each rebuild job and in the rollout.
    let rollout = store.rollouts(1).await.unwrap().remove(0);
    let v = get(format!("{}/rollouts/{}", w.api(), rollout.id)).await;
    let text = v.to_string();
    let images: Vec<&Value> = v["waves"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w.as_array().unwrap())
        .collect();
    assert_eq!(images.len(), affected.len(), "{kind}: {text}");
    for i in &images {
        let job = i["job_id"].as_i64().unwrap();
        let j = get(format!("{}/jobs/{job}", w.api())).await;
        assert_eq!(j["state"], "succeeded", "{kind}: {j}");
        assert!(
            !j.to_string().contains(support::fleet::TOKEN),
            "{kind}: token in the job"
        );
        match kind {
            // The generic webhook receiver here names no run.
            "webhook" => assert_eq!(j["run_url"], Value::Null),
            // Jenkins names a queue item, Tekton an event id.
            "tekton" => assert_eq!(j["run_id"], "14a6", "{kind}"),
            _ => {
                assert!(
                    j["run_url"].as_str().unwrap().starts_with("http://"),
                    "{kind}: {j}"
                );
                assert_eq!(
                    i["run_url"], j["run_url"],
                    "{kind}: the rollout shows the run"
                );
            }
        }
    }
    if busy {
        // The 503 was answered, and the same key came back on the retry.
        let t = w.ci.triggers.lock().unwrap().clone();
        let refused: Vec<_> = t
            .iter()
            .filter(|t| t.kind == "rebuild answered 503")
            .collect();
        assert_eq!(refused.len(), 1, "{kind}");
        assert!(
            t.iter()
                .any(|x| x.kind == "rebuild" && x.webhook_id == refused[0].webhook_id),
            "{kind}: retried under the same idempotency key"
        );
    }
    serve.stop();
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_actions_rollout() {
    one_rollout_through("github_actions", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_rollout_after_a_503() {
    one_rollout_through("gitlab", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jenkins_rollout() {
    one_rollout_through("jenkins", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_pipelines_rollout() {
    one_rollout_through("azure_pipelines", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildkite_rollout() {
    one_rollout_through("buildkite", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tekton_rollout() {
    one_rollout_through("tekton", false).await;
}

/// A 404 (no such workflow) is permanent: one request, the image failed
/// with GitHub's message in the job and in `lineaged status`, its
/// descendants blocked; no retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_fails_the_image_once() {
    let db = TestDb::new("sqlite").await;
    let w = World::with_ci(Lineage::issue(), db.url(), &[], "github_actions").await;
    w.ci.build_answers.lock().unwrap().push_back(404);
    let serve = Serve::start(&w.cfg, "ci-node");
    let store = w.store_when_observed().await;
    // base/b: T, then X and E on it.
    w.push_base("base/b").await;
    let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(states, vec!["failed"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = w.ci.triggers.lock().unwrap().clone();
    assert_eq!(t.len(), 1, "one request, no retry: {t:?}");
    assert_eq!(t[0].image, w.full("team/t"));
    let rollout = store.rollouts(1).await.unwrap().remove(0);
    let rows = store.rollout_images(rollout.id).await.unwrap();
    let state = |r: &str| {
        rows.iter()
            .find(|i| i.image == w.full(r))
            .unwrap()
            .state
            .to_string()
    };
    assert_eq!(
        (state("team/t"), state("team/x"), state("team/e")),
        ("failed".into(), "blocked".into(), "blocked".into())
    );
    let job = rows
        .iter()
        .find(|i| i.image == w.full("team/t"))
        .unwrap()
        .job_id
        .unwrap();
    let j = get(format!("{}/jobs/{job}", w.api())).await;
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["attempt"], 1, "{j}");
    assert_eq!(j["last_error"], "HTTP 404: Not Found", "{j}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lineaged"))
        .args(["status", "--url", w.api().trim_end_matches("/api/v1")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("HTTP 404: Not Found"),
        "status shows the CI's answer:\n{text}"
    );
    serve.stop();
    db.finish().await;
}

/// A CI that echoes the credentials it got in a 401: the token reaches
/// neither the job, the events, `lineaged status` nor the daemon's debug log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_show_even_when_the_ci_echoes_them() {
    use support::fleet::TOKEN;
    for kind in ["gitlab", "buildkite"] {
        let db = TestDb::new("sqlite").await;
        let w = World::with_ci(Lineage::issue(), db.url(), &[], kind).await;
        w.ci.build_answers.lock().unwrap().push_back(401);
        let log = w.cfg.with_file_name("daemon.log");
        let serve = Serve::start_logging(&w.cfg, "ci-node", Some(&log));
        let store = w.store_when_observed().await;
        w.push_base("base/b").await;
        let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
        assert_eq!(states, vec!["failed"], "{kind}");
        let rollout = store.rollouts(1).await.unwrap().remove(0);
        let rows = store.rollout_images(rollout.id).await.unwrap();
        let row = rows.iter().find(|i| i.image == w.full("team/t")).unwrap();
        let callback_token = row.callback_token.clone().unwrap();
        let job = row.job_id.unwrap();
        let j = get(format!("{}/jobs/{job}", w.api())).await;
        let error = j["last_error"].as_str().unwrap();
        assert!(
            error.starts_with("HTTP 401: Bad credentials"),
            "{kind}: {error}"
        );
        assert!(error.contains("***"), "{kind}: the echo is masked: {error}");
        let events: String = store
            .events_after(0, 10_000)
            .await
            .unwrap()
            .iter()
            .map(|e| format!("{} {}\n", e.kind, e.data))
            .collect();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_lineaged"))
            .args(["status", "--url", w.api().trim_end_matches("/api/v1")])
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&status.stdout).to_string();
        assert!(
            status.contains("HTTP 401: Bad credentials"),
            "{kind}: {status}"
        );
        serve.stop();
        let daemon_log = std::fs::read_to_string(&log).unwrap();
        assert!(
            daemon_log.contains("delivery failed"),
            "{kind}: the log is captured"
        );
        for (what, text) in [
            ("job", j.to_string()),
            ("events", events),
            ("status", status),
            ("log", daemon_log),
        ] {
            assert!(!text.contains(TOKEN), "{kind}: the token is in the {what}");
            assert!(
                !text.contains(&callback_token),
                "{kind}: the callback token is in the {what}"
            );
        }
        db.finish().await;
    }
}

/// SIGKILLs at several points of a rollout through GitLab's trigger API
/// (form fields, the key in `variables[LINEAGED_IDEMPOTENCY_KEY]`), on
/// both backends: every affected image is triggered under one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_mid_rollout_through_a_ci_api_double_nothing() {
    for backend in ["sqlite", "postgres"] {
        let db = TestDb::new(backend).await;
        let w = World::with_ci(Lineage::issue(), db.url(), &[], "gitlab").await;
        let mut serve = Serve::start(&w.cfg, "kill-node");
        let store = w.store_when_observed().await;
        for (round, base) in ["base/a", "base/b"].into_iter().enumerate() {
            let (next, states) =
                push_with_kills(&w, &store, serve, "kill-node", base, 3, (0, 100), round + 1).await;
            serve = next;
            assert!(
                states.iter().all(|s| s == "succeeded"),
                "{backend}: {states:?}"
            );
        }
        // base/a: P, X, W, E; base/b: T, X, E.
        let ids = w.ci.ids("rebuild");
        let per: std::collections::HashMap<String, usize> = ids
            .iter()
            .map(|(i, k)| (i.rsplit_once('/').unwrap().1.to_string(), k.len()))
            .collect();
        let want: std::collections::HashMap<String, usize> =
            [("p:1", 1), ("w:1", 1), ("t:1", 1), ("x:1", 2), ("e:1", 2)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        assert_eq!(per, want, "{backend}: idempotency keys per image");
        serve.stop();
        db.finish().await;
    }
}
