//! The Kubernetes deploy: a strategic merge patch sets one container of a
//! Deployment, StatefulSet or DaemonSet to `repo@sha256:…` (and annotates
//! the workload with the rollout), then the workload's status is read the
//! way `kubectl rollout status` reads it.
//!
//! Plain HTTPS through reqwest, not the `kube` crate: two calls (GET and
//! PATCH) on one resource path need neither its codegen'd types
//! (`k8s-openapi`, tens of megabytes of source) nor its runtime.

use reqwest::Method;
use serde_json::{Value, json};

use super::{Client, Progress, Target};
use crate::config::Backend;
use crate::dispatch::DispatchError;

/// The annotation naming the rollout that last set the image.
pub const ROLLOUT_ANNOTATION: &str = "lineaged.dev/rollout";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// `deployment/api`: which workload an image runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

impl Workload {
    pub fn parse(s: &str) -> Option<Workload> {
        let (kind, name) = s.split_once('/')?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" => WorkloadKind::Deployment,
            "statefulset" | "statefulsets" | "sts" => WorkloadKind::StatefulSet,
            "daemonset" | "daemonsets" | "ds" => WorkloadKind::DaemonSet,
            _ => return None,
        };
        // A DNS-1123 subdomain, as Kubernetes requires of these names.
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        ok.then(|| Workload {
            kind,
            name: name.to_string(),
        })
    }

    /// `/apis/apps/v1/namespaces/{ns}/{plural}/{name}`.
    pub fn path(&self, namespace: &str) -> String {
        let plural = match self.kind {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
            WorkloadKind::DaemonSet => "daemonsets",
        };
        format!(
            "/apis/apps/v1/namespaces/{}/{plural}/{}",
            crate::dispatch::segment(namespace),
            crate::dispatch::segment(&self.name)
        )
    }

    fn label(&self) -> String {
        let k = match self.kind {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::DaemonSet => "daemonset",
        };
        format!("{k}/{}", self.name)
    }
}

