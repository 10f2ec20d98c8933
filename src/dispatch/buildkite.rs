//! Buildkite: `POST {api}/v2/organizations/{org}/pipelines/{pipeline}/builds`
//! with `Authorization: Bearer` and `{"commit": "HEAD", "branch",
//! "message", "env", "meta_data"}`; 201 with `id`, `number`, `web_url`.

use serde_json::{Value, json};

use super::request::{CiRequest, CiRun, DispatchError, Trigger, base, token};
use super::segment;
use crate::config::{Backend, BackendKind};

pub const DEFAULT_API: &str = "https://api.buildkite.com";

pub fn request(b: &Backend, t: &Trigger) -> Result<CiRequest, DispatchError> {
    let api = base(
        b.api_url
            .as_deref()
            .or(b.url.as_deref())
            .unwrap_or(DEFAULT_API),
    );
    let org = b
        .organization
        .as_deref()
        .ok_or_else(|| DispatchError::Invalid("buildkite: no organization".into()))?;
    let pipeline = t
        .build
        .pipeline
        .as_deref()
        .or(b.pipeline.as_deref())
        .ok_or_else(|| DispatchError::Invalid("buildkite: no pipeline".into()))?;
    let url = format!(
        "{api}/v2/organizations/{}/pipelines/{}/builds",
        segment(org),
        segment(pipeline)
    );
    let env: serde_json::Map<String, Value> = t
        .env()
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let body = json!({
        "commit": "HEAD",
        "branch": t.branch(),
        "message": format!("lineaged: rebuild {} ({})", t.image, t.reason),
        "env": env,
        "meta_data": {
            "lineaged-image": t.image,
            "lineaged-job-id": t.job_id.to_string(),
            "lineaged-rollout-id": t.rollout_id.to_string(),
        },
    });
    let tok = token(b)?;
    Ok(
        CiRequest::new(BackendKind::Buildkite, url, CiRequest::json(&body)).secret_header(
            "authorization",
            format!("Bearer {tok}"),
            tok,
        ),
    )
}

/// 201: the build `number` (what people quote) and `web_url`.
pub fn run(body: &Value) -> CiRun {
    CiRun {
        id: body
            .get("number")
            .or_else(|| body.get("id"))
            .map(super::id_text),
        url: body
            .get("web_url")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..CiRun::default()
    }
}
