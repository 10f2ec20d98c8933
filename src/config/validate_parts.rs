//! Validation of the sections around the lineage: registries, receivers, the
//! API, CI backends and policy.

use std::collections::{BTreeMap, HashMap};

use serde_saphyr::Spanned;

use super::raw::*;
use super::validate::Ctx;
use super::*;
use crate::registry::ImageRef;

/// Normalises a registry host the way image references do (`index.docker.io`
/// is `docker.io`, hosts are lowercase).
pub fn normalise_host(host: &str) -> Option<String> {
    if host.contains('/') {
        return None;
    }
    let r = ImageRef::parse(&format!("{host}/x")).ok()?;
    Some(r.registry().to_string())
}

pub(super) fn registries(ctx: &mut Ctx, raw: Vec<(usize, RawRegistry)>) -> Vec<RegistryConfig> {
    let mut seen: HashMap<String, Origin> = HashMap::new();
    let mut out = Vec::new();
    for (f, r) in raw {
        let Some(host_text) = ctx.text(f, &r.host) else {
            continue;
        };
        let Some(host) = normalise_host(&host_text) else {
            ctx.err(f, r.host.referenced, format!("invalid registry host `{host_text}` (a host name with an optional port, no scheme or path)"));
            continue;
        };
        if let Some(first) = seen.get(&host) {
            let msg = format!("registry {host} is already listed at {first}");
            ctx.err(f, r.host.referenced, msg);
            continue;
        }
        seen.insert(host.clone(), ctx.origin(f, r.host.referenced));
        let auth = r.auth.as_ref().and_then(|a| match (&a.docker_config, &a.username) {
            (Some(dc), None) if a.password_env.is_none() && a.password_file.is_none() => {
                let path = ctx.text(f, dc)?;
                let expanded = match path.strip_prefix("~/") {
                    Some(rest) => std::env::var("HOME").map(|h| format!("{h}/{rest}")).unwrap_or(path),
                    None => path,
                };
                Some(RegistryAuth::DockerConfig { path: expanded.into() })
            }
            (Some(dc), _) => {
                ctx.err(f, dc.referenced, "use either docker_config or username with password_env/password_file, not both");
                None
            }
            (None, Some(u)) => {
                let username = ctx.text(f, u)?;
                match ctx.secret(f, &a.password_env, &a.password_file, "password") {
                    Some(password) => Some(RegistryAuth::Basic { username, password }),
                    None if a.password_env.is_none() && a.password_file.is_none() => {
                        ctx.err(f, u.referenced, "auth with a username needs password_env or password_file");
                        None
                    }
                    None => None,
                }
            }
            (None, None) => {
                ctx.err(f, r.host.referenced, "auth needs username (with password_env or password_file) or docker_config");
                None
            }
        });
        let concurrency = match r.concurrency {
            Some(c) if c.value == 0 => {
                ctx.err(f, c.referenced, "concurrency must be at least 1");
                1
            }
            Some(c) => c.value,
            None => 4,
        };
        let rate_limit = match r.rate_limit {
            Some(l) if !(l.value > 0.0 && l.value.is_finite()) => {
                ctx.err(
                    f,
                    l.referenced,
                    "rate_limit must be a positive number of requests per second",
                );
                None
            }
            l => l.map(|l| l.value),
        };
        out.push(RegistryConfig {
            host,
            trusted: r.trusted,
            insecure: r.insecure,
            auth,
            concurrency,
            rate_limit,
        });
    }
    out
}