/// Reads the workload; patches it unless it already runs the digest under
/// this rollout; reports its rollout status.
pub async fn reconcile(
    client: &Client,
    b: &Backend,
    t: &Target<'_>,
) -> Result<Progress, DispatchError> {
    let d = &t.payload.deploy;
    let w = d
        .workload
        .as_deref()
        .and_then(Workload::parse)
        .ok_or_else(|| DispatchError::Invalid("deploy has no valid `workload`".into()))?;
    let ns = d.namespace.as_deref().unwrap_or("default");
    let path = w.path(ns);
    let mut obj = client.call(Method::GET, &path, None, b.timeout).await?;
    let container = container_name(&obj, d.container.as_deref(), &w)?;
    // A workload that only changes pods when they are deleted is refused
    // before it is touched.
    let strategy = obj
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    if w.kind != WorkloadKind::Deployment && strategy == "OnDelete" {
        return Err(DispatchError::Invalid(format!(
            "{} in {ns}: update strategy OnDelete changes pods only when they are deleted; use RollingUpdate",
            w.label()
        )));
    }
    let rollout = t.payload.rollout_id.to_string();
    let current = container_image(&obj, &container);
    let annotated = obj
        .pointer(&format!(
            "/metadata/annotations/{}",
            ROLLOUT_ANNOTATION.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        == Some(rollout.as_str());
    if current.as_deref() != Some(t.reference.as_str()) || !annotated {
        let patch = patch(&container, &t.reference, &rollout);
        obj = client
            .call(
                Method::PATCH,
                &path,
                Some(("application/strategic-merge-patch+json", &patch)),
                b.timeout,
            )
            .await?;
        if container_image(&obj, &container).as_deref() != Some(t.reference.as_str()) {
            return Err(DispatchError::Invalid(format!(
                "{} in {ns}: the patch was accepted but container {container} does not run {}",
                w.label(),
                t.reference
            )));
        }
    }
    match rollout_status(w.kind, &obj) {
        Status::Done(m) => Ok(Progress::Done {
            detail: format!("{} in {ns}: {m}", w.label()),
            url: None,
        }),
        Status::Waiting(m) => Ok(Progress::Waiting(format!("{} in {ns}: {m}", w.label()))),
        Status::Failed(m) => Err(DispatchError::Failed(format!("{} in {ns}: {m}", w.label()))),
    }
}

/// The strategic merge patch: containers merge by `name`, so only this
/// container's image changes; the annotation goes on the workload, not the
/// pod template (it must not restart pods by itself).
pub fn patch(container: &str, reference: &str, rollout: &str) -> Value {
    json!({
        "metadata": { "annotations": { ROLLOUT_ANNOTATION: rollout } },
        "spec": { "template": { "spec": { "containers": [
            { "name": container, "image": reference }
        ] } } }
    })
}

fn containers(obj: &Value) -> Vec<&Value> {
    obj.pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// The container to set: the one named, or the only one.
fn container_name(
    obj: &Value,
    wanted: Option<&str>,
    w: &Workload,
) -> Result<String, DispatchError> {
    let names: Vec<&str> = containers(obj)
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    match wanted {
        Some(n) if names.contains(&n) => Ok(n.to_string()),
        Some(n) => Err(DispatchError::Invalid(format!(
            "{} has no container `{n}` (it has: {})",
            w.label(),
            names.join(", ")
        ))),
        None if names.len() == 1 => Ok(names[0].to_string()),
        None => Err(DispatchError::Invalid(format!(
            "{} has {} containers ({}): name one with deploy.container",
            w.label(),
            names.len(),
            names.join(", ")
        ))),
    }
}

fn container_image(obj: &Value, name: &str) -> Option<String> {
    containers(obj)
        .into_iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|c| c.get("image").and_then(Value::as_str))
        .map(str::to_string)
}

/// How a workload's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Done(String),
    Waiting(String),
    Failed(String),
}

/// `kubectl rollout status`'s reading of a workload (its
/// `DeploymentStatusViewer`, `StatefulSetStatusViewer`,
/// `DaemonSetStatusViewer`), with the conditions added to every waiting
/// message so a timeout says why.
pub fn rollout_status(kind: WorkloadKind, obj: &Value) -> Status {
    let int = |p: &str| obj.pointer(p).and_then(Value::as_i64);
    let generation = int("/metadata/generation").unwrap_or(0);
    let observed = int("/status/observedGeneration").unwrap_or(0);
    let conditions = conditions(obj);
    let waiting = |m: String| {
        if conditions.is_empty() {
            Status::Waiting(m)
        } else {
            Status::Waiting(format!("{m} ({conditions})"))
        }
    };
    if observed < generation {
        return waiting("waiting for the spec update to be observed".into());
    }
    match kind {
        WorkloadKind::Deployment => {
            let deadline = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| {
                    c.get("type").and_then(Value::as_str) == Some("Progressing")
                        && c.get("reason").and_then(Value::as_str)
                            == Some("ProgressDeadlineExceeded")
                });
            if let Some(c) = deadline {
                return Status::Failed(format!(
                    "exceeded its progress deadline: {}",
                    c.get("message").and_then(Value::as_str).unwrap_or("")
                ));
            }
            let desired = int("/spec/replicas").unwrap_or(1);
            let updated = int("/status/updatedReplicas").unwrap_or(0);
            let replicas = int("/status/replicas").unwrap_or(0);
            let available = int("/status/availableReplicas").unwrap_or(0);
            if updated < desired {
                waiting(format!("{updated} of {desired} new replicas updated"))
            } else if replicas > updated {
                waiting(format!(
                    "{} old replicas are pending termination",
                    replicas - updated
                ))
            } else if available < updated {
                waiting(format!(
                    "{available} of {updated} updated replicas available"
                ))
            } else {
                Status::Done(format!("rolled out ({updated} replicas)"))
            }
        }
        WorkloadKind::StatefulSet => {
            let strategy = obj
                .pointer("/spec/updateStrategy/type")
                .and_then(Value::as_str)
                .unwrap_or("RollingUpdate");
            if strategy != "RollingUpdate" {
                return Status::Failed(format!(
                    "update strategy {strategy}: pods change only when deleted; use RollingUpdate"
                ));
            }
            let desired = int("/spec/replicas").unwrap_or(1);
            let ready = int("/status/readyReplicas").unwrap_or(0);
            if ready < desired {
                return waiting(format!("{ready} of {desired} pods ready"));
            }
            if let Some(partition) = int("/spec/updateStrategy/rollingUpdate/partition")
                && partition > 0
            {
                let updated = int("/status/updatedReplicas").unwrap_or(0);
                return if updated < desired - partition {
                    waiting(format!(
                        "{updated} of {} pods updated (partition {partition})",
                        desired - partition
                    ))
                } else {
                    Status::Done(format!("partitioned roll out complete ({updated} pods)"))
                };
            }
            let current = obj
                .pointer("/status/currentRevision")
                .and_then(Value::as_str);
            let update = obj
                .pointer("/status/updateRevision")
                .and_then(Value::as_str);
            if current != update {
                let updated = int("/status/updatedReplicas").unwrap_or(0);
                waiting(format!("{updated} of {desired} pods at the new revision"))
            } else {
                Status::Done(format!("rolled out ({desired} pods)"))
            }
        }
        WorkloadKind::DaemonSet => {
            let desired = int("/status/desiredNumberScheduled").unwrap_or(0);
            let updated = int("/status/updatedNumberScheduled").unwrap_or(0);
            let available = int("/status/numberAvailable").unwrap_or(0);
            if updated < desired {
                waiting(format!("{updated} of {desired} new pods scheduled"))
            } else if available < desired {
                waiting(format!("{available} of {desired} updated pods available"))
            } else {
                Status::Done(format!("rolled out ({desired} pods)"))
            }
        }
    }
}

