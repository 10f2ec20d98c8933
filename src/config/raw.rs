//! The YAML schema as written by users, before validation. Every field a
//! validation error can point at is `Spanned`, so the error names its
//! `file:line:col`. Unknown keys are rejected by serde.

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

pub type S = Spanned<String>;

/// One YAML file. In a directory of files every section is optional; lists
/// and maps merge, single-valued sections may appear in one file only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub database: Option<Spanned<RawDatabase>>,
    pub listen: Option<S>,
    pub defaults: Option<Spanned<RawDefaults>>,
    #[serde(default)]
    pub registries: Vec<RawRegistry>,
    pub receivers: Option<Spanned<RawReceivers>>,
    pub api: Option<Spanned<RawApi>>,
    #[serde(default)]
    pub backends: BTreeMap<String, Spanned<RawBackend>>,
    #[serde(default)]
    pub images: Vec<RawImage>,
    pub policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    pub notifications: Vec<Spanned<RawNotification>>,
}

/// A notification sink: `kind` slack, teams or webhook; its URL (a Slack or
/// Teams webhook URL is a credential: `url_env`/`url_file`); what it hears.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotification {
    pub name: Option<S>,
    pub kind: S,
    pub url: Option<S>,
    pub url_env: Option<S>,
    pub url_file: Option<S>,
    /// webhook: the Standard Webhooks signing secret.
    pub secret_env: Option<S>,
    pub secret_file: Option<S>,
    /// Event kinds: rollout_started, rollout_finished, rollout_failed,
    /// image_blocked, gate_refused, approval_pending, deploy_failed,
    /// registry_down.
    pub on: Vec<S>,
    /// Only events about these images (globs over normalised references).
    #[serde(default)]
    pub images: Vec<S>,
    /// email: the SMTP server.
    pub smtp: Option<Spanned<RawSmtp>>,
    /// email: `lineaged <lineaged@example.com>`.
    pub from: Option<S>,
    /// email: recipients.
    #[serde(default)]
    pub to: Vec<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    pub host: S,
    pub port: Option<Spanned<u16>>,
    /// `starttls` (default), `tls` or `none`.
    pub tls: Option<S>,
    pub username: Option<S>,
    pub password_env: Option<S>,
    pub password_file: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub url: Option<S>,
    pub url_env: Option<S>,
    pub url_file: Option<S>,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub schedule: Option<S>,
    pub platforms: Option<Vec<S>>,
    pub build_timeout: Option<S>,
    /// How long a new digest must hold before it starts work (`2m`).
    pub settle: Option<S>,
    /// A person approves every deploy (unless an image or rule says).
    pub approval: Option<Spanned<RawApproval>>,
    /// When deploys may go out (unless an image or rule says).
    pub deploy_window: Option<Spanned<RawWindow>>,
}

/// `deploy_window: { days: [mon-fri], hours: "09:00-17:00", timezone: Europe/Berlin }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// Default: every day.
    #[serde(default)]
    pub days: Vec<S>,
    pub hours: S,
    /// IANA name; default UTC.
    pub timezone: Option<S>,
}

