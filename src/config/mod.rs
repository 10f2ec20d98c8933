//! Configuration: YAML files → one validated, immutable [`Config`].
//!
//! `load` reads a file or a directory of `*.yaml`/`*.yml` files, parses each
//! with serde-saphyr under resource budgets, merges them and validates the
//! whole once, reporting every problem as `file:line:col: message`.

mod load;
mod raw;
pub mod schema;
mod secret;
mod text;
mod validate;
mod validate_images;
mod validate_parts;
mod validate_policy;
pub mod window;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::registry::ImageRef;

pub use load::{load, load_str};
pub use secret::{Secret, SecretSource};
pub use text::{format_duration, parse_duration};
pub use window::DeployWindow;

/// The default polling schedule: every five minutes (cron with seconds).
pub const DEFAULT_SCHEDULE: &str = "0 */5 * * * *";
/// The embedded default store.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://lineaged.db";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);

/// What every trigger carries, whatever the CI: GitHub inputs and
/// `client_payload` keys as written here, environment-style variables as
/// `LINEAGED_` + upper case. `build.inputs` may not use these names.
pub const LINEAGED_FIELDS: [&str; 6] = [
    "image",
    "parents",
    "job_id",
    "rollout_id",
    "callback_url",
    "idempotency_key",
];
/// `owner/name`: two non-empty parts, nothing else.
pub fn is_owner_name(s: &str) -> bool {
    matches!(s.split_once('/'), Some((o, n)) if !o.is_empty() && !n.is_empty() && !n.contains('/'))
}

/// GitHub's cap on `workflow_dispatch` inputs.
pub const GITHUB_MAX_INPUTS: usize = 25;
/// GitHub's cap on top-level `client_payload` properties.
pub const GITHUB_MAX_PAYLOAD_KEYS: usize = 10;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The files it was read from, in merge order.
    pub sources: Vec<PathBuf>,
    pub database: DatabaseConfig,
    pub listen: SocketAddr,
    pub defaults: Defaults,
    pub registries: Vec<RegistryConfig>,
    pub receivers: Receivers,
    pub api: ApiConfig,
    pub backends: BTreeMap<String, Backend>,
    /// Declared images in declaration order, then implicit external parents.
    pub images: Vec<Image>,
    pub policy: Policy,
    /// Where people hear about rollouts (issue 15).
    pub notifications: Vec<Sink>,
}

/// A notification sink.
#[derive(Debug, Clone)]
pub struct Sink {
    pub name: String,
    pub kind: SinkKind,
    /// slack, teams, webhook: where to POST (email: unused, empty).
    pub url: Secret,
    /// webhook: signs with Standard Webhooks headers.
    pub secret: Option<Secret>,
    /// email: the SMTP server and the envelope.
    pub email: Option<Email>,
    pub on: Vec<NotifyOn>,
    /// Globs; empty: every image.
    pub images: Vec<String>,
}

/// An email sink: `smtp: { host, port, tls, username, password_env }`,
/// `from`, `to`.
#[derive(Debug, Clone)]
pub struct Email {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: String,
    pub to: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS on the submission port (default, 587).
    Starttls,
    /// TLS from the first byte (465).
    Tls,
    /// Plain text: a relay on localhost or inside the cluster only.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// A Slack incoming webhook (`{"text", "blocks"}`).
    Slack,
    /// A Teams workflow webhook (a message with an Adaptive Card).
    Teams,
    /// JSON signed per Standard Webhooks.
    Webhook,
    /// Mail over SMTP.
    Email,
}

impl SinkKind {
    pub const ALL: [SinkKind; 4] = [
        SinkKind::Slack,
        SinkKind::Teams,
        SinkKind::Webhook,
        SinkKind::Email,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Slack => "slack",
            SinkKind::Teams => "teams",
            SinkKind::Webhook => "webhook",
            SinkKind::Email => "email",
        }
    }
}

/// What a sink hears about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    RolloutStarted,
    RolloutFinished,
    RolloutFailed,
    ImageBlocked,
    GateRefused,
    ApprovalPending,
    DeployFailed,
    RegistryDown,
}