pub(super) fn receivers(ctx: &mut Ctx, raw: Option<(usize, Spanned<RawReceivers>)>) -> Receivers {
    let Some((f, r)) = raw else {
        return Receivers::default();
    };
    let at = r.referenced;
    let r = r.value;
    let token =
        |ctx: &mut Ctx, rc: &Option<RawReceiver>, name: &str, hmac: bool| -> Option<Secret> {
            let rc = rc.as_ref()?;
            let (want, other, other_env) = if hmac {
                ("secret", "token", &rc.token_env)
            } else {
                ("token", "secret", &rc.secret_env)
            };
            if let Some(o) = other_env.as_ref().or(if hmac {
                rc.token_file.as_ref()
            } else {
                rc.secret_file.as_ref()
            }) {
                ctx.err(
                    f,
                    o.referenced,
                    format!("receiver {name} takes {want}_env or {want}_file, not {other}_*"),
                );
                return None;
            }
            let s = if hmac {
                ctx.secret(f, &rc.secret_env, &rc.secret_file, "secret")
            } else {
                ctx.secret(f, &rc.token_env, &rc.token_file, "token")
            };
            let none_given = if hmac {
                rc.secret_env.is_none() && rc.secret_file.is_none()
            } else {
                rc.token_env.is_none() && rc.token_file.is_none()
            };
            if none_given {
                ctx.err(
                    f,
                    at,
                    format!("receiver {name} needs {want}_env or {want}_file"),
                );
            }
            s
        };
    Receivers {
        distribution: token(ctx, &r.distribution, "distribution", false),
        dockerhub: token(ctx, &r.dockerhub, "dockerhub", false),
        harbor: token(ctx, &r.harbor, "harbor", false),
        acr: token(ctx, &r.acr, "acr", false),
        ghcr: token(ctx, &r.ghcr, "ghcr", true),
    }
}

pub(super) fn api(ctx: &mut Ctx, raw: Option<(usize, Spanned<RawApi>)>) -> ApiConfig {
    let Some((f, a)) = raw else {
        return ApiConfig::default();
    };
    let a = a.value;
    let mut tokens: Vec<ApiToken> = Vec::new();
    for t in &a.tokens {
        let Some(name) = ctx.text(f, &t.name) else {
            continue;
        };
        if tokens.iter().any(|x| x.name == name) {
            ctx.err(
                f,
                t.name.referenced,
                format!("API token name `{name}` is used twice"),
            );
        }
        let role = match t.role.value.as_str() {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            other => {
                ctx.err(
                    f,
                    t.role.referenced,
                    format!("unknown role `{other}` (read or write)"),
                );
                None
            }
        };
        let token = ctx.secret(f, &t.token_env, &t.token_file, "token");
        if t.token_env.is_none() && t.token_file.is_none() {
            ctx.err(
                f,
                t.name.referenced,
                format!("API token `{name}` needs token_env or token_file"),
            );
        }
        if let (Some(role), Some(token)) = (role, token) {
            tokens.push(ApiToken { name, role, token });
        }
    }
    let mut cors_origins = Vec::new();
    for o in &a.cors_origins {
        let Some(v) = ctx.text(f, o) else { continue };
        if cors_origin_ok(&v) {
            cors_origins.push(v.trim_end_matches('/').to_string());
        } else {
            ctx.err(
                f,
                o.referenced,
                format!("cors origin `{v}`: expected `*` or scheme://host[:port], e.g. https://dash.example.com"),
            );
        }
    }
    let public_url = ctx.http_url(f, &a.public_url, "public_url");
    let mut sse_keepalive = std::time::Duration::from_secs(15);
    if let Some(d) = ctx.duration(f, &a.sse_keepalive) {
        if d < std::time::Duration::from_secs(1) {
            if let Some(s) = &a.sse_keepalive {
                ctx.err(
                    f,
                    s.referenced,
                    "sse_keepalive must be at least 1s".to_string(),
                );
            }
        } else {
            sse_keepalive = d;
        }
    }
    ApiConfig {
        tokens,
        public_read: a.public_read,
        metrics_token: ctx.secret(
            f,
            &a.metrics_token_env,
            &a.metrics_token_file,
            "metrics_token",
        ),
        cors_origins,
        public_url,
        sse_keepalive,
    }
}

