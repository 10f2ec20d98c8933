//! The rollout's decisions, as pure functions of the stored rows and the
//! lineage: no database, no clock, no I/O. The engine (`mod.rs`) reads the
//! rows, asks these functions what to do and applies the answer in one
//! transaction.

use std::collections::HashMap;

use super::state::{ImageState, RolloutState};
pub use crate::config::ApprovalStage;
use crate::store::RolloutImage;

/// The stages an image's config uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stages {
    /// It has `build:`: lineaged triggers its rebuild.
    pub build: bool,
    /// It has `deploy:`: a deploy job follows a good build.
    pub deploy: bool,
}

/// Which supply-chain gates apply to an image (issue 16).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gates {
    /// Before its deploy.
    pub deploy: bool,
    /// Before children build on it: they wait while it is verifying and
    /// are blocked when it is refused.
    pub cascade: bool,
}

impl Gates {
    pub fn any(self) -> bool {
        self.deploy || self.cascade
    }
}

/// One image of the lineage as the machine sees it.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// All of its parents (normalised names); only those in the rollout
    /// matter to a step.
    pub parents: Vec<String>,
    pub stages: Stages,
    pub gates: Gates,
    /// A person approves before this stage (issue 15).
    pub approval: Option<ApprovalStage>,
}

/// The lineage by image name.
pub type Nodes = HashMap<String, Node>;

/// What the engine should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// waiting → blocked: a parent in the rollout failed, was refused or
    /// blocked.
    Block { image: String, reason: String },
    /// waiting → queued: every affected parent provides its base; enqueue
    /// the rebuild job.
    Trigger { image: String },
    /// built (or an external image's waiting row) → verifying: enqueue the
    /// verify job that runs the gates on its digest.
    Verify { image: String },
    /// → awaiting_approval: ask a person (before the deploy of the built
    /// digest, or before the build).
    AwaitApproval { image: String, stage: ApprovalStage },
    /// built → deploying: enqueue the deploy job of the built digest.
    Deploy { image: String },
    /// built → deploy_failed: it must deploy but no built digest is known.
    DeployFailed { image: String, reason: String },
    /// → cancelled: the image left the config while in the rollout.
    Cancel { image: String, reason: String },
    /// → done: no stage left (built with no deploy, or nothing to build).
    Done { image: String },
    /// Every image finished: the rollout ends in `state`.
    Finish {
        state: RolloutState,
        images: usize,
        done: usize,
    },
}

/// One step over a rollout's rows: blocks, triggers, deploys and finishes
/// what is ready. Decisions earlier in the walk (in wave order) count for
/// later rows, so a failure blocks a whole chain in one step.
pub fn step(rows: &[RolloutImage], nodes: &Nodes) -> Vec<Action> {
    step_in(rows, nodes, None)
}

