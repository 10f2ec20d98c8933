//! The Argo CD deploy, through its REST API (`Authorization: Bearer`):
//!
//! 1. `GET /api/v1/applications/{name}` reads the application;
//! 2. unless its source already names the digest, `PATCH` the same path
//!    with an `ApplicationPatchRequest` whose `patch` is a JSON merge patch
//!    of `spec.source.kustomize.images` or `spec.source.helm.parameters`,
//!    each list complete (a merge patch replaces a list: the application's
//!    other images and parameters are kept), then
//!    `POST /api/v1/applications/{name}/sync`;
//! 3. done when `status.sync.status` is `Synced`, `status.health.status` is
//!    `Healthy` and the live images (`status.summary.images`) carry the
//!    digest; `Degraded` with the digest live, or a failed sync operation,
//!    fails the deploy with Argo CD's message.

use reqwest::Method;
use serde_json::{Value, json};

use super::{Client, Progress, Target};
use crate::config::Backend;
use crate::dispatch::{DispatchError, segment};
use crate::registry::ImageRef;

pub async fn reconcile(
    client: &Client,
    b: &Backend,
    t: &Target<'_>,
) -> Result<Progress, DispatchError> {
    let d = &t.payload.deploy;
    let app = d
        .app
        .as_deref()
        .ok_or_else(|| DispatchError::Invalid("deploy has no `app`".into()))?;
    let path = format!("/api/v1/applications/{}", segment(app));
    let mut query = Vec::new();
    if let Some(ns) = &d.app_namespace {
        query.push(format!("appNamespace={}", segment(ns)));
    }
    if let Some(p) = &d.project {
        query.push(format!("project={}", segment(p)));
    }
    let get = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let obj = client.call(Method::GET, &get, None, b.timeout).await?;
    let source = obj.pointer("/spec/source").ok_or_else(|| {
        DispatchError::Invalid(format!(
            "application {app} has no spec.source (multi-source applications are not supported)"
        ))
    })?;
    let mode = match d.source.as_deref() {
        Some("helm") => Mode::Helm,
        Some(_) => Mode::Kustomize,
        None if source.get("helm").is_some() || source.get("chart").is_some() => Mode::Helm,
        None => Mode::Kustomize,
    };
    let repo_param = d.repository_param.as_deref().unwrap_or("image.repository");
    let digest_param = d.digest_param.as_deref().unwrap_or("image.digest");
    let wanted = match mode {
        Mode::Kustomize => kustomize_patch(source, t),
        Mode::Helm => helm_patch(source, t, repo_param, digest_param),
    };
    let ident = |mut v: Value| {
        v["name"] = json!(app);
        if let Some(ns) = &d.app_namespace {
            v["appNamespace"] = json!(ns);
        }
        if let Some(p) = &d.project {
            v["project"] = json!(p);
        }
        v
    };
    if let Some(patch) = wanted {
        let body = ident(json!({
            "patch": patch.to_string(),
            "patchType": "merge",
        }));
        client
            .call(
                Method::PATCH,
                &path,
                Some(("application/json", &body)),
                b.timeout,
            )
            .await?;
        sync(client, b, &path, ident(json!({ "prune": false }))).await?;
        return Ok(Progress::Waiting(format!(
            "application {app}: source set to {}, sync requested",
            t.reference
        )));
    }
    let status = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("");
    let sync_status = status("/status/sync/status");
    let health = status("/status/health/status");
    let phase = status("/status/operationState/phase");
    let live = obj
        .pointer("/status/summary/images")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|i| i.ends_with(&t.payload.digest))
        });
    let message = [
        status("/status/operationState/message"),
        status("/status/health/message"),
    ]
    .into_iter()
    .filter(|m| !m.is_empty())
    .collect::<Vec<_>>()
    .join("; ");
    let said = |m: &str| {
        if message.is_empty() {
            m.to_string()
        } else {
            format!("{m}: {message}")
        }
    };
    let operating = obj.get("operation").is_some_and(|o| !o.is_null())
        || matches!(phase, "Running" | "Terminating");
    if operating {
        return Ok(Progress::Waiting(said(&format!(
            "application {app}: sync running (health {health})"
        ))));
    }
    // Whether the last sync operation was of the source naming the digest
    // (`syncResult.source` is the source it synced): ours, not an older one.
    let ours = obj
        .pointer("/status/operationState/syncResult/source")
        .is_some_and(|s| s.to_string().contains(&t.payload.digest));
    if ours && matches!(phase, "Failed" | "Error") {
        return Err(DispatchError::Failed(said(&format!(
            "application {app}: sync {}",
            phase.to_lowercase()
        ))));
    }
    if live && health == "Degraded" {
        return Err(DispatchError::Failed(said(&format!(
            "application {app} is Degraded on {}",
            t.reference
        ))));
    }
    // Done when the digest is live and healthy after our sync: the whole
    // application need not be Synced (`prune: false` leaves extras, and
    // unrelated drift is not this deploy's business).
    if live && health == "Healthy" && (sync_status == "Synced" || (ours && phase == "Succeeded")) {
        let ui = match &d.app_namespace {
            Some(ns) => format!(
                "{}/applications/{}/{}",
                client.base,
                segment(ns),
                segment(app)
            ),
            None => format!("{}/applications/{}", client.base, segment(app)),
        };
        return Ok(Progress::Done {
            detail: format!("application {app}: Healthy on {}", t.reference),
            url: Some(ui),
        });
    }
    if !ours {
        // Set before a crash and never synced, or synced before Argo CD saw
        // the change: ask (once: from then on the operation is ours). A
        // sync already under way is answered "another operation is already
        // in progress", which is fine.
        sync(client, b, &path, ident(json!({ "prune": false }))).await?;
    }
    Ok(Progress::Waiting(said(&format!(
        "application {app}: sync {}, health {}{}",
        or_unknown(sync_status),
        or_unknown(health),
        if live { "" } else { ", new image not live yet" }
    ))))
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "Unknown" } else { s }
}

