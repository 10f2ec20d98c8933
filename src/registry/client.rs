//! The OCI distribution client lineaged polls with: HEAD for digests, GET
//! for indexes and annotations, token and basic auth, per-registry
//! concurrency and pacing, Docker Hub rate-limit headers.
//!
//! Written on reqwest rather than oci-client because polling must act on
//! response headers oci-client does not expose: `Retry-After` on 429 and
//! `ratelimit-remaining`, and must classify statuses for backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, header};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use super::auth::{Challenge, Credentials, TokenCache, docker_config_credentials, parse_challenge};
use super::manifest::{ACCEPT, BaseAnnotations, Manifest, config_labels, is_index};
use super::{DOCKER_HUB, ImageRef};
use crate::config::{Platform, RegistryAuth, RegistryConfig, Secret};

/// Why a registry call failed. `retryable()` tells backoff from giving up.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry}: {what} not found")]
    NotFound { registry: String, what: String },
    #[error("{registry}: unauthorized: {detail}")]
    Unauthorized { registry: String, detail: String },
    #[error("{registry}: rate limited (HTTP 429){}", .retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        registry: String,
        retry_after: Option<Duration>,
    },
    #[error("{registry}: server error HTTP {status}")]
    Server { registry: String, status: u16 },
    #[error("{registry}: HTTP {status}: {detail}")]
    Client {
        registry: String,
        status: u16,
        detail: String,
    },
    /// The message carries the whole chain: "error sending request" alone
    /// hides the DNS, TLS or refused connection underneath.
    #[error("{registry}: {kind}: {}", crate::error_chain(source))]
    Transport {
        registry: String,
        kind: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{registry}: bad response: {detail}")]
    BadResponse { registry: String, detail: String },
    #[error("{reference}: platform {platform} is not in the index (yet)")]
    PlatformMissing { reference: String, platform: String },
    #[error("registry configuration: {0}")]
    Config(String),
}

impl RegistryError {
    /// Worth retrying later: rate limits, server errors, network trouble.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            RegistryError::RateLimited { .. }
                | RegistryError::Server { .. }
                | RegistryError::Transport { .. }
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A bounded name for metrics labels.
    pub fn metric_label(&self) -> &'static str {
        match self {
            RegistryError::NotFound { .. } => "not_found",
            RegistryError::Unauthorized { .. } => "unauthorized",
            RegistryError::RateLimited { .. } => "rate_limited",
            RegistryError::Server { .. } => "server_error",
            RegistryError::Client { .. } => "client_error",
            RegistryError::Transport { .. } => "transport",
            RegistryError::BadResponse { .. } => "bad_response",
            RegistryError::PlatformMissing { .. } => "platform_missing",
            RegistryError::Config(_) => "config",
        }
    }
}

type Result<T> = std::result::Result<T, RegistryError>;

/// What a tag resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The tag's top-level digest (the index for multi-arch tags).
    pub digest: String,
    /// Per requested platform, the manifest digest inside the index.
    pub platforms: Vec<(Platform, String)>,
}