pub(super) fn backends(
    ctx: &mut Ctx,
    raw: BTreeMap<String, (usize, Spanned<RawBackend>)>,
) -> BTreeMap<String, Backend> {
    let mut out = BTreeMap::new();
    for (name, (f, b)) in raw {
        let at = b.referenced;
        let b = b.value;
        let Some(kind) = BackendKind::ALL
            .iter()
            .find(|(s, _)| *s == b.kind.value)
            .map(|(_, k)| *k)
        else {
            let kinds: Vec<&str> = BackendKind::ALL.iter().map(|(s, _)| *s).collect();
            let hint = super::text::closest(&b.kind.value, kinds.iter().copied())
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            ctx.err(
                f,
                b.kind.referenced,
                format!(
                    "backend `{name}`: unknown kind `{}` (one of {}){hint}",
                    b.kind.value,
                    kinds.join(", ")
                ),
            );
            ctx.broken_backends.insert(name);
            continue;
        };
        let url = ctx.http_url(f, &b.url, "url");
        let api_url = ctx.http_url(f, &b.api_url, "api_url");
        let token = ctx.secret(f, &b.token_env, &b.token_file, "token");
        let secret = ctx.secret(f, &b.secret_env, &b.secret_file, "secret");
        let has_token = b.token_env.is_some() || b.token_file.is_some();
        let mut need = |ok: bool, what: &str| {
            if !ok {
                ctx.err(
                    f,
                    at,
                    format!("backend `{name}` (kind {}) needs `{what}`", kind.as_str()),
                );
            }
        };
        match kind {
            BackendKind::Webhook | BackendKind::Tekton => need(b.url.is_some(), "url"),
            BackendKind::Jenkins => {
                need(b.url.is_some(), "url");
                if b.username.is_some() {
                    need(has_token, "token_env or token_file (the user's API token)");
                }
            }
            BackendKind::GithubActions => need(has_token, "token_env or token_file"),
            BackendKind::Gitlab => need(has_token, "token_env or token_file"),
            BackendKind::AzurePipelines | BackendKind::Buildkite => {
                need(b.organization.is_some(), "organization");
                need(has_token, "token_env or token_file");
            }
            BackendKind::Argocd => {
                need(b.url.is_some(), "url (the Argo CD server)");
                need(has_token, "token_env or token_file");
            }
            BackendKind::Flux => {
                need(b.url.is_some(), "url (the Receiver's webhook URL)");
                need(
                    b.secret_env.is_some() || b.secret_file.is_some(),
                    "secret_env or secret_file (the Receiver's HMAC token)",
                );
            }
            // In-cluster by default: the service account's token and CA.
            BackendKind::Kubernetes => {}
        }
        if kind != BackendKind::Kubernetes
            && let Some(k) = &b.kubeconfig
        {
            ctx.err(
                f,
                k.referenced,
                format!("backend `{name}`: kubeconfig is for kind kubernetes"),
            );
        }
        if kind == BackendKind::Kubernetes
            && b.kubeconfig.is_some()
            && (b.api_url.is_some() || b.ca_file.is_some())
        {
            ctx.err(
                f,
                at,
                format!("backend `{name}`: give either kubeconfig or api_url/ca_file, not both"),
            );
        }
        let mut file = |p: &Option<S>, what: &str| -> Option<std::path::PathBuf> {
            let p = p.as_ref()?;
            let v = ctx.text(f, p)?;
            if let Err(e) = std::fs::metadata(&v) {
                ctx.err(f, p.referenced, format!("cannot read {what} {v}: {e}"));
            }
            Some(v.into())
        };
        let kubeconfig = file(&b.kubeconfig, "kubeconfig");
        let ca_file = file(&b.ca_file, "ca_file");
        if let Some(r) = &b.repository
            && !is_owner_name(&r.value)
        {
            ctx.err(
                f,
                r.referenced,
                format!(
                    "backend `{name}`: repository must be `owner/name`, got `{}`",
                    r.value
                ),
            );
        }
        let mode = b.mode.as_ref().and_then(|m| parse_mode(ctx, f, kind, m));
        let concurrency = match b.concurrency {
            Some(c) if c.value == 0 => {
                ctx.err(f, c.referenced, "concurrency must be at least 1");
                1
            }
            Some(c) => c.value,
            None => 8,
        };
        let timeout = ctx.duration(f, &b.timeout);
        let build_timeout = ctx.duration(f, &b.build_timeout);
        let ack = match b.ack.as_ref().map(|a| a.value.as_str()) {
            None | Some("callback") => Ack::Callback,
            Some("sync") => Ack::Sync,
            Some(other) => {
                let at = b.ack.as_ref().map_or(at, |a| a.referenced);
                ctx.err(
                    f,
                    at,
                    format!("backend `{name}`: ack must be `callback` or `sync`, got `{other}`"),
                );
                Ack::Callback
            }
        };
        let backend = Backend {
            name: name.clone(),
            kind,
            url,
            api_url,
            repository: ctx.opt_text(f, &b.repository),
            project: ctx.opt_text(f, &b.project),
            organization: ctx.opt_text(f, &b.organization),
            pipeline: ctx.opt_text(f, &b.pipeline),
            username: ctx.opt_text(f, &b.username),
            token,
            secret,
            concurrency,
            timeout: timeout.unwrap_or(std::time::Duration::from_secs(30)),
            build_timeout,
            ack,
            mode,
            kubeconfig,
            ca_file,
            deploy_timeout: ctx.duration(f, &b.deploy_timeout),
        };
        out.insert(name, backend);
    }
    out
}