impl NotifyOn {
    pub const ALL: [NotifyOn; 8] = [
        NotifyOn::RolloutStarted,
        NotifyOn::RolloutFinished,
        NotifyOn::RolloutFailed,
        NotifyOn::ImageBlocked,
        NotifyOn::GateRefused,
        NotifyOn::ApprovalPending,
        NotifyOn::DeployFailed,
        NotifyOn::RegistryDown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::RolloutStarted => "rollout_started",
            NotifyOn::RolloutFinished => "rollout_finished",
            NotifyOn::RolloutFailed => "rollout_failed",
            NotifyOn::ImageBlocked => "image_blocked",
            NotifyOn::GateRefused => "gate_refused",
            NotifyOn::ApprovalPending => "approval_pending",
            NotifyOn::DeployFailed => "deploy_failed",
            NotifyOn::RegistryDown => "registry_down",
        }
    }

    pub fn parse(s: &str) -> Option<NotifyOn> {
        NotifyOn::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl Config {
    pub fn managed_count(&self) -> usize {
        self.images.iter().filter(|i| i.is_managed()).count()
    }

    /// Problems that do not stop lineaged but will bite: CI told to call
    /// back an address it cannot reach.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.api.public_url.is_none()
            && self.listen.ip().is_unspecified()
            && self.managed_count() > 0
        {
            out.push(format!(
                "api.public_url is not set and lineaged listens on {}: CI would be told to call \
                 back http://{}/…, which no other machine can reach; set api.public_url \
                 (e.g. https://lineaged.example.com)",
                self.listen, self.listen
            ));
        }
        out
    }

    /// The registry settings for a host, if listed.
    pub fn registry(&self, host: &str) -> Option<&RegistryConfig> {
        self.registries.iter().find(|r| r.host == host)
    }
}

/// Where something was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

#[derive(Clone)]
pub struct DatabaseConfig {
    /// May carry a password, so it is a secret: never printed.
    pub url: Secret,
    pub max_connections: u32,
}

impl DatabaseConfig {
    pub fn is_postgres(&self) -> bool {
        let u = self.url.expose();
        u.starts_with("postgres://") || u.starts_with("postgresql://")
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.url.expose().split("://").next().unwrap_or("");
        f.debug_struct("DatabaseConfig")
            .field("url", &format_args!("{scheme}://***"))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct Defaults {
    pub schedule: String,
    pub platforms: Vec<Platform>,
    pub build_timeout: Duration,
    /// How long a new digest must hold before it starts work.
    pub settle: Duration,
    /// `defaults.approval`: None when not set, Some(None) for `required: false`.
    pub approval: Option<Option<Approval>>,
    pub deploy_window: Option<DeployWindow>,
}

/// A person's yes before an image moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Approval {
    /// A pending request expires (as rejected) after this.
    #[serde(serialize_with = "serialize_secs")]
    pub expires: Duration,
    pub before: ApprovalStage,
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// What waits for the approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStage {
    /// The deploy of the built (and verified) digest.
    Deploy,
    /// The rebuild itself (children wait too).
    Build,
}

impl ApprovalStage {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStage::Deploy => "deploy",
            ApprovalStage::Build => "build",
        }
    }

    pub fn parse(s: &str) -> Option<ApprovalStage> {
        match s {
            "deploy" => Some(ApprovalStage::Deploy),
            "build" => Some(ApprovalStage::Build),
            _ => None,
        }
    }
}

/// `os/arch[/variant]`, e.g. `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]` (lowercase letters, digits, `_`).
    pub fn parse(v: &str) -> Option<Platform> {
        let parts: Vec<&str> = v.split('/').collect();
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return None;
        }
        Some(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|s| s.to_string()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub host: String,
    pub trusted: bool,
    /// Plain HTTP. Only ever for hosts listed with `insecure: true`.
    pub insecure: bool,
    pub auth: Option<RegistryAuth>,
    pub concurrency: u32,
    /// Requests per second, if limited.
    pub rate_limit: Option<f64>,
}

#[derive(Debug, Clone)]
pub enum RegistryAuth {
    Basic { username: String, password: Secret },
    DockerConfig { path: PathBuf },
}

#[derive(Debug, Clone, Default)]
pub struct Receivers {
    pub distribution: Option<Secret>,
    pub dockerhub: Option<Secret>,
    pub harbor: Option<Secret>,
    pub acr: Option<Secret>,
    /// GitHub's webhook secret, for `X-Hub-Signature-256`.
    pub ghcr: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub tokens: Vec<ApiToken>,
    pub public_read: bool,
    pub metrics_token: Option<Secret>,
    pub cors_origins: Vec<String>,
    pub public_url: Option<String>,
    /// Interval of SSE keep-alive comments.
    pub sse_keepalive: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            tokens: Vec::new(),
            public_read: false,
            metrics_token: None,
            cors_origins: Vec::new(),
            public_url: None,
            sse_keepalive: std::time::Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Write,
}

