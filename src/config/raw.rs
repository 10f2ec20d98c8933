//! The YAML schema as written by users, before validation. Every field a
//! validation error can point at is `Spanned`, so the error names its
//! `file:line:col`. Unknown keys are rejected by serde.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

pub type S = Spanned<String>;

/// One lineaged configuration file. In a directory of files every section is
/// optional; lists and maps merge, single-valued sections may appear in one file only.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// Where lineaged keeps its state: SQLite (default `sqlite://lineaged.db`) or PostgreSQL.
    #[schemars(with = "Option<RawDatabase>")]
    pub database: Option<Spanned<RawDatabase>>,
    /// Address of the HTTP API as `ip:port` (default `127.0.0.1:8080`).
    #[schemars(with = "Option<String>")]
    pub listen: Option<S>,
    /// Settings every image inherits unless it sets its own: schedule, platforms,
    /// build timeout, settle window, approval and deploy window.
    #[schemars(with = "Option<RawDefaults>")]
    pub defaults: Option<Spanned<RawDefaults>>,
    /// Registries lineaged queries: credentials, trust, concurrency and rate limit.
    #[serde(default)]
    pub registries: Vec<RawRegistry>,
    /// Receivers of registry push events; each enables
    /// `POST /api/v1/hooks/registry/<source>`.
    #[schemars(with = "Option<RawReceivers>")]
    pub receivers: Option<Spanned<RawReceivers>>,
    /// The HTTP API: tokens, anonymous read access, `/metrics` protection, CORS, public URL.
    #[schemars(with = "Option<RawApi>")]
    pub api: Option<Spanned<RawApi>>,
    /// CI and deploy backends by name; images name them in `build.backend` and `deploy.backend`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawBackend>")]
    pub backends: BTreeMap<String, Spanned<RawBackend>>,
    /// Images to watch; an image with `build` is rebuilt when a parent in `from` changes.
    #[serde(default)]
    pub images: Vec<RawImage>,
    /// Supply-chain gates (trusted registries, signatures, scans) checked before an
    /// image is deployed or its rebuilt digest is used as a parent.
    #[schemars(with = "Option<RawPolicy>")]
    pub policy: Option<Spanned<RawPolicy>>,
    /// Notification sinks (Slack, Teams, webhook, email) and the events each hears.
    #[serde(default)]
    #[schemars(with = "Vec<RawNotification>")]
    pub notifications: Vec<Spanned<RawNotification>>,
}

/// A notification sink: where messages about rollouts, approvals and failures go.
/// `kind` is `slack`, `teams`, `webhook` or `email`; Slack and Teams URLs are
/// credentials, given as `url_env`/`url_file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNotification {
    /// Name of the sink, unique; default `<kind>-N` (its position in the list), e.g. `slack-1`.
    #[schemars(with = "Option<String>")]
    pub name: Option<S>,
    /// Sink type (required): `slack`, `teams`, `webhook` or `email`.
    #[schemars(with = "String", extend("enum" = ["slack", "teams", "webhook", "email"]))]
    pub kind: S,
    /// URL a `webhook` sink posts to, written inline, e.g. `https://hooks.example.com/lineaged`.
    /// Slack and Teams take only `url_env`/`url_file`; email takes `smtp` instead.
    #[schemars(with = "Option<String>")]
    pub url: Option<S>,
    /// Name of an environment variable holding the sink's `http(s)://` URL.
    /// Set one of `url`, `url_env`, `url_file`, e.g. `SLACK_WEBHOOK_URL`.
    #[schemars(with = "Option<String>")]
    pub url_env: Option<S>,
    /// Path of a file holding the sink's `http(s)://` URL (trailing newline removed).
    /// Alternative to `url_env`.
    #[schemars(with = "Option<String>")]
    pub url_file: Option<S>,
    /// Name of an environment variable holding the Standard Webhooks signing secret.
    /// For `webhook` sinks only; optional.
    #[schemars(with = "Option<String>")]
    pub secret_env: Option<S>,
    /// Path of a file holding the Standard Webhooks signing secret.
    /// For `webhook` sinks only; optional.
    #[schemars(with = "Option<String>")]
    pub secret_file: Option<S>,
    /// Events this sink hears (required): `rollout_started`, `rollout_finished`,
    /// `rollout_failed`, `image_blocked`, `gate_refused`, `approval_pending`,
    /// `deploy_failed`, `registry_down`.
    #[schemars(with = "Vec<String>")]
    pub on: Vec<S>,
    /// Only events about these images: globs over normalised references, e.g.
    /// `registry.example.com/shop/**`. Default: every image.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub images: Vec<S>,
    /// SMTP server an `email` sink sends through; required for `kind: email`.
    #[schemars(with = "Option<RawSmtp>")]
    pub smtp: Option<Spanned<RawSmtp>>,
    /// Sender of an `email` sink, `Name <addr>` or `addr`, e.g.
    /// `lineaged <lineaged@example.com>`; required for `kind: email`.
    #[schemars(with = "Option<String>")]
    pub from: Option<S>,
    /// Recipients' addresses of an `email` sink (at least one), e.g. `[oncall@example.com]`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub to: Vec<S>,
}

