//! Image references, parsed and normalised the way Docker does it, so that
//! `python:3.12` and `docker.io/library/python:3.12` are one image everywhere
//! (config, CLI, API, store).

use std::fmt;
use std::str::FromStr;

/// The registry Docker Hub images live on, in normalised form.
pub const DOCKER_HUB: &str = "docker.io";

/// Host names that mean Docker Hub.
const DOCKER_HUB_ALIASES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A normalised image reference: `registry/repository[:tag][@digest]`.
///
/// A reference without tag and digest gets the tag `latest`. The `Display`
/// form is the canonical string used as the image's identity.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("empty image reference")]
    Empty,
    #[error("image reference contains whitespace or control characters")]
    Whitespace,
    #[error("image reference must not have a URL scheme (drop `{0}://`)")]
    Scheme(String),
    #[error("repository name must be lowercase: `{0}`")]
    Uppercase(String),
    #[error("invalid repository path component `{0}`")]
    Component(String),
    #[error("invalid registry host `{0}`")]
    Host(String),
    #[error(
        "invalid tag `{0}` (letters, digits, `_`, `.`, `-`; at most 128; not starting with `.` or `-`)"
    )]
    Tag(String),
    #[error("invalid digest `{0}` (expected algorithm:hex, e.g. sha256 with 64 hex digits)")]
    Digest(String),
    #[error("repository name is longer than 255 characters")]
    TooLong,
    #[error(
        "`{0}` reads as a registry host only for its capital letters: write the host with its domain or port (e.g. `{0}.example.com/…`), or the repository in lowercase"
    )]
    BareHost(String),
    /// Docker refuses these too (distribution/reference's
    /// `ParseNormalizedNamed`): they read as image ids.
    #[error("`{0}` is 64 hexadecimal digits, which reads as an image id, not a repository name")]
    Identifier(String),
}

impl ImageRef {
    /// Parses and normalises a reference.
    pub fn parse(input: &str) -> Result<Self, RefError> {
        if input.is_empty() {
            return Err(RefError::Empty);
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(RefError::Whitespace);
        }
        if let Some((scheme, _)) = input.split_once("://") {
            return Err(RefError::Scheme(scheme.to_string()));
        }
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(RefError::Identifier(input.to_string()));
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest)?;
                (rest, Some(digest.to_ascii_lowercase()))
            }
            None => (input, None),
        };

        // A tag is a `:` after the last `/`; a `:` before it belongs to a host port.
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        if name.is_empty() {
            return Err(RefError::Empty);
        }

        let (registry, path) = split_registry(name)?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        for component in repository.split('/') {
            validate_component(component)?;
        }
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(RefError::TooLong);
        }

        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (with port), e.g. `docker.io` or `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/python`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when the input named neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The pinned digest, if the reference carries one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The short form a person would type: Docker Hub's `docker.io/library/`
    /// prefix dropped. Parsing it again yields the same reference.
    pub fn familiar(&self) -> String {
        let full = self.to_string();
        if self.registry == DOCKER_HUB {
            let rest = &full[DOCKER_HUB.len() + 1..];
            rest.strip_prefix("library/").unwrap_or(rest).to_string()
        } else {
            full
        }
    }
}

fn split_registry(name: &str) -> Result<(String, &str), RefError> {
    // Docker's rule: the first component is a host when it has a `.` or a `:`,
    // is `localhost`, or has an uppercase letter (which no repository may have).
    let Some((first, rest)) = name.split_once('/') else {
        return Ok((DOCKER_HUB.to_string(), name));
    };
    let is_host = first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase());
    if !is_host {
        return Ok((DOCKER_HUB.to_string(), name));
    }
    let host = first.to_ascii_lowercase();
    // `Registry/app` is a host only for its capital letter; lowercased, as
    // hosts are kept, it would read back as a Docker Hub namespace.
    if !host.contains(['.', ':']) && host != "localhost" {
        return Err(RefError::BareHost(first.to_string()));
    }
    validate_host(&host)?;
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        return Ok((DOCKER_HUB.to_string(), rest));
    }
    Ok((host, rest))
}

