//! Vulnerability scans: the configured command (Trivy or Grype) run per
//! digest with a timeout, its JSON parsed and judged against the rule.
//!
//! - Trivy: `Results[].Vulnerabilities[]` with `VulnerabilityID`,
//!   `PkgName`, `Severity` (UNKNOWN, LOW, MEDIUM, HIGH, CRITICAL),
//!   `FixedVersion`, `Status`.
//! - Grype: `matches[].vulnerability` with `id`, `severity` (Negligible,
//!   Low, Medium, High, Critical, Unknown), `fix.state` (`fixed`,
//!   `not-fixed`, `wont-fix`, `unknown`); `matches[].artifact.name`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::config::{ScanRule, Severity};

/// A scanner's report is a few MiB at most for a large image.
pub const MAX_OUTPUT: usize = 64 * 1024 * 1024;
/// Findings kept as evidence.
const TOP: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: String,
    pub package: String,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_in: Option<String>,
    pub fixable: bool,
}

/// A parsed report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `trivy` or `grype`.
    pub scanner: &'static str,
    pub findings: Vec<Finding>,
}

/// The judgement: counts per severity, the worst findings, and whether it
/// passes the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judgement {
    pub passed: bool,
    pub scanner: &'static str,
    /// Findings per severity (all, fixable or not).
    pub counts: BTreeMap<&'static str, usize>,
    /// Over the threshold (and fixable, with `ignore_unfixed`).
    pub over_threshold: usize,
    pub max_severity: Severity,
    pub ignore_unfixed: bool,
    pub top: Vec<Finding>,
}

fn severity(s: &str) -> Severity {
    match s.to_ascii_lowercase().as_str() {
        "critical" => Severity::Critical,
        "high" => Severity::High,
        "medium" => Severity::Medium,
        // low, negligible, unknown
        _ => Severity::Low,
    }
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

/// Parses Trivy or Grype JSON.
pub fn parse(out: &[u8]) -> Result<Report, String> {
    let v: Value = serde_json::from_slice(out).map_err(|e| {
        format!("the scanner printed no JSON ({e}); expected Trivy or Grype JSON on stdout")
    })?;
    // Trivy omits `Results` when there is nothing to report; anything but a
    // list (or null) there means a report this parser does not understand,
    // and a gate never passes on that.
    if v.get("SchemaVersion").is_some() || v.get("Results").is_some() {
        let results = match v.get("Results") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            Some(_) => return Err("Trivy JSON: `Results` is not a list".into()),
        };
        let mut findings = Vec::new();
        for r in results {
            let vulns = match r.get("Vulnerabilities") {
                None | Some(Value::Null) => &[][..],
                Some(Value::Array(a)) => a.as_slice(),
                Some(_) => return Err("Trivy JSON: `Vulnerabilities` is not a list".into()),
            };
            for f in vulns {
                if f.get("VulnerabilityID").and_then(Value::as_str).is_none() {
                    return Err("Trivy JSON: a vulnerability without `VulnerabilityID`".into());
                }
                let fixed = text(f, "FixedVersion");
                let status = text(f, "Status");
                let fixable = !fixed.is_empty() || status == "fixed";
                findings.push(Finding {
                    id: text(f, "VulnerabilityID"),
                    package: text(f, "PkgName"),
                    severity: severity(&text(f, "Severity")),
                    fixed_in: (!fixed.is_empty()).then_some(fixed),
                    fixable,
                });
            }
        }
        return Ok(Report {
            scanner: "trivy",
            findings,
        });
    }
    if let Some(matches) = v.get("matches") {
        let Some(matches) = matches.as_array() else {
            return Err("Grype JSON: `matches` is not a list".into());
        };
        if matches.iter().any(|m| {
            m.pointer("/vulnerability/id")
                .and_then(Value::as_str)
                .is_none()
        }) {
            return Err("Grype JSON: a match without `vulnerability.id`".into());
        }
        let findings = matches
            .iter()
            .map(|m| {
                let vuln = m.get("vulnerability").cloned().unwrap_or(Value::Null);
                let fix = vuln.get("fix").cloned().unwrap_or(Value::Null);
                let versions: Vec<&str> = fix
                    .get("versions")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                Finding {
                    id: text(&vuln, "id"),
                    package: m
                        .get("artifact")
                        .map(|a| text(a, "name"))
                        .unwrap_or_default(),
                    severity: severity(&text(&vuln, "severity")),
                    fixed_in: (!versions.is_empty()).then(|| versions.join(", ")),
                    fixable: text(&fix, "state") == "fixed",
                }
            })
            .collect();
        return Ok(Report {
            scanner: "grype",
            findings,
        });
    }
    Err("the scanner's JSON is neither Trivy (`Results`) nor Grype (`matches`)".into())
}

