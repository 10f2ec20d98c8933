//! Job kinds and their payloads: one type per kind, written by the rollout
//! engine and read by the dispatcher and the callback handler. Nothing else
//! decodes a payload.

use serde::{Deserialize, Serialize};

use crate::config::{Build, Deploy};

/// What a job does. The dispatcher routes on it; a worker claims only the
/// kinds it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Trigger an image's rebuild in CI.
    Rebuild,
    /// Roll the built digest out to where the image runs.
    Deploy,
    /// Run the supply-chain gates on a digest (lineaged's own worker).
    Verify,
    /// Tell a notification sink about an event.
    Notify,
}

impl JobKind {
    pub const ALL: [JobKind; 4] = [
        JobKind::Rebuild,
        JobKind::Deploy,
        JobKind::Verify,
        JobKind::Notify,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            JobKind::Rebuild => "rebuild",
            JobKind::Deploy => "deploy",
            JobKind::Verify => "verify",
            JobKind::Notify => "notify",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The coalescing key of this kind of job for an image: one pending job
    /// per image and kind, never two running.
    pub fn unique_key(self, image: &str) -> String {
        format!("{}:{image}", self.as_str())
    }
}

/// A parent and the digest the trigger carried for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentDigest {
    pub name: String,
    pub digest: Option<String>,
}

/// Payload of a `rebuild` job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RebuildPayload {
    pub image: String,
    /// Every parent with its current digest when the job was enqueued: what
    /// this build is built on (recorded as the image's bases on success).
    pub parents: Vec<ParentDigest>,
    pub rollout_id: i64,
    pub backend: String,
    pub build: Build,
    /// Secret the CI callback presents; never shown by the API.
    pub callback_token: String,
}

/// Payload of a `deploy` job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployPayload {
    pub image: String,
    /// The built digest to roll out.
    pub digest: String,
    pub rollout_id: i64,
    /// The image's `deploy:` section (backend, app, environment, inputs).
    #[serde(flatten)]
    pub deploy: Deploy,
    pub callback_token: String,
}

impl DeployPayload {
    pub fn new(
        image: &str,
        digest: &str,
        rollout_id: i64,
        deploy: &Deploy,
        token: String,
    ) -> DeployPayload {
        DeployPayload {
            image: image.to_string(),
            digest: digest.to_string(),
            rollout_id,
            deploy: deploy.clone(),
            callback_token: token,
        }
    }
}

/// Payload of a `verify` job: the gates for one digest of an image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyPayload {
    pub image: String,
    /// The built digest; None for an external image's row or a build that
    /// reported none (the image's current digest is checked then).
    pub digest: Option<String>,
    pub rollout_id: i64,
}

/// Payload of a `notify` job: the finished message for one sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotifyPayload {
    /// The sink's name in `notifications:`.
    pub sink: String,
    pub message: crate::notify::Message,
}

/// A decoded job payload.
#[derive(Debug, Clone)]
pub enum JobPayload {
    Rebuild(RebuildPayload),
    Deploy(DeployPayload),
    Verify(VerifyPayload),
    Notify(NotifyPayload),
}

/// A job whose kind or payload this version cannot read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PayloadError {
    #[error("unknown job kind `{0}`")]
    UnknownKind(String),
    #[error("malformed {kind} payload: {error}")]
    Malformed { kind: &'static str, error: String },
}

impl JobPayload {
    pub fn decode(kind: &str, payload: &str) -> Result<JobPayload, PayloadError> {
        let k = JobKind::parse(kind).ok_or_else(|| PayloadError::UnknownKind(kind.to_string()))?;
        let bad = |e: serde_json::Error| PayloadError::Malformed {
            kind: k.as_str(),
            error: e.to_string(),
        };
        Ok(match k {
            JobKind::Rebuild => JobPayload::Rebuild(serde_json::from_str(payload).map_err(bad)?),
            JobKind::Deploy => JobPayload::Deploy(serde_json::from_str(payload).map_err(bad)?),
            JobKind::Verify => JobPayload::Verify(serde_json::from_str(payload).map_err(bad)?),
            JobKind::Notify => JobPayload::Notify(serde_json::from_str(payload).map_err(bad)?),
        })
    }

    pub fn kind(&self) -> JobKind {
        match self {
            JobPayload::Rebuild(_) => JobKind::Rebuild,
            JobPayload::Deploy(_) => JobKind::Deploy,
            JobPayload::Verify(_) => JobKind::Verify,
            JobPayload::Notify(_) => JobKind::Notify,
        }
    }

    pub fn callback_token(&self) -> &str {
        match self {
            JobPayload::Rebuild(p) => &p.callback_token,
            JobPayload::Deploy(p) => &p.callback_token,
            // Gates and notifications: nobody calls back.
            JobPayload::Verify(_) | JobPayload::Notify(_) => "",
        }
    }

    pub fn backend(&self) -> &str {
        match self {
            JobPayload::Rebuild(p) => &p.backend,
            JobPayload::Deploy(p) => &p.deploy.backend,
            JobPayload::Verify(_) => "",
            JobPayload::Notify(p) => &p.sink,
        }
    }

    pub fn to_value(&self) -> serde_json::Value {
        match self {
            JobPayload::Rebuild(p) => serde_json::to_value(p),
            JobPayload::Deploy(p) => serde_json::to_value(p),
            JobPayload::Verify(p) => serde_json::to_value(p),
            JobPayload::Notify(p) => serde_json::to_value(p),
        }
        .unwrap_or_default()
    }
}

/// A fresh callback secret.
pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_bad_ones_say_why() {
        let deploy = Deploy {
            backend: "hook".into(),
            app: Some("api".into()),
            ..Default::default()
        };
        let p = DeployPayload::new("r/a:1", "sha256:1", 3, &deploy, "t".into());
        let text = serde_json::to_string(&p).unwrap();
        let back = JobPayload::decode("deploy", &text).unwrap();
        assert_eq!(back.kind(), JobKind::Deploy);
        assert_eq!(back.callback_token(), "t");
        assert!(matches!(
            JobPayload::decode("notarize", "{}"),
            Err(PayloadError::UnknownKind(_))
        ));
        let e = JobPayload::decode("rebuild", "{}").unwrap_err().to_string();
        assert!(
            e.starts_with("malformed rebuild payload: missing field"),
            "{e}"
        );
        assert_eq!(JobKind::Deploy.unique_key("r/a:1"), "deploy:r/a:1");
    }
}
