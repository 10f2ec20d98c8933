//! `lineaged approvals`, `lineaged approve ID`, `lineaged reject ID`: the
//! dashboard's approval buttons from a shell, through the daemon's API.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

use super::{ApprovalsArgs, DecideArgs, EXIT_FAILED, Output};

pub fn list(args: &ApprovalsArgs) -> ExitCode {
    let state = if args.all { "" } else { "?state=pending" };
    let path = format!("/approvals{state}");
    match call(&args.api.url, args.api.timeout, "GET", &path, None) {
        Ok(v) => {
            match args.output {
                Output::Json => {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())
                }
                Output::Text => print!("{}", render(&v)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

pub fn decide(args: &DecideArgs, approve: bool) -> ExitCode {
    let verb = if approve { "approve" } else { "reject" };
    let body = json!({ "reason": args.reason });
    let path = format!("/approvals/{}/{verb}", args.id);
    match call(&args.api.url, args.api.timeout, "POST", &path, Some(body)) {
        Ok(v) => {
            println!(
                "approval {} {}: {} ({} {})",
                args.id,
                v["state"].as_str().unwrap_or("?"),
                v["image"].as_str().unwrap_or("?"),
                v["stage"].as_str().unwrap_or("?"),
                v["digest"].as_str().unwrap_or("")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn call(
    url: &str,
    timeout: u64,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let rt = super::runtime(false).map_err(|_| "cannot start a runtime".to_string())?;
    let token = std::env::var("LINEAGED_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let base = url.trim_end_matches('/').to_string();
    rt.block_on(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(timeout.max(1)))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let full = format!("{base}/api/v1{path}");
        let mut r = match method {
            "POST" => http.post(&full),
            _ => http.get(&full),
        };
        if let Some(t) = &token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.map_err(|e| {
            format!(
                "cannot reach {base}: {}",
                crate::cli::store_cmd::error_chain(&e)
            )
        })?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!(
                "{} {path}: {}",
                status.as_u16(),
                v["message"].as_str().unwrap_or("no message")
            ));
        }
        Ok(v)
    })
}

fn render(v: &Value) -> String {
    let list = v["approvals"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    super::status_cmd::approvals_table(&mut out, "Approvals", &list);
    out
}
