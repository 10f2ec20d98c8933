//! Deploy windows through `lineaged serve`: deploys due before the window
//! opens wait in `waiting_for_window` with the opening shown, rebuilds are
//! not held back, and the deploys go out at the opening.

mod support;

use std::time::Duration;

use lineaged::store::now_millis;
use support::TestDb;
use support::fleet::{Lineage, Serve, World, rollouts_finished, until};
use support::platform::{K8S, K8S_ENTRY, Platform};

fn hhmmss(ms: i64) -> String {
    let s = (ms / 1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_wait_for_their_window_and_go_at_the_opening() {
    for backend in ["sqlite", "postgres"] {
        let db = TestDb::new(backend).await;
        let (plat, url) = Platform::start().await;
        let policy = "policy:\n  rules:\n    - images: [\"{registry}/team/**\"]\n      deploy_window: { hours: \"HOURS\", timezone: UTC }\n";
        let w = World::with_deployer(
            Lineage::issue(),
            db.url(),
            &["team/w", "team/x"],
            "webhook",
            policy,
            &K8S.replace("{plat}", &url),
            K8S_ENTRY,
        )
        .await;
        plat.add_workloads(&w, &["team/w", "team/x"]);
        // Opens 15 s from now (UTC), for an hour, every day.
        let opens = (now_millis() / 1000 + 15) * 1000;
        let text = std::fs::read_to_string(&w.cfg).unwrap();
        let hours = format!("{}-{}", hhmmss(opens), hhmmss(opens + 3_600_000));
        std::fs::write(&w.cfg, text.replace("HOURS", &hours)).unwrap();
        let _serve = Serve::start(&w.cfg, "window-node");
        let store = w.store_when_observed().await;
        w.push_base("base/a").await;
        // Built (E too: rebuilds are not held back), deploys waiting.
        let s = store.clone();
        let (wf, xf) = (w.full("team/w"), w.full("team/x"));
        until("waiting for the window", Duration::from_secs(60), || {
            let (s, wf, xf) = (s.clone(), wf.clone(), xf.clone());
            async move {
                let Ok(mut r) = s.rollouts(1).await else {
                    return false;
                };
                let Some(r) = r.pop() else { return false };
                let rows = s.rollout_images(r.id).await.unwrap();
                rows.iter()
                    .filter(|r| (r.image == wf || r.image == xf) && r.state == "waiting_for_window")
                    .count()
                    == 2
            }
        })
        .await;
        let r = store.rollouts(1).await.unwrap().remove(0);
        let rows = store.rollout_images(r.id).await.unwrap();
        for row in rows.iter().filter(|r| r.state == "waiting_for_window") {
            assert_eq!(row.not_before, Some(opens), "{backend}: {row:?}");
        }
        if now_millis() < opens - 1000 {
            assert!(
                plat.writes.lock().unwrap().is_empty(),
                "{backend}: deployed before the window"
            );
        }
        let events = store.events_after(0, 10_000).await.unwrap();
        assert_eq!(
            events
                .iter()
                .filter(|e| e.kind == "deploy_waiting_for_window")
                .count(),
            2
        );
        let states = rollouts_finished(&store, 1, Duration::from_secs(60)).await;
        assert_eq!(states, vec!["succeeded"], "{backend}");
        assert!(now_millis() >= opens);
        assert_eq!(plat.writes_to("k8s-patch", "shop/w").len(), 1);
        assert_eq!(plat.writes_to("k8s-patch", "shop/x").len(), 1);
    }
}
