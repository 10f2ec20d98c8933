//! Rollouts: every affected descendant of a change rebuilt once, in order,
//! never on a parent that failed or was refused, then deployed where it has
//! a `deploy:`.
//!
//! - `state`: the typed per-image and per-rollout states.
//! - `machine`: the decisions, pure functions of rows and lineage.
//! - `jobs`: job kinds and their payloads.
//! - `cause`: why images are in a rollout.
//! - `plan` (changes, operator requests, reconcile) and `progress`
//!   (deliveries, results, deadlines, cancel): the engine that reads rows,
//!   asks the machine and applies its answer in one transaction per step.
//!
//! Every step is one store transaction that holds the engine lock (an
//! advisory lock on Postgres, the write lock on SQLite), so a crash between
//! steps loses nothing and replicas never interleave steps.

mod approve;
mod cause;
mod jobs;
pub mod machine;
mod plan;
mod progress;
mod state;
mod verify;
mod window;

use std::collections::HashMap;
use std::sync::Arc;

pub use approve::Decision;
pub use cause::{Cause, ChangeCause, JoinedData};
pub use jobs::{
    DeployPayload, JobKind, JobPayload, NotifyPayload, ParentDigest, PayloadError, RebuildPayload,
    VerifyPayload,
};
pub use machine::{Outcome, Stages};
pub use progress::Delivered;
pub use state::{ImageState, RolloutState};

use crate::config::{Config, Image};
use crate::lineage::Lineage;
use crate::store::{Millis, NewEvent, Store, StoreError, Tx, now_millis};

/// Builds of one image per rollout before a silent CI fails it for good.
pub const MAX_BUILD_ATTEMPTS: i32 = 3;

/// A result CI (or a deploy receiver) reported for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    Succeeded { digest: Option<String> },
    Failed { reason: String },
}

/// Why a manual rebuild was refused.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("image is not in the lineage")]
    Unknown,
    #[error("image has no build: lineaged cannot rebuild it")]
    NotBuildable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What cancelling a rollout did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    NotFound,
    /// It had already finished, in this state.
    Finished(RolloutState),
    Cancelled {
        images: usize,
        jobs: usize,
    },
}

pub struct Engine {
    cfg: Arc<Config>,
    store: Store,
    lineage: Arc<Lineage>,
    /// Config index by normalised name.
    images: HashMap<String, usize>,
    /// The lineage as the machine sees it.
    nodes: machine::Nodes,
    /// Children by image name (the reverse of `nodes`' parents).
    children: HashMap<String, Vec<String>>,
    /// Serialises engine steps in this process (the store's engine lock
    /// does it across replicas).
    lock: tokio::sync::Mutex<()>,
    /// When this engine started: reconcile judges staleness only against
    /// parent digests observed since.
    started_at: Millis,
}

impl Engine {
    /// `lineage` must be built from `cfg.images`.
    pub fn new(cfg: Arc<Config>, store: Store, lineage: Arc<Lineage>) -> Engine {
        let images: HashMap<String, usize> = cfg
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| (img.name.to_string(), i))
            .collect();
        let mut children: HashMap<String, Vec<String>> = HashMap::new();
        for img in &cfg.images {
            for p in &img.parents {
                children
                    .entry(p.to_string())
                    .or_default()
                    .push(img.name.to_string());
            }
        }
        let nodes = cfg
            .images
            .iter()
            .map(|img| {
                let stages = Stages {
                    build: img.build.is_some(),
                    deploy: img.build.is_some() && img.deploy.is_some(),
                };
                let has_children = children.contains_key(&img.name.to_string());
                let gates = machine::Gates {
                    deploy: stages.deploy
                        && crate::policy::applies(&cfg, &img.name, crate::policy::Purpose::Deploy),
                    cascade: has_children
                        && crate::policy::applies(&cfg, &img.name, crate::policy::Purpose::Cascade),
                };
                let node = machine::Node {
                    parents: img.parents.iter().map(ToString::to_string).collect(),
                    stages,
                    gates,
                    approval: img.approval.map(|a| a.before),
                };
                (img.name.to_string(), node)
            })
            .collect();
        Engine {
            cfg,
            store,
            lineage,
            images,
            nodes,
            children,
            lock: tokio::sync::Mutex::new(()),
            started_at: now_millis(),
        }
    }

    fn image(&self, name: &str) -> Option<&Image> {
        self.images.get(name).map(|&i| &self.cfg.images[i])
    }

    /// An image of the engine's config by normalised name.
    pub fn config_image(&self, name: &str) -> Option<&Image> {
        self.image(name)
    }

    /// Appends an event in the step's transaction; `at` is (image,
    /// rollout, job).
    async fn event(
        &self,
        tx: &mut Tx,
        kind: &str,
        at: (Option<&str>, Option<i64>, Option<i64>),
        data: serde_json::Value,
        now: Millis,
    ) -> Result<(), StoreError> {
        let (image, rollout, job) = at;
        let e = NewEvent {
            kind: kind.into(),
            image: image.map(str::to_string),
            rollout_id: rollout,
            job_id: job,
            data,
        };
        self.store.append_event_in(tx, &e, now).await.map(|_| ())
    }
}