#[derive(Debug, Clone)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    pub token: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Webhook,
    GithubActions,
    Gitlab,
    Jenkins,
    AzurePipelines,
    Buildkite,
    Tekton,
    /// Argo CD: set the image on an application through its API and sync.
    Argocd,
    /// Flux: call a notification-controller Receiver (`generic-hmac`).
    Flux,
    /// Kubernetes: patch a workload's container image and watch it roll out.
    Kubernetes,
}

impl BackendKind {
    pub const ALL: [(&'static str, BackendKind); 10] = [
        ("webhook", BackendKind::Webhook),
        ("github_actions", BackendKind::GithubActions),
        ("gitlab", BackendKind::Gitlab),
        ("jenkins", BackendKind::Jenkins),
        ("azure_pipelines", BackendKind::AzurePipelines),
        ("buildkite", BackendKind::Buildkite),
        ("tekton", BackendKind::Tekton),
        ("argocd", BackendKind::Argocd),
        ("flux", BackendKind::Flux),
        ("kubernetes", BackendKind::Kubernetes),
    ];

    /// It can run a rebuild (a CI system or the generic webhook).
    pub fn builds(self) -> bool {
        !self.deploys_only()
    }

    /// It can only deploy (nothing there builds images).
    pub fn deploys_only(self) -> bool {
        matches!(
            self,
            BackendKind::Argocd | BackendKind::Flux | BackendKind::Kubernetes
        )
    }

    /// It can run a deploy.
    pub fn deploys(self) -> bool {
        self == BackendKind::Webhook || self.deploys_only()
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(s, _)| *s)
            .unwrap_or("webhook")
    }
}

/// A CI backend: where rebuild and deploy triggers go.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub kind: BackendKind,
    pub url: Option<String>,
    pub api_url: Option<String>,
    pub repository: Option<String>,
    pub project: Option<String>,
    pub organization: Option<String>,
    pub pipeline: Option<String>,
    pub username: Option<String>,
    pub token: Option<Secret>,
    /// HMAC key for signing outgoing webhooks (raw or `whsec_` base64).
    pub secret: Option<Secret>,
    pub concurrency: u32,
    pub timeout: Duration,
    pub build_timeout: Option<Duration>,
    /// How a deploy through this backend is known to be done.
    pub ack: Ack,
    /// Which API of the kind to call (an image's `build.mode` overrides).
    pub mode: Option<Mode>,
    /// kubernetes: a kubeconfig file to read the API server and
    /// credentials from (its current context).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// kubernetes / argocd: a PEM file of the CA that signed the server's
    /// certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// argocd / kubernetes: the deploy timeout of images deployed here
    /// (an image's `deploy.timeout` overrides).
    pub deploy_timeout: Option<Duration>,
}

/// Which of a CI system's trigger APIs to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// GitHub: `POST …/actions/workflows/{workflow}/dispatches` (default).
    WorkflowDispatch,
    /// GitHub: `POST /repos/{owner}/{repo}/dispatches`.
    RepositoryDispatch,
    /// GitLab: `POST …/trigger/pipeline` with a trigger token (default).
    Trigger,
    /// GitLab: `POST …/pipeline` with an access token.
    Api,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::WorkflowDispatch => "workflow_dispatch",
            Mode::RepositoryDispatch => "repository_dispatch",
            Mode::Trigger => "trigger",
            Mode::Api => "api",
        }
    }

    /// The modes a kind offers, its default first; empty for kinds with one API.
    pub fn of(kind: BackendKind) -> &'static [Mode] {
        match kind {
            BackendKind::GithubActions => &[Mode::WorkflowDispatch, Mode::RepositoryDispatch],
            BackendKind::Gitlab => &[Mode::Trigger, Mode::Api],
            _ => &[],
        }
    }

    /// Parses a mode valid for `kind`.
    pub fn parse(kind: BackendKind, s: &str) -> Option<Mode> {
        Mode::of(kind).iter().copied().find(|m| m.as_str() == s)
    }
}

/// How a deploy delivered to a webhook backend is known to be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ack {
    /// The receiver calls back (the same contract as builds).
    #[default]
    Callback,
    /// A 2xx answer means deployed.
    Sync,
}

