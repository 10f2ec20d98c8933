//! Azure Pipelines: `POST {api}/{organization}/{project}/_apis/pipelines/
//! {pipeline}/runs?api-version=7.1` with a PAT as basic auth (empty user);
//! 200 with the run's `id` and `_links.web.href`.
//!
//! The lineaged fields and `build.inputs` go in `templateParameters`:
//! runtime parameters the pipeline declares. Queue-time `variables` would
//! need each variable marked settable in the UI, per pipeline.

use base64::Engine as _;
use serde_json::{Value, json};

use super::request::{CiRequest, CiRun, DispatchError, Trigger, base, token};
use super::segment;
use crate::config::{Backend, BackendKind};

pub const DEFAULT_API: &str = "https://dev.azure.com";
pub const API_VERSION: &str = "7.1";

pub fn request(b: &Backend, t: &Trigger) -> Result<CiRequest, DispatchError> {
    let api = base(
        b.api_url
            .as_deref()
            .or(b.url.as_deref())
            .unwrap_or(DEFAULT_API),
    );
    let missing = |what: &str| DispatchError::Invalid(format!("azure_pipelines: no {what}"));
    let org = b
        .organization
        .as_deref()
        .ok_or_else(|| missing("organization"))?;
    let project = t
        .build
        .project
        .as_deref()
        .or(b.project.as_deref())
        .ok_or_else(|| missing("project"))?;
    let pipeline = t
        .build
        .pipeline
        .as_deref()
        .or(b.pipeline.as_deref())
        .ok_or_else(|| missing("pipeline"))?;
    let url = format!(
        "{api}/{}/{}/_apis/pipelines/{}/runs?api-version={API_VERSION}",
        segment(org),
        segment(project),
        segment(pipeline)
    );
    let branch = t.branch();
    let ref_name = if branch.starts_with("refs/") {
        branch.to_string()
    } else {
        format!("refs/heads/{branch}")
    };
    let params: serde_json::Map<String, Value> = t
        .env()
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let body = json!({
        "resources": { "repositories": { "self": { "refName": ref_name } } },
        "templateParameters": params,
    });
    let tok = token(b)?;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(":{tok}"));
    let mut r = CiRequest::new(BackendKind::AzurePipelines, url, CiRequest::json(&body))
        .secret_header("authorization", format!("Basic {basic}"), tok)
        .header("accept", "application/json");
    r.secrets.push(basic);
    Ok(r)
}

/// 200: the run's `id` and its web page.
pub fn run(body: &Value) -> CiRun {
    CiRun {
        id: body.get("id").map(super::id_text),
        url: body
            .pointer("/_links/web/href")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..CiRun::default()
    }
}