fn validate_host(host: &str) -> Result<(), RefError> {
    let bad = || RefError::Host(host.to_string());
    let (hostname, port) = if let Some(v6) = host.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(bad)?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        match after {
            "" => return Ok(()),
            p => (None, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match host.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || port.parse::<u16>().is_err())
    {
        return Err(bad());
    }
    if let Some(hostname) = hostname {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if hostname.is_empty() || !hostname.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, the distribution spec's path component.
fn validate_component(c: &str) -> Result<(), RefError> {
    if c.chars().any(|ch| ch.is_ascii_uppercase()) {
        return Err(RefError::Uppercase(c.to_string()));
    }
    let bad = || RefError::Component(c.to_string());
    let bytes = c.as_bytes();
    if bytes.is_empty() {
        return Err(bad());
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or a run of `-`, between alphanumerics.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return Err(bad()),
        }
        if start == 0 || i >= bytes.len() || !alnum(bytes[i]) {
            return Err(bad());
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), RefError> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(RefError::Tag(tag.to_string()))
    }
}

/// Validates `algorithm:encoded` per the OCI image spec, with the registered
/// algorithms' exact lengths.
pub fn validate_digest(digest: &str) -> Result<(), RefError> {
    let bad = || RefError::Digest(digest.to_string());
    let (alg, hex) = digest.split_once(':').ok_or_else(bad)?;
    // distribution/reference: components of a letter and letters or
    // digits, joined by one of `+._-` (lowercase only here).
    let alg_ok = alg.split(['+', '.', '_', '-']).all(|c| {
        c.starts_with(|c: char| c.is_ascii_lowercase())
            && c.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    let hex_ok = hex.chars().all(|c| c.is_ascii_hexdigit());
    let len_ok = match alg {
        "sha256" => hex.len() == 64,
        "sha512" => hex.len() == 128,
        _ => hex.len() >= 32,
    };
    if alg_ok && hex_ok && len_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageRef({self})")
    }
}

impl FromStr for ImageRef {
    type Err = RefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalises_like_docker() {
        let d = D;
        let cases: Vec<(String, &str)> = vec![
            ("python".into(), "docker.io/library/python:latest"),
            ("python:3.12".into(), "docker.io/library/python:3.12"),
            (
                "python:3.12-slim".into(),
                "docker.io/library/python:3.12-slim",
            ),
            (
                "library/python:3.12".into(),
                "docker.io/library/python:3.12",
            ),
            (
                "docker.io/python:3.12".into(),
                "docker.io/library/python:3.12",
            ),
            (
                "docker.io/library/python:3.12".into(),
                "docker.io/library/python:3.12",
            ),
            (
                "index.docker.io/library/python:3.12".into(),
                "docker.io/library/python:3.12",
            ),
            (
                "index.docker.io/python".into(),
                "docker.io/library/python:latest",
            ),
            (
                "registry-1.docker.io/bitnami/redis:7".into(),
                "docker.io/bitnami/redis:7",
            ),
            ("bitnami/redis:7".into(), "docker.io/bitnami/redis:7"),
            (
                "ghcr.io/org/team/app:v1.2.3".into(),
                "ghcr.io/org/team/app:v1.2.3",
            ),
            ("localhost/app".into(), "localhost/app:latest"),
            ("localhost:5000/app:dev".into(), "localhost:5000/app:dev"),
            ("127.0.0.1:5000/a/b:c".into(), "127.0.0.1:5000/a/b:c"),
            (
                "Registry.Example.COM/app:1".into(),
                "registry.example.com/app:1",
            ),
            ("[::1]:5000/app:1".into(), "[::1]:5000/app:1"),
            (
                format!("python@{d}"),
                "docker.io/library/python@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
            (
                format!("python:3.12@{d}"),
                "docker.io/library/python:3.12@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
            (
                format!("localhost:5000/app@{d}"),
                "localhost:5000/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
            (
                "my_org/my__app:TAG_1".into(),
                "docker.io/my_org/my__app:TAG_1",
            ),
            (
                "a-b--c/d.e:1.0-rc.1".into(),
                "docker.io/a-b--c/d.e:1.0-rc.1",
            ),
            (
                "quay.io/prometheus/node-exporter".into(),
                "quay.io/prometheus/node-exporter:latest",
            ),
            (
                "mcr.microsoft.com/dotnet/aspnet:8.0".into(),
                "mcr.microsoft.com/dotnet/aspnet:8.0",
            ),
            ("app:_internal".into(), "docker.io/library/app:_internal"),
        ];
        for (input, want) in &cases {
            let got = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.to_string(), *want, "input {input}");
            // Normalisation is idempotent, and the familiar form round-trips.
            assert_eq!(ImageRef::parse(want).unwrap(), got, "re-parse {want}");
            assert_eq!(
                ImageRef::parse(&got.familiar()).unwrap(),
                got,
                "familiar {input}"
            );
        }
    }

    #[test]
    fn rejects_malformed() {
        let cases: Vec<(String, RefError)> = vec![
            ("".into(), RefError::Empty),
            (":tag".into(), RefError::Empty),
            ("Python:3.12".into(), RefError::Uppercase("Python".into())),
            (
                "docker.io/Library/python".into(),
                RefError::Uppercase("Library".into()),
            ),
            ("python:".into(), RefError::Tag("".into())),
            ("python:-x".into(), RefError::Tag("-x".into())),
            ("python:a/b".into(), RefError::Host("python:a".into())),
            (
                format!("python:{}", "a".repeat(129)),
                RefError::Tag("a".repeat(129)),
            ),
            (
                "python@sha256:abc".into(),
                RefError::Digest("sha256:abc".into()),
            ),
            ("python@md5".into(), RefError::Digest("md5".into())),
            ("py thon".into(), RefError::Whitespace),
            (
                "https://ghcr.io/org/app".into(),
                RefError::Scheme("https".into()),
            ),
            (
                "example.com:99999/app".into(),
                RefError::Host("example.com:99999".into()),
            ),
            (
                "example.com:/app".into(),
                RefError::Host("example.com:".into()),
            ),
            ("-bad.com/app".into(), RefError::Host("-bad.com".into())),
            ("ghcr.io//app".into(), RefError::Component("".into())),
            ("ghcr.io/app/".into(), RefError::Component("".into())),
            ("ghcr.io/-app".into(), RefError::Component("-app".into())),
            ("ghcr.io/app_".into(), RefError::Component("app_".into())),
            ("ghcr.io/a___b".into(), RefError::Component("a___b".into())),
            ("ghcr.io/a..b".into(), RefError::Component("a..b".into())),
            ("ghcr.io/a$b".into(), RefError::Component("a$b".into())),
            (format!("ghcr.io/{}", "a".repeat(260)), RefError::TooLong),
        ];
        for (input, want) in cases {
            assert_eq!(ImageRef::parse(&input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn equal_forms_are_one_image() {
        let a = ImageRef::parse("python:3.12").unwrap();
        let b = ImageRef::parse("docker.io/library/python:3.12").unwrap();
        let c = ImageRef::parse("index.docker.io/python:3.12").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(a.familiar(), "python:3.12");
        assert_eq!(a.registry(), "docker.io");
        assert_eq!(a.repository(), "library/python");
        assert_eq!(a.tag(), Some("3.12"));
        assert_eq!(a.digest(), None);
    }
}