/// A `mode` valid for the backend kind, or an error listing the valid ones.
pub(super) fn parse_mode(ctx: &mut Ctx, f: usize, kind: BackendKind, m: &S) -> Option<Mode> {
    let found = Mode::parse(kind, &m.value);
    if found.is_none() {
        let valid: Vec<&str> = Mode::of(kind).iter().map(|m| m.as_str()).collect();
        let msg = if valid.is_empty() {
            format!("kind {} has no `mode`", kind.as_str())
        } else {
            format!(
                "mode must be one of {}, got `{}`",
                valid.join(", "),
                m.value
            )
        };
        ctx.err(f, m.referenced, msg);
    }
    found
}

/// `*`, or `http(s)://host[:port]` with no path, query or credentials.
fn cors_origin_ok(v: &str) -> bool {
    if v == "*" {
        return true;
    }
    let Some(rest) = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"))
    else {
        return false;
    };
    let host = rest.trim_end_matches('/');
    !host.is_empty()
        && !host.contains(['/', '?', '#', '@', ' '])
        && axum::http::HeaderValue::from_str(v).is_ok()
}

/// `notifications:`: each sink's kind, URL (a secret for Slack and Teams),
/// event kinds and image globs; names unique (default `kind-N`).
pub(super) fn notifications(
    ctx: &mut Ctx,
    raw: Vec<(usize, Spanned<RawNotification>)>,
) -> Vec<Sink> {
    let mut out: Vec<Sink> = Vec::new();
    for (i, (f, n)) in raw.into_iter().enumerate() {
        let at = n.referenced;
        let n = n.value;
        let Some(kind) = SinkKind::ALL
            .into_iter()
            .find(|k| k.as_str() == n.kind.value)
        else {
            ctx.err(
                f,
                n.kind.referenced,
                format!(
                    "notification kind must be slack, teams, webhook or email, got `{}`",
                    n.kind.value
                ),
            );
            continue;
        };
        let name = ctx
            .opt_text(f, &n.name)
            .unwrap_or_else(|| format!("{}-{}", kind.as_str(), i + 1));
        if out.iter().any(|s| s.name == name) {
            ctx.err(f, at, format!("notification `{name}` is declared twice"));
        }
        let email = if kind == SinkKind::Email {
            email_sink(ctx, f, at, &name, &n)
        } else {
            if n.smtp.is_some() || n.from.is_some() || !n.to.is_empty() {
                ctx.err(
                    f,
                    at,
                    format!("notification `{name}`: smtp, from and to are for kind email"),
                );
            }
            None
        };
        let url = if kind == SinkKind::Email {
            if n.url.is_some() || n.url_env.is_some() || n.url_file.is_some() {
                ctx.err(
                    f,
                    at,
                    format!("notification `{name}`: an email sink takes smtp, not url"),
                );
            }
            email.as_ref().map(|_| Secret::new(""))
        } else {
            match (&n.url, ctx.secret(f, &n.url_env, &n.url_file, "url")) {
                (Some(u), None) if n.url_env.is_none() && n.url_file.is_none() => {
                    if kind != SinkKind::Webhook {
                        ctx.err(
                            f,
                            u.referenced,
                            format!(
                                "a {} webhook URL is a credential: give it as url_env or url_file",
                                kind.as_str()
                            ),
                        );
                    }
                    ctx.http_url(f, &n.url, "url").map(Secret::new)
                }
                (Some(u), _) => {
                    ctx.err(f, u.referenced, "set only one of url, url_env and url_file");
                    None
                }
                (None, Some(s)) => {
                    if s.expose().starts_with("http://") || s.expose().starts_with("https://") {
                        Some(s)
                    } else {
                        ctx.err(
                            f,
                            at,
                            "the notification URL must be an http:// or https:// URL",
                        );
                        None
                    }
                }
                (None, None) => {
                    if n.url_env.is_none() && n.url_file.is_none() {
                        ctx.err(
                            f,
                            at,
                            format!("notification `{name}` needs url, url_env or url_file"),
                        );
                    }
                    None
                }
            }
        };
        let secret = ctx.secret(f, &n.secret_env, &n.secret_file, "secret");
        if secret.is_some() && kind != SinkKind::Webhook {
            ctx.err(
                f,
                at,
                format!("notification `{name}`: secret signs webhook sinks only"),
            );
        }
        let mut on = Vec::new();
        for e in &n.on {
            match NotifyOn::parse(&e.value) {
                Some(k) if !on.contains(&k) => on.push(k),
                Some(_) => {}
                None => {
                    let all: Vec<&str> = NotifyOn::ALL.iter().map(|k| k.as_str()).collect();
                    ctx.err(
                        f,
                        e.referenced,
                        format!("unknown event `{}` (one of {})", e.value, all.join(", ")),
                    );
                }
            }
        }
        if n.on.is_empty() {
            ctx.err(
                f,
                at,
                format!("notification `{name}` needs `on:` (the events it hears)"),
            );
        }
        let images = n.images.iter().filter_map(|g| ctx.text(f, g)).collect();
        if let Some(url) = url {
            out.push(Sink {
                name,
                kind,
                url,
                secret,
                email,
                on,
                images,
            });
        }
    }
    out
}