async fn sync(client: &Client, b: &Backend, path: &str, body: Value) -> Result<(), DispatchError> {
    match client
        .call(
            Method::POST,
            &format!("{path}/sync"),
            Some(("application/json", &body)),
            b.timeout,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(DispatchError::Rejected { message, .. })
            if message.contains("another operation is already in progress") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Kustomize,
    Helm,
}

/// The name an image override applies to: `old=new@digest` names `old`;
/// otherwise the image without tag or digest, normalised.
fn override_name(entry: &str) -> Option<String> {
    let name = match entry.split_once('=') {
        Some((old, _)) => old.to_string(),
        None => entry.to_string(),
    };
    let r = ImageRef::parse(&name).ok()?;
    Some(format!("{}/{}", r.registry(), r.repository()))
}

/// The merge patch setting the kustomize image override of the target's
/// repository to its digest, the other overrides kept; None when it is set.
pub fn kustomize_patch(source: &Value, t: &Target<'_>) -> Option<Value> {
    let current: Vec<String> = source
        .pointer("/kustomize/images")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut images = Vec::new();
    let mut found = false;
    for entry in &current {
        if override_name(entry).as_deref() == Some(t.repository.as_str()) {
            let value = match entry.split_once('=') {
                Some((old, _)) => format!("{old}={}", t.reference),
                None => t.reference.clone(),
            };
            found = true;
            images.push(value);
        } else {
            images.push(entry.clone());
        }
    }
    if !found {
        images.push(t.reference.clone());
    }
    (images != current)
        .then(|| json!({ "spec": { "source": { "kustomize": { "images": images } } } }))
}

/// The merge patch setting the two Helm parameters, the others kept; None
/// when both are set.
pub fn helm_patch(source: &Value, t: &Target<'_>, repo: &str, digest: &str) -> Option<Value> {
    let current: Vec<Value> = source
        .pointer("/helm/parameters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut params = current.clone();
    for (name, value) in [
        (repo, t.repository.as_str()),
        (digest, t.payload.digest.as_str()),
    ] {
        match params
            .iter_mut()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        {
            Some(p) => p["value"] = json!(value),
            None => params.push(json!({ "name": name, "value": value })),
        }
    }
    (params != current)
        .then(|| json!({ "spec": { "source": { "helm": { "parameters": params } } } }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::DeployPayload;

    fn payload(digest: &str) -> DeployPayload {
        let d = crate::config::Deploy {
            backend: "argo".into(),
            app: Some("shop".into()),
            ..Default::default()
        };
        DeployPayload::new("reg.example/team/api:1", digest, 7, &d, "t".into())
    }

    #[test]
    fn kustomize_keeps_the_other_images() {
        let digest = format!("sha256:{}", "b".repeat(64));
        let p = payload(&digest);
        let t = Target::of(&p).unwrap();
        let source = json!({ "kustomize": { "images": [
            "reg.example/team/web:2",
            "reg.example/team/api:1",
            "redis=mirror.example/redis:7",
        ] } });
        let patch = kustomize_patch(&source, &t).unwrap();
        assert_eq!(
            patch.pointer("/spec/source/kustomize/images").unwrap(),
            &json!([
                "reg.example/team/web:2",
                format!("reg.example/team/api@{digest}"),
                "redis=mirror.example/redis:7",
            ])
        );
        // Set already: nothing to patch.
        let again = json!({ "kustomize": patch["spec"]["source"]["kustomize"] });
        assert_eq!(kustomize_patch(&again, &t), None);
        // No override yet: one is added.
        let none = kustomize_patch(&json!({"path": "k8s"}), &t).unwrap();
        assert_eq!(
            none.pointer("/spec/source/kustomize/images").unwrap(),
            &json!([format!("reg.example/team/api@{digest}")])
        );
    }

    #[test]
    fn helm_sets_two_parameters_and_keeps_the_rest() {
        let digest = format!("sha256:{}", "c".repeat(64));
        let p = payload(&digest);
        let t = Target::of(&p).unwrap();
        let source = json!({ "helm": { "parameters": [
            { "name": "replicaCount", "value": "3" },
            { "name": "image.digest", "value": "sha256:old" },
        ] } });
        let patch = helm_patch(&source, &t, "image.repository", "image.digest").unwrap();
        assert_eq!(
            patch.pointer("/spec/source/helm/parameters").unwrap(),
            &json!([
                { "name": "replicaCount", "value": "3" },
                { "name": "image.digest", "value": digest },
                { "name": "image.repository", "value": "reg.example/team/api" },
            ])
        );
        let again = json!({ "helm": patch["spec"]["source"]["helm"] });
        assert_eq!(
            helm_patch(&again, &t, "image.repository", "image.digest"),
            None
        );
    }
}
