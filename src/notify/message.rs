//! What a notification says: built once, when it is enqueued, from the
//! event and what the store knows (the rollout's cause, the image's old
//! digest, the CI run), so every retry sends the same words.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::NotifyOn;
use crate::rollout::Cause;
use crate::store::{EventRecord, Store, StoreError};

/// One notification, whatever the sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The event kind a sink subscribes to (`rollout_started`, …).
    pub on: NotifyOn,
    /// The event in lineaged's log (`/api/v1/events`).
    pub event_id: i64,
    /// One line: `Rollout 42 started`, `registry.example.com/api:1 refused`.
    pub title: String,
    /// The sentence that says why (the cause chain, the reason).
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<i64>,
    /// The digest the image had before, and the new one (short forms in
    /// the text; full here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// (label, URL): the dashboard, the rollout in the API, the CI run.
    pub links: Vec<(String, String)>,
    /// The event's own data, for receivers that want everything.
    pub data: Value,
    /// When the event happened (ms since the epoch).
    pub at: i64,
}

/// The notification kinds an event is (none for most events).
pub fn hears(e: &EventRecord) -> Vec<NotifyOn> {
    let data: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
    match e.kind.as_str() {
        "rollout_started" => vec![NotifyOn::RolloutStarted],
        "rollout_finished" => {
            let failed = matches!(
                data["state"].as_str(),
                Some("failed") | Some("partially_failed")
            );
            if failed {
                vec![NotifyOn::RolloutFinished, NotifyOn::RolloutFailed]
            } else {
                vec![NotifyOn::RolloutFinished]
            }
        }
        "image_blocked" => vec![NotifyOn::ImageBlocked],
        "gate_refused" => vec![NotifyOn::GateRefused],
        "approval_pending" => vec![NotifyOn::ApprovalPending],
        "deploy_failed" => vec![NotifyOn::DeployFailed],
        "registry_degraded" => vec![NotifyOn::RegistryDown],
        _ => Vec::new(),
    }
}

/// `sha256:0123456789ab`: enough to tell digests apart in a sentence.
pub fn short(d: &str) -> String {
    d.chars().take(19).collect()
}

/// The message for event `e` heard as `on`. One sink hearing an event as
/// both `rollout_finished` and `rollout_failed` gets two jobs only if it
/// subscribed to both.
pub async fn compose(
    e: &EventRecord,
    on: NotifyOn,
    store: &Store,
    base: &str,
) -> Result<Message, StoreError> {
    let data: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
    let s = |k: &str| data[k].as_str().map(str::to_string);
    let mut links = vec![("Dashboard".to_string(), format!("{base}/"))];
    if let Some(r) = e.rollout_id {
        links.push((
            format!("Rollout {r}"),
            format!("{base}/api/v1/rollouts/{r}"),
        ));
    }
    let image = e.image.clone();
    let name = image.clone().unwrap_or_default();
    // The image's digest before this rollout and the one it built.
    let (mut old_digest, mut digest) = (None, s("digest"));
    if let (Some(img), Some(r)) = (&image, e.rollout_id) {
        if let Some(row) = store
            .rollout_images_named(r, std::slice::from_ref(img))
            .await?
            .into_iter()
            .next()
        {
            digest = digest.or(row.built_digest.clone());
            if let Some(job) = row.job_id
                && let Some(j) = store.job(job).await?
                && let Some(url) = j.run_url
            {
                links.push(("CI run".into(), url));
            }
        }
        if let Some(d) = &digest {
            old_digest = store.previous_digest(img, d).await?;
        }
    }
    let change = match (&old_digest, &digest) {
        (Some(o), Some(n)) => format!(" ({} → {})", short(o), short(n)),
        (None, Some(n)) => format!(" ({})", short(n)),
        _ => String::new(),
    };
    let rollout = e
        .rollout_id
        .map(|r| format!("Rollout {r}"))
        .unwrap_or_default();
    let (title, text) = match on {
        NotifyOn::RolloutStarted => {
            let images = data["images"].as_u64().unwrap_or(0);
            let cause = serde_json::from_value::<Cause>(data["cause"].clone())
                .map(|c| cause_sentence(&c))
                .unwrap_or_else(|_| "a base image changed".into());
            (
                format!("{rollout} started"),
                format!("{cause}: {images} image{} to rebuild.", plural(images)),
            )
        }
        NotifyOn::RolloutFinished | NotifyOn::RolloutFailed => {
            let state = s("state").unwrap_or_default().replace('_', " ");
            let images = data["images"].as_u64().unwrap_or(0);
            let done = data["succeeded"].as_u64().unwrap_or(0);
            (
                format!("{rollout} {state}"),
                format!("{done} of {images} image{} done.", plural(images)),
            )
        }
        NotifyOn::ApprovalPending => {
            let id = data["approval_id"].as_i64().unwrap_or(0);
            let stage = s("stage").unwrap_or_else(|| "deploy".into());
            links.push((
                "Approvals".into(),
                format!("{base}/api/v1/approvals?state=pending"),
            ));
            (
                format!("{name} waits for approval"),
                format!(
                    "Approve or reject its {stage}{change}: approval {id} (`lineaged approve {id}`)."
                ),
            )
        }
        NotifyOn::DeployFailed => (
            format!("{name} deploy failed"),
            format!("{}{change}", s("reason").unwrap_or_default()),
        ),
        NotifyOn::GateRefused => (
            format!("{name} refused by gates"),
            format!("{}{change}", s("reason").unwrap_or_default()),
        ),
        NotifyOn::ImageBlocked => (format!("{name} blocked"), s("reason").unwrap_or_default()),
        NotifyOn::RegistryDown => (
            format!(
                "Registry {} is {}",
                s("registry").unwrap_or_default(),
                s("state").unwrap_or_default()
            ),
            s("error").unwrap_or_else(|| "checks are failing".into()),
        ),
    };
    Ok(Message {
        on,
        event_id: e.id,
        title,
        text,
        image,
        rollout_id: e.rollout_id,
        old_digest,
        digest,
        links,
        data,
        at: e.at,
    })
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Why a rollout started, as a person would say it.
pub fn cause_sentence(c: &Cause) -> String {
    match c {
        Cause::Change(ch) => format!(
            "{} moved {} → {} ({})",
            ch.image,
            short(&ch.old),
            short(&ch.new),
            ch.source
        ),
        Cause::Requested { requested, by } => format!("{by} asked to rebuild {requested}"),
        Cause::Reconcile { reconcile } => format!(
            "{} image{} found on outdated bases",
            reconcile.len(),
            plural(reconcile.len() as u64)
        ),
    }
}
