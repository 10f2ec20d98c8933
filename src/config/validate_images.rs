//! Validation of `images:`: references, duplicates (across files), build and
//! deploy backends, implicit external parents, cycles, the trust policy.

use std::collections::{BTreeMap, HashMap};

use serde_saphyr::Location;

use super::raw::*;
use super::validate::Ctx;
use super::*;
use crate::registry::ImageRef;

struct Pending {
    image: Image,
    file: usize,
    at: Location,
}

pub(super) fn images(
    ctx: &mut Ctx,
    raw: Vec<(usize, RawImage)>,
    defaults: &Defaults,
    backends: &BTreeMap<String, Backend>,
    registries: &[RegistryConfig],
    policy: &Policy,
) -> Vec<Image> {
    let mut index: HashMap<ImageRef, usize> = HashMap::with_capacity(raw.len());
    let mut out: Vec<Pending> = Vec::with_capacity(raw.len());

    for (f, r) in raw {
        let Some(text) = ctx.text(f, &r.name) else {
            continue;
        };
        let name = match ImageRef::parse(&text) {
            Ok(n) => n,
            Err(e) => {
                ctx.err(
                    f,
                    r.name.referenced,
                    format!("invalid image reference `{text}`: {e}"),
                );
                continue;
            }
        };
        if let Some(&i) = index.get(&name) {
            let first = ctx.origin(out[i].file, out[i].at);
            ctx.err(
                f,
                r.name.referenced,
                format!("duplicate image {name} (first declared at {first})"),
            );
            continue;
        }
        let mut parents: Vec<ImageRef> = Vec::with_capacity(r.from.len());
        for p in &r.from {
            let Some(pt) = ctx.text(f, p) else { continue };
            match ImageRef::parse(&pt) {
                Ok(pr) if parents.contains(&pr) => {
                    ctx.err(f, p.referenced, format!("parent {pr} is listed twice"));
                }
                Ok(pr) => parents.push(pr),
                Err(e) => ctx.err(
                    f,
                    p.referenced,
                    format!("invalid parent reference `{pt}`: {e}"),
                ),
            }
        }
        let schedule = r
            .schedule
            .as_ref()
            .and_then(|s| ctx.schedule(f, s))
            .unwrap_or_else(|| defaults.schedule.clone());
        let platforms = match &r.platforms {
            Some(p) => ctx.platforms(f, p),
            None => defaults.platforms.clone(),
        };
        let build = r
            .build
            .as_ref()
            .and_then(|b| build(ctx, f, b, &name, backends, defaults));
        if r.build.is_some() && name.digest().is_some() {
            ctx.err(f, r.name.referenced, format!("managed image {name} must be a tag, not a digest: a rebuild pushes a new digest"));
        }
        let deploy = r.deploy.as_ref().and_then(|d| deploy(ctx, f, d, backends));
        let settle = ctx.duration(f, &r.settle).unwrap_or(defaults.settle);
        let approval = ctx
            .approval(f, &r.approval)
            .or_else(|| policy.approval_for(&name.to_string()))
            .or(defaults.approval)
            .flatten()
            // Only where its stage exists.
            .filter(|a| match a.before {
                ApprovalStage::Deploy => deploy.is_some(),
                ApprovalStage::Build => build.is_some(),
            });
        let deploy_window = ctx
            .window(f, &r.deploy_window)
            .or_else(|| policy.window_for(&name.to_string()))
            .or_else(|| defaults.deploy_window.clone())
            .filter(|_| deploy.is_some());
        if let Some(w) = &r.deploy_window
            && deploy.is_none()
        {
            ctx.err(
                f,
                w.referenced,
                format!("{name} has a deploy_window but no deploy:"),
            );
        }
        if let Some(a) = &r.approval
            && a.value.required != Some(false)
            && approval.is_none()
        {
            ctx.err(
                f,
                a.referenced,
                format!(
                    "{name} asks for approval before a stage it does not have (deploy: or build:)"
                ),
            );
        }
        if deploy.is_some() && policy.trusted_registries_only {
            let trusted = registries
                .iter()
                .any(|g| g.host == name.registry() && g.trusted);
            if !trusted {
                ctx.err(
                    f,
                    r.name.referenced,
                    format!(
                        "{name} is deployed from registry {} which is not trusted (policy.trusted_registries_only); list it under registries with `trusted: true`",
                        name.registry()
                    ),
                );
            }
        }
        index.insert(name.clone(), out.len());
        out.push(Pending {
            image: Image {
                name,
                parents,
                schedule,
                platforms,
                settle,
                build,
                deploy,
                approval,
                deploy_window,
                implicit: false,
                origin: Some(ctx.origin(f, r.name.referenced)),
            },
            file: f,
            at: r.name.referenced,
        });
    }

    // Parents nobody declared are external images watched with the defaults.
    let declared = out.len();
    // A parent whose repository is one typo away from a declared image's
    // is most likely that image misspelt (`alpne:3` for `alpine:3`): left
    // alone it would become an external image and the real child would
    // never be rebuilt.
    // Compared within one namespace (registry and path up to the last
    // `/`), on the last segment: cheap at 100,000 images.
    let split = |r: &ImageRef| {
        let full = format!("{}/{}", r.registry(), r.repository());
        match full.rsplit_once('/') {
            Some((ns, last)) => (ns.to_string(), last.to_string()),
            None => (String::new(), full),
        }
    };
    let mut declared_repos: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for p in &out {
        let (ns, last) = split(&p.image.name);
        declared_repos
            .entry(ns)
            .or_default()
            .push((last, p.image.name.familiar()));
    }
    for i in 0..declared {
        for p in out[i].image.parents.clone() {
            if index.contains_key(&p) {
                continue;
            }
            let (ns, last) = split(&p);
            let same_ns = declared_repos.get(&ns).map(Vec::as_slice).unwrap_or(&[]);
            if !same_ns.iter().any(|(r, _)| *r == last)
                && let Some(near) =
                    super::text::closest(&last, same_ns.iter().map(|(r, _)| r.as_str()))
            {
                let name = same_ns
                    .iter()
                    .find(|(r, _)| r == near)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default();
                let (child, parent) = (out[i].image.name.familiar(), p.familiar());
                let (file, at) = (out[i].file, out[i].at);
                ctx.err(
                    file,
                    at,
                    format!(
                        "{child}: parent {parent} is not declared; did you mean {name}? (to watch {parent} as an external base, list it under images:)"
                    ),
                );
            }
            index.insert(p.clone(), out.len());
            let (file, at) = (out[i].file, out[i].at);
            out.push(Pending {
                image: Image {
                    name: p,
                    parents: Vec::new(),
                    schedule: defaults.schedule.clone(),
                    platforms: defaults.platforms.clone(),
                    settle: defaults.settle,
                    build: None,
                    deploy: None,
                    approval: None,
                    deploy_window: None,
                    implicit: true,
                    origin: Some(ctx.origin(file, at)),
                },
                file,
                at,
            });
        }
    }

    let images: Vec<Image> = out.iter().map(|p| p.image.clone()).collect();
    for cycle in crate::lineage::find_cycles(&images) {
        let names: Vec<String> = cycle.iter().map(|&i| images[i].name.to_string()).collect();
        let first = &out[cycle[0]];
        ctx.err(
            first.file,
            first.at,
            format!("cycle in lineage: {} → {}", names.join(" → "), names[0]),
        );
    }
    images
}