/// SMTP server of an `email` sink, e.g.
/// `{ host: smtp.example.com, port: 587, username: lineaged, password_env: SMTP_PASSWORD }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    /// Host name of the SMTP server (required), e.g. `smtp.example.com`.
    #[schemars(with = "String")]
    pub host: S,
    /// SMTP port; default `587`, or `465` with `tls: tls` and `25` with `tls: none`.
    #[schemars(with = "Option<u16>")]
    pub port: Option<Spanned<u16>>,
    /// Transport security: `starttls` (default), `tls` or `none` (a relay inside
    /// the cluster; never with a password).
    #[schemars(with = "Option<String>")]
    pub tls: Option<S>,
    /// SMTP user name; give it together with `password_env` or `password_file`.
    #[schemars(with = "Option<String>")]
    pub username: Option<S>,
    /// Name of an environment variable holding the SMTP password; needs `username`.
    #[schemars(with = "Option<String>")]
    pub password_env: Option<S>,
    /// Path of a file holding the SMTP password; needs `username`.
    #[schemars(with = "Option<String>")]
    pub password_file: Option<S>,
}

/// Where lineaged keeps its state: embedded SQLite for a single node, PostgreSQL
/// for several replicas.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// Database URL: `sqlite://FILE` (default `sqlite://lineaged.db`) or `postgres://…`.
    /// Set one of `url`, `url_env`, `url_file`.
    #[schemars(with = "Option<String>")]
    pub url: Option<S>,
    /// Name of an environment variable holding the database URL (use it when the
    /// URL carries a password).
    #[schemars(with = "Option<String>")]
    pub url_env: Option<S>,
    /// Path of a file holding the database URL (trailing newline removed).
    #[schemars(with = "Option<String>")]
    pub url_file: Option<S>,
    /// Size of the connection pool (default `10`).
    pub max_connections: Option<u32>,
}

/// Defaults for every image; an image's own setting wins (and, for approval and
/// deploy window, a matching policy rule too).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Polling schedule, cron with seconds (6–7 fields), default `0 */5 * * * *`.
    /// A 5-field crontab line such as `*/5 * * * *` runs at second 0.
    #[schemars(with = "Option<String>")]
    pub schedule: Option<S>,
    /// Platforms tracked inside multi-arch indexes as `os/arch[/variant]`, e.g.
    /// `[linux/amd64, linux/arm64]`. Default `[]`: track the index digest.
    #[schemars(with = "Option<Vec<String>>")]
    pub platforms: Option<Vec<S>>,
    /// A build that reports nothing for this long fails (default `2h`), e.g. `90m`.
    /// A backend's or image's `build_timeout` overrides it.
    #[schemars(with = "Option<String>")]
    pub build_timeout: Option<S>,
    /// How long a new digest must hold before it starts work (default `0s`), e.g. `2m`.
    /// Changes within the window coalesce into one rollout.
    #[schemars(with = "Option<String>")]
    pub settle: Option<S>,
    /// A person approves every deploy (or build), unless an image or policy rule says
    /// otherwise, e.g. `{ required: true, expires: 24h }`.
    #[schemars(with = "Option<RawApproval>")]
    pub approval: Option<Spanned<RawApproval>>,
    /// When deploys may go out, unless an image or policy rule says otherwise, e.g.
    /// `{ days: [mon-fri], hours: "09:00-17:00", timezone: Europe/Berlin }`.
    #[schemars(with = "Option<RawWindow>")]
    pub deploy_window: Option<Spanned<RawWindow>>,
}

