//! The daemon's API as the shell commands (`status`, `approvals`,
//! `approve`, `reject`) call it: one base URL, the token from
//! `LINEAGED_TOKEN`, a per-request timeout, and errors that say which call
//! failed and what the daemon answered.

use std::time::Duration;

use serde_json::Value;

pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    pub fn new(url: &str, token: Option<String>, timeout_secs: u64) -> Result<Api, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(timeout_secs.max(1)))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Api {
            http,
            base: url.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// The token from `LINEAGED_TOKEN` (never a flag: flags show in `ps`).
    pub fn env_token() -> Option<String> {
        std::env::var("LINEAGED_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    }

    pub async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// `path` under `/api/v1`; a non-2xx answer is an error with its status
    /// and the daemon's message.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let base = &self.base;
        let mut r = self.http.request(method, format!("{base}/api/v1{path}"));
        if let Some(t) = &self.token {
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
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body["message"].as_str().unwrap_or("no message");
            return Err(format!(
                "{base}/api/v1{path}: HTTP {}: {msg}",
                status.as_u16()
            ));
        }
        Ok(body)
    }
}
