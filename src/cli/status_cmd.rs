//! `lineaged status`: asks a running daemon what needs attention and prints
//! tables: stale images, running rollouts, failing jobs, degraded registries.

use std::process::ExitCode;

use serde_json::Value;

use super::{EXIT_FAILED, Output, StatusArgs};

/// Rows shown per table; the header says how many there are in all.
const ROWS: usize = 50;

pub fn status(args: &StatusArgs) -> ExitCode {
    crate::init_tls();
    let rt = match super::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(fetch(args)) {
        Ok(report) => {
            match args.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                ),
                Output::Text => print!("{}", render(&report)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn fetch(args: &StatusArgs) -> Result<Value, String> {
    let api = super::api_client::Api::new(&args.url, args.token.clone(), args.timeout)?;
    let get = |path: String| {
        let api = &api;
        async move { api.get(&path).await }
    };
    let stale = get(format!("/images?state=stale&limit={ROWS}")).await?;
    let unchecked = get(format!("/images?state=unchecked&limit={ROWS}")).await?;
    let erroring = get(format!("/images?state=error&limit={ROWS}")).await?;
    let rollouts = get(format!("/rollouts?state=running&limit={ROWS}")).await?;
    let failed = get(format!("/jobs?state=failed&limit={ROWS}")).await?;
    let dead = get(format!("/jobs?state=dead&limit={ROWS}")).await?;
    let registries = get("/registries".into()).await?;
    let approvals = get(format!("/approvals?state=pending&limit={ROWS}")).await?;
    let running: Vec<Value> = rollouts["rollouts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["state"] == "running")
        .cloned()
        .collect();
    let mut rollouts_detail = Vec::new();
    for r in &running {
        let id = r["id"].as_i64().unwrap_or(0);
        let d = get(format!("/rollouts/{id}")).await?;
        let images: Vec<&Value> = d["waves"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|w| w.as_array().into_iter().flatten())
            .collect();
        let count = |st: &str| images.iter().filter(|i| i["state"] == st).count();
        rollouts_detail.push(serde_json::json!({
            "id": id, "created_at": r["created_at"], "images": images.len(),
            // "succeeded": images through every stage (state `done`).
            "succeeded": count("done"),
            "building": count("building") + count("queued") + count("built") + count("verifying"),
            "deploying": count("awaiting_approval") + count("waiting_for_window") + count("deploying"),
            "waiting": count("waiting"),
            "failed": count("failed") + count("blocked") + count("refused") + count("deploy_failed"),
        }));
    }
    // Images a gate refused in the newest rollouts, with the gate's reason.
    let recent = get("/rollouts?limit=5".into()).await?;
    let mut refused: Vec<Value> = Vec::new();
    for r in recent["rollouts"].as_array().into_iter().flatten() {
        let id = r["id"].as_i64().unwrap_or(0);
        let d = get(format!("/rollouts/{id}")).await?;
        for i in d["waves"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|w| w.as_array().into_iter().flatten())
            .filter(|i| i["state"] == "refused")
        {
            refused.push(serde_json::json!({
                "image": i["image"], "rollout_id": id, "reason": i["reason"], "updated_at": i["updated_at"],
            }));
        }
    }
    let mut jobs: Vec<Value> = Vec::new();
    for list in [&failed, &dead] {
        jobs.extend(list["jobs"].as_array().into_iter().flatten().cloned());
    }
    let degraded: Vec<Value> = registries["registries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["state"] != "healthy" && r["state"] != "unchecked")
        .cloned()
        .collect();
    Ok(serde_json::json!({
        "stale_images": stale["images"],
        "unchecked_images": unchecked["images"],
        "failing_images": erroring["images"],
        "running_rollouts": rollouts_detail,
        "failing_jobs": jobs,
        "pending_approvals": approvals["approvals"],
        "refused_images": refused,
        "degraded_registries": degraded,
    }))
}

/// `in 23h` (or `overdue`) until a time in milliseconds.
fn until(at: &Value) -> String {
    let Some(at) = at.as_i64() else {
        return "-".into();
    };
    let s = (at - crate::store::now_millis()) / 1000;
    match s {
        ..0 => "overdue".into(),
        0..60 => format!("in {s}s"),
        60..3600 => format!("in {}m", s / 60),
        3600..86400 => format!("in {}h", s / 3600),
        _ => format!("in {}d", s / 86400),
    }
}

/// The table of approvals (`lineaged status`, `lineaged approvals`).
pub(super) fn approvals_table(out: &mut String, title: &str, list: &[Value]) {
    table(
        out,
        title,
        &["ID", "STATE", "STAGE", "EXPIRES", "DIGEST", "IMAGE"],
        list.iter()
            .map(|a| {
                vec![
                    text(&a["id"]),
                    text(&a["state"]),
                    text(&a["stage"]),
                    if a["state"] == "pending" {
                        until(&a["expires_at"])
                    } else {
                        ago(&a["decided_at"])
                    },
                    text(&a["digest"]).chars().take(19).collect(),
                    text(&a["image"]),
                ]
            })
            .collect(),
    );
}

fn ago(at: &Value) -> String {
    let Some(at) = at.as_i64() else {
        return "-".into();
    };
    let s = (crate::store::now_millis() - at).max(0) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(out: &mut String, title: &str, header: &[&str], rows: Vec<Vec<String>>) {
    let more = if rows.len() >= ROWS { "+" } else { "" };
    out.push_str(&format!("{title} ({}{more})\n", rows.len()));
    if rows.is_empty() {
        out.push_str("  none\n\n");
        return;
    }
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(&format!(" {c}"));
            } else {
                l.push_str(&format!(" {c:<w$}", w = width[i]));
            }
        }
        l.push('\n');
        l
    };
    out.push_str(&line(header.to_vec()));
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out.push('\n');
}

pub fn render(report: &Value) -> String {
    let mut out = String::new();
    let list = |k: &str| report[k].as_array().cloned().unwrap_or_default();
    approvals_table(&mut out, "Awaiting approval", &list("pending_approvals"));
    // "Stale (0)" would read as all fresh while nothing was checked yet.
    let unchecked = list("unchecked_images").len();
    if unchecked > 0 {
        let more = if unchecked >= ROWS { "+" } else { "" };
        out.push_str(&format!(
            "Not checked yet: {unchecked}{more} image{} (no digest read from its registry yet, so not judged stale or fresh)\n\n",
            if unchecked == 1 { "" } else { "s" }
        ));
    }
    table(
        &mut out,
        "Stale images",
        &["IMAGE", "DIGEST", "LAST CHANGE"],
        list("stale_images")
            .iter()
            .map(|i| {
                vec![
                    text(&i["name"]),
                    text(&i["current_digest"]).chars().take(19).collect(),
                    ago(&i["last_changed_at"]),
                ]
            })
            .collect(),
    );
    table(
        &mut out,
        "Running rollouts",
        &[
            "ID",
            "STARTED",
            "IMAGES",
            "DONE",
            "BUILDING",
            "DEPLOYING",
            "WAITING",
            "FAILED",
        ],
        list("running_rollouts")
            .iter()
            .map(|r| {
                [
                    "id",
                    "created_at",
                    "images",
                    "succeeded",
                    "building",
                    "deploying",
                    "waiting",
                    "failed",
                ]
                .iter()
                .map(|k| {
                    if *k == "created_at" {
                        ago(&r[*k])
                    } else {
                        text(&r[*k])
                    }
                })
                .collect()
            })
            .collect(),
    );
    table(
        &mut out,
        "Failing jobs",
        &["ID", "STATE", "IMAGE", "ATTEMPTS", "ERROR"],
        list("failing_jobs")
            .iter()
            .map(|j| {
                vec![
                    text(&j["id"]),
                    text(&j["state"]),
                    text(&j["image"]),
                    format!("{}/{}", text(&j["attempt"]), text(&j["max_attempts"])),
                    text(&j["last_error"]),
                ]
            })
            .collect(),
    );
    table(
        &mut out,
        "Refused by gates (newest rollouts)",
        &["IMAGE", "ROLLOUT", "WHEN", "REASON"],
        list("refused_images")
            .iter()
            .map(|i| {
                vec![
                    text(&i["image"]),
                    text(&i["rollout_id"]),
                    ago(&i["updated_at"]),
                    text(&i["reason"]),
                ]
            })
            .collect(),
    );
    table(
        &mut out,
        "Images failing checks",
        &["IMAGE", "LAST CHECK", "ERROR"],
        list("failing_images")
            .iter()
            .map(|i| {
                vec![
                    text(&i["name"]),
                    ago(&i["last_checked_at"]),
                    text(&i["last_error"]),
                ]
            })
            .collect(),
    );
    table(
        &mut out,
        "Degraded registries",
        &["REGISTRY", "STATE", "ERRORS", "RATE LIMIT", "LAST ERROR"],
        list("degraded_registries")
            .iter()
            .map(|r| {
                vec![
                    text(&r["host"]),
                    text(&r["state"]),
                    text(&r["consecutive_errors"]),
                    match (
                        r["ratelimit_remaining"].as_i64(),
                        r["ratelimit_limit"].as_i64(),
                    ) {
                        (Some(a), Some(b)) => format!("{a}/{b}"),
                        _ => "-".into(),
                    },
                    text(&r["last_error"]),
                ]
            })
            .collect(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::render;
    use serde_json::json;

    #[test]
    fn unchecked_images_are_not_called_fresh() {
        let report = json!({
            "stale_images": [],
            "unchecked_images": [{ "name": "r/a:1" }, { "name": "r/b:1" }],
            "pending_approvals": [{ "id": 4, "state": "pending", "stage": "deploy",
                "expires_at": crate::store::now_millis() + 7_200_000, "digest": "sha256:0123456789abcdef0", "image": "r/c:1" }],
        });
        let text = render(&report);
        assert!(text.contains("Not checked yet: 2 images"), "{text}");
        assert!(text.starts_with("Awaiting approval (1)"), "{text}");
        assert!(text.contains("in 1h") || text.contains("in 2h"), "{text}");
        let none = render(&json!({ "stale_images": [], "unchecked_images": [] }));
        assert!(!none.contains("Not checked yet"), "{none}");
    }
}