/// Times when deploys may go out; a deploy due outside waits in `waiting_for_window`
/// (builds are never held back). E.g.
/// `deploy_window: { days: [mon-fri], hours: "09:00-17:00", timezone: Europe/Berlin }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// Days the window is open: names and ranges, e.g. `[mon-fri]`, `[sat, sun]`,
    /// `[fri-mon]`. Default: every day.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub days: Vec<S>,
    /// Open hours as `HH:MM-HH:MM` (required), e.g. `"09:00-17:00"`; `"22:00-06:00"`
    /// runs past midnight (the day listed is the evening's).
    #[schemars(with = "String")]
    pub hours: S,
    /// IANA time zone of `days` and `hours`, e.g. `Europe/Berlin`; default `UTC`.
    #[schemars(with = "Option<String>")]
    pub timezone: Option<S>,
}

/// Approval by a person before an image is deployed (or built), e.g.
/// `approval: { required: true, expires: 24h, before: deploy }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApproval {
    /// Whether approval is required (default `true`); `false` turns off an approval
    /// a rule or the defaults ask for.
    pub required: Option<bool>,
    /// How long a request waits before it expires as rejected (default `24h`), e.g. `4h`.
    #[schemars(with = "Option<String>")]
    pub expires: Option<S>,
    /// Stage to ask before: `deploy` (default; about the built digest, after the gates)
    /// or `build` (before the rebuild).
    #[schemars(with = "Option<String>")]
    pub before: Option<S>,
}

/// A container registry: its credentials, whether it is trusted, and how hard
/// lineaged may query it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    /// Registry host with an optional port, no scheme or path (required), e.g.
    /// `registry.example.com` or `127.0.0.1:5000`; each host is listed once.
    #[schemars(with = "String")]
    pub host: S,
    /// Images from this registry may be deployed under `policy.trusted_registries_only`
    /// (default `false`).
    #[serde(default)]
    pub trusted: bool,
    /// Talk plain HTTP to this registry (default `false`).
    #[serde(default)]
    pub insecure: bool,
    /// Credentials: `username` with `password_env`/`password_file`, or `docker_config`.
    pub auth: Option<RawRegistryAuth>,
    /// Maximum parallel requests to this registry, at least `1` (default `4`).
    #[schemars(with = "Option<u32>")]
    pub concurrency: Option<Spanned<u32>>,
    /// Requests per second towards this registry, a positive number, e.g. `5` or `0.5`.
    #[schemars(with = "Option<f64>")]
    pub rate_limit: Option<Spanned<f64>>,
}

/// Registry credentials: a user name with a password secret, or a Docker
/// `config.json` (not both).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRegistryAuth {
    /// User name for basic credentials (also used for the token flow); needs
    /// `password_env` or `password_file`.
    #[schemars(with = "Option<String>")]
    pub username: Option<S>,
    /// Name of an environment variable holding the registry password.
    #[schemars(with = "Option<String>")]
    pub password_env: Option<S>,
    /// Path of a file holding the registry password (trailing newline removed).
    #[schemars(with = "Option<String>")]
    pub password_file: Option<S>,
    /// Path of a Docker `config.json` to read credentials from (`~/` expands), e.g.
    /// `~/.docker/config.json`.
    #[schemars(with = "Option<String>")]
    pub docker_config: Option<S>,
}

/// Receivers of registry push events: each enables
/// `POST /api/v1/hooks/registry/<source>`; a push triggers an immediate re-check.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawReceivers {
    /// CNCF distribution registry (`docker-registry`) notifications; takes
    /// `token_env`/`token_file` (expects `Authorization: Bearer <token>`).
    pub distribution: Option<RawReceiver>,
    /// Docker Hub push events; takes `token_env`/`token_file`
    /// (expects `Authorization: Bearer <token>`).
    pub dockerhub: Option<RawReceiver>,
    /// Harbor events; takes `token_env`/`token_file` (expects `Authorization: Bearer <token>`).
    /// Required by scan rules with `source: harbor`.
    pub harbor: Option<RawReceiver>,
    /// Azure Container Registry push events; takes `token_env`/`token_file`
    /// (expects `Authorization: Bearer <token>`).
    pub acr: Option<RawReceiver>,
    /// GitHub Container Registry push events; takes `secret_env`/`secret_file`
    /// (verifies GitHub's `X-Hub-Signature-256`).
    pub ghcr: Option<RawReceiver>,
}

