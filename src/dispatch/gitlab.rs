//! GitLab CI: a pipeline trigger token (default) or the pipelines API.
//!
//! - `POST {url}/api/v4/projects/{id}/trigger/pipeline`, form fields
//!   `token`, `ref`, `variables[KEY]=value`: 201 with the pipeline.
//! - `mode: api`: `POST {url}/api/v4/projects/{id}/pipeline` with
//!   `PRIVATE-TOKEN` and `{"ref", "variables": [{"key", "value"}]}`: 201.
//!
//! `{id}` is the numeric id or the URL-encoded path (`group%2Fproject`).

use serde_json::{Value, json};

use super::request::{Body, CiRequest, CiRun, DispatchError, Trigger, base, token};
use super::segment;
use crate::config::{Backend, BackendKind, Mode};

pub const DEFAULT_URL: &str = "https://gitlab.com";

pub fn request(b: &Backend, t: &Trigger) -> Result<CiRequest, DispatchError> {
    let root = base(
        b.api_url
            .as_deref()
            .or(b.url.as_deref())
            .unwrap_or(DEFAULT_URL),
    );
    // `api_url` may already end in /api/v4.
    let api = if root.ends_with("/api/v4") {
        root.to_string()
    } else {
        format!("{root}/api/v4")
    };
    let project = t
        .build
        .project
        .as_deref()
        .or(b.project.as_deref())
        .ok_or_else(|| DispatchError::Invalid("gitlab: no project".into()))?;
    let project = format!("{api}/projects/{}", segment(project));
    let tok = token(b)?;
    let vars = t.env();
    match t.build.mode.or(b.mode).unwrap_or(Mode::Trigger) {
        Mode::Api => {
            let variables: Vec<Value> = vars
                .iter()
                .map(|(k, v)| json!({ "key": k, "value": v }))
                .collect();
            let body = json!({ "ref": t.git_ref(), "variables": variables });
            let mut r = CiRequest::new(
                BackendKind::Gitlab,
                format!("{project}/pipeline"),
                CiRequest::json(&body),
            );
            r = r.secret_header("private-token", tok.to_string(), tok);
            Ok(r)
        }
        _ => {
            let mut form = vec![
                ("token".to_string(), tok.to_string(), true),
                ("ref".to_string(), t.git_ref().to_string(), false),
            ];
            form.extend(
                vars.into_iter()
                    .map(|(k, v)| (format!("variables[{k}]"), v, false)),
            );
            let mut r = CiRequest::new(
                BackendKind::Gitlab,
                format!("{project}/trigger/pipeline"),
                Body::Form(form),
            );
            r.secrets.push(tok.to_string());
            Ok(r)
        }
    }
}

/// 201: the pipeline's `id` and `web_url`.
pub fn run(body: &Value) -> CiRun {
    CiRun {
        id: body.get("id").map(super::id_text),
        url: body
            .get("web_url")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..CiRun::default()
    }
}