/// An email sink's `smtp`, `from` and `to`.
fn email_sink(
    ctx: &mut Ctx,
    f: usize,
    at: serde_saphyr::Location,
    name: &str,
    n: &RawNotification,
) -> Option<Email> {
    let Some(smtp) = &n.smtp else {
        ctx.err(
            f,
            at,
            format!("notification `{name}` (kind email) needs `smtp: {{ host }}`"),
        );
        return None;
    };
    let v = &smtp.value;
    let tls = match v.tls.as_ref().map(|t| t.value.as_str()) {
        None | Some("starttls") => SmtpTls::Starttls,
        Some("tls") => SmtpTls::Tls,
        Some("none") => SmtpTls::None,
        Some(other) => {
            let loc = v.tls.as_ref().map_or(smtp.referenced, |t| t.referenced);
            ctx.err(
                f,
                loc,
                format!("smtp.tls must be starttls, tls or none, got `{other}`"),
            );
            SmtpTls::Starttls
        }
    };
    let port = v.port.as_ref().map(|p| p.value).unwrap_or(match tls {
        SmtpTls::Starttls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    });
    let password = ctx.secret(f, &v.password_env, &v.password_file, "password");
    let username = ctx.opt_text(f, &v.username);
    if password.is_some() != username.is_some() {
        ctx.err(
            f,
            smtp.referenced,
            "smtp: give username and password_env/password_file together",
        );
    }
    if password.is_some() && tls == SmtpTls::None {
        ctx.err(
            f,
            smtp.referenced,
            "smtp: a password is never sent without TLS (tls: none)",
        );
    }
    let address_ok = |a: &str| crate::notify::email::mailbox(a).is_ok();
    let Some(from_raw) = &n.from else {
        ctx.err(
            f,
            at,
            format!("notification `{name}` (kind email) needs `from`"),
        );
        return None;
    };
    let from = ctx.text(f, from_raw)?;
    if !address_ok(&from) {
        ctx.err(
            f,
            from_raw.referenced,
            format!("from: not a mail address: `{from}`"),
        );
    }
    let mut to = Vec::new();
    for t in &n.to {
        if let Some(v) = ctx.text(f, t) {
            if !address_ok(&v) {
                ctx.err(f, t.referenced, format!("to: not a mail address: `{v}`"));
            }
            to.push(v);
        }
    }
    if to.is_empty() {
        ctx.err(
            f,
            at,
            format!("notification `{name}` (kind email) needs `to`"),
        );
        return None;
    }
    let host = ctx.text(f, &v.host)?;
    Some(Email {
        host,
        port,
        tls,
        username,
        password,
        from,
        to,
    })
}
