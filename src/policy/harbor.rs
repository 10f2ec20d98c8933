//! Harbor scan results: `SCANNING_COMPLETED` (and `SCANNING_FAILED`)
//! webhook events on `receivers.harbor`, recorded per digest and judged by
//! `scan: { source: harbor }` rules. Harbor sends, per resource, the
//! digest, the `resource_url` and a `scan_overview` keyed by report media
//! type with `scan_status`, `severity`, `summary.{total, fixable,
//! summary: {Critical: n, High: n, …}}` and the `scanner`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{ScanRule, Severity};

/// One digest's scan as Harbor reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HarborScan {
    /// `host/project/repo` (no tag or digest).
    pub repository: String,
    pub digest: String,
    pub report: Report,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// `Success`, `Error`, …
    pub status: String,
    pub scanner: String,
    pub total: usize,
    pub fixable: usize,
    /// Findings per severity (lower case).
    pub counts: BTreeMap<String, usize>,
}

/// The scans in a Harbor event; empty for other event types.
pub fn parse(body: &[u8]) -> Result<Vec<HarborScan>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "SCANNING_COMPLETED" && kind != "SCANNING_FAILED" {
        return Ok(Vec::new());
    }
    let resources = v
        .pointer("/event_data/resources")
        .and_then(Value::as_array)
        .ok_or("missing `event_data.resources`")?;
    let mut out = Vec::new();
    for r in resources {
        let digest = r
            .get("digest")
            .and_then(Value::as_str)
            .ok_or("a resource without `digest`")?;
        crate::registry::validate_digest(digest).map_err(|e| format!("resource digest: {e}"))?;
        let url = r
            .get("resource_url")
            .and_then(Value::as_str)
            .ok_or("a resource without `resource_url`")?;
        // `host/project/repo:tag` or `host/project/repo@sha256:…`
        let repository = match url.split_once('@') {
            Some((repo, _)) => repo.to_string(),
            None => match url.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => repo.to_string(),
                _ => url.to_string(),
            },
        };
        // The vulnerability report among the overviews (Harbor may also
        // send others, such as SBOMs).
        let overview = r.get("scan_overview").and_then(Value::as_object);
        let first = overview.and_then(|o| {
            o.iter()
                .find(|(k, _)| k.contains("vulnerability.report") || k.contains("vuln.report"))
                .map(|(_, v)| v)
        });
        let report = match first {
            None => Report {
                status: if kind == "SCANNING_FAILED" {
                    "Error".into()
                } else {
                    "Unknown".into()
                },
                scanner: String::new(),
                total: 0,
                fixable: 0,
                counts: BTreeMap::new(),
            },
            Some(o) => {
                let status = o
                    .get("scan_status")
                    .and_then(Value::as_str)
                    .unwrap_or(if kind == "SCANNING_FAILED" {
                        "Error"
                    } else {
                        "Unknown"
                    })
                    .to_string();
                let num = |p: &str| o.pointer(p).and_then(Value::as_u64).map(|n| n as usize);
                let mut counts = BTreeMap::new();
                let (total, fixable) = if status == "Success" {
                    // A successful report must say what it found: a gate
                    // never reads a missing summary as "no findings".
                    let total =
                        num("/summary/total").ok_or("a successful scan without `summary.total`")?;
                    let fixable = num("/summary/fixable")
                        .ok_or("a successful scan without `summary.fixable`")?;
                    let m = o
                        .pointer("/summary/summary")
                        .and_then(Value::as_object)
                        .ok_or(
                            "a successful scan without `summary.summary` (counts per severity)",
                        )?;
                    for (k, n) in m {
                        let n = n.as_u64().ok_or("a severity count is not a number")? as usize;
                        *counts.entry(k.to_ascii_lowercase()).or_default() += n;
                    }
                    if counts.values().sum::<usize>() != total {
                        return Err("the severity counts do not add up to `summary.total`".into());
                    }
                    (total, fixable)
                } else {
                    (0, 0)
                };
                Report {
                    status,
                    scanner: o
                        .pointer("/scanner/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    total,
                    fixable,
                    counts,
                }
            }
        };
        out.push(HarborScan {
            repository,
            digest: digest.to_string(),
            report,
        });
    }
    Ok(out)
}