/// Credentials of one receiver: a bearer token (`token_*`) for `distribution`,
/// `dockerhub`, `harbor` and `acr`, or an HMAC secret (`secret_*`) for `ghcr`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawReceiver {
    /// Name of an environment variable holding the bearer token senders must present;
    /// not for `ghcr`.
    #[schemars(with = "Option<String>")]
    pub token_env: Option<S>,
    /// Path of a file holding the bearer token senders must present; not for `ghcr`.
    #[schemars(with = "Option<String>")]
    pub token_file: Option<S>,
    /// Name of an environment variable holding the secret that verifies
    /// `X-Hub-Signature-256`; `ghcr` only.
    #[schemars(with = "Option<String>")]
    pub secret_env: Option<S>,
    /// Path of a file holding the secret that verifies `X-Hub-Signature-256`; `ghcr` only.
    #[schemars(with = "Option<String>")]
    pub secret_file: Option<S>,
}

/// The HTTP API: tokens, anonymous read access, `/metrics` protection, CORS and
/// the public URL.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// API tokens, each `{name, role: read|write, token_env | token_file}`; names unique.
    /// Clients send `Authorization: Bearer <token>`.
    #[serde(default)]
    pub tokens: Vec<RawApiToken>,
    /// Serve read endpoints without a token (default `false`).
    #[serde(default)]
    pub public_read: bool,
    /// Name of an environment variable holding the bearer token that protects
    /// `/metrics`; without one `/metrics` is open.
    #[schemars(with = "Option<String>")]
    pub metrics_token_env: Option<S>,
    /// Path of a file holding the bearer token that protects `/metrics`; without one
    /// `/metrics` is open.
    #[schemars(with = "Option<String>")]
    pub metrics_token_file: Option<S>,
    /// Origins allowed for browser dashboards: `*` or `https://host[:port]` each, e.g.
    /// `https://dash.example.com`. Default `[]`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub cors_origins: Vec<S>,
    /// Base URL CI jobs use to call back, e.g. `https://lineaged.example.com`
    /// (default: `http://` + `listen`).
    #[schemars(with = "Option<String>")]
    pub public_url: Option<S>,
    /// Interval of keep-alive comments on `/api/v1/events` (default `15s`, at least `1s`).
    #[schemars(with = "Option<String>")]
    pub sse_keepalive: Option<S>,
}

/// An API token: its name, its role, and where its secret value is read from.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApiToken {
    /// Name of the token, unique (required); kept as `decided_by` on approvals.
    #[schemars(with = "String")]
    pub name: S,
    /// Role of the token (required): `read` or `write`.
    #[schemars(with = "String", extend("enum" = ["read", "write"]))]
    pub role: S,
    /// Name of an environment variable holding the token; set this or `token_file`.
    #[schemars(with = "Option<String>")]
    pub token_env: Option<S>,
    /// Path of a file holding the token (trailing newline removed); set this or `token_env`.
    #[schemars(with = "Option<String>")]
    pub token_file: Option<S>,
}