/// `approval: { required: true, expires: 24h, before: deploy }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApproval {
    /// Default true; `false` turns off an approval a rule or the defaults ask for.
    pub required: Option<bool>,
    /// How long a request waits before it expires as rejected (default 24h).
    pub expires: Option<S>,
    /// `deploy` (default) or `build`.
    pub before: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    pub host: S,
    #[serde(default)]
    pub trusted: bool,
    #[serde(default)]
    pub insecure: bool,
    pub auth: Option<RawRegistryAuth>,
    pub concurrency: Option<Spanned<u32>>,
    /// Requests per second towards this registry.
    pub rate_limit: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistryAuth {
    pub username: Option<S>,
    pub password_env: Option<S>,
    pub password_file: Option<S>,
    pub docker_config: Option<S>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceivers {
    pub distribution: Option<RawReceiver>,
    pub dockerhub: Option<RawReceiver>,
    pub harbor: Option<RawReceiver>,
    pub acr: Option<RawReceiver>,
    pub ghcr: Option<RawReceiver>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceiver {
    pub token_env: Option<S>,
    pub token_file: Option<S>,
    pub secret_env: Option<S>,
    pub secret_file: Option<S>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    #[serde(default)]
    pub tokens: Vec<RawApiToken>,
    #[serde(default)]
    pub public_read: bool,
    pub metrics_token_env: Option<S>,
    pub metrics_token_file: Option<S>,
    #[serde(default)]
    pub cors_origins: Vec<S>,
    /// Base URL CI jobs use to call back, e.g. `https://lineaged.example.com`.
    pub public_url: Option<S>,
    /// Interval of SSE keep-alive comments (default 15s).
    pub sse_keepalive: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiToken {
    pub name: S,
    pub role: S,
    pub token_env: Option<S>,
    pub token_file: Option<S>,
}

/// A CI backend. One flat shape for every kind; validation checks which
/// fields each kind needs, so a missing one is named precisely.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub kind: S,
    pub url: Option<S>,
    pub api_url: Option<S>,
    pub repository: Option<S>,
    pub project: Option<S>,
    pub organization: Option<S>,
    pub pipeline: Option<S>,
    pub username: Option<S>,
    pub token_env: Option<S>,
    pub token_file: Option<S>,
    pub secret_env: Option<S>,
    pub secret_file: Option<S>,
    pub concurrency: Option<Spanned<u32>>,
    pub timeout: Option<S>,
    pub build_timeout: Option<S>,
    /// Deploys through a webhook: `callback` (default; done when the
    /// receiver reports) or `sync` (done on a 2xx).
    pub ack: Option<S>,
    /// github_actions: `workflow_dispatch` (default) or
    /// `repository_dispatch`; gitlab: `trigger` (default) or `api`.
    pub mode: Option<S>,
    /// kubernetes: a kubeconfig file (its current context).
    pub kubeconfig: Option<S>,
    /// kubernetes / argocd: PEM CA certificate of the API server.
    pub ca_file: Option<S>,
    /// argocd / kubernetes: how long a deploy may take (default 10m).
    pub deploy_timeout: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImage {
    pub name: S,
    #[serde(default)]
    pub from: Vec<S>,
    pub schedule: Option<S>,
    pub platforms: Option<Vec<S>>,
    pub settle: Option<S>,
    pub build: Option<RawBuild>,
    pub deploy: Option<RawDeploy>,
    pub approval: Option<Spanned<RawApproval>>,
    pub deploy_window: Option<Spanned<RawWindow>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuild {
    pub backend: S,
    pub mode: Option<S>,
    pub repository: Option<S>,
    pub project: Option<S>,
    pub workflow: Option<S>,
    #[serde(rename = "ref")]
    pub git_ref: Option<S>,
    pub job: Option<S>,
    pub pipeline: Option<S>,
    pub branch: Option<S>,
    pub context: Option<S>,
    pub dockerfile: Option<S>,
    #[serde(default)]
    pub inputs: BTreeMap<String, S>,
    pub build_timeout: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeploy {
    pub backend: S,
    pub app: Option<S>,
    pub environment: Option<S>,
    #[serde(default)]
    pub inputs: BTreeMap<String, S>,
    /// How long a deploy may take before it fails (default 1h; 10m on
    /// argocd and kubernetes backends).
    pub timeout: Option<S>,
    pub app_namespace: Option<S>,
    pub project: Option<S>,
    pub source: Option<S>,
    pub repository_param: Option<S>,
    pub digest_param: Option<S>,
    pub namespace: Option<S>,
    pub workload: Option<S>,
    pub container: Option<S>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub trusted_registries_only: bool,
    /// Shorthand: every image's deploy needs a signature by this key.
    pub require_signature: Option<RawSignature>,
    /// `max_severity` (shorthand: every image's deploy), `command`, `timeout`.
    pub scan: Option<RawScan>,
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
    /// How long a missing signature is waited for before it refuses (CI
    /// pushes, then signs).
    pub signature_grace: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignature {
    pub public_key_file: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScan {
    /// Highest severity allowed to ship: none, low, medium, high, critical.
    pub max_severity: Option<S>,
    /// argv; `{ref}` becomes `repo@digest`. Prints Trivy or Grype JSON.
    pub command: Option<Vec<S>>,
    pub timeout: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub images: Vec<S>,
    pub mode: Option<S>,
    pub apply_to: Option<Vec<S>>,
    pub signatures: Option<RawSignatures>,
    pub scan: Option<RawRuleScan>,
    pub approval: Option<Spanned<RawApproval>>,
    pub deploy_window: Option<Spanned<RawWindow>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignatures {
    pub required: Option<Spanned<usize>>,
    pub authorities: Vec<Spanned<RawAuthority>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthority {
    pub cosign: Option<RawCosign>,
    pub notation: Option<RawNotation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCosign {
    pub public_key_file: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotation {
    pub trust_store: S,
    #[serde(default)]
    pub trusted_identities: Vec<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleScan {
    pub max_severity: S,
    #[serde(default)]
    pub ignore_unfixed: bool,
    /// Where results come from: `command` (default).
    pub source: Option<S>,
}
