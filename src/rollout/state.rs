//! The states of an image in a rollout and of a rollout, stored as text
//! through the one conversion here (`as_str` / `TryFrom<String>`).

use std::fmt;

/// Where one image is in a rollout's pipeline:
/// `waiting → queued → building → built → verifying → awaiting_approval →
/// waiting_for_window → deploying → done`, or one of the ends `failed`, `deploy_failed`,
/// `blocked`, `refused`, `cancelled`. Stages an image's config does not use
/// are skipped.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ImageState {
    /// Affected parents in the rollout have not finished building yet.
    Waiting,
    /// Rebuild job enqueued, not yet accepted by CI.
    Queued,
    /// CI accepted the trigger; waiting for its result (or the deadline).
    Building,
    /// The build finished; the next stage is decided in the same step.
    Built,
    /// Policy gates run on the built digest (issue 16).
    Verifying,
    /// Waiting for a person to approve the deploy (issue 15).
    AwaitingApproval,
    /// Built and cleared, waiting for its deploy window to open.
    WaitingForWindow,
    /// Deploy job enqueued or delivered; waiting for its result.
    Deploying,
    /// Every stage the image uses finished.
    Done,
    /// The build (or its trigger) failed.
    Failed,
    /// Built fine, but the deploy failed: children still build on it.
    DeployFailed,
    /// A parent failed, was refused or blocked: not built.
    Blocked,
    /// A gate said no (the reason is kept).
    Refused,
    /// The rollout was cancelled before this image finished.
    Cancelled,
}

impl ImageState {
    pub const ALL: [ImageState; 14] = [
        ImageState::Waiting,
        ImageState::Queued,
        ImageState::Building,
        ImageState::Built,
        ImageState::Verifying,
        ImageState::AwaitingApproval,
        ImageState::WaitingForWindow,
        ImageState::Deploying,
        ImageState::Done,
        ImageState::Failed,
        ImageState::DeployFailed,
        ImageState::Blocked,
        ImageState::Refused,
        ImageState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Waiting => "waiting",
            ImageState::Queued => "queued",
            ImageState::Building => "building",
            ImageState::Built => "built",
            ImageState::Verifying => "verifying",
            ImageState::AwaitingApproval => "awaiting_approval",
            ImageState::WaitingForWindow => "waiting_for_window",
            ImageState::Deploying => "deploying",
            ImageState::Done => "done",
            ImageState::Failed => "failed",
            ImageState::DeployFailed => "deploy_failed",
            ImageState::Blocked => "blocked",
            ImageState::Refused => "refused",
            ImageState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<ImageState> {
        ImageState::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Nothing more happens to the image in this rollout.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            ImageState::Done
                | ImageState::Failed
                | ImageState::DeployFailed
                | ImageState::Blocked
                | ImageState::Refused
                | ImageState::Cancelled
        )
    }

    /// Children in the rollout may build on this image now: it was built
    /// (and, once gates exist, passed the ones that apply to cascading).
    pub fn provides_base(self) -> bool {
        matches!(
            self,
            ImageState::Built
                | ImageState::AwaitingApproval
                | ImageState::WaitingForWindow
                | ImageState::Deploying
                | ImageState::Done
                | ImageState::DeployFailed
        )
    }

    /// Children in the rollout are blocked by this image.
    pub fn blocks_children(self) -> bool {
        matches!(
            self,
            ImageState::Failed | ImageState::Blocked | ImageState::Refused | ImageState::Cancelled
        )
    }

    /// A build or deploy is out there (CI or the deploy backend may still
    /// report on it): a newer change reruns the image afterwards.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            ImageState::Queued
                | ImageState::Building
                | ImageState::Verifying
                | ImageState::AwaitingApproval
                | ImageState::Deploying
        )
    }

    /// Counted as a success when the rollout ends.
    pub fn is_success(self) -> bool {
        self == ImageState::Done
    }
}

impl fmt::Display for ImageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for ImageState {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ImageState::parse(&s).ok_or_else(|| format!("unknown image state `{s}`"))
    }
}

/// How a rollout stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    /// Every image done.
    Succeeded,
    /// No image done.
    Failed,
    /// Some done, some not (failed, blocked, refused, deploy failed).
    PartiallyFailed,
    Cancelled,
}

impl RolloutState {
    pub const ALL: [RolloutState; 5] = [
        RolloutState::Running,
        RolloutState::Succeeded,
        RolloutState::Failed,
        RolloutState::PartiallyFailed,
        RolloutState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Succeeded => "succeeded",
            RolloutState::Failed => "failed",
            RolloutState::PartiallyFailed => "partially_failed",
            RolloutState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RolloutState> {
        RolloutState::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for RolloutState {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RolloutState::parse(&s).ok_or_else(|| format!("unknown rollout state `{s}`"))
    }
}

/// Compare with the stored text (`state == "done"`), for tests and tools.
macro_rules! eq_text {
    ($t:ty) => {
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
    };
}
eq_text!(ImageState);
eq_text!(RolloutState);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_text() {
        for s in ImageState::ALL {
            assert_eq!(ImageState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        for s in RolloutState::ALL {
            assert_eq!(RolloutState::try_from(s.as_str().to_string()), Ok(s));
        }
        assert!(ImageState::parse("succeeded").is_none());
    }

    #[test]
    fn finished_states_are_exactly_the_ends() {
        for s in ImageState::ALL {
            assert_eq!(
                s.is_finished(),
                !matches!(
                    s,
                    ImageState::Waiting
                        | ImageState::Queued
                        | ImageState::Building
                        | ImageState::Built
                        | ImageState::Verifying
                        | ImageState::AwaitingApproval
                        | ImageState::WaitingForWindow
                        | ImageState::Deploying
                ),
                "{s}"
            );
            assert!(!(s.provides_base() && s.blocks_children()), "{s}");
        }
    }
}