/// A CI or deploy backend: where rebuilds (and deploys) are triggered. One flat
/// shape for every kind; `kind` decides which of the other fields it needs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// Backend type (required): `github_actions`, `gitlab`, `jenkins`, `azure_pipelines`,
    /// `buildkite`, `tekton`, `webhook` (builds and deploys), or the deploy-only
    /// `kubernetes`, `argocd`, `flux`.
    #[schemars(
        with = "String",
        extend("enum" = ["webhook", "github_actions", "gitlab", "jenkins", "azure_pipelines", "buildkite", "tekton", "argocd", "flux", "kubernetes"])
    )]
    pub kind: S,
    /// Address of the backend (`http(s)://…`): required for `webhook`, `jenkins`, `tekton`
    /// (the EventListener), `argocd` (the server) and `flux` (the Receiver's webhook URL).
    /// API kinds accept it in place of `api_url`; `gitlab` defaults to `https://gitlab.com`.
    #[schemars(with = "Option<String>")]
    pub url: Option<S>,
    /// API base URL: `github_actions` (default `https://api.github.com`), `azure_pipelines`
    /// (`https://dev.azure.com`), `buildkite` (`https://api.buildkite.com`), `gitlab`;
    /// or the API server of a `kubernetes` backend.
    #[schemars(with = "Option<String>")]
    pub api_url: Option<S>,
    /// Default GitHub repository as `owner/name` for `github_actions`, e.g. `acme/images`;
    /// an image's `build.repository` overrides it.
    #[schemars(with = "Option<String>")]
    pub repository: Option<S>,
    /// Default project for `gitlab` (id or path, e.g. `platform/images`) or
    /// `azure_pipelines`; an image's `build.project` overrides it.
    #[schemars(with = "Option<String>")]
    pub project: Option<S>,
    /// Organization for `azure_pipelines` (its name) or `buildkite` (its slug);
    /// required for those kinds, e.g. `acme`.
    #[schemars(with = "Option<String>")]
    pub organization: Option<S>,
    /// Default pipeline for `azure_pipelines` (its id) or `buildkite` (its slug);
    /// an image's `build.pipeline` overrides it.
    #[schemars(with = "Option<String>")]
    pub pipeline: Option<S>,
    /// Jenkins user for basic auth with the API token in `token_env`/`token_file`.
    /// Without it the token is the job's remote-trigger token.
    #[schemars(with = "Option<String>")]
    pub username: Option<S>,
    /// Name of an environment variable holding the backend's token: GitHub token, GitLab
    /// trigger (or, with `mode: api`, access) token, Jenkins API token, Azure PAT,
    /// Buildkite, Argo CD or Kubernetes token.
    #[schemars(with = "Option<String>")]
    pub token_env: Option<S>,
    /// Path of a file holding the backend's token (trailing newline removed);
    /// alternative to `token_env`.
    #[schemars(with = "Option<String>")]
    pub token_file: Option<S>,
    /// Name of an environment variable holding the signing key: `webhook` (Standard
    /// Webhooks HMAC key, raw or `whsec_…`), `tekton` (HMAC key for `X-Hub-Signature-256`),
    /// `flux` (the Receiver's token; required).
    #[schemars(with = "Option<String>")]
    pub secret_env: Option<S>,
    /// Path of a file holding the signing key (trailing newline removed); alternative
    /// to `secret_env`.
    #[schemars(with = "Option<String>")]
    pub secret_file: Option<S>,
    /// Maximum parallel triggers to this backend, at least `1` (default `8`).
    #[schemars(with = "Option<u32>")]
    pub concurrency: Option<Spanned<u32>>,
    /// Timeout of each request to the backend (default `30s`).
    #[schemars(with = "Option<String>")]
    pub timeout: Option<S>,
    /// A build on this backend that reports nothing for this long fails; overrides
    /// `defaults.build_timeout`, and an image's `build.build_timeout` overrides it.
    #[schemars(with = "Option<String>")]
    pub build_timeout: Option<S>,
    /// How a deploy through a `webhook` backend is known to be done: `callback`
    /// (default; when the receiver reports) or `sync` (done on a 2xx).
    #[schemars(with = "Option<String>")]
    pub ack: Option<S>,
    /// Trigger API: github_actions `workflow_dispatch` (default) or
    /// `repository_dispatch`; gitlab `trigger` (default) or `api`. Other kinds have none.
    #[schemars(with = "Option<String>")]
    pub mode: Option<S>,
    /// Path of a kubeconfig file (its current context) for a `kubernetes` backend;
    /// default: the in-cluster service account. Not together with `api_url`/`ca_file`.
    #[schemars(with = "Option<String>")]
    pub kubeconfig: Option<S>,
    /// Path of the PEM CA certificate of the API server (`kubernetes`) or the Argo CD
    /// server (`argocd`), e.g. `/etc/lineaged/k8s-ca.pem`.
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<S>,
    /// How long a deploy through this backend may take before it fails (default `10m`
    /// on `argocd` and `kubernetes`); an image's `deploy.timeout` overrides it.
    #[schemars(with = "Option<String>")]
    pub deploy_timeout: Option<S>,
}