/// `step` deciding only the rows named in `only` (the others are context:
/// parents whose state counts). A partial step never finishes the rollout:
/// the caller asks [`finish_state`] with the counts of all rows.
pub fn step_in(
    rows: &[RolloutImage],
    nodes: &Nodes,
    only: Option<&std::collections::HashSet<String>>,
) -> Vec<Action> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| (rows[a].wave, &rows[a].image).cmp(&(rows[b].wave, &rows[b].image)));
    // (state, job, rerun): a row to be rerun (a newer base arrived while it
    // was deploying) is no base for its children until it is rebuilt.
    let mut state: HashMap<&str, (ImageState, Option<i64>)> = rows
        .iter()
        .map(|r| (r.image.as_str(), (r.state, r.job_id)))
        .collect();
    let rerun: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|r| r.rerun)
        .map(|r| r.image.as_str())
        .collect();
    // Rows whose build a person approved: a refusal of the others with a
    // build approval is a rejected build (nothing was built).
    let build_approved: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|r| r.build_approved)
        .map(|r| r.image.as_str())
        .collect();
    let mut actions = Vec::new();
    for i in order {
        let r = &rows[i];
        if only.is_some_and(|o| !o.contains(&r.image)) {
            continue;
        }
        let node = nodes.get(&r.image);
        let stages = node.map(|n| n.stages).unwrap_or_default();
        let gates = node.map(|n| n.gates).unwrap_or_default();
        if node.is_none() && !r.state.is_finished() {
            actions.push(Action::Cancel {
                image: r.image.clone(),
                reason: "no longer in the config".into(),
            });
            state.insert(r.image.as_str(), (ImageState::Cancelled, r.job_id));
            continue;
        }
        let next = match r.state {
            ImageState::Waiting => {
                let parents = node.map_or(&[][..], |n| &n.parents[..]);
                let mut blocker = None;
                let mut ready = true;
                for p in parents {
                    let Some(&(ps, job)) = state.get(p.as_str()) else {
                        continue;
                    };
                    // A gate that does not apply to cascading holds no child
                    // back: a refusal for deploy only, or a check for it.
                    let cascade = nodes.get(p).is_some_and(|n| n.gates.cascade);
                    let rejected_build = ps == ImageState::Refused
                        && nodes.get(p).and_then(|n| n.approval) == Some(ApprovalStage::Build)
                        && !build_approved.contains(p.as_str());
                    let deploy_only = !cascade
                        && !rejected_build
                        && matches!(ps, ImageState::Refused | ImageState::Verifying);
                    if deploy_only {
                        ready &= !rerun.contains(p.as_str());
                        continue;
                    }
                    // Waiting for its build's approval: not built yet.
                    let unbuilt = ps == ImageState::AwaitingApproval
                        && nodes.get(p).and_then(|n| n.approval) == Some(ApprovalStage::Build);
                    if unbuilt {
                        ready = false;
                        continue;
                    }
                    if ps.blocks_children() {
                        blocker = Some(format!(
                            "parent {p} {ps}{}",
                            job.map(|j| format!(" (job {j})")).unwrap_or_default()
                        ));
                        break;
                    }
                    ready &= ps.provides_base() && !rerun.contains(p.as_str());
                }
                if let Some(reason) = blocker {
                    actions.push(Action::Block {
                        image: r.image.clone(),
                        reason,
                    });
                    Some(ImageState::Blocked)
                } else if !ready {
                    None
                } else if stages.build
                    && node.and_then(|n| n.approval) == Some(ApprovalStage::Build)
                    && !r.build_approved
                {
                    actions.push(Action::AwaitApproval {
                        image: r.image.clone(),
                        stage: ApprovalStage::Build,
                    });
                    Some(ImageState::AwaitingApproval)
                } else if stages.build {
                    actions.push(Action::Trigger {
                        image: r.image.clone(),
                    });
                    Some(ImageState::Queued)
                } else if gates.cascade && r.verified_digest.is_none() {
                    // An external base its children must not build on
                    // before it passes.
                    actions.push(Action::Verify {
                        image: r.image.clone(),
                    });
                    Some(ImageState::Verifying)
                } else {
                    // Nothing lineaged can build (an external image's row).
                    actions.push(Action::Done {
                        image: r.image.clone(),
                    });
                    Some(ImageState::Done)
                }
            }
            ImageState::Built if needs_gates(r, stages, gates) => {
                actions.push(Action::Verify {
                    image: r.image.clone(),
                });
                Some(ImageState::Verifying)
            }
            ImageState::Built if stages.deploy && r.built_digest.is_none() => {
                actions.push(Action::DeployFailed {
                    image: r.image.clone(),
                    reason: "no built digest to deploy (CI reported none)".into(),
                });
                Some(ImageState::DeployFailed)
            }
            ImageState::Built
                if stages.deploy
                    && node.and_then(|n| n.approval) == Some(ApprovalStage::Deploy)
                    && r.approved_digest != r.built_digest =>
            {
                actions.push(Action::AwaitApproval {
                    image: r.image.clone(),
                    stage: ApprovalStage::Deploy,
                });
                Some(ImageState::AwaitingApproval)
            }
            ImageState::Built if stages.deploy => {
                actions.push(Action::Deploy {
                    image: r.image.clone(),
                });
                Some(ImageState::Deploying)
            }
            ImageState::Built => {
                actions.push(Action::Done {
                    image: r.image.clone(),
                });
                Some(ImageState::Done)
            }
            _ => None,
        };
        if let Some(s) = next {
            state.insert(r.image.as_str(), (s, r.job_id));
        }
    }
    if only.is_none() {
        let counts: Vec<(ImageState, i64)> = state.values().map(|(s, _)| (*s, 1)).collect();
        if let Some(finish) = finish_state(&counts) {
            actions.push(finish);
        }
    }
    actions
}