/// Judges a Harbor report: (passed, reason). Harbor gives per-severity
/// counts and one fixable total: with `ignore_unfixed`, a report with
/// nothing fixable passes; otherwise every finding over the threshold
/// counts (Harbor does not say which of them have a fix).
pub fn judge(r: &Report, rule: &ScanRule) -> (bool, String) {
    if r.status != "Success" {
        return (
            false,
            format!("Harbor's scan did not succeed (status {})", r.status),
        );
    }
    let sev = |k: &str| match k {
        "critical" => Severity::Critical,
        "high" => Severity::High,
        "medium" => Severity::Medium,
        "none" => Severity::None,
        _ => Severity::Low,
    };
    let over: usize = r
        .counts
        .iter()
        .filter(|(k, _)| sev(k) > rule.max_severity)
        .map(|(_, n)| n)
        .sum();
    let counts: Vec<String> = r.counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let counts = if counts.is_empty() {
        "no findings".into()
    } else {
        counts.join(", ")
    };
    let scanner = if r.scanner.is_empty() {
        "Harbor"
    } else {
        r.scanner.as_str()
    };
    if over == 0 || (rule.ignore_unfixed && r.fixable == 0) {
        (
            true,
            format!(
                "{scanner} (Harbor) found {counts}; none counted over {}",
                rule.max_severity.as_str()
            ),
        )
    } else {
        (
            false,
            format!(
                "{scanner} (Harbor) found {over} over {} ({counts}; {} fixable)",
                rule.max_severity.as_str(),
                r.fixable
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScanSource;

    // Shaped like Harbor's documented webhook payload.
    const EVENT: &str = r#"{"type":"SCANNING_COMPLETED","occur_at":1680502375,"operator":"auto",
      "event_data":{"resources":[{"digest":"sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4",
        "tag":"sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4",
        "resource_url":"harbor.example.com/library/alpine@sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4",
        "scan_overview":{"application/vnd.security.vulnerability.report; version=1.1":{"report_id":"5e64bc05","scan_status":"Success","severity":"High","duration":2,
          "summary":{"total":4,"fixable":3,"summary":{"High":1,"Medium":2,"Low":1}},
          "start_time":"2023-04-03T06:12:53.448Z","end_time":"2023-04-03T06:12:55.038Z",
          "scanner":{"name":"Trivy","vendor":"Aqua Security","version":"v0.37.2"},"complete_percent":100}}}],
        "repository":{"name":"alpine","namespace":"library","repo_full_name":"library/alpine","repo_type":"public"}}}"#;

    #[test]
    fn scanning_completed_is_parsed_and_judged() {
        let scans = parse(EVENT.as_bytes()).unwrap();
        assert_eq!(scans.len(), 1);
        assert_eq!(scans[0].repository, "harbor.example.com/library/alpine");
        assert_eq!(scans[0].report.counts["high"], 1);
        let rule = |max, ignore_unfixed| ScanRule {
            max_severity: max,
            ignore_unfixed,
            source: ScanSource::Harbor,
        };
        let (ok, why) = judge(&scans[0].report, &rule(Severity::Medium, false));
        assert!(
            !ok && why.starts_with("Trivy (Harbor) found 1 over medium"),
            "{why}"
        );
        assert!(judge(&scans[0].report, &rule(Severity::High, false)).0);
        assert!(parse(br#"{"type":"PUSH_ARTIFACT"}"#).unwrap().is_empty());
        assert!(parse(br#"{"type":"SCANNING_COMPLETED","event_data":{"resources":[{"digest":"nope","resource_url":"h/r:1"}]}}"#).is_err());
        let failed = parse(br#"{"type":"SCANNING_FAILED","event_data":{"resources":[{"digest":"sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4","resource_url":"h/p/r:1"}]}}"#).unwrap();
        assert!(!judge(&failed[0].report, &rule(Severity::Critical, false)).0);
        // A successful report that does not say what it found is an error,
        // never "no findings"; other overviews (SBOMs) are not read.
        let d = "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4";
        let partial = format!(
            r#"{{"type":"SCANNING_COMPLETED","event_data":{{"resources":[{{"digest":"{d}","resource_url":"h/p/r:1","scan_overview":{{"application/vnd.security.vulnerability.report; version=1.1":{{"scan_status":"Success"}}}}}}]}}}}"#
        );
        assert!(
            parse(partial.as_bytes())
                .unwrap_err()
                .contains("without `summary.total`")
        );
        let sbom = format!(
            r#"{{"type":"SCANNING_COMPLETED","event_data":{{"resources":[{{"digest":"{d}","resource_url":"h/p/r:1","scan_overview":{{"application/vnd.goharbor.harbor.sbom.overview":{{"scan_status":"Success"}}}}}}]}}}}"#
        );
        assert_eq!(parse(sbom.as_bytes()).unwrap()[0].report.status, "Unknown");
        let off = format!(
            r#"{{"type":"SCANNING_COMPLETED","event_data":{{"resources":[{{"digest":"{d}","resource_url":"h/p/r:1","scan_overview":{{"application/vnd.security.vulnerability.report; version=1.1":{{"scan_status":"Success","summary":{{"total":5,"fixable":0,"summary":{{"Low":1}}}}}}}}}}]}}}}"#
        );
        assert!(parse(off.as_bytes()).unwrap_err().contains("do not add up"));
    }
}