fn known_backend<'b>(
    ctx: &mut Ctx,
    f: usize,
    s: &S,
    backends: &'b BTreeMap<String, Backend>,
) -> Option<&'b Backend> {
    let b = backends.get(&s.value);
    if b.is_none() && !ctx.broken_backends.contains(&s.value) {
        let names: Vec<&str> = backends.keys().map(String::as_str).collect();
        let known = if names.is_empty() {
            "none declared".to_string()
        } else {
            names.join(", ")
        };
        let hint = super::text::closest(&s.value, names.iter().copied())
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_default();
        ctx.err(
            f,
            s.referenced,
            format!(
                "unknown backend `{}` (declared backends: {known}){hint}",
                s.value
            ),
        );
    }
    b
}

fn build(
    ctx: &mut Ctx,
    f: usize,
    b: &RawBuild,
    name: &ImageRef,
    backends: &BTreeMap<String, Backend>,
    defaults: &Defaults,
) -> Option<Build> {
    let backend = known_backend(ctx, f, &b.backend, backends)?;
    let need = |ctx: &mut Ctx, present: bool, what: &str| {
        if !present {
            ctx.err(
                f,
                b.backend.referenced,
                format!(
                    "build of {name} on backend `{}` (kind {}) needs `{what}`",
                    backend.name,
                    backend.kind.as_str()
                ),
            );
        }
    };
    let mode = match &b.mode {
        Some(m) => super::validate_parts::parse_mode(ctx, f, backend.kind, m),
        None => backend.mode,
    }
    .or_else(|| Mode::of(backend.kind).first().copied());
    let repository = ctx.opt_text(f, &b.repository);
    let project = ctx.opt_text(f, &b.project);
    if let Some(r) = &b.repository
        && !is_owner_name(&r.value)
    {
        ctx.err(
            f,
            r.referenced,
            format!("repository must be `owner/name`, got `{}`", r.value),
        );
    }
    match backend.kind {
        BackendKind::GithubActions => {
            need(
                ctx,
                repository.is_some() || backend.repository.is_some(),
                "repository (owner/name, here or on the backend)",
            );
            if mode == Some(Mode::WorkflowDispatch) {
                need(ctx, b.workflow.is_some(), "workflow (file name or id)");
            }
        }
        BackendKind::Jenkins => need(ctx, b.job.is_some(), "job"),
        BackendKind::Gitlab => need(
            ctx,
            project.is_some() || backend.project.is_some(),
            "project (here or on the backend)",
        ),
        BackendKind::AzurePipelines => {
            need(
                ctx,
                project.is_some() || backend.project.is_some(),
                "project (here or on the backend)",
            );
            need(
                ctx,
                b.pipeline.is_some() || backend.pipeline.is_some(),
                "pipeline (its id)",
            );
        }
        BackendKind::Buildkite => need(
            ctx,
            b.pipeline.is_some() || backend.pipeline.is_some(),
            "pipeline (its slug)",
        ),
        BackendKind::Webhook | BackendKind::Tekton => {}
        BackendKind::Argocd | BackendKind::Flux | BackendKind::Kubernetes => {
            ctx.err(
                f,
                b.backend.referenced,
                format!(
                    "build of {name} through backend `{}` (kind {}): it deploys, it does not build; name a CI or webhook backend",
                    backend.name,
                    backend.kind.as_str()
                ),
            );
            return None;
        }
    }
    // Inputs become GitHub inputs, GitLab/Azure/Buildkite variables and
    // Jenkins parameters: names all of them accept.
    let dash_ok = matches!(
        backend.kind,
        BackendKind::GithubActions | BackendKind::Webhook | BackendKind::Tekton
    );
    for (k, v) in &b.inputs {
        let lower = k.to_ascii_lowercase();
        let valid = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || (dash_ok && c == '-'));
        if LINEAGED_FIELDS.contains(&lower.as_str()) || lower.starts_with("lineaged_") {
            ctx.err(
                f,
                v.referenced,
                format!("build input `{k}` is reserved: lineaged sends it itself"),
            );
        } else if !valid {
            let allowed = if dash_ok {
                "letters, digits, `_` and `-`"
            } else {
                "letters, digits and `_`"
            };
            ctx.err(
                f,
                v.referenced,
                format!(
                    "build input `{k}`: a {} variable name takes {allowed}, starting with a letter or `_`",
                    backend.kind.as_str()
                ),
            );
        }
    }
    let limit = match (backend.kind, mode) {
        (BackendKind::GithubActions, Some(Mode::WorkflowDispatch)) => {
            Some((GITHUB_MAX_INPUTS, "workflow_dispatch takes at most"))
        }
        (BackendKind::GithubActions, Some(Mode::RepositoryDispatch)) => Some((
            GITHUB_MAX_PAYLOAD_KEYS,
            "repository_dispatch's client_payload takes at most",
        )),
        _ => None,
    };
    if let Some((max, what)) = limit
        && LINEAGED_FIELDS.len() + b.inputs.len() > max
    {
        ctx.err(
            f,
            b.backend.referenced,
            format!(
                "build of {name}: {what} {max} inputs; lineaged sends {} and `inputs` adds {}",
                LINEAGED_FIELDS.len(),
                b.inputs.len()
            ),
        );
    }
    let build_timeout = ctx.duration(f, &b.build_timeout);
    let mut inputs = BTreeMap::new();
    for (k, v) in &b.inputs {
        if let Some(v) = ctx.text(f, v) {
            inputs.insert(k.clone(), v);
        }
    }
    Some(Build {
        backend: backend.name.clone(),
        mode,
        repository,
        project,
        workflow: ctx.opt_text(f, &b.workflow),
        git_ref: ctx.opt_text(f, &b.git_ref),
        job: ctx.opt_text(f, &b.job),
        pipeline: ctx.opt_text(f, &b.pipeline),
        branch: ctx.opt_text(f, &b.branch),
        context: ctx.opt_text(f, &b.context),
        dockerfile: ctx.opt_text(f, &b.dockerfile),
        inputs,
        build_timeout: build_timeout
            .or(backend.build_timeout)
            .unwrap_or(defaults.build_timeout),
    })
}

