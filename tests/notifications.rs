//! Notifications through `lineaged serve`: Slack, Teams and a signed
//! webhook hear a rollout start, its approvals wait and it finish, with the
//! image, the digests, the cause and links; a webhook sink down for a while
//! gets each message once (one webhook-id per message, kept across
//! retries), even across a SIGKILL; a sink's `images:` filter holds.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::TestDb;
use support::fleet::{Lineage, Serve, TOKEN, World, until};
use support::platform::{K8S, K8S_ENTRY, Platform};

async fn world(db: &str, plat: &str, dir: &std::path::Path, smtp: u16) -> World {
    let file = |name: &str, url: String| {
        let p = dir.join(name);
        std::fs::write(&p, url).unwrap();
        p.display().to_string()
    };
    let slack = file("slack-url", format!("{plat}/slack/T000/B000/XXXX"));
    let teams = file(
        "teams-url",
        format!("{plat}/teams/workflows/abc/triggers/manual"),
    );
    let extra = format!(
        r#"policy:
  rules:
    - images: ["{{registry}}/team/**"]
      approval: {{ expires: 1h }}
notifications:
  - {{ name: ops-slack, kind: slack, url_file: "{slack}", on: [rollout_started, approval_pending, rollout_finished] }}
  - {{ name: ops-teams, kind: teams, url_file: "{teams}", on: [rollout_started, approval_pending, rollout_finished] }}
  - {{ name: audit, kind: webhook, url: "{plat}/hooks/lineaged", secret_env: T_CI_SECRET, on: [rollout_started, approval_pending, rollout_finished, rollout_failed, deploy_failed] }}
  - {{ name: w-team, kind: webhook, url: "{plat}/hooks/w-team", secret_env: T_CI_SECRET, on: [approval_pending], images: ["{{registry}}/team/w:*"] }}
  - {{ name: ops-mail, kind: email, smtp: {{ host: 127.0.0.1, port: {smtp}, tls: none }}, from: "lineaged <lineaged@example.com>", to: [ops@example.com, "Release <release@example.com>"], on: [approval_pending] }}
"#
    );
    World::with_deployer(
        Lineage::issue(),
        db,
        &["team/w", "team/x"],
        "webhook",
        &extra,
        &K8S.replace("{plat}", plat),
        K8S_ENTRY,
    )
    .await
    .with_write_token()
}

