//! Why images are in a rollout: the cause the engine writes into a rollout
//! and its events, and the API reads back. One type for writer and reader.

use serde::{Deserialize, Serialize};

/// What brought images into a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cause {
    /// A tracked digest moved.
    Change(ChangeCause),
    /// An operator asked for a rebuild.
    Requested { requested: String, by: String },
    /// Reconcile found images built on outdated bases.
    Reconcile { reconcile: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeCause {
    pub image: String,
    pub old: String,
    pub new: String,
    /// poll, push, callback, reconcile.
    pub source: String,
    /// Observations that coalesced into this change within the settle
    /// window (1: none did).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub coalesced: i32,
}

fn one() -> i32 {
    1
}

fn is_one(n: &i32) -> bool {
    *n == 1
}

/// Data of `rollout_started`, `rollout_joined`, `rollout_requested` and
/// `rollout_reconciled` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedData {
    /// How many images the cause put into the rollout.
    pub images: usize,
    pub cause: Cause,
}

impl JoinedData {
    /// Reads the data of a joining event. Events written before 0.2 stored a
    /// reconcile cause as the data itself; those read too.
    pub fn parse(text: &str) -> Option<JoinedData> {
        serde_json::from_str(text).ok().or_else(|| {
            serde_json::from_str::<Cause>(text)
                .ok()
                .map(|cause| JoinedData { images: 0, cause })
        })
    }
}

impl Cause {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The cause as people read it: "r/a:1 moved from sha256:1… to
    /// sha256:2… (push)".
    pub fn sentence(&self) -> String {
        let short = |d: &str| d.get(..19).unwrap_or(d).to_string();
        match self {
            Cause::Change(c) => {
                let coalesced = if c.coalesced > 1 {
                    format!(", {} pushes coalesced", c.coalesced)
                } else {
                    String::new()
                };
                format!(
                    "{} moved from {} to {} ({}{coalesced})",
                    c.image,
                    short(&c.old),
                    short(&c.new),
                    c.source
                )
            }
            Cause::Requested { requested, by } => {
                let by = if by.is_empty() { "an operator" } else { by };
                format!("{by} requested a rebuild of {requested}")
            }
            Cause::Reconcile { reconcile } => {
                let mut names = reconcile
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if reconcile.len() > 3 {
                    names.push_str(&format!(" and {} more", reconcile.len() - 3));
                }
                format!("reconcile found images built on outdated bases: {names}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_keep_their_wire_shape() {
        let c = Cause::Change(ChangeCause {
            image: "r/a:1".into(),
            old: "sha256:1".into(),
            new: "sha256:2".into(),
            source: "push".into(),
            coalesced: 1,
        });
        assert_eq!(
            c.to_json(),
            serde_json::json!({"image": "r/a:1", "old": "sha256:1", "new": "sha256:2", "source": "push"})
        );
        let r: Cause = serde_json::from_str(r#"{"requested":"r/a:1","by":"ops"}"#).unwrap();
        assert!(matches!(r, Cause::Requested { .. }));
        let old = JoinedData::parse(r#"{"reconcile":["r/a:1"]}"#).unwrap();
        assert_eq!(
            old.cause,
            Cause::Reconcile {
                reconcile: vec!["r/a:1".into()]
            }
        );
        let new = JoinedData::parse(
            &serde_json::to_string(&JoinedData {
                images: 2,
                cause: c.clone(),
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(new.cause, c);
        assert_eq!(c.sentence(), "r/a:1 moved from sha256:1 to sha256:2 (push)");
        assert_eq!(r.sentence(), "ops requested a rebuild of r/a:1");
        let many = Cause::Reconcile {
            reconcile: (1..=5).map(|i| format!("r/{i}:1")).collect(),
        };
        assert_eq!(
            many.sentence(),
            "reconcile found images built on outdated bases: r/1:1, r/2:1, r/3:1 and 2 more"
        );
    }
}
