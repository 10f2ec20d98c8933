//! GitHub Actions: `workflow_dispatch` (default) or `repository_dispatch`.
//!
//! - `POST {api}/repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches`
//!   with `{"ref", "inputs", "return_run_details": true}`: 200 with
//!   `workflow_run_id`, `run_url`, `html_url` (servers without run details
//!   answer 204).
//! - `POST {api}/repos/{owner}/{repo}/dispatches` with
//!   `{"event_type": "lineaged-rebuild", "client_payload"}`: 204.
//!
//! Headers: `Authorization: Bearer`, `Accept: application/vnd.github+json`,
//! `X-GitHub-Api-Version: 2022-11-28`, `User-Agent`.

use serde_json::{Value, json};

use super::request::{CiRequest, CiRun, DispatchError, Trigger, base, token};
use super::segment;
use crate::config::{Backend, BackendKind, Mode};

pub const DEFAULT_API: &str = "https://api.github.com";
pub const EVENT_TYPE: &str = "lineaged-rebuild";

pub fn request(b: &Backend, t: &Trigger) -> Result<CiRequest, DispatchError> {
    let api = base(
        b.api_url
            .as_deref()
            .or(b.url.as_deref())
            .unwrap_or(DEFAULT_API),
    );
    let repo = t
        .build
        .repository
        .as_deref()
        .or(b.repository.as_deref())
        .ok_or_else(|| DispatchError::Invalid("github_actions: no repository".into()))?;
    let (owner, name) = repo
        .split_once('/')
        .ok_or_else(|| DispatchError::Invalid(format!("repository `{repo}` is not owner/name")))?;
    let repo_path = format!("{api}/repos/{}/{}", segment(owner), segment(name));
    let mode = t.build.mode.or(b.mode).unwrap_or(Mode::WorkflowDispatch);
    let (url, body) = match mode {
        Mode::RepositoryDispatch => (
            format!("{repo_path}/dispatches"),
            json!({ "event_type": EVENT_TYPE, "client_payload": Value::Object(t.inputs()) }),
        ),
        _ => {
            let wf = t.build.workflow.as_deref().ok_or_else(|| {
                DispatchError::Invalid("github_actions: no workflow for workflow_dispatch".into())
            })?;
            (
                format!("{repo_path}/actions/workflows/{}/dispatches", segment(wf)),
                json!({ "ref": t.git_ref(), "inputs": Value::Object(t.inputs()), "return_run_details": true }),
            )
        }
    };
    let tok = token(b)?;
    Ok(
        CiRequest::new(BackendKind::GithubActions, url, CiRequest::json(&body))
            .secret_header("authorization", format!("Bearer {tok}"), tok)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .header("user-agent", super::USER_AGENT),
    )
}

/// 200 with run details: the run's id and its page; 204: nothing to record.
pub fn run(body: &Value) -> CiRun {
    CiRun {
        id: body.get("workflow_run_id").map(super::id_text),
        url: body
            .get("html_url")
            .or_else(|| body.get("run_url"))
            .and_then(Value::as_str)
            .map(str::to_string),
        ..CiRun::default()
    }
}