/// The workload's conditions that are not `True`, as `Type: message`.
fn conditions(obj: &Value) -> String {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("status").and_then(Value::as_str) != Some("True"))
        .map(|c| {
            format!(
                "{}: {}",
                c.get("type").and_then(Value::as_str).unwrap_or("?"),
                c.get("message")
                    .or_else(|| c.get("reason"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, status: Value) -> Value {
        json!({
            "metadata": { "generation": generation },
            "spec": { "replicas": 3, "template": { "spec": { "containers": [{ "name": "api", "image": "old" }] } } },
            "status": status,
        })
    }

    #[test]
    fn workloads_parse_and_name_their_path() {
        let w = Workload::parse("deployment/api").unwrap();
        assert_eq!(
            w.path("prod"),
            "/apis/apps/v1/namespaces/prod/deployments/api"
        );
        assert_eq!(
            Workload::parse("sts/db").unwrap().path("a"),
            "/apis/apps/v1/namespaces/a/statefulsets/db"
        );
        for bad in [
            "pod/x",
            "deployment/",
            "deployment/API",
            "api",
            "deployment/-a",
        ] {
            assert!(Workload::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn deployment_status_reads_like_kubectl() {
        use Status::*;
        let s = |g, st| rollout_status(WorkloadKind::Deployment, &deployment(g, st));
        assert!(matches!(s(2, json!({"observedGeneration": 1})), Waiting(_)));
        assert_eq!(
            s(
                2,
                json!({"observedGeneration": 2, "updatedReplicas": 1, "replicas": 3})
            ),
            Waiting("1 of 3 new replicas updated".into())
        );
        assert_eq!(
            s(
                2,
                json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 4, "availableReplicas": 3})
            ),
            Waiting("1 old replicas are pending termination".into())
        );
        assert_eq!(
            s(2, json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 2,
                "conditions": [{"type": "Available", "status": "False", "message": "Deployment does not have minimum availability."}]})),
            Waiting("2 of 3 updated replicas available (Available: Deployment does not have minimum availability.)".into())
        );
        assert!(matches!(
            s(
                2,
                json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 3})
            ),
            Done(_)
        ));
        let failed = s(
            2,
            json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"api-7d\" has timed out progressing."}]}),
        );
        assert!(
            matches!(&failed, Failed(m) if m.contains("timed out progressing")),
            "{failed:?}"
        );
    }

    #[test]
    fn statefulsets_and_daemonsets() {
        let sts = json!({"metadata": {"generation": 1}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "readyReplicas": 2, "currentRevision": "a", "updateRevision": "b", "updatedReplicas": 1}});
        assert!(matches!(
            rollout_status(WorkloadKind::StatefulSet, &sts),
            Status::Waiting(_)
        ));
        let mut done = sts.clone();
        done["status"]["currentRevision"] = json!("b");
        assert!(matches!(
            rollout_status(WorkloadKind::StatefulSet, &done),
            Status::Done(_)
        ));
        let ds = json!({"metadata": {"generation": 4}, "status": {"observedGeneration": 4,
            "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 3}});
        assert!(matches!(
            rollout_status(WorkloadKind::DaemonSet, &ds),
            Status::Done(_)
        ));
    }

    #[test]
    fn the_container_is_named_or_the_only_one() {
        let w = Workload::parse("deployment/api").unwrap();
        let one = deployment(1, json!({}));
        assert_eq!(container_name(&one, None, &w).unwrap(), "api");
        assert!(
            container_name(&one, Some("web"), &w)
                .unwrap_err()
                .to_string()
                .contains("has no container `web` (it has: api)")
        );
        let mut two = one.clone();
        two["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "x"}));
        assert!(container_name(&two, None, &w).is_err());
        assert_eq!(
            container_name(&two, Some("sidecar"), &w).unwrap(),
            "sidecar"
        );
    }
}