async fn approve_all(w: &World, n: usize) {
    let mut approved = 0;
    while approved < n {
        let v: Value = reqwest::get(format!("{}/approvals?state=pending", w.api()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for a in v["approvals"].as_array().cloned().unwrap_or_default() {
            let r = reqwest::Client::new()
                .post(format!("{}/approvals/{}/approve", w.api(), a["id"]))
                .bearer_auth(TOKEN)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            approved += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Titles per sink kind, sorted.
fn titles(p: &Platform, kind: &str) -> Vec<String> {
    let mut t: Vec<String> = p
        .notes_of(kind)
        .iter()
        .map(|(v, _)| match kind {
            "slack" => v["text"]
                .as_str()
                .unwrap()
                .split(": ")
                .next()
                .unwrap()
                .to_string(),
            "teams" => v["attachments"][0]["content"]["body"][0]["text"]
                .as_str()
                .unwrap()
                .to_string(),
            _ => v["data"]["title"].as_str().unwrap().to_string(),
        })
        .collect();
    t.sort();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_hear_start_approvals_and_finish_once_each() {
    for backend in ["sqlite", "postgres"] {
        let db = TestDb::new(backend).await;
        let (plat, url) = Platform::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (smtp, smtp_port) = support::smtp::Smtp::start().await;
        let w = world(db.url(), &url, dir.path(), smtp_port).await;
        plat.add_workloads(&w, &["team/w", "team/x"]);
        // Every sink is down for its first few calls.
        plat.note_answers
            .lock()
            .unwrap()
            .extend([503, 503, 429, 503, 500]);
        let serve = Serve::start(&w.cfg, "notify-node");
        let store = w.store_when_observed().await;
        w.push_base("base/a").await;
        approve_all(&w, 2).await;
        let states = support::fleet::rollouts_finished(&store, 1, Duration::from_secs(60)).await;
        assert_eq!(states, vec!["succeeded"], "{backend}");
        // Start, two approvals, finish: 4 per sink, plus W's team (1).
        let p = plat.clone();
        until("all notifications", Duration::from_secs(90), || {
            let p = p.clone();
            async move {
                let n = p.notes.lock().unwrap().len();
                n >= 13
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rollout = store.rollouts(1).await.unwrap().remove(0).id;
        let want = vec![
            format!("{} waits for approval", w.full("team/w")),
            format!("{} waits for approval", w.full("team/x")),
            format!("Rollout {rollout} started"),
            format!("Rollout {rollout} succeeded"),
        ];
        assert_eq!(titles(&plat, "slack"), want, "{backend}");
        assert_eq!(titles(&plat, "teams"), want, "{backend}");
        // The webhook sinks: every message once, one id each.
        let hooks = plat.notes_of("hooks");
        assert_eq!(hooks.len(), 5, "{backend}: {hooks:?}");
        let ids: HashSet<&String> = hooks.iter().map(|(_, i)| i).collect();
        assert_eq!(ids.len(), 5);
        let w_team: Vec<_> = hooks
            .iter()
            .filter(|(v, _)| {
                v["data"]["title"] == format!("{} waits for approval", w.full("team/w"))
            })
            .collect();
        assert_eq!(w_team.len(), 2, "audit and W's team");
        // What the messages say.
        let slack = plat.notes_of("slack");
        let started = slack
            .iter()
            .find(|(v, _)| v["text"].as_str().unwrap().contains("started"))
            .unwrap();
        let text = started.0["text"].as_str().unwrap();
        assert!(
            text.contains(&format!("{} moved sha256:", w.full("base/a")))
                && text.contains(" → sha256:")
                && text.contains("4 images to rebuild"),
            "{text}"
        );
        let pending = hooks
            .iter()
            .find(|(v, _)| v["type"] == "lineaged.approval_pending")
            .unwrap();
        let d = &pending.0["data"];
        assert!(d["digest"].as_str().unwrap().starts_with("sha256:"));
        assert!(d["old_digest"].as_str().unwrap().starts_with("sha256:"));
        assert_ne!(d["digest"], d["old_digest"]);
        assert!(
            d["links"].as_array().unwrap().iter().any(|l| l[1]
                .as_str()
                .unwrap()
                .ends_with(&format!("/api/v1/rollouts/{rollout}"))),
            "{d}"
        );
        // Two mails, one per approval, each to both recipients, with the
        // job's key as Message-ID.
        let mails = smtp.mails.lock().unwrap().clone();
        assert_eq!(mails.len(), 2, "{backend}: {mails:?}");
        assert!(smtp.errors.lock().unwrap().is_empty(), "{:?}", smtp.errors);
        for m in &mails {
            assert_eq!(m.from, "<lineaged@example.com>");
            assert_eq!(m.to, vec!["<ops@example.com>", "<release@example.com>"]);
            assert!(
                m.data.contains("Subject: [lineaged] 127.0.0.1:")
                    && m.data.contains("waits for approval")
                    && m.data.contains("Message-ID: <")
                    && m.data.contains("@lineaged>")
                    && m.data.contains("Approve or reject its deploy"),
                "{}",
                m.data
            );
        }
        // The notify jobs all succeeded; the failures were retried.
        let jobs = store.jobs(None, 0, 1000).await.unwrap();
        let notify: Vec<_> = jobs.iter().filter(|j| j.kind == "notify").collect();
        assert_eq!(notify.len(), 15, "{backend}");
        assert!(notify.iter().all(|j| j.state == "succeeded"), "{notify:?}");
        assert!(notify.iter().any(|j| j.attempt > 1));
        // The Slack and Teams URLs are credentials: never in a job.
        let text = format!("{jobs:?}");
        assert!(!text.contains("/slack/T000") && !text.contains("/teams/workflows"));
        serve.stop();
    }
}

/// SIGKILLs while messages are due: each message reaches the signed
/// webhook under one id, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_neither_lose_nor_double_messages() {
    for backend in ["sqlite", "postgres"] {
        let db = TestDb::new(backend).await;
        let (plat, url) = Platform::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (_smtp, smtp_port) = support::smtp::Smtp::start().await;
        let w = world(db.url(), &url, dir.path(), smtp_port).await;
        plat.add_workloads(&w, &["team/w", "team/x"]);
        plat.note_answers.lock().unwrap().extend([503; 8]);
        let mut serve = Serve::start(&w.cfg, "notify-kill");
        let store = w.store_when_observed().await;
        w.push_base("base/a").await;
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(400 + rand::random::<u64>() % 600)).await;
            serve.kill9();
            serve = Serve::start(&w.cfg, "notify-kill");
        }
        approve_all(&w, 2).await;
        serve.kill9();
        serve = Serve::start(&w.cfg, "notify-kill");
        support::fleet::rollouts_finished(&store, 1, Duration::from_secs(90)).await;
        let p = plat.clone();
        until("webhook messages", Duration::from_secs(90), || {
            let p = p.clone();
            async move {
                let ids: HashSet<String> =
                    p.notes_of("hooks").into_iter().map(|(_, i)| i).collect();
                ids.len() >= 5
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Per (sink, event): one webhook-id, however often it was sent.
        let mut per: HashMap<(String, i64), HashSet<String>> = HashMap::new();
        for (v, id) in plat.notes_of("hooks") {
            let key = (
                v["_path"].as_str().unwrap().to_string(),
                v["data"]["event_id"].as_i64().unwrap(),
            );
            per.entry(key).or_default().insert(id);
        }
        assert_eq!(per.len(), 5, "{backend}: {per:?}");
        assert!(per.values().all(|s| s.len() == 1), "{backend}: {per:?}");
        serve.stop();
    }
}

/// History is not announced: without sinks the notifier's cursor follows
/// the log, so a sink configured later hears only what happens after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_configured_later_hears_no_history() {
    use lineaged::notify::Notifier;
    use lineaged::store::{NewEvent, now_millis};
    let db = TestDb::new("sqlite").await;
    let store = db.store().await;
    let event = |i: i64| NewEvent {
        kind: "approval_pending".into(),
        image: Some(format!("r.example.com/team/a{i}:1")),
        rollout_id: None,
        job_id: None,
        data: json!({ "approval_id": i, "stage": "deploy" }),
    };
    for i in 0..5 {
        store.append_event(&event(i), now_millis()).await.unwrap();
    }
    let none = Arc::new(lineaged::config::load_str("none.yaml", "{}", &|_| None).unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let task =
        tokio::spawn(Notifier::new(none, store.clone(), "http://l".into()).run(stop.clone()));
    let s = store.clone();
    until("cursor at the end", Duration::from_secs(10), || {
        let s = s.clone();
        async move { s.notify_cursor().await.unwrap() == 5 }
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    store.append_event(&event(5), now_millis()).await.unwrap();
    let cfg = Arc::new(
        lineaged::config::load_str(
            "sinks.yaml",
            "notifications:\n  - { kind: webhook, url: \"http://127.0.0.1:9/h\", on: [approval_pending] }\n",
            &|_| None,
        )
        .unwrap(),
    );
    let n = Notifier::new(cfg, store.clone(), "http://l".into());
    assert_eq!(n.pump(now_millis()).await.unwrap(), 1);
    let jobs = store.jobs(None, 0, 100).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].payload.contains("a5:1"), "{}", jobs[0].payload);
}

/// Two replicas on one Postgres, each running a notifier: they take turns
/// on the cursor, so every sink hears each event once, Slack included
/// (which has no id to deduplicate by).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_send_each_message_once() {
    let db = TestDb::new("postgres").await;
    let (plat, url) = Platform::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (smtp, smtp_port) = support::smtp::Smtp::start().await;
    let w = world(db.url(), &url, dir.path(), smtp_port).await;
    plat.add_workloads(&w, &["team/w", "team/x"]);
    let one = Serve::start(&w.cfg, "notify-replica-1");
    let two = Serve::start(&w.replica_cfg(), "notify-replica-2");
    let store = w.store_when_observed().await;
    w.push_base("base/a").await;
    approve_all(&w, 2).await;
    let states = support::fleet::rollouts_finished(&store, 1, Duration::from_secs(60)).await;
    assert_eq!(states, vec!["succeeded"]);
    let p = plat.clone();
    until("all notifications", Duration::from_secs(60), || {
        let p = p.clone();
        async move { p.notes.lock().unwrap().len() >= 13 }
    })
    .await;
    // Time for a duplicate to show up, if there were one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rollout = store.rollouts(1).await.unwrap().remove(0).id;
    let want = vec![
        format!("{} waits for approval", w.full("team/w")),
        format!("{} waits for approval", w.full("team/x")),
        format!("Rollout {rollout} started"),
        format!("Rollout {rollout} succeeded"),
    ];
    assert_eq!(titles(&plat, "slack"), want);
    assert_eq!(titles(&plat, "teams"), want);
    let hooks = plat.notes_of("hooks");
    assert_eq!(hooks.len(), 5, "{hooks:?}");
    assert_eq!(smtp.mails.lock().unwrap().len(), 2);
    let jobs = store.jobs(None, 0, 1000).await.unwrap();
    assert_eq!(jobs.iter().filter(|j| j.kind == "notify").count(), 15);
    one.stop();
    two.stop();
}