/// Built, gates apply, and the digest that passed them (if any) is not the
/// one built: verify first.
fn needs_gates(r: &RolloutImage, stages: Stages, gates: Gates) -> bool {
    let wanted = gates.cascade || (gates.deploy && stages.deploy);
    let verified = r.verified_digest.is_some()
        && (r.built_digest.is_none() || r.verified_digest == r.built_digest);
    wanted && !verified
}

/// The rollout's end from how many images are in each state, or None while
/// one is unfinished: succeeded when every image is done, failed when none
/// was even built, partially failed otherwise.
pub fn finish_state(counts: &[(ImageState, i64)]) -> Option<Action> {
    let images: i64 = counts.iter().map(|(_, n)| n).sum();
    if images == 0 || counts.iter().any(|(s, n)| *n > 0 && !s.is_finished()) {
        return None;
    }
    let count = |f: fn(ImageState) -> bool| -> i64 {
        counts.iter().filter(|(s, _)| f(*s)).map(|(_, n)| n).sum()
    };
    let done = count(ImageState::is_success);
    let state = if done == images {
        RolloutState::Succeeded
    } else if done == 0 && count(ImageState::provides_base) == 0 {
        RolloutState::Failed
    } else {
        RolloutState::PartiallyFailed
    };
    Some(Action::Finish {
        state,
        images: images as usize,
        done: done as usize,
    })
}

/// What a newer change does to an image already in the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejoin {
    /// Not triggered yet: it reads the newest parents when it is.
    Keep,
    /// Its rebuild job may not have gone out: withdraw it and wait again;
    /// if it went out already, rerun.
    WithdrawOrRerun,
    /// A build or deploy is out there: once more when it ends (never two
    /// builds of one image at once).
    Rerun,
    /// It had finished: wait again.
    Restart,
    /// A person was asked about a digest a new build will replace: the
    /// request is withdrawn (superseded) and it waits again.
    Reask,
}

/// `approval`: the stage the image's approval is for, if any.
pub fn rejoin(state: ImageState, approval: Option<ApprovalStage>) -> Rejoin {
    match state {
        ImageState::Waiting => Rejoin::Keep,
        // Approving a build holds for the newest bases: it reads them when
        // it is triggered.
        ImageState::AwaitingApproval if approval == Some(ApprovalStage::Build) => Rejoin::Keep,
        ImageState::AwaitingApproval => Rejoin::Reask,
        ImageState::Queued => Rejoin::WithdrawOrRerun,
        s if s.in_flight() => Rejoin::Rerun,
        _ => Rejoin::Restart,
    }
}

/// A result reported for an image's build or deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Built {
        digest: Option<String>,
    },
    BuildFailed {
        reason: String,
    },
    /// The gates passed (or only warned) on this digest.
    Verified {
        digest: String,
    },
    /// A gate refused.
    Refused {
        reason: String,
    },
    Deployed,
    DeployFailed {
        reason: String,
    },
    /// A person approved (the stage the row waited for); `by` is the API
    /// token's name.
    Approved {
        stage: ApprovalStage,
        by: String,
    },
    /// A person rejected, or the request expired (`by` lineaged).
    Rejected {
        reason: String,
        by: String,
    },
}