/// An image to track: with `build` it is managed (rebuilt by lineaged), without it
/// external (watched only).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawImage {
    /// Image reference, a tag (required, unique after normalisation), e.g.
    /// `registry.example.com/team/api:1`; `python:3.12` means `docker.io/library/python:3.12`.
    #[schemars(with = "String")]
    pub name: S,
    /// Parent images it is built on (several for multi-stage builds), e.g. `[python:3.12-slim]`.
    /// A parent not listed under `images` is watched with the defaults; cycles are errors.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub from: Vec<S>,
    /// Polling schedule for this image, cron as in `defaults.schedule`, e.g. `*/5 * * * *`.
    #[schemars(with = "Option<String>")]
    pub schedule: Option<S>,
    /// Platforms to track for this image as `os/arch[/variant]`, e.g. `[linux/amd64]`;
    /// overrides `defaults.platforms`.
    #[schemars(with = "Option<Vec<String>>")]
    pub platforms: Option<Vec<S>>,
    /// How long a new digest must hold before it starts work, e.g. `2m`; overrides
    /// `defaults.settle`.
    #[schemars(with = "Option<String>")]
    pub settle: Option<S>,
    /// How lineaged rebuilds this image; setting it makes the image managed (its
    /// `name` must then be a tag, not a digest).
    pub build: Option<RawBuild>,
    /// Where the image is deployed once its build succeeded and its gates passed.
    pub deploy: Option<RawDeploy>,
    /// Approval for this image, as `defaults.approval`; wins over policy rules and
    /// defaults. `{ required: false }` turns it off.
    #[schemars(with = "Option<RawApproval>")]
    pub approval: Option<Spanned<RawApproval>>,
    /// When this image's deploys may go out, as `defaults.deploy_window`; wins over
    /// policy rules and defaults. Needs `deploy`.
    #[schemars(with = "Option<RawWindow>")]
    pub deploy_window: Option<Spanned<RawWindow>>,
}

/// How a managed image is rebuilt: a `backend` plus what that backend's kind needs,
/// e.g. `{ backend: gh, workflow: rebuild.yml, ref: main }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBuild {
    /// Name of a declared backend that builds (required): a CI kind or `webhook`.
    #[schemars(with = "String")]
    pub backend: S,
    /// Trigger API for this image, overriding the backend's `mode`: github_actions
    /// `workflow_dispatch`/`repository_dispatch`, gitlab `trigger`/`api`.
    #[schemars(with = "Option<String>")]
    pub mode: Option<S>,
    /// GitHub repository as `owner/name` (`github_actions`); overrides the backend's.
    #[schemars(with = "Option<String>")]
    pub repository: Option<S>,
    /// Project for `gitlab` (id or path) or `azure_pipelines`; overrides the backend's.
    #[schemars(with = "Option<String>")]
    pub project: Option<S>,
    /// GitHub workflow file name or id, e.g. `rebuild.yml`; required for `github_actions`
    /// under `workflow_dispatch`.
    #[schemars(with = "Option<String>")]
    pub workflow: Option<S>,
    /// Git ref to build, e.g. `main` (default: `branch`, then `main`).
    #[serde(rename = "ref")]
    #[schemars(with = "Option<String>")]
    pub git_ref: Option<S>,
    /// Jenkins job as `folder/job`, e.g. `images/api`; required for `jenkins`.
    #[schemars(with = "Option<String>")]
    pub job: Option<S>,
    /// Pipeline: its id for `azure_pipelines` (e.g. `"42"`), its slug for `buildkite`;
    /// required unless set on the backend.
    #[schemars(with = "Option<String>")]
    pub pipeline: Option<S>,
    /// Branch to build, e.g. `main` (default: `ref` without `refs/heads/`, then `main`).
    #[schemars(with = "Option<String>")]
    pub branch: Option<S>,
    /// Build context, passed on in the trigger's `build` object (`webhook`, `tekton`).
    #[schemars(with = "Option<String>")]
    pub context: Option<S>,
    /// Dockerfile path, passed on in the trigger's `build` object (`webhook`, `tekton`).
    #[schemars(with = "Option<String>")]
    pub dockerfile: Option<S>,
    /// Extra string inputs added to what lineaged sends, e.g. `{ flavour: slim }`. Not
    /// lineaged's own names (`image`, `parents`, `job_id`, `rollout_id`, `callback_url`,
    /// `idempotency_key`, `LINEAGED_…`).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub inputs: BTreeMap<String, S>,
    /// A build of this image that reports nothing for this long fails; overrides the
    /// backend's and `defaults.build_timeout`.
    #[schemars(with = "Option<String>")]
    pub build_timeout: Option<S>,
}