/// A tracked image. Managed when it has a `build`.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: ImageRef,
    pub parents: Vec<ImageRef>,
    pub schedule: String,
    /// Empty: track the tag's top-level (index) digest.
    pub platforms: Vec<Platform>,
    /// A change opens work only after the new digest held this long.
    pub settle: Duration,
    pub build: Option<Build>,
    pub deploy: Option<Deploy>,
    /// Resolved: the image's own, else the first matching rule's, else the
    /// defaults'. Only where its stage exists (a build, a deploy).
    pub approval: Option<Approval>,
    /// Resolved like `approval`; only on images with a deploy.
    pub deploy_window: Option<DeployWindow>,
    /// Declared only as someone's parent, not in `images:`.
    pub implicit: bool,
    pub origin: Option<Origin>,
}

impl Image {
    pub fn is_managed(&self) -> bool {
        self.build.is_some()
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Build {
    pub backend: String,
    /// Overrides the backend's `mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// GitHub `owner/name`; overrides the backend's `repository`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// GitLab project (id or path) or Azure DevOps project; overrides the backend's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    #[serde(skip)]
    pub build_timeout: Duration,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Deploy {
    pub backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// argocd: the application's namespace (`appNamespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_namespace: Option<String>,
    /// argocd: the application's project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// argocd: how the image is set: `kustomize` images or `helm`
    /// parameters (default: what the application's source uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// argocd helm: the parameter names for the repository and the digest
    /// (default `image.repository` and `image.digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_param: Option<String>,
    /// kubernetes: the workload's namespace (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// kubernetes: `deployment/NAME`, `statefulset/NAME` or `daemonset/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// kubernetes: the container to set (default: the only one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(skip)]
    pub timeout: Duration,
}

/// A vulnerability severity, ordered. Scanners' `UNKNOWN` and Grype's
/// `Negligible` count as `Low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    None,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::None,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::None => "none",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Config spelling (`none` … `critical`), any case.
    pub fn parse(s: &str) -> Option<Severity> {
        let s = s.to_ascii_lowercase();
        Severity::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// The supply-chain policy: which gates an image passes before it is
/// deployed (`apply_to: deploy`) or used as a parent (`cascade`).
#[derive(Debug, Clone)]
pub struct Policy {
    pub trusted_registries_only: bool,
    /// Rules in order (first match wins); the shorthands
    /// `require_signature` and `scan.max_severity` come last, for `**`.
    pub rules: Vec<PolicyRule>,
    pub scan: ScanSettings,
    /// A digest with no signature at all is checked again for this long
    /// after its verification began (CI pushes first, signs after).
    pub signature_grace: Duration,
    /// SHA-256 over everything that decides a verdict (rules, key bytes,
    /// scan settings): cached verdicts are keyed by it.
    pub hash: String,
}

/// Enforce (refuse) or warn (record, let through).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GateMode {
    Enforce,
    Warn,
}

/// Where a rule's verdict counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplyTo {
    /// Before the image is deployed.
    pub deploy: bool,
    /// Before children build on it.
    pub cascade: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyRule {
    /// Globs over normalised references: `*` within a path segment, `**`
    /// across segments.
    pub images: Vec<String>,
    pub mode: GateMode,
    pub apply_to: ApplyTo,
    pub signatures: Option<SignatureRule>,
    pub scan: Option<ScanRule>,
    /// The rule's `approval` (Some(None): `required: false`). Not part of
    /// the policy hash: it changes no verdict.
    #[serde(skip)]
    pub approval: Option<Option<Approval>>,
    #[serde(skip)]
    pub deploy_window: Option<DeployWindow>,
    /// `file:line:col` of the rule (or of the shorthand).
    #[serde(skip)]
    pub origin: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SignatureRule {
    /// How many of the authorities must verify.
    pub required: usize,
    pub authorities: Vec<Authority>,
}

/// Who may sign.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Authority {
    /// A cosign public key (PEM, ECDSA P-256), read at load.
    Cosign { key_file: PathBuf, key_pem: String },
    /// A Notary Project trust store and identities.
    Notation {
        trust_store: PathBuf,
        trusted_identities: Vec<String>,
        /// SHA-256 over the trust store's certificates at load: in the
        /// policy hash, so a changed store invalidates cached verdicts.
        certs_sha256: String,
    },
}

impl Authority {
    pub fn name(&self) -> String {
        match self {
            Authority::Cosign { key_file, .. } => format!("cosign key {}", key_file.display()),
            Authority::Notation { trust_store, .. } => {
                format!("notation trust store {}", trust_store.display())
            }
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ScanRule {
    /// The highest severity allowed through.
    pub max_severity: Severity,
    /// Findings with no fixed version do not count.
    pub ignore_unfixed: bool,
    pub source: ScanSource,
}

/// Where scan results come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanSource {
    /// `policy.scan.command`, run per digest.
    Command,
    /// Harbor's `SCANNING_COMPLETED` events on `receivers.harbor`.
    Harbor,
    /// cosign vulnerability attestations, verified with the rule's cosign keys.
    Attestation,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ScanSettings {
    /// argv with `{ref}` for `repo@digest`; prints Trivy or Grype JSON.
    pub command: Option<Vec<String>>,
    pub timeout: Duration,
}

impl Default for ScanSettings {
    fn default() -> ScanSettings {
        ScanSettings {
            command: None,
            timeout: Duration::from_secs(600),
        }
    }
}

/// The default `policy.signature_grace`.
pub const DEFAULT_SIGNATURE_GRACE: Duration = Duration::from_secs(60);

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            trusted_registries_only: false,
            rules: Vec::new(),
            scan: ScanSettings::default(),
            signature_grace: DEFAULT_SIGNATURE_GRACE,
            hash: String::new(),
        }
    }
}

impl Policy {
    /// The first rule with gates whose globs match `image` (normalised),
    /// if any. A rule that only asks for approval gates nothing.
    pub fn rule_for(&self, image: &str) -> Option<&PolicyRule> {
        self.rules.iter().find(|r| {
            (r.signatures.is_some() || r.scan.is_some())
                && r.images.iter().any(|g| glob_match(g, image))
        })
    }

    /// The `deploy_window` of the first rule that sets one and matches `image`.
    pub fn window_for(&self, image: &str) -> Option<DeployWindow> {
        self.rules
            .iter()
            .filter(|r| r.deploy_window.is_some())
            .find(|r| r.images.iter().any(|g| glob_match(g, image)))
            .and_then(|r| r.deploy_window.clone())
    }

    /// The `approval` of the first rule that sets one and matches `image`.
    pub fn approval_for(&self, image: &str) -> Option<Option<Approval>> {
        self.rules
            .iter()
            .filter(|r| r.approval.is_some())
            .find(|r| r.images.iter().any(|g| glob_match(g, image)))
            .and_then(|r| r.approval)
    }
}

/// Matches a normalised reference against a glob: `*` is any run of
/// characters except `/`, `**` any run including `/`, `?` one character.
pub fn glob_match(glob: &str, text: &str) -> bool {
    fn go(g: &[u8], t: &[u8]) -> bool {
        match g.first() {
            None => t.is_empty(),
            Some(b'*') if g.get(1) == Some(&b'*') => {
                let rest = &g[2..];
                (0..=t.len()).any(|i| go(rest, &t[i..]))
            }
            Some(b'*') => {
                let rest = &g[1..];
                for i in 0..=t.len() {
                    if go(rest, &t[i..]) {
                        return true;
                    }
                    if t.get(i) == Some(&b'/') {
                        break;
                    }
                }
                false
            }
            Some(b'?') => !t.is_empty() && t[0] != b'/' && go(&g[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&g[1..], &t[1..]),
        }
    }
    go(glob.as_bytes(), text.as_bytes())
}

/// One problem found in the configuration, pointing at its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: directory has no *.yaml or *.yml files", path.display())]
    NoYamlFiles { path: PathBuf },
    #[error("{}", render_diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// Every diagnostic, one per problem (a single one for I/O problems).
    pub fn diagnostics(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(d) => d.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

fn render_diagnostics(d: &[Diagnostic]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod glob_tests {
    use super::glob_match;

    #[test]
    fn globs_over_normalised_references() {
        let m = |g: &str, t: &str| glob_match(g, t);
        assert!(m("**", "docker.io/library/python:3.12"));
        assert!(m(
            "registry.example.com/apps/**",
            "registry.example.com/apps/api:1"
        ));
        assert!(m(
            "registry.example.com/apps/**",
            "registry.example.com/apps/team/api:1"
        ));
        assert!(!m(
            "registry.example.com/apps/*",
            "registry.example.com/apps/team/api:1"
        ));
        assert!(m(
            "registry.example.com/apps/*",
            "registry.example.com/apps/api:1"
        ));
        assert!(m(
            "docker.io/library/python:3.1?",
            "docker.io/library/python:3.12"
        ));
        assert!(!m(
            "docker.io/library/python:*",
            "docker.io/library/python/x:1"
        ));
        assert!(!m(
            "registry.example.com/apps/**",
            "registry.example.com/app:1"
        ));
        assert!(m("*/apps/**", "127.0.0.1:5000/apps/x:1"));
    }
}