impl Outcome {
    /// The event kind that records it.
    pub fn event_kind(&self) -> &'static str {
        match self {
            Outcome::Built { .. } => "job_succeeded",
            Outcome::BuildFailed { .. } => "job_failed",
            Outcome::Verified { .. } => "image_verified",
            Outcome::Refused { .. } => "image_refused",
            Outcome::Deployed => "deploy_succeeded",
            Outcome::DeployFailed { .. } => "deploy_failed",
            Outcome::Approved { .. } => "approval_granted",
            Outcome::Rejected { .. } => "approval_rejected",
        }
    }
}

/// Applies a result to the image's row. False (and the row untouched) when
/// the row is not in the stage the result is for: a repeated or late
/// report never moves an image backwards.
pub fn apply(row: &mut RolloutImage, outcome: &Outcome) -> bool {
    let building = matches!(row.state, ImageState::Queued | ImageState::Building);
    let deploying = row.state == ImageState::Deploying;
    let verifying = row.state == ImageState::Verifying;
    let awaiting = row.state == ImageState::AwaitingApproval;
    match outcome {
        Outcome::Approved { stage, .. } if awaiting => {
            row.approval_id = None;
            row.reason = None;
            match stage {
                ApprovalStage::Build => {
                    row.build_approved = true;
                    row.state = ImageState::Waiting;
                }
                ApprovalStage::Deploy => {
                    row.approved_digest = row.built_digest.clone();
                    row.state = ImageState::Built;
                }
            }
        }
        Outcome::Rejected { reason, .. } if awaiting => {
            row.approval_id = None;
            row.reason = Some(reason.clone());
            row.state = ImageState::Refused;
        }
        Outcome::Built { digest } if building => {
            row.built_digest = digest.clone();
            row.reason = None;
            row.state = ImageState::Built;
        }
        Outcome::BuildFailed { reason } if building => {
            row.reason = Some(reason.clone());
            row.state = ImageState::Failed;
        }
        Outcome::Verified { digest } if verifying => {
            // Back to built: the step sees the gates behind it and moves on
            // to deploy or done.
            row.verified_digest = Some(digest.clone());
            row.reason = None;
            row.state = ImageState::Built;
        }
        Outcome::Refused { reason } if verifying => {
            row.reason = Some(reason.clone());
            row.state = ImageState::Refused;
        }
        Outcome::Deployed if deploying => {
            row.reason = None;
            row.state = ImageState::Done;
        }
        Outcome::DeployFailed { reason } if deploying => {
            row.reason = Some(reason.clone());
            row.state = ImageState::DeployFailed;
        }
        _ => return false,
    }
    row.build_deadline = None;
    if std::mem::take(&mut row.rerun) {
        // A newer base arrived meanwhile: build once more on it (a new
        // build, with its own attempts).
        row.state = ImageState::Waiting;
        row.job_id = None;
        row.deploy_job_id = None;
        row.verify_job_id = None;
        row.verified_digest = None;
        row.approval_id = None;
        row.approved_digest = None;
        row.build_approved = false;
        row.build_attempts = 0;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(spec: &[(&str, &[&str], Stages)]) -> Nodes {
        spec.iter()
            .map(|(n, ps, st)| {
                (
                    n.to_string(),
                    Node {
                        parents: ps.iter().map(|p| p.to_string()).collect(),
                        stages: *st,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    const BUILD: Stages = Stages {
        build: true,
        deploy: false,
    };
    const BUILD_DEPLOY: Stages = Stages {
        build: true,
        deploy: true,
    };

    fn row(image: &str, wave: i32, state: ImageState) -> RolloutImage {
        let mut r = RolloutImage::new(1, image, wave, 0);
        r.state = state;
        if state == ImageState::Built {
            r.built_digest = Some(format!("sha256:{image}"));
        }
        r
    }

    /// The diamond of the issue: A → P, B → T, P+T → X, P → W, X+W → E.
    fn diamond() -> Nodes {
        nodes(&[
            ("P", &["A"], BUILD),
            ("T", &["B"], BUILD),
            ("X", &["P", "T"], BUILD),
            ("W", &["P"], BUILD_DEPLOY),
            ("E", &["X", "W"], BUILD),
        ])
    }

    fn names(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Block { image, .. } => format!("block {image}"),
                Action::Trigger { image } => format!("trigger {image}"),
                Action::Deploy { image } => format!("deploy {image}"),
                Action::Verify { image } => format!("verify {image}"),
                Action::AwaitApproval { image, stage } => format!("approve {image} {stage:?}"),
                Action::DeployFailed { image, .. } => format!("deploy_failed {image}"),
                Action::Cancel { image, .. } => format!("cancel {image}"),
                Action::Done { image } => format!("done {image}"),
                Action::Finish { state, .. } => format!("finish {state}"),
            })
            .collect()
    }

    type Case = (
        &'static str,
        Vec<(&'static str, i32, ImageState)>,
        Vec<&'static str>,
    );

    #[test]
    fn step_table() {
        use ImageState::*;
        let cases: Vec<Case> = vec![
            (
                "first wave triggers, children wait",
                vec![
                    ("P", 1, Waiting),
                    ("W", 2, Waiting),
                    ("X", 2, Waiting),
                    ("E", 3, Waiting),
                ],
                vec!["trigger P"],
            ),
            (
                "both parents of a diamond must be built",
                vec![("P", 1, Done), ("T", 1, Building), ("X", 2, Waiting)],
                vec![],
            ),
            (
                "diamond joins once both are built",
                vec![("P", 1, Done), ("T", 1, Built), ("X", 2, Waiting)],
                vec!["done T", "trigger X"],
            ),
            (
                "a parent outside the rollout does not hold a child",
                vec![("X", 2, Waiting)],
                vec!["trigger X"],
            ),
            (
                "built with deploy goes to deploying; children build on it meanwhile",
                vec![("P", 1, Done), ("W", 2, Built), ("E", 3, Waiting)],
                vec!["deploy W", "trigger E"],
            ),
            (
                "a failure blocks the whole chain in one step",
                vec![
                    ("P", 1, Failed),
                    ("W", 2, Waiting),
                    ("X", 2, Waiting),
                    ("E", 3, Waiting),
                ],
                vec!["block W", "block X", "block E", "finish failed"],
            ),
            (
                "a parent refused by a cascade gate blocks",
                vec![("P", 1, Refused), ("W", 2, Waiting)],
                vec!["block W", "finish failed"],
            ),
            (
                "a failed deploy does not block children",
                vec![("P", 1, Done), ("W", 2, DeployFailed), ("E", 3, Waiting)],
                vec!["trigger E"],
            ),
            (
                "all done: succeeded",
                vec![("P", 1, Done), ("W", 2, Done)],
                vec!["finish succeeded"],
            ),
            (
                "some done: partially failed",
                vec![("P", 1, Done), ("T", 1, Failed), ("X", 2, Blocked)],
                vec!["finish partially_failed"],
            ),
            (
                "deploy failed only: partially failed (the build is good)",
                vec![("W", 2, DeployFailed)],
                vec!["finish partially_failed"],
            ),
            (
                "in-flight images keep the rollout running",
                vec![("P", 1, Done), ("W", 2, Deploying)],
                vec![],
            ),
            (
                "cancelled",
                vec![("P", 1, Cancelled)],
                vec!["finish failed"],
            ),
        ];
        let mut n = diamond();
        n.get_mut("P").unwrap().gates.cascade = true;
        for (what, rows, want) in cases {
            let rows: Vec<RolloutImage> = rows.iter().map(|(i, w, s)| row(i, *w, *s)).collect();
            assert_eq!(names(&step(&rows, &n)), want, "{what}");
        }
    }

    #[test]
    fn an_image_without_build_is_skipped_not_faked() {
        let n = nodes(&[("A", &[], Stages::default()), ("P", &["A"], BUILD)]);
        let rows = vec![
            row("A", 1, ImageState::Waiting),
            row("P", 2, ImageState::Waiting),
        ];
        assert_eq!(names(&step(&rows, &n)), vec!["done A", "trigger P"]);
    }

    #[test]
    fn a_build_without_digest_cannot_deploy_and_a_removed_image_is_cancelled() {
        let mut w = row("W", 2, ImageState::Built);
        w.built_digest = None;
        let rows = vec![w, row("Gone", 2, ImageState::Building)];
        assert_eq!(
            names(&step(&rows, &diamond())),
            vec!["cancel Gone", "deploy_failed W", "finish partially_failed"]
        );
    }

    #[test]
    fn a_parent_due_for_a_rerun_is_no_base() {
        let mut p = row("P", 1, ImageState::Deploying);
        p.rerun = true;
        let rows = vec![p, row("W", 2, ImageState::Waiting)];
        assert!(names(&step(&rows, &diamond())).is_empty());
    }

    #[test]
    fn block_reason_names_the_parent_and_its_job() {
        let mut p = row("P", 1, ImageState::Failed);
        p.job_id = Some(7);
        let rows = vec![p, row("W", 2, ImageState::Waiting)];
        let a = step(&rows, &diamond());
        assert_eq!(
            a[0],
            Action::Block {
                image: "W".into(),
                reason: "parent P failed (job 7)".into()
            }
        );
    }

    #[test]
    fn a_partial_step_decides_only_its_rows_and_never_finishes() {
        use ImageState::*;
        let rows = vec![
            row("P", 1, Failed),
            row("W", 2, Waiting),
            row("X", 2, Waiting),
            row("E", 3, Waiting),
        ];
        let only: std::collections::HashSet<String> =
            ["P", "W"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names(&step_in(&rows, &diamond(), Some(&only))),
            vec!["block W"]
        );
        assert_eq!(
            finish_state(&[(Done, 3), (Failed, 1)]).map(|a| names(&[a])),
            Some(vec!["finish partially_failed".to_string()])
        );
        assert_eq!(finish_state(&[(Done, 3), (Building, 1)]), None);
        assert_eq!(finish_state(&[]), None);
    }

    #[test]
    fn approvals_hold_deploys_and_builds_and_a_rejection_blocks_children() {
        use ImageState::*;
        let mut n = diamond();
        n.get_mut("W").unwrap().approval = Some(ApprovalStage::Deploy);
        n.get_mut("P").unwrap().approval = Some(ApprovalStage::Build);
        // P waits for its build approval; its children wait with it.
        let rows = vec![
            row("P", 1, Waiting),
            row("X", 2, Waiting),
            row("W", 2, Waiting),
        ];
        assert_eq!(names(&step(&rows, &n)), vec!["approve P Build"]);
        let rows = vec![
            row("P", 1, AwaitingApproval),
            row("X", 2, Waiting),
            row("W", 2, Waiting),
        ];
        assert!(step(&rows, &n).is_empty());
        // Approved: back to waiting, then triggered.
        let mut p = rows[0].clone();
        let ok = Outcome::Approved {
            stage: ApprovalStage::Build,
            by: "ops".into(),
        };
        assert!(apply(&mut p, &ok));
        assert_eq!((p.state, p.build_approved), (Waiting, true));
        assert_eq!(names(&step(&[p], &n)), vec!["trigger P"]);
        // Built W asks before its deploy; approved, it deploys.
        let mut w = row("W", 2, Built);
        assert_eq!(names(&step(&[w.clone()], &n)), vec!["approve W Deploy"]);
        w.state = AwaitingApproval;
        assert!(apply(
            &mut w,
            &Outcome::Approved {
                stage: ApprovalStage::Deploy,
                by: "ops".into()
            }
        ));
        assert_eq!(w.approved_digest, w.built_digest);
        assert_eq!(names(&step(&[w.clone()], &n)), vec!["deploy W"]);
        // Rejected before its build: refused, and X is blocked.
        let mut p = row("P", 1, AwaitingApproval);
        let no = Outcome::Rejected {
            reason: "approval rejected by ops".into(),
            by: "ops".into(),
        };
        assert!(apply(&mut p, &no));
        assert_eq!(p.state, Refused);
        let a = step(&[p, row("X", 2, Waiting)], &n);
        assert_eq!(names(&a)[0], "block X");
        // A late decision on a row that moved on changes nothing.
        let mut done = row("W", 2, Done);
        assert!(!apply(&mut done, &no));
    }

    #[test]
    fn rejoin_table() {
        use ImageState::*;
        for (s, want) in [
            (Waiting, Rejoin::Keep),
            (Queued, Rejoin::WithdrawOrRerun),
            (Building, Rejoin::Rerun),
            (Deploying, Rejoin::Rerun),
            (AwaitingApproval, Rejoin::Reask),
            (Done, Rejoin::Restart),
            (Failed, Rejoin::Restart),
            (Blocked, Rejoin::Restart),
            (DeployFailed, Rejoin::Restart),
            (Cancelled, Rejoin::Restart),
        ] {
            assert_eq!(rejoin(s, Some(ApprovalStage::Deploy)), want, "{s}");
        }
        assert_eq!(
            rejoin(AwaitingApproval, Some(ApprovalStage::Build)),
            Rejoin::Keep
        );
    }

    #[test]
    fn results_move_forward_only() {
        use ImageState::*;
        let built = Outcome::Built {
            digest: Some("sha256:1".into()),
        };
        let failed = Outcome::BuildFailed { reason: "x".into() };
        let deploy_failed = Outcome::DeployFailed { reason: "y".into() };
        let cases = [
            (Building, false, built.clone(), Some(Built)),
            (Queued, false, built.clone(), Some(Built)),
            (Building, true, built.clone(), Some(Waiting)),
            (Building, false, failed.clone(), Some(Failed)),
            (Building, true, failed.clone(), Some(Waiting)),
            (Deploying, false, Outcome::Deployed, Some(Done)),
            (Deploying, false, deploy_failed.clone(), Some(DeployFailed)),
            (Deploying, true, Outcome::Deployed, Some(Waiting)),
            // Repeats and late reports change nothing.
            (Built, false, built.clone(), None),
            (Done, false, built.clone(), None),
            (Done, false, Outcome::Deployed, None),
            (Cancelled, false, built.clone(), None),
            (Failed, false, built.clone(), None),
            (Building, false, Outcome::Deployed, None),
            (Deploying, false, built.clone(), None),
        ];
        for (from, rerun, outcome, want) in cases {
            let mut r = row("W", 1, from);
            r.rerun = rerun;
            r.job_id = Some(3);
            let ok = apply(&mut r, &outcome);
            assert_eq!(ok, want.is_some(), "{from} + {outcome:?}");
            assert_eq!(r.state, want.unwrap_or(from), "{from} + {outcome:?}");
            if want == Some(Waiting) {
                assert!(!r.rerun && r.job_id.is_none());
            }
        }
    }

    #[test]
    fn step_is_fast_on_10k_images() {
        // Correctness at size (the timing is in benches/rollout.rs).
        let mut n = Nodes::new();
        let mut rows = Vec::new();
        for i in 0..10_000 {
            let name = format!("img{i}");
            let parents = if i < 100 {
                vec![]
            } else {
                vec![format!("img{}", i / 100 - 1)]
            };
            n.insert(
                name.clone(),
                Node {
                    parents,
                    stages: BUILD,
                    ..Default::default()
                },
            );
            rows.push(row(&name, if i < 100 { 1 } else { 2 }, ImageState::Waiting));
        }
        let a = step(&rows, &n);
        // Wave 1 triggers; wave 2 waits for its queued parents.
        assert_eq!(a.len(), 100);
        assert!(a.iter().all(|a| matches!(a, Action::Trigger { .. })));
    }

    /// The diamond with gates: P's gates apply to cascading (its children
    /// wait for them), W's only to its deploy.
    fn gated() -> Nodes {
        let mut n = diamond();
        n.get_mut("P").unwrap().gates = Gates {
            deploy: false,
            cascade: true,
        };
        n.get_mut("W").unwrap().gates = Gates {
            deploy: true,
            cascade: false,
        };
        n.insert(
            "A".into(),
            Node {
                parents: vec![],
                stages: Stages::default(),
                gates: Gates {
                    deploy: false,
                    cascade: true,
                },
                ..Default::default()
            },
        );
        n
    }

    #[test]
    fn gates_hold_children_only_where_they_apply_to_cascading() {
        let n = gated();
        // A built P verifies first; its children wait.
        let rows = vec![
            row("P", 1, ImageState::Built),
            row("X", 2, ImageState::Waiting),
            row("W", 2, ImageState::Waiting),
        ];
        assert_eq!(names(&step(&rows, &n)), vec!["verify P"]);
        let rows = vec![
            row("P", 1, ImageState::Verifying),
            row("W", 2, ImageState::Waiting),
        ];
        assert_eq!(names(&step(&rows, &n)), Vec::<String>::new());
        // P passed: it is done and W builds on it.
        let mut p = row("P", 1, ImageState::Verifying);
        assert!(apply(
            &mut p,
            &Outcome::Verified {
                digest: "sha256:P".into()
            }
        ));
        assert_eq!(
            (p.state, p.verified_digest.as_deref()),
            (ImageState::Built, Some("sha256:P"))
        );
        let rows = vec![p, row("W", 2, ImageState::Waiting)];
        assert_eq!(names(&step(&rows, &n)), vec!["done P", "trigger W"]);
        // P refused: W is blocked naming it.
        let mut p = row("P", 1, ImageState::Verifying);
        assert!(apply(
            &mut p,
            &Outcome::Refused {
                reason: "signature gate: unsigned".into()
            }
        ));
        let rows = vec![p, row("W", 2, ImageState::Waiting)];
        let a = step(&rows, &n);
        assert_eq!(names(&a), vec!["block W", "finish failed"]);
        assert!(
            matches!(&a[0], Action::Block { reason, .. } if reason == "parent P refused"),
            "{a:?}"
        );
        // W's gates are for its deploy: verify before deploying; E (its
        // child) does not wait for them, nor for a refusal.
        let mut w = row("W", 2, ImageState::Built);
        w.verified_digest = None;
        let rows = vec![
            row("P", 1, ImageState::Done),
            w,
            row("X", 2, ImageState::Done),
            row("E", 3, ImageState::Waiting),
        ];
        assert_eq!(names(&step(&rows, &n)), vec!["verify W", "trigger E"]);
        let rows = vec![
            row("P", 1, ImageState::Done),
            row("W", 2, ImageState::Refused),
            row("X", 2, ImageState::Done),
            row("E", 3, ImageState::Waiting),
        ];
        assert_eq!(names(&step(&rows, &n)), vec!["trigger E"]);
        // Verified W deploys its built digest.
        let mut w = row("W", 2, ImageState::Built);
        w.verified_digest = w.built_digest.clone();
        assert_eq!(names(&step(&[w.clone()], &n)), vec!["deploy W"]);
        // A rebuilt digest is verified anew.
        w.built_digest = Some("sha256:W2".into());
        assert_eq!(names(&step(&[w], &n)), vec!["verify W"]);
    }

    #[test]
    fn an_external_base_with_cascade_gates_is_verified_before_its_children_build() {
        let n = gated();
        let rows = vec![
            row("A", 0, ImageState::Waiting),
            row("P", 1, ImageState::Waiting),
        ];
        assert_eq!(names(&step(&rows, &n)), vec!["verify A"]);
        let mut a = row("A", 0, ImageState::Verifying);
        assert!(apply(
            &mut a,
            &Outcome::Verified {
                digest: "sha256:A".into()
            }
        ));
        let rows = vec![a, row("P", 1, ImageState::Waiting)];
        assert_eq!(names(&step(&rows, &n)), vec!["done A", "trigger P"]);
        let rows = vec![
            row("A", 0, ImageState::Refused),
            row("P", 1, ImageState::Waiting),
        ];
        assert_eq!(names(&step(&rows, &n)), vec!["block P", "finish failed"]);
        // A verdict for a row that is not verifying changes nothing.
        let mut done = row("A", 0, ImageState::Done);
        assert!(!apply(
            &mut done,
            &Outcome::Refused {
                reason: "late".into()
            }
        ));
    }
}