/// Where and how a rebuilt image is deployed: a `backend` plus what its kind needs,
/// e.g. `{ backend: cluster, namespace: shop, workload: deployment/api }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDeploy {
    /// Name of a declared `webhook`, `kubernetes`, `argocd` or `flux` backend (required).
    #[schemars(with = "String")]
    pub backend: S,
    /// Application name: sent to `webhook` receivers, or the Argo CD application
    /// (required for `argocd`), e.g. `shop-api`.
    #[schemars(with = "Option<String>")]
    pub app: Option<S>,
    /// Environment name sent to `webhook` receivers, e.g. `prod`.
    #[schemars(with = "Option<String>")]
    pub environment: Option<S>,
    /// Extra strings sent as `inputs` in a `webhook` deploy request.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub inputs: BTreeMap<String, S>,
    /// How long a deploy may take before it fails (default `1h`; `10m` on
    /// argocd and kubernetes backends, or the backend's `deploy_timeout`).
    #[schemars(with = "Option<String>")]
    pub timeout: Option<S>,
    /// Namespace of the Argo CD application (`argocd` only), for apps in any namespace.
    #[schemars(with = "Option<String>")]
    pub app_namespace: Option<S>,
    /// Argo CD project of the application (`argocd` only), e.g. `shop`.
    #[schemars(with = "Option<String>")]
    pub project: Option<S>,
    /// How the image is set on the Argo CD application: `kustomize` or `helm`
    /// (default: what the application's source uses).
    #[schemars(with = "Option<String>")]
    pub source: Option<S>,
    /// Helm parameter that receives the repository (`argocd`; default `image.repository`).
    #[schemars(with = "Option<String>")]
    pub repository_param: Option<S>,
    /// Helm parameter that receives the digest (`argocd`; default `image.digest`).
    #[schemars(with = "Option<String>")]
    pub digest_param: Option<S>,
    /// Namespace of the Kubernetes workload (`kubernetes` only; default `default`).
    #[schemars(with = "Option<String>")]
    pub namespace: Option<S>,
    /// Kubernetes workload to update: `deployment/NAME`, `statefulset/NAME` or
    /// `daemonset/NAME`; required for `kubernetes`.
    #[schemars(with = "Option<String>")]
    pub workload: Option<S>,
    /// Container of the workload to update (`kubernetes` only; default: the only one).
    #[schemars(with = "Option<String>")]
    pub container: Option<S>,
}

/// Supply-chain gates: before an image is deployed or its rebuilt digest is used as a
/// parent (`cascade`), it must pass its rule's signature and scan checks.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Every image with `deploy` must come from a registry listed with `trusted: true`
    /// (default `false`); at gate time every image a gate checks must too.
    #[serde(default)]
    pub trusted_registries_only: bool,
    /// Shorthand: every image's deploy needs a cosign signature by this key.
    pub require_signature: Option<RawSignature>,
    /// Scanner settings (`command`, `timeout`); `max_severity` here is a shorthand
    /// gate on every image's deploy.
    pub scan: Option<RawScan>,
    /// Policy rules; for each image the first rule whose `images` globs match applies.
    #[serde(default)]
    #[schemars(with = "Vec<RawRule>")]
    pub rules: Vec<Spanned<RawRule>>,
    /// How long a digest with no signature at all is checked again before it is
    /// refused (default `60s`, at most `5m`); CI pushes, then signs.
    #[schemars(with = "Option<String>")]
    pub signature_grace: Option<S>,
}

/// The cosign key of the `require_signature` shorthand.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSignature {
    /// Path of an ECDSA P-256 PEM public key (as `cosign generate-key-pair` writes),
    /// e.g. `keys/cosign.pub`.
    #[schemars(with = "String")]
    pub public_key_file: S,
}