/// Judges a report against a rule.
pub fn judge(report: &Report, rule: &ScanRule) -> Judgement {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for f in &report.findings {
        *counts.entry(f.severity.as_str()).or_default() += 1;
    }
    let counts_against =
        |f: &&Finding| f.severity > rule.max_severity && (f.fixable || !rule.ignore_unfixed);
    let mut over: Vec<&Finding> = report.findings.iter().filter(counts_against).collect();
    over.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(&b.id)));
    let mut top: Vec<Finding> = over.iter().take(TOP).map(|f| (*f).clone()).collect();
    if top.is_empty() {
        let mut all: Vec<&Finding> = report.findings.iter().collect();
        all.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(&b.id)));
        top = all.into_iter().take(TOP).cloned().collect();
    }
    Judgement {
        passed: over.is_empty(),
        scanner: report.scanner,
        counts,
        over_threshold: over.len(),
        max_severity: rule.max_severity,
        ignore_unfixed: rule.ignore_unfixed,
        top,
    }
}

/// Runs the scan command for `reference` (`repo@digest`): its stdout, or
/// why there is none (timeout, no such program, a failing exit without
/// output). The child is killed on timeout.
pub async fn run(argv: &[String], reference: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let args: Vec<String> = argv.iter().map(|a| a.replace("{ref}", reference)).collect();
    let Some((program, rest)) = args.split_first() else {
        return Err("policy.scan.command is empty".into());
    };
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout ends a wrapper script's
        // children too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run the scanner `{program}`: {e}"))?;
    let pgid = child.id();
    let mut stdout = child.stdout.take().ok_or("no scanner stdout")?;
    let mut stderr = child.stderr.take().ok_or("no scanner stderr")?;
    let work = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stdout.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok::<_, String>(());
                }
                if out.len() + n > MAX_OUTPUT {
                    return Err(format!("the scanner printed more than {MAX_OUTPUT} bytes"));
                }
                out.extend_from_slice(&buf[..n]);
            }
        };
        // Keep the first 16 KiB of stderr for the error, and keep reading
        // (and dropping) the rest so a chatty scanner never blocks on a
        // full pipe.
        let read_err = async {
            let mut buf = vec![0u8; 8 * 1024];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if err.len() < 16 * 1024 {
                    err.extend_from_slice(&buf[..n.min(16 * 1024 - err.len())]);
                }
            }
        };
        let (r, _) = tokio::join!(read_out, read_err);
        r?;
        let status = child.wait().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, out, err))
    };
    let result = tokio::time::timeout(timeout, work).await;
    if result.is_err()
        && let Some(pgid) = pgid
    {
        // SIGKILL to the whole group (`kill -KILL -<pgid>`); the direct
        // child is also killed when dropped.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    match result {
        Err(_) if timeout.as_secs() == 0 => {
            Err(format!("scan timed out after {}ms", timeout.as_millis()))
        }
        Err(_) => Err(format!("scan timed out after {}s", timeout.as_secs())),
        Ok(Err(e)) => Err(e),
        Ok(Ok((status, out, err))) => {
            if !status.success() && out.iter().all(u8::is_ascii_whitespace) {
                let err = String::from_utf8_lossy(&err);
                let err: String = err.split_whitespace().collect::<Vec<_>>().join(" ");
                Err(format!(
                    "the scanner exited with {status}: {}",
                    err.chars().take(300).collect::<String>()
                ))
            } else {
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIVY: &str = r#"{"SchemaVersion":2,"ArtifactName":"r/app@sha256:1","ArtifactType":"container_image",
      "Results":[{"Target":"r/app (debian 12.5)","Class":"os-pkgs","Type":"debian","Vulnerabilities":[
        {"VulnerabilityID":"CVE-2024-0001","PkgName":"openssl","InstalledVersion":"3.0.11-1","FixedVersion":"3.0.13-1","Status":"fixed","Severity":"CRITICAL"},
        {"VulnerabilityID":"CVE-2024-0002","PkgName":"zlib","InstalledVersion":"1.2.13","Status":"affected","Severity":"HIGH"},
        {"VulnerabilityID":"CVE-2024-0003","PkgName":"bash","InstalledVersion":"5.2","Status":"will_not_fix","Severity":"LOW"}]},
        {"Target":"app/go.mod","Class":"lang-pkgs","Type":"gomod"}]}"#;

    const GRYPE: &str = r#"{"matches":[
        {"vulnerability":{"id":"CVE-2024-1000","severity":"High","fix":{"versions":["2.1"],"state":"fixed"}},"artifact":{"name":"libxml2","version":"2.0"}},
        {"vulnerability":{"id":"CVE-2024-1001","severity":"Negligible","fix":{"versions":[],"state":"not-fixed"}},"artifact":{"name":"tar","version":"1.34"}}],
      "source":{"type":"image"},"descriptor":{"name":"grype","version":"0.74.0"}}"#;

    fn rule(max: Severity, ignore_unfixed: bool) -> ScanRule {
        ScanRule {
            max_severity: max,
            ignore_unfixed,
            source: crate::config::ScanSource::Command,
        }
    }

    #[test]
    fn trivy_is_judged_by_severity_and_fixability() {
        let r = parse(TRIVY.as_bytes()).unwrap();
        assert_eq!(r.scanner, "trivy");
        assert_eq!(r.findings.len(), 3);
        let j = judge(&r, &rule(Severity::High, false));
        assert!(!j.passed);
        assert_eq!(j.over_threshold, 1);
        assert_eq!(j.top[0].id, "CVE-2024-0001");
        assert_eq!(j.counts["critical"], 1);
        assert!(judge(&r, &rule(Severity::Critical, false)).passed);
        // The HIGH without a fix counts under medium, unless ignored.
        assert_eq!(judge(&r, &rule(Severity::Medium, false)).over_threshold, 2);
        assert_eq!(judge(&r, &rule(Severity::Medium, true)).over_threshold, 1);
    }

    #[test]
    fn grype_is_parsed() {
        let r = parse(GRYPE.as_bytes()).unwrap();
        assert_eq!(r.scanner, "grype");
        assert_eq!(r.findings[0].fixed_in.as_deref(), Some("2.1"));
        assert!(r.findings[0].fixable && !r.findings[1].fixable);
        assert!(!judge(&r, &rule(Severity::Medium, true)).passed);
        assert!(judge(&r, &rule(Severity::High, false)).passed);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(
            parse(b"Segmentation fault")
                .unwrap_err()
                .contains("no JSON")
        );
        assert!(parse(b"{\"foo\":1}").unwrap_err().contains("neither Trivy"));
        assert!(
            parse(br#"{"SchemaVersion":2,"Results":"x"}"#)
                .unwrap_err()
                .contains("not a list")
        );
        assert!(
            parse(br#"{"Results":[{"Vulnerabilities":{"a":1}}]}"#)
                .unwrap_err()
                .contains("not a list")
        );
        assert!(
            parse(br#"{"matches":{"a":1}}"#)
                .unwrap_err()
                .contains("not a list")
        );
        assert!(
            parse(br#"{"matches":[{"vulnerability":{}}]}"#)
                .unwrap_err()
                .contains("without")
        );
        // Nothing found: Trivy leaves `Results` out.
        assert_eq!(
            parse(br#"{"SchemaVersion":2,"ArtifactName":"x"}"#)
                .unwrap()
                .findings
                .len(),
            0
        );
    }

    #[tokio::test]
    async fn the_command_runs_with_a_timeout() {
        let echo = vec![
            "sh".to_string(),
            "-c".into(),
            "printf '%s' '{\"matches\":[]}' # {ref}".into(),
        ];
        let out = run(&echo, "r/app@sha256:1", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(parse(&out).unwrap().findings.len(), 0);
        let hang = vec!["sh".to_string(), "-c".into(), "sleep 30 # {ref}".into()];
        let e = run(&hang, "x", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(e, "scan timed out after 300ms");
        let fail = vec![
            "sh".to_string(),
            "-c".into(),
            "echo boom >&2; exit 3".into(),
        ];
        assert!(
            run(&fail, "x", Duration::from_secs(5))
                .await
                .unwrap_err()
                .contains("boom")
        );
        // A wrapper's child dies with it on timeout; a chatty stderr
        // does not block the scan.
        let dir = std::env::temp_dir().join(format!("lineaged-scan-{}", std::process::id()));
        let marker = dir.with_extension("alive");
        let _ = std::fs::remove_file(&marker);
        let wrapper = vec![
            "sh".to_string(),
            "-c".into(),
            format!("(sleep 2; touch {}) & wait # {{ref}}", marker.display()),
        ];
        assert!(
            run(&wrapper, "x", Duration::from_millis(300))
                .await
                .is_err()
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "the wrapper's child outlived the timeout");
        let chatty = vec![
            "sh".to_string(),
            "-c".into(),
            "head -c 400000 /dev/zero | tr '\\0' x >&2; printf '{\"matches\":[]}' # {ref}".into(),
        ];
        let out = run(&chatty, "x", Duration::from_secs(10)).await.unwrap();
        assert_eq!(parse(&out).unwrap().findings.len(), 0);
        let missing = vec!["/nonexistent/trivy".to_string(), "{ref}".into()];
        assert!(
            run(&missing, "x", Duration::from_secs(5))
                .await
                .unwrap_err()
                .contains("cannot run")
        );
    }
}
