//! Prometheus metrics: process-wide counters and histograms updated where
//! things happen, plus gauges read from the store at scrape time (so every
//! replica reports the shared truth for jobs, stale images and registries).
//!
//! Hand-written text exposition (format 0.0.4): the label sets are small and
//! fixed (registry hosts from the config, result and source enums, route
//! templates), so a registry crate would add a dependency for ~150 lines.
//! No label ever carries an image reference or anything else unbounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};

/// Seconds; dispatch is one webhook round trip.
const DISPATCH_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Seconds; a rollout lasts minutes to hours.
const ROLLOUT_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
];
/// Seconds; API requests.
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug)]
struct Inner {
    polls: BTreeMap<(String, &'static str), u64>,
    digest_changes: BTreeMap<&'static str, u64>,
    dispatches: BTreeMap<(&'static str, &'static str), u64>,
    dispatch_seconds: Histogram,
    rollouts_finished: BTreeMap<String, u64>,
    rollout_seconds: Histogram,
    stage_results: BTreeMap<(&'static str, &'static str), u64>,
    gate_results: BTreeMap<(&'static str, &'static str), u64>,
    http: BTreeMap<(String, String, u16), u64>,
    http_seconds: BTreeMap<String, Histogram>,
}

/// The process's metrics. Cheap to update (one uncontended mutex).
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    inner: Mutex::new(Inner {
        polls: BTreeMap::new(),
        digest_changes: BTreeMap::new(),
        dispatches: BTreeMap::new(),
        dispatch_seconds: Histogram::new(DISPATCH_BUCKETS),
        rollouts_finished: BTreeMap::new(),
        rollout_seconds: Histogram::new(ROLLOUT_BUCKETS),
        stage_results: BTreeMap::new(),
        gate_results: BTreeMap::new(),
        http: BTreeMap::new(),
        http_seconds: BTreeMap::new(),
    }),
});

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// A registry check ended: `result` is `ok`, `changed`, `error`
    /// (registry trouble, retried) or `image_error` (404, denied).
    pub fn poll(&self, registry: &str, result: &'static str) {
        self.with(|m| *m.polls.entry((registry.to_string(), result)).or_default() += 1);
    }

    pub fn digest_changed(&self, source: &'static str) {
        self.with(|m| *m.digest_changes.entry(source).or_default() += 1);
    }

    /// A trigger delivery ended (`accepted`, `retry`, `failed`) after `secs`.
    /// One delivery to a backend of `kind` (webhook, github_actions, …).
    pub fn dispatched(&self, kind: &'static str, result: &'static str, secs: f64) {
        self.with(|m| {
            *m.dispatches.entry((kind, result)).or_default() += 1;
            m.dispatch_seconds.observe(secs);
        });
    }

    pub fn rollout_finished(&self, state: &str, secs: f64) {
        self.with(|m| {
            *m.rollouts_finished.entry(state.to_string()).or_default() += 1;
            m.rollout_seconds.observe(secs);
        });
    }

    /// An image's pipeline stage ended: `stage` is `build` or `deploy`,
    /// `result` `succeeded` or `failed`.
    pub fn stage_result(&self, stage: &'static str, result: &'static str) {
        self.with(|m| *m.stage_results.entry((stage, result)).or_default() += 1);
    }

    /// One gate's verdict (`gate`: trusted_registry, signature, scan;
    /// `result`: passed, refused, warned).
    pub fn gate_result(&self, gate: &'static str, result: &'static str) {
        self.with(|m| *m.gate_results.entry((gate, result)).or_default() += 1);
    }

    /// `route` is the matched route template (or `unmatched`), never the
    /// raw path.
    pub fn http(&self, method: &str, route: &str, status: u16, secs: f64) {
        self.with(|m| {
            *m.http
                .entry((method.to_string(), route.to_string(), status))
                .or_default() += 1;
            m.http_seconds
                .entry(route.to_string())
                .or_insert_with(|| Histogram::new(HTTP_BUCKETS))
                .observe(secs);
        });
    }

    /// The process's own metrics in the text format.
    pub fn render(&self, out: &mut String) {
        self.with(|m| {
            header(out, "lineaged_registry_checks_total", "counter", "Registry digest checks, by registry and result.");
            for ((reg, res), n) in &m.polls {
                let _ = writeln!(out, "lineaged_registry_checks_total{{registry=\"{}\",result=\"{res}\"}} {n}", esc(reg));
            }
            header(out, "lineaged_digest_changes_total", "counter", "Digest changes seen, by how they were noticed.");
            for (src, n) in &m.digest_changes {
                let _ = writeln!(out, "lineaged_digest_changes_total{{source=\"{src}\"}} {n}");
            }
            header(out, "lineaged_dispatches_total", "counter", "Job deliveries (rebuild triggers and deploys), by backend kind and result.");
            for ((kind, res), n) in &m.dispatches {
                let _ = writeln!(out, "lineaged_dispatches_total{{kind=\"{kind}\",result=\"{res}\"}} {n}");
            }
            header(out, "lineaged_dispatch_duration_seconds", "histogram", "Time to deliver one trigger (or deploy) to its backend.");
            m.dispatch_seconds.render(out, "lineaged_dispatch_duration_seconds", "");
            header(out, "lineaged_rollouts_finished_total", "counter", "Rollouts finished by this process, by final state.");
            for (st, n) in &m.rollouts_finished {
                let _ = writeln!(out, "lineaged_rollouts_finished_total{{state=\"{}\"}} {n}", esc(st));
            }
            header(out, "lineaged_rollout_duration_seconds", "histogram", "Rollout duration from start to finish.");
            m.rollout_seconds.render(out, "lineaged_rollout_duration_seconds", "");
            header(out, "lineaged_stage_results_total", "counter", "Pipeline stages of images that ended in this process, by stage (build, verify, deploy) and result.");
            for ((stage, res), n) in &m.stage_results {
                let _ = writeln!(out, "lineaged_stage_results_total{{stage=\"{stage}\",result=\"{res}\"}} {n}");
            }
            header(out, "lineaged_gate_results_total", "counter", "Supply-chain gate verdicts in this process, by gate (trusted_registry, signature, scan) and result (passed, refused, warned).");
            for ((gate, res), n) in &m.gate_results {
                let _ = writeln!(out, "lineaged_gate_results_total{{gate=\"{gate}\",result=\"{res}\"}} {n}");
            }
            header(out, "lineaged_http_requests_total", "counter", "API requests, by method, route template and status.");
            for ((method, route, status), n) in &m.http {
                let _ = writeln!(out, "lineaged_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}", esc(method), esc(route));
            }
            header(out, "lineaged_http_request_duration_seconds", "histogram", "API request latency, by route template.");
            for (route, h) in &m.http_seconds {
                h.render(out, "lineaged_http_request_duration_seconds", &format!("route=\"{}\"", esc(route)));
            }
        });
    }
}

/// `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline).
pub fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(9.0);
        let mut s = String::new();
        h.render(&mut s, "x", "");
        assert_eq!(
            s,
            "x_bucket{le=\"1\"} 1\nx_bucket{le=\"2\"} 2\nx_bucket{le=\"+Inf\"} 3\nx_sum 11\nx_count 3\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