/// Vulnerability scanner settings, and the `max_severity` shorthand.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawScan {
    /// Shorthand: highest severity every image's deploy may carry: `none`, `low`,
    /// `medium`, `high` or `critical`.
    #[schemars(with = "Option<String>")]
    pub max_severity: Option<S>,
    /// Scanner argv run per digest; `{ref}` becomes `repo@digest`; it prints Trivy or
    /// Grype JSON, e.g. `[trivy, image, --format, json, --quiet, "{ref}"]`.
    #[schemars(with = "Option<Vec<String>>")]
    pub command: Option<Vec<S>>,
    /// How long a scan may take (default `10m`, from `1s` to `14m`); no result in time
    /// refuses the image.
    #[schemars(with = "Option<String>")]
    pub timeout: Option<S>,
}

/// A policy rule: the images it covers and the gates they must pass.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Globs over normalised references (required), e.g. `registry.example.com/apps/**`:
    /// `*` within a path segment, `**` across, `?` one character. Write
    /// `docker.io/library/python:*`, not `python:*`.
    #[schemars(with = "Vec<String>")]
    pub images: Vec<S>,
    /// What a failing gate does: `enforce` (default) refuses, `warn` records it as
    /// `warned` and the image goes on.
    #[schemars(with = "Option<String>")]
    pub mode: Option<S>,
    /// When the rule's gates apply: `deploy` and/or `cascade` (use as a parent);
    /// default both.
    #[schemars(with = "Option<Vec<String>>")]
    pub apply_to: Option<Vec<S>>,
    /// Signatures the images must carry: `required` of the `authorities` must verify.
    pub signatures: Option<RawSignatures>,
    /// Vulnerability scan gate, e.g. `{ max_severity: high, ignore_unfixed: true }`.
    pub scan: Option<RawRuleScan>,
    /// Approval for the images this rule matches, as `defaults.approval`; an image's
    /// own wins.
    #[schemars(with = "Option<RawApproval>")]
    pub approval: Option<Spanned<RawApproval>>,
    /// Deploy window for the images this rule matches, as `defaults.deploy_window`;
    /// an image's own wins.
    #[schemars(with = "Option<RawWindow>")]
    pub deploy_window: Option<Spanned<RawWindow>>,
}

/// The signatures a rule requires: how many of the listed authorities must verify.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSignatures {
    /// How many authorities must verify, from `1` to their number (default `1`).
    #[schemars(with = "Option<usize>")]
    pub required: Option<Spanned<usize>>,
    /// Keys and trust stores that may vouch, each `cosign: {public_key_file}` or
    /// `notation: {trust_store, trusted_identities}`.
    #[schemars(with = "Vec<RawAuthority>")]
    pub authorities: Vec<Spanned<RawAuthority>>,
}

/// One signing authority: exactly one of `cosign` or `notation`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuthority {
    /// A cosign public key, verified offline (no Rekor, no Fulcio), e.g.
    /// `{ public_key_file: keys/cosign.pub }`.
    pub cosign: Option<RawCosign>,
    /// A Notary Project trust store and the signer identities it accepts.
    pub notation: Option<RawNotation>,
}

/// A cosign public key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCosign {
    /// Path of an ECDSA P-256 PEM public key (as `cosign generate-key-pair` writes),
    /// e.g. `keys/cosign.pub`.
    #[schemars(with = "String")]
    pub public_key_file: S,
}

/// Notary Project (Notation) signature verification.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNotation {
    /// Directory of CA certificates (PEM/DER files, as Notation lays out
    /// `x509/ca/<name>/`), e.g. `keys/notation`.
    #[schemars(with = "String")]
    pub trust_store: S,
    /// Signer subjects accepted (at least one), e.g. `"x509.subject: CN=builder, O=Example"`,
    /// or `"*"` for any signer the trust store vouches for.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub trusted_identities: Vec<S>,
}

/// The scan gate of a rule, e.g. `{ max_severity: high, ignore_unfixed: true }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRuleScan {
    /// Highest severity allowed (required): `none`, `low`, `medium`, `high` or `critical`.
    #[schemars(with = "String")]
    pub max_severity: S,
    /// Findings without a fix do not count (default `false`).
    #[serde(default)]
    pub ignore_unfixed: bool,
    /// Where results come from: `command` (default; `policy.scan.command`), `attestation`
    /// (a cosign vulnerability attestation, verified with the rule's cosign keys) or
    /// `harbor` (scan events on `receivers.harbor`).
    #[schemars(with = "Option<String>")]
    pub source: Option<S>,
}
