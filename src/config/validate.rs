//! Merging parsed files and validating the whole once, collecting every
//! problem with its `file:line:col`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::raw::*;
use super::text::{interpolate, parse_duration};
use super::*;

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(super) struct Ctx<'a> {
    files: Vec<PathBuf>,
    pub diags: Vec<Diagnostic>,
    env: Env<'a>,
    /// Backends declared with an unknown kind: already reported, so a
    /// reference to one is not reported again as undeclared.
    pub broken_backends: std::collections::BTreeSet<String>,
}

impl Ctx<'_> {
    pub fn err(&mut self, f: usize, loc: Location, message: impl Into<String>) {
        let o = self.origin(f, loc);
        self.diags.push(Diagnostic {
            file: o.file,
            line: o.line,
            column: o.column,
            message: message.into(),
        });
    }

    pub fn origin(&self, f: usize, loc: Location) -> Origin {
        Origin {
            file: self.files[f].clone(),
            line: loc.line().max(1),
            column: loc.column().max(1),
        }
    }

    /// The value with `${VAR}` interpolated; `None` (and an error) when a
    /// variable is missing.
    pub fn text(&mut self, f: usize, s: &S) -> Option<String> {
        match interpolate(&s.value, self.env) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.err(f, s.referenced, msg);
                None
            }
        }
    }

    /// A `deploy_window:` section.
    pub fn window(
        &mut self,
        f: usize,
        w: &Option<serde_saphyr::Spanned<super::raw::RawWindow>>,
    ) -> Option<super::DeployWindow> {
        use super::window::{parse_days, parse_hours, parse_timezone};
        let w = w.as_ref()?;
        let v = &w.value;
        let mut ok = true;
        let mut days_text = Vec::new();
        for d in &v.days {
            if let Some(t) = self.text(f, d) {
                if let Err(m) = parse_days(std::slice::from_ref(&t)) {
                    self.err(f, d.referenced, m);
                    ok = false;
                }
                days_text.push(t);
            }
        }
        let days = parse_days(&days_text).unwrap_or([true; 7]);
        let hours = self.text(f, &v.hours).unwrap_or_default();
        let (start, end) = parse_hours(&hours).unwrap_or_else(|m| {
            self.err(f, v.hours.referenced, m);
            ok = false;
            (0, 1)
        });
        let tz_name = self
            .opt_text(f, &v.timezone)
            .unwrap_or_else(|| "UTC".into());
        let tz = match parse_timezone(&tz_name) {
            Ok(tz) => tz,
            Err(m) => {
                let at = v.timezone.as_ref().map_or(w.referenced, |t| t.referenced);
                self.err(f, at, m);
                ok = false;
                jiff::tz::TimeZone::UTC
            }
        };
        let days_shown = if v.days.is_empty() {
            "every day".to_string()
        } else {
            days_text.join(",")
        };
        ok.then(|| super::DeployWindow {
            days,
            start,
            end,
            tz,
            text: format!("{days_shown} {hours} {tz_name}"),
        })
    }

    /// An `approval:` section: None when absent, Some(None) for
    /// `required: false`.
    pub fn approval(
        &mut self,
        f: usize,
        a: &Option<serde_saphyr::Spanned<super::raw::RawApproval>>,
    ) -> Option<Option<super::Approval>> {
        let a = a.as_ref()?;
        let v = &a.value;
        let expires = self
            .duration(f, &v.expires)
            .unwrap_or(Duration::from_secs(24 * 3600));
        if expires.is_zero() {
            self.err(f, a.referenced, "approval.expires must be longer than 0s");
        }
        let before = match &v.before {
            None => super::ApprovalStage::Deploy,
            Some(b) => super::ApprovalStage::parse(&b.value).unwrap_or_else(|| {
                self.err(
                    f,
                    b.referenced,
                    format!(
                        "approval.before must be `deploy` or `build`, got `{}`",
                        b.value
                    ),
                );
                super::ApprovalStage::Deploy
            }),
        };
        Some((v.required != Some(false)).then_some(super::Approval { expires, before }))
    }

    pub fn opt_text(&mut self, f: usize, s: &Option<S>) -> Option<String> {
        s.as_ref().and_then(|s| self.text(f, s))
    }

    /// Resolves a secret from its `*_env` or `*_file` field. `None` without
    /// an error when neither is given; the caller decides if it is required.
    pub fn secret(
        &mut self,
        f: usize,
        env: &Option<S>,
        file: &Option<S>,
        field: &str,
    ) -> Option<Secret> {
        match (env, file) {
            (Some(e), Some(_)) => {
                self.err(
                    f,
                    e.referenced,
                    format!("set only one of {field}_env and {field}_file"),
                );
                None
            }
            (Some(e), None) => match (self.env)(&e.value) {
                Some(v) if !v.is_empty() => Some(Secret::new(v)),
                Some(_) => {
                    self.err(
                        f,
                        e.referenced,
                        format!("environment variable {} ({field}_env) is empty", e.value),
                    );
                    None
                }
                None => {
                    self.err(
                        f,
                        e.referenced,
                        format!("environment variable {} ({field}_env) is not set", e.value),
                    );
                    None
                }
            },
            (None, Some(p)) => {
                let path = self.text(f, p)?;
                match std::fs::read_to_string(&path) {
                    Ok(v) if !v.trim().is_empty() => {
                        Some(Secret::new(v.trim_end_matches(['\n', '\r'])))
                    }
                    Ok(_) => {
                        self.err(
                            f,
                            p.referenced,
                            format!("secret file {path} ({field}_file) is empty"),
                        );
                        None
                    }
                    Err(e) => {
                        self.err(
                            f,
                            p.referenced,
                            format!("cannot read secret file {path} ({field}_file): {e}"),
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        }
    }

    pub fn duration(&mut self, f: usize, s: &Option<S>) -> Option<Duration> {
        let s = s.as_ref()?;
        let v = self.text(f, s)?;
        parse_duration(&v)
            .map_err(|m| self.err(f, s.referenced, m))
            .ok()
    }

    pub fn schedule(&mut self, f: usize, s: &S) -> Option<String> {
        let v = self.text(f, s)?;
        match normalise_schedule(&v) {
            Ok(v) => Some(v),
            Err(m) => {
                self.err(f, s.referenced, m);
                None
            }
        }
    }

    pub fn platforms(&mut self, f: usize, list: &[S]) -> Vec<Platform> {
        let mut out = Vec::new();
        for p in list {
            let Some(v) = self.text(f, p) else { continue };
            match Platform::parse(&v) {
                Some(pl) if !out.contains(&pl) => out.push(pl),
                Some(_) => self.err(f, p.referenced, format!("platform {v} is listed twice")),
                None => self.err(
                    f,
                    p.referenced,
                    format!(
                        "invalid platform `{v}` (expected os/arch[/variant], e.g. linux/arm64)"
                    ),
                ),
            }
        }
        out
    }

    pub fn http_url(&mut self, f: usize, s: &Option<S>, field: &str) -> Option<String> {
        let s = s.as_ref()?;
        let v = self.text(f, s)?;
        if v.starts_with("http://") || v.starts_with("https://") {
            Some(v.trim_end_matches('/').to_string())
        } else {
            self.err(
                f,
                s.referenced,
                format!("{field} must be an http:// or https:// URL, got `{v}`"),
            );
            None
        }
    }
}

/// Cron with seconds (6 or 7 fields). A classic 5-field crontab line is
/// accepted and runs at second 0.
pub fn normalise_schedule(v: &str) -> Result<String, String> {
    const EXAMPLE: &str =
        "e.g. `*/5 * * * *` (every 5 minutes) or `0 0 3 * * *` (03:00 daily, seconds first)";
    let fields = v.split_whitespace().count();
    if !(5..=7).contains(&fields) {
        return Err(format!(
            "invalid schedule `{v}`: {fields} field{}; a schedule has 5 (min hour day month weekday) or 6-7 with seconds first (and a year), {EXAMPLE}",
            if fields == 1 { "" } else { "s" }
        ));
    }
    let expr = if fields == 5 {
        format!("0 {v}")
    } else {
        v.trim().to_string()
    };
    // The cron crate's own message is the expression with a caret under
    // it, over several lines: say what is allowed instead, on one.
    cron::Schedule::from_str(&expr).map(|_| expr).map_err(|_| {
        format!(
            "invalid schedule `{v}`: a field is out of range or malformed (seconds and minutes 0-59, hours 0-23, days 1-31, months 1-12 or jan-dec, weekdays 0-6 or sun-sat; `*`, `*/n`, `a-b`, `a,b`), {EXAMPLE}"
        )
    })
}

/// A section that may be set in one file only.
struct Single<T> {
    slot: Option<(usize, Spanned<T>)>,
}

impl<T> Single<T> {
    fn put(&mut self, ctx: &mut Ctx, f: usize, v: Option<Spanned<T>>, key: &str) {
        let Some(v) = v else { return };
        match &self.slot {
            Some((pf, prev)) => {
                let first = ctx.origin(*pf, prev.referenced);
                ctx.err(
                    f,
                    v.referenced,
                    format!("`{key}` is already set at {first}; set it in one file only"),
                );
            }
            None => self.slot = Some((f, v)),
        }
    }
}

pub(super) fn validate(
    files: Vec<(PathBuf, RawFile)>,
    env: Env,
) -> Result<Config, Vec<Diagnostic>> {
    let mut ctx = Ctx {
        files: files.iter().map(|(p, _)| p.clone()).collect(),
        diags: Vec::new(),
        env,
        broken_backends: Default::default(),
    };
    let mut database = Single { slot: None };
    let mut listen = Single { slot: None };
    let mut defaults = Single { slot: None };
    let mut receivers = Single { slot: None };
    let mut api = Single { slot: None };
    let mut policy = Single { slot: None };
    let mut registries = Vec::new();
    let mut backends: BTreeMap<String, (usize, Spanned<RawBackend>)> = BTreeMap::new();
    let mut images = Vec::new();
    let mut notifications = Vec::new();

    for (f, (_, raw)) in files.into_iter().enumerate() {
        database.put(&mut ctx, f, raw.database, "database");
        listen.put(
            &mut ctx,
            f,
            raw.listen
                .map(|s| Spanned::new(s.clone(), s.referenced, s.defined)),
            "listen",
        );
        defaults.put(&mut ctx, f, raw.defaults, "defaults");
        receivers.put(&mut ctx, f, raw.receivers, "receivers");
        api.put(&mut ctx, f, raw.api, "api");
        policy.put(&mut ctx, f, raw.policy, "policy");
        registries.extend(raw.registries.into_iter().map(|r| (f, r)));
        for (name, b) in raw.backends {
            if let Some((pf, prev)) = backends.get(&name) {
                let first = ctx.origin(*pf, prev.referenced);
                ctx.err(
                    f,
                    b.referenced,
                    format!("backend `{name}` is already declared at {first}"),
                );
            } else {
                backends.insert(name, (f, b));
            }
        }
        images.extend(raw.images.into_iter().map(|i| (f, i)));
        notifications.extend(raw.notifications.into_iter().map(|n| (f, n)));
    }

    let database = build_database(&mut ctx, database.slot);
    let listen = listen.slot.and_then(|(f, s)| {
        let v = ctx.text(f, &s.value)?;
        v.parse::<SocketAddr>()
            .map_err(|_| {
                ctx.err(
                    f,
                    s.referenced,
                    format!("invalid listen address `{v}` (expected ip:port, e.g. 127.0.0.1:8080)"),
                )
            })
            .ok()
    });
    let defaults = build_defaults(&mut ctx, defaults.slot);
    let registries = super::validate_parts::registries(&mut ctx, registries);
    let receivers = super::validate_parts::receivers(&mut ctx, receivers.slot);
    let api = super::validate_parts::api(&mut ctx, api.slot);
    let backends = super::validate_parts::backends(&mut ctx, backends);
    let policy_at = policy.slot.as_ref().map(|(f, p)| (*f, p.referenced));
    let mut policy = super::validate_policy::policy(&mut ctx, policy.slot);
    // Which registries are trusted decides verdicts too.
    policy.hash = super::validate_policy::with_trusted(&policy.hash, &registries);
    if let Some((f, at)) = policy_at
        && receivers.harbor.is_none()
        && policy.rules.iter().any(|r| {
            r.scan
                .as_ref()
                .is_some_and(|s| s.source == ScanSource::Harbor)
        })
    {
        ctx.err(
            f,
            at,
            "a scan rule has `source: harbor`, but receivers.harbor is not configured (Harbor's SCANNING_COMPLETED events arrive there)",
        );
    }
    let images = super::validate_images::images(
        &mut ctx,
        images,
        &defaults,
        &backends,
        &registries,
        &policy,
    );
    let notifications = super::validate_parts::notifications(&mut ctx, notifications);

    if !ctx.diags.is_empty() {
        let order = |d: &Diagnostic| ctx.files.iter().position(|f| *f == d.file);
        let mut diags = std::mem::take(&mut ctx.diags);
        diags.sort_by_key(|d| (order(d), d.line, d.column));
        return Err(diags);
    }
    Ok(Config {
        notifications,
        sources: ctx.files,
        database,
        listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        defaults,
        registries,
        receivers,
        api,
        backends,
        images,
        policy,
    })
}

fn build_database(ctx: &mut Ctx, raw: Option<(usize, Spanned<RawDatabase>)>) -> DatabaseConfig {
    let mut out = DatabaseConfig {
        url: Secret::new(DEFAULT_DATABASE_URL),
        max_connections: 10,
    };
    let Some((f, d)) = raw else { return out };
    let d = d.value;
    if let Some(n) = d.max_connections {
        out.max_connections = n.max(1);
    }
    let (url, at) = match (&d.url, ctx.secret(f, &d.url_env, &d.url_file, "url")) {
        (Some(u), None) => (ctx.text(f, u).map(Secret::new), u.referenced),
        (Some(u), Some(_)) => {
            ctx.err(f, u.referenced, "set only one of url, url_env and url_file");
            return out;
        }
        (None, Some(s)) => (
            Some(s),
            d.url_env
                .as_ref()
                .or(d.url_file.as_ref())
                .map_or(Location::UNKNOWN, |s| s.referenced),
        ),
        (None, None) => return out,
    };
    if let Some(url) = url {
        let u = url.expose();
        if u.starts_with("sqlite:")
            || u.starts_with("postgres://")
            || u.starts_with("postgresql://")
        {
            out.url = url;
        } else {
            let scheme = u.split(':').next().unwrap_or("");
            ctx.err(
                f,
                at,
                format!(
                    "unsupported database URL scheme `{scheme}` (use sqlite://FILE or postgres://…)"
                ),
            );
        }
    }
    out
}

fn build_defaults(ctx: &mut Ctx, raw: Option<(usize, Spanned<RawDefaults>)>) -> Defaults {
    let mut out = Defaults {
        schedule: DEFAULT_SCHEDULE.to_string(),
        platforms: Vec::new(),
        build_timeout: DEFAULT_BUILD_TIMEOUT,
        settle: std::time::Duration::ZERO,
        approval: None,
        deploy_window: None,
    };
    let Some((f, d)) = raw else { return out };
    out.approval = ctx.approval(f, &d.value.approval);
    out.deploy_window = ctx.window(f, &d.value.deploy_window);
    if let Some(s) = d.value.schedule.as_ref().and_then(|s| ctx.schedule(f, s)) {
        out.schedule = s;
    }
    if let Some(p) = &d.value.platforms {
        out.platforms = ctx.platforms(f, p);
    }
    if let Some(t) = ctx.duration(f, &d.value.build_timeout) {
        out.build_timeout = t;
    }
    if let Some(t) = ctx.duration(f, &d.value.settle) {
        out.settle = t;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalise_schedule;

    #[test]
    fn schedules_say_what_is_wrong_on_one_line() {
        assert_eq!(normalise_schedule("*/5 * * * *").unwrap(), "0 */5 * * * *");
        assert_eq!(normalise_schedule("0 0 3 * * *").unwrap(), "0 0 3 * * *");
        for bad in [
            "*/5 * * *",
            "61 * * * *",
            "every tuesday",
            "* * * * * * * *",
        ] {
            let e = normalise_schedule(bad).unwrap_err();
            assert!(!e.contains('\n'), "{e:?}");
            assert!(e.contains("e.g. `*/5 * * * *`"), "{e}");
        }
        assert!(
            normalise_schedule("61 * * * *")
                .unwrap_err()
                .contains("out of range")
        );
    }
}
