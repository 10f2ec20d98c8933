//! Registry credentials and the token dance: `WWW-Authenticate` challenges,
//! Docker `config.json` credentials, bearer tokens cached until they expire.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::config::Secret;

/// Username and password for one registry.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

/// `k="v", k2=v2` with quoted values that may contain commas.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// Reads credentials for `host` from a Docker `config.json` (`auths.<host>.auth`,
/// base64 `user:password`). Docker Hub is also looked up under its legacy key.
pub fn docker_config_credentials(path: &Path, host: &str) -> Result<Option<Credentials>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
    let auths = json.get("auths").and_then(|a| a.as_object());
    let Some(auths) = auths else { return Ok(None) };
    let mut keys = vec![
        host.to_string(),
        format!("https://{host}"),
        format!("http://{host}"),
    ];
    if host == super::DOCKER_HUB {
        keys.extend([
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
        ]);
    }
    for key in keys {
        let Some(entry) = auths.get(&key) else {
            continue;
        };
        if let Some(b64) = entry.get("auth").and_then(|a| a.as_str()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| format!("{}: auths.{key}.auth is not base64", path.display()))?;
            let raw = String::from_utf8(raw)
                .map_err(|_| format!("{}: auths.{key}.auth is not UTF-8", path.display()))?;
            let (user, pass) = raw.split_once(':').ok_or_else(|| {
                format!("{}: auths.{key}.auth is not user:password", path.display())
            })?;
            return Ok(Some(Credentials {
                username: user.to_string(),
                password: Secret::new(pass),
            }));
        }
    }
    Ok(None)
}

/// Bearer tokens per (registry, scope), kept until shortly before expiry.
#[derive(Default)]
pub struct TokenCache {
    tokens: std::sync::Mutex<HashMap<(String, String), (Secret, Instant)>>,
}

impl TokenCache {
    pub fn get(&self, registry: &str, scope: &str) -> Option<Secret> {
        let map = self.tokens.lock().ok()?;
        let (token, until) = map.get(&(registry.to_string(), scope.to_string()))?;
        (Instant::now() < *until).then(|| token.clone())
    }

    pub fn put(&self, registry: &str, scope: &str, token: Secret, expires_in: Duration) {
        // Renew a little early so a request never carries a token that
        // expires in flight.
        let ttl = expires_in
            .saturating_sub(Duration::from_secs(10))
            .max(Duration::from_secs(1));
        if let Ok(mut map) = self.tokens.lock() {
            map.insert(
                (registry.to_string(), scope.to_string()),
                (token, Instant::now() + ttl),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/python:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(
                r#"bearer realm="https://ghcr.io/token", scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://ghcr.io/token".into(),
                service: None,
                scope: Some("repository:a/b:pull,push".into())
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge("Bearer service=x"),
            None,
            "realm is required"
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn reads_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("ci:pa:ss");
        std::fs::write(&p, format!(r#"{{"auths":{{"registry.example.com":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{"auth":"{auth}"}}}}}}"#)).unwrap();
        let c = docker_config_credentials(&p, "registry.example.com")
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("ci", "pa:ss"));
        assert!(
            docker_config_credentials(&p, "docker.io")
                .unwrap()
                .is_some()
        );
        assert!(docker_config_credentials(&p, "ghcr.io").unwrap().is_none());
        std::fs::write(&p, "{").unwrap();
        assert!(
            docker_config_credentials(&p, "ghcr.io")
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn tokens_expire() {
        let c = TokenCache::default();
        c.put("r", "s", Secret::new("t"), Duration::from_secs(300));
        assert_eq!(c.get("r", "s").unwrap().expose(), "t");
        assert!(c.get("r", "other").is_none());
        c.put("r", "s", Secret::new("t"), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(c.get("r", "s").is_none());
    }
}