fn deploy(
    ctx: &mut Ctx,
    f: usize,
    d: &RawDeploy,
    backends: &BTreeMap<String, Backend>,
) -> Option<Deploy> {
    let backend = known_backend(ctx, f, &d.backend, backends)?;
    if !backend.kind.deploys() {
        ctx.err(
            f,
            d.backend.referenced,
            format!(
                "deploy through backend `{}` (kind {}): deploys go to webhook, argocd, flux or kubernetes backends",
                backend.name,
                backend.kind.as_str()
            ),
        );
    }
    let kind = backend.kind;
    let only = |ctx: &mut Ctx, v: &Option<S>, field: &str, kinds: &[BackendKind]| {
        if let Some(v) = v
            && !kinds.contains(&kind)
        {
            ctx.err(
                f,
                v.referenced,
                format!(
                    "deploy.{field} is not used by backend `{}` (kind {})",
                    backend.name,
                    kind.as_str()
                ),
            );
        }
    };
    use BackendKind::{Argocd, Kubernetes, Webhook};
    only(ctx, &d.app, "app", &[Webhook, Argocd]);
    only(ctx, &d.environment, "environment", &[Webhook]);
    only(ctx, &d.app_namespace, "app_namespace", &[Argocd]);
    only(ctx, &d.project, "project", &[Argocd]);
    only(ctx, &d.source, "source", &[Argocd]);
    only(ctx, &d.repository_param, "repository_param", &[Argocd]);
    only(ctx, &d.digest_param, "digest_param", &[Argocd]);
    only(ctx, &d.namespace, "namespace", &[Kubernetes]);
    only(ctx, &d.workload, "workload", &[Kubernetes]);
    only(ctx, &d.container, "container", &[Kubernetes]);
    if kind == Argocd && d.app.is_none() {
        ctx.err(
            f,
            d.backend.referenced,
            format!(
                "deploy through backend `{}` (kind argocd) needs `app` (the application's name)",
                backend.name
            ),
        );
    }
    if let Some(s) = &d.source
        && !matches!(s.value.as_str(), "kustomize" | "helm")
    {
        ctx.err(
            f,
            s.referenced,
            format!(
                "deploy.source must be `kustomize` or `helm`, got `{}`",
                s.value
            ),
        );
    }
    if kind == Kubernetes {
        match &d.workload {
            None => ctx.err(
                f,
                d.backend.referenced,
                format!(
                    "deploy through backend `{}` (kind kubernetes) needs `workload` (e.g. deployment/api)",
                    backend.name
                ),
            ),
            Some(w) if crate::deploy::kubernetes::Workload::parse(&w.value).is_none() => ctx.err(
                f,
                w.referenced,
                format!(
                    "workload must be deployment/NAME, statefulset/NAME or daemonset/NAME, got `{}`",
                    w.value
                ),
            ),
            Some(_) => {}
        }
    }
    let mut inputs = BTreeMap::new();
    for (k, v) in &d.inputs {
        if let Some(v) = ctx.text(f, v) {
            inputs.insert(k.clone(), v);
        }
    }
    Some(Deploy {
        backend: backend.name.clone(),
        app: ctx.opt_text(f, &d.app),
        environment: ctx.opt_text(f, &d.environment),
        inputs,
        app_namespace: ctx.opt_text(f, &d.app_namespace),
        project: ctx.opt_text(f, &d.project),
        source: ctx.opt_text(f, &d.source),
        repository_param: ctx.opt_text(f, &d.repository_param),
        digest_param: ctx.opt_text(f, &d.digest_param),
        namespace: ctx.opt_text(f, &d.namespace),
        workload: ctx.opt_text(f, &d.workload),
        container: ctx.opt_text(f, &d.container),
        timeout: ctx
            .duration(f, &d.timeout)
            .or(backend.deploy_timeout)
            .unwrap_or(if matches!(kind, Argocd | Kubernetes) {
                std::time::Duration::from_secs(600)
            } else {
                std::time::Duration::from_secs(3600)
            }),
    })
}
