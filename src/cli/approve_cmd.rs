//! `lineaged approvals`, `lineaged approve ID`, `lineaged reject ID`: the
//! dashboard's approval buttons from a shell, through the daemon's API.

use serde_json::{Value, json};
use std::process::ExitCode;

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

/// One call to the daemon, on a runtime of its own.
fn call(
    url: &str,
    timeout: u64,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let rt = super::runtime(false).map_err(|_| "cannot start a runtime".to_string())?;
    let api = super::api_client::Api::new(url, super::api_client::Api::env_token(), timeout)?;
    rt.block_on(async move {
        match (method, body) {
            ("POST", Some(b)) => api.post(path, b).await,
            _ => api.get(path).await,
        }
    })
}

fn render(v: &Value) -> String {
    let list = v["approvals"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    super::status_cmd::approvals_table(&mut out, "Approvals", &list);
    out
}