impl Resolution {
    /// The value change detection compares: the top-level digest, or the
    /// platform digests when platforms are tracked (one platform: its
    /// digest; several: `os/arch=digest` pairs joined with `,`).
    pub fn tracked(&self) -> String {
        match self.platforms.as_slice() {
            [] => self.digest.clone(),
            [(_, d)] => d.clone(),
            many => many
                .iter()
                .map(|(p, d)| format!("{p}={d}"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// Rate-limit budget last reported by a registry (Docker Hub's headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateBudget {
    pub remaining: u64,
    pub limit: u64,
    pub window: Duration,
}

struct Host {
    insecure: bool,
    credentials: Option<Credentials>,
    permits: Arc<Semaphore>,
    /// Minimum spacing between requests (from `rate_limit`), and when the
    /// next one may start.
    pacing: Mutex<(Option<Duration>, Instant)>,
    budget: Mutex<Option<RateBudget>>,
    /// The registry answered 401 with a Basic challenge: send credentials up front.
    basic: std::sync::atomic::AtomicBool,
}

/// A client for every registry in the config (and anonymous HTTPS access
/// to unlisted ones). Cheap to share behind an `Arc`.
pub struct RegistryClient {
    http: reqwest::Client,
    hosts: HashMap<String, Arc<Host>>,
    unlisted: Mutex<HashMap<String, Arc<Host>>>,
    tokens: TokenCache,
}

fn new_host(
    insecure: bool,
    credentials: Option<Credentials>,
    concurrency: u32,
    rate: Option<f64>,
) -> Arc<Host> {
    Arc::new(Host {
        insecure,
        credentials,
        permits: Arc::new(Semaphore::new(concurrency.max(1) as usize)),
        pacing: Mutex::new((
            rate.map(|r| Duration::from_secs_f64(1.0 / r)),
            Instant::now(),
        )),
        budget: Mutex::new(None),
        basic: std::sync::atomic::AtomicBool::new(false),
    })
}

impl RegistryClient {
    /// Builds the client from the config's `registries:`. Reads Docker
    /// `config.json` credentials now, so a broken file fails at start-up.
    pub fn new(registries: &[RegistryConfig], timeout: Duration) -> Result<RegistryClient> {
        crate::init_tls();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("lineaged/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Config(format!("HTTP client: {e}")))?;
        let mut hosts = HashMap::new();
        for r in registries {
            let credentials = match &r.auth {
                None => None,
                Some(RegistryAuth::Basic { username, password }) => Some(Credentials {
                    username: username.clone(),
                    password: password.clone(),
                }),
                Some(RegistryAuth::DockerConfig { path }) => {
                    docker_config_credentials(path, &r.host).map_err(RegistryError::Config)?
                }
            };
            hosts.insert(
                r.host.clone(),
                new_host(r.insecure, credentials, r.concurrency, r.rate_limit),
            );
        }
        Ok(RegistryClient {
            http,
            hosts,
            unlisted: Mutex::default(),
            tokens: TokenCache::default(),
        })
    }

    fn host(&self, registry: &str) -> Arc<Host> {
        if let Some(h) = self.hosts.get(registry) {
            return h.clone();
        }
        let mut u = self.unlisted.lock().unwrap_or_else(|p| p.into_inner());
        u.entry(registry.to_string())
            .or_insert_with(|| new_host(false, None, 4, None))
            .clone()
    }

    /// The last rate-limit budget a registry reported, if any.
    pub fn budget(&self, registry: &str) -> Option<RateBudget> {
        *self
            .host(registry)
            .budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn base_url(&self, registry: &str, host: &Host) -> String {
        let scheme = if host.insecure { "http" } else { "https" };
        let api_host = if registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        format!("{scheme}://{api_host}")
    }

    /// `HEAD` the tag (or digest) and return its manifest digest; `GET` and
    /// hash the body when the registry sends no `Docker-Content-Digest`.
    #[tracing::instrument(skip_all, fields(image = %image))]
    pub async fn head_digest(&self, image: &ImageRef) -> Result<String> {
        let reference = image.digest().or(image.tag()).unwrap_or("latest");
        let resp = self
            .send(Method::HEAD, image, &format!("manifests/{reference}"))
            .await?;
        if let Some(d) = digest_header(&resp) {
            return Ok(d);
        }
        let (_, _, digest) = self.manifest(image, reference).await?;
        Ok(digest)
    }

    /// `GET` a manifest by tag or digest: body, media type and digest (the
    /// header's, or the body's SHA-256 when absent).
    pub async fn manifest(
        &self,
        image: &ImageRef,
        reference: &str,
    ) -> Result<(Vec<u8>, String, String)> {
        let resp = self
            .send(Method::GET, image, &format!("manifests/{reference}"))
            .await?;
        let header_digest = digest_header(&resp);
        let media = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport(image.registry(), e))?
            .to_vec();
        let computed = format!("sha256:{:x}", Sha256::digest(&body));
        let digest = match header_digest {
            Some(d) if d.starts_with("sha256:") && d != computed => {
                return Err(RegistryError::BadResponse {
                    registry: image.registry().to_string(),
                    detail: format!("manifest body hashes to {computed}, header says {d}"),
                });
            }
            Some(d) => d,
            None => computed,
        };
        Ok((body, media, digest))
    }

    /// Resolves a tag: its top-level digest and, for `platforms`, each
    /// platform's digest inside the index. `PlatformMissing` when a wanted
    /// platform is not (yet) in the index.
    pub async fn resolve(&self, image: &ImageRef, platforms: &[Platform]) -> Result<Resolution> {
        if platforms.is_empty() {
            return Ok(Resolution {
                digest: self.head_digest(image).await?,
                platforms: Vec::new(),
            });
        }
        let reference = image.digest().or(image.tag()).unwrap_or("latest");
        let (body, media, digest) = self.manifest(image, reference).await?;
        let m: Manifest =
            serde_json::from_slice(&body).map_err(|e| RegistryError::BadResponse {
                registry: image.registry().to_string(),
                detail: format!("manifest is not JSON: {e}"),
            })?;
        let mut out = Vec::with_capacity(platforms.len());
        for p in platforms {
            let d = if is_index(m.kind(&media)) {
                m.platform_digest(p).map(str::to_string)
            } else {
                // A single-platform image is tracked as whatever platform it is.
                Some(digest.clone())
            };
            match d {
                Some(d) => out.push((p.clone(), d)),
                None => {
                    return Err(RegistryError::PlatformMissing {
                        reference: image.to_string(),
                        platform: p.to_string(),
                    });
                }
            }
        }
        Ok(Resolution {
            digest,
            platforms: out,
        })
    }

    /// Reads the base annotations of an image: on the index, else on the
    /// platform manifest (the first of `platforms`, else the first listed),
    /// else in the image config's labels.
    pub async fn base_annotations(
        &self,
        image: &ImageRef,
        platforms: &[Platform],
    ) -> Result<BaseAnnotations> {
        let reference = image
            .digest()
            .or(image.tag())
            .unwrap_or("latest")
            .to_string();
        let (body, media, _) = self.manifest(image, &reference).await?;
        let bad = |e: serde_json::Error| RegistryError::BadResponse {
            registry: image.registry().to_string(),
            detail: format!("manifest is not JSON: {e}"),
        };
        let mut m: Manifest = serde_json::from_slice(&body).map_err(bad)?;
        let mut media = media;
        if is_index(m.kind(&media)) {
            let found = BaseAnnotations::from_map(&m.annotations);
            if !found.is_empty() {
                return Ok(found);
            }
            let child = platforms
                .first()
                .and_then(|p| m.platform_digest(p))
                .or_else(|| m.manifests.first().map(|d| d.digest.as_str()))
                .map(str::to_string);
            let Some(child) = child else {
                return Ok(BaseAnnotations::default());
            };
            let (b, md, _) = self.manifest(image, &child).await?;
            m = serde_json::from_slice(&b).map_err(bad)?;
            media = md;
        }
        let _ = media;
        let found = BaseAnnotations::from_map(&m.annotations);
        if !found.is_empty() {
            return Ok(found);
        }
        let Some(config) = &m.config else {
            return Ok(found);
        };
        let resp = self
            .send(Method::GET, image, &format!("blobs/{}", config.digest))
            .await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport(image.registry(), e))?;
        Ok(BaseAnnotations::from_map(&config_labels(&body)))
    }

    /// `GET` a manifest by tag or digest, at most `max` bytes: (body,
    /// media type, digest). A digest reference must match the body.
    pub async fn manifest_limited(
        &self,
        image: &ImageRef,
        reference: &str,
        max: usize,
    ) -> Result<(Vec<u8>, String, String)> {
        let want = reference.starts_with("sha256:").then_some(reference);
        self.get_limited(image, &format!("manifests/{reference}"), max, want)
            .await
    }

    /// The OCI 1.1 referrers index of `digest` filtered by artifact type;
    /// None when the registry has no referrers API (404).
    pub async fn referrers_index(
        &self,
        image: &ImageRef,
        digest: &str,
        artifact_type: &str,
        max: usize,
    ) -> Result<Option<Vec<u8>>> {
        let q: String = url_query(artifact_type);
        match self
            .get_limited(
                image,
                &format!("referrers/{digest}?artifactType={q}"),
                max,
                None,
            )
            .await
        {
            Ok((body, _, _)) => Ok(Some(body)),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET` a blob, at most `max` bytes, its SHA-256 checked.
    pub async fn blob(&self, image: &ImageRef, digest: &str, max: usize) -> Result<Vec<u8>> {
        Ok(self
            .get_limited(image, &format!("blobs/{digest}"), max, Some(digest))
            .await?
            .0)
    }

    async fn get_limited(
        &self,
        image: &ImageRef,
        path: &str,
        max: usize,
        want: Option<&str>,
    ) -> Result<(Vec<u8>, String, String)> {
        let registry = image.registry().to_string();
        let bad = |detail: String| RegistryError::BadResponse {
            registry: registry.clone(),
            detail,
        };
        let mut resp = self.send(Method::GET, image, path).await?;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(bad(format!("{path} is larger than {max} bytes")));
        }
        let media = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport(&registry, e))? {
            if body.len() + chunk.len() > max {
                return Err(bad(format!("{path} is larger than {max} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let digest = format!("sha256:{:x}", Sha256::digest(&body));
        if let Some(w) = want
            && w != digest
        {
            return Err(bad(format!("{path} hashes to {digest}, not {w}")));
        }
        Ok((body, media, digest))
    }

    /// One request with auth, pacing and status classification.
    async fn send(
        &self,
        method: Method,
        image: &ImageRef,
        path: &str,
    ) -> Result<reqwest::Response> {
        let registry = image.registry();
        let host = self.host(registry);
        let _permit = host
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RegistryError::Config("client closed".into()))?;
        pace(&host).await;
        let url = format!(
            "{}/v2/{}/{}",
            self.base_url(registry, &host),
            image.repository(),
            path
        );
        let scope = format!("repository:{}:pull", image.repository());

        let mut resp = self.attempt(&method, &url, registry, &scope, &host).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope: hinted,
                }) => {
                    let scope = hinted.unwrap_or(scope);
                    self.fetch_token(registry, &realm, service.as_deref(), &scope, &host)
                        .await?;
                    resp = self.attempt(&method, &url, registry, &scope, &host).await?;
                }
                Some(Challenge::Basic) if host.credentials.is_some() => {
                    host.basic.store(true, std::sync::atomic::Ordering::Relaxed);
                    resp = self.attempt(&method, &url, registry, &scope, &host).await?;
                }
                Some(Challenge::Basic) => {
                    return Err(RegistryError::Unauthorized {
                        registry: registry.to_string(),
                        detail: "registry wants basic credentials and none are configured".into(),
                    });
                }
                None => {}
            }
        }
        record_budget(&host, &resp);
        classify(resp, registry, image)
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &str,
        registry: &str,
        scope: &str,
        host: &Host,
    ) -> Result<reqwest::Response> {
        let mut req = self
            .http
            .request(method.clone(), url)
            .header(header::ACCEPT, ACCEPT);
        if let Some(token) = self.tokens.get(registry, scope) {
            req = req.bearer_auth(token.expose());
        } else if host.basic.load(std::sync::atomic::Ordering::Relaxed)
            && let Some(c) = &host.credentials
        {
            req = req.basic_auth(&c.username, Some(c.password.expose()));
        }
        req.send().await.map_err(|e| transport(registry, e))
    }

    async fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        host: &Host,
    ) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        let mut req = self.http.get(realm).query(&query);
        if let Some(c) = &host.credentials {
            req = req.basic_auth(&c.username, Some(c.password.expose()));
        }
        let resp = req.send().await.map_err(|e| transport(registry, e))?;
        if !resp.status().is_success() {
            return Err(RegistryError::Unauthorized {
                registry: registry.to_string(),
                detail: format!("token endpoint answered HTTP {}", resp.status().as_u16()),
            });
        }
        let t: TokenResponse = resp.json().await.map_err(|e| RegistryError::BadResponse {
            registry: registry.to_string(),
            detail: format!("token response: {e}"),
        })?;
        let token = t
            .token
            .or(t.access_token)
            .ok_or_else(|| RegistryError::BadResponse {
                registry: registry.to_string(),
                detail: "token response has no token".into(),
            })?;
        self.tokens.put(
            registry,
            scope,
            Secret::new(token),
            Duration::from_secs(t.expires_in.unwrap_or(60)),
        );
        Ok(())
    }
}

async fn pace(host: &Host) {
    let wait = {
        let mut p = host.pacing.lock().unwrap_or_else(|e| e.into_inner());
        let mut interval = p.0.unwrap_or(Duration::ZERO);
        // Slow down before a reported budget runs out: spread what is left
        // over the window once under 10 % remains.
        if let Some(b) = *host.budget.lock().unwrap_or_else(|e| e.into_inner())
            && b.limit > 0
            && b.remaining * 10 < b.limit
        {
            interval = interval.max(b.window / (b.remaining.max(1) as u32));
        }
        let now = Instant::now();
        let start = p.1.max(now);
        p.1 = start + interval;
        start - now
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// Docker Hub: `ratelimit-limit: 100;w=21600`, `ratelimit-remaining: 76;w=21600`.
fn record_budget(host: &Host, resp: &reqwest::Response) {
    let parse = |name: &str| -> Option<(u64, u64)> {
        let v = resp.headers().get(name)?.to_str().ok()?;
        let (n, rest) = v.split_once(';').unwrap_or((v, ""));
        let window = rest
            .trim()
            .strip_prefix("w=")
            .and_then(|w| w.parse().ok())
            .unwrap_or(21_600);
        Some((n.trim().parse().ok()?, window))
    };
    if let (Some((remaining, w)), Some((limit, _))) =
        (parse("ratelimit-remaining"), parse("ratelimit-limit"))
    {
        let mut b = host.budget.lock().unwrap_or_else(|e| e.into_inner());
        *b = Some(RateBudget {
            remaining,
            limit,
            window: Duration::from_secs(w),
        });
    }
}

fn digest_header(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| super::validate_digest(s).is_ok())
}

/// A query value, percent-encoded.
fn url_query(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn transport(registry: &str, e: reqwest::Error) -> RegistryError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    RegistryError::Transport {
        registry: registry.to_string(),
        kind,
        source: e.without_url(),
    }
}

fn classify(
    resp: reqwest::Response,
    registry: &str,
    image: &ImageRef,
) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let registry = registry.to_string();
    Err(match status.as_u16() {
        401 | 403 => RegistryError::Unauthorized {
            registry,
            detail: format!("HTTP {} for {image}", status.as_u16()),
        },
        404 => RegistryError::NotFound {
            registry,
            what: image.to_string(),
        },
        429 => {
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            RegistryError::RateLimited {
                registry,
                retry_after,
            }
        }
        s @ 500..=599 => RegistryError::Server {
            registry,
            status: s,
        },
        408 => RegistryError::Server {
            registry,
            status: 408,
        },
        s => RegistryError::Client {
            registry,
            status: s,
            detail: format!("unexpected status for {image}"),
        },
    })
}
