//! Registry push notifications: each source's JSON envelope → the image
//! references pushed. The payload digest is never trusted: a pushed tag is
//! re-checked against the registry.

use serde_json::Value;

/// Registries whose push events lineaged accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushSource {
    Distribution,
    Dockerhub,
    Harbor,
    Acr,
    Ghcr,
}

impl PushSource {
    pub fn parse(s: &str) -> Option<PushSource> {
        Some(match s {
            "distribution" => PushSource::Distribution,
            "dockerhub" => PushSource::Dockerhub,
            "harbor" => PushSource::Harbor,
            "acr" => PushSource::Acr,
            "ghcr" => PushSource::Ghcr,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PushSource::Distribution => "distribution",
            PushSource::Dockerhub => "dockerhub",
            PushSource::Harbor => "harbor",
            PushSource::Acr => "acr",
            PushSource::Ghcr => "ghcr",
        }
    }
}

/// A pushed tag, as `host/repository:tag` text (normalised later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub host: Option<String>,
    pub repository: String,
    pub tag: String,
    /// The digest the event says was pushed: only a hint of what a re-check
    /// should find (registries may notify before the tag moves).
    pub digest: Option<String>,
}

impl Pushed {
    pub fn reference(&self) -> String {
        match &self.host {
            Some(h) => format!("{h}/{}:{}", self.repository, self.tag),
            None => format!("{}:{}", self.repository, self.tag),
        }
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|x| !x.is_empty())
}

/// Parses a push event body. Events that are not tag pushes (pulls,
/// deletes, pushes by digest only, other package types) yield nothing; a
/// body of the wrong shape is an error naming what is missing.
pub fn parse(source: PushSource, body: &[u8]) -> Result<Vec<Pushed>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    match source {
        // distribution and ACR send the same envelope: {"events":[{action,target,request}]}
        PushSource::Distribution | PushSource::Acr => {
            let events = match v.get("events") {
                Some(Value::Array(e)) => e.clone(),
                Some(_) => return Err("`events` must be an array".into()),
                // ACR also posts single events without the envelope.
                None if v.get("action").is_some() => vec![v.clone()],
                None => return Err("missing `events`".into()),
            };
            Ok(events
                .iter()
                .filter(|e| s(e, &["action"]) == Some("push"))
                .filter_map(|e| {
                    Some(Pushed {
                        host: s(e, &["request", "host"]).map(str::to_string),
                        repository: s(e, &["target", "repository"])?.to_string(),
                        tag: s(e, &["target", "tag"])?.to_string(),
                        digest: s(e, &["target", "digest"]).map(str::to_string),
                    })
                })
                .collect())
        }
        PushSource::Dockerhub => {
            let repo =
                s(&v, &["repository", "repo_name"]).ok_or("missing `repository.repo_name`")?;
            let tag = s(&v, &["push_data", "tag"]).ok_or("missing `push_data.tag`")?;
            Ok(vec![Pushed {
                host: Some("docker.io".into()),
                repository: repo.to_string(),
                tag: tag.to_string(),
                digest: None,
            }])
        }
        PushSource::Harbor => {
            let kind = s(&v, &["type"]).ok_or("missing `type`")?;
            if kind != "PUSH_ARTIFACT" && kind != "pushImage" {
                return Ok(Vec::new());
            }
            let resources = v
                .get("event_data")
                .and_then(|d| d.get("resources"))
                .and_then(|r| r.as_array())
                .ok_or("missing `event_data.resources`")?;
            Ok(resources
                .iter()
                .filter_map(|r| {
                    // resource_url: "harbor.example.com/project/app:tag"
                    let url = s(r, &["resource_url"])?;
                    let tag = s(r, &["tag"])?;
                    let without_tag = url
                        .rsplit_once(':')
                        .filter(|(_, t)| *t == tag)
                        .map_or(url, |(u, _)| u);
                    let (host, repo) = without_tag.split_once('/')?;
                    Some(Pushed {
                        host: Some(host.to_string()),
                        repository: repo.to_string(),
                        tag: tag.to_string(),
                        digest: s(r, &["digest"]).map(str::to_string),
                    })
                })
                .collect())
        }
        PushSource::Ghcr => {
            let pkg = v.get("package").ok_or("missing `package`")?;
            if s(&v, &["action"]) != Some("published")
                || s(pkg, &["package_type"]).is_some_and(|t| !t.eq_ignore_ascii_case("container"))
            {
                return Ok(Vec::new());
            }
            let tag = s(
                pkg,
                &["package_version", "container_metadata", "tag", "name"],
            );
            let Some(tag) = tag else {
                return Ok(Vec::new());
            };
            let owner = s(pkg, &["namespace"])
                .or_else(|| s(pkg, &["owner", "login"]))
                .ok_or("missing `package.namespace`")?;
            let name = s(pkg, &["name"]).ok_or("missing `package.name`")?;
            Ok(vec![Pushed {
                host: Some("ghcr.io".into()),
                repository: format!("{}/{name}", owner.to_ascii_lowercase()),
                tag: tag.to_string(),
                digest: s(
                    pkg,
                    &["package_version", "container_metadata", "tag", "digest"],
                )
                .map(str::to_string),
            }])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_source() {
        let dist = br#"{"events":[
            {"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"base/python","digest":"sha256:aa","tag":"3.12"},"request":{"host":"127.0.0.1:5000"}},
            {"action":"push","target":{"repository":"base/python","digest":"sha256:bb"},"request":{"host":"127.0.0.1:5000"}},
            {"action":"pull","target":{"repository":"base/python","tag":"3.12"},"request":{"host":"127.0.0.1:5000"}}]}"#;
        let got = parse(PushSource::Distribution, dist).unwrap();
        assert_eq!(
            got.iter().map(Pushed::reference).collect::<Vec<_>>(),
            vec!["127.0.0.1:5000/base/python:3.12"]
        );

        let hub =
            br#"{"push_data":{"tag":"7","pusher":"x"},"repository":{"repo_name":"bitnami/redis"}}"#;
        assert_eq!(
            parse(PushSource::Dockerhub, hub).unwrap()[0].reference(),
            "docker.io/bitnami/redis:7"
        );

        let harbor = br#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"digest":"sha256:cc","tag":"v2","resource_url":"harbor.example.com/proj/app:v2"}],"repository":{"name":"app"}}}"#;
        assert_eq!(
            parse(PushSource::Harbor, harbor).unwrap()[0].reference(),
            "harbor.example.com/proj/app:v2"
        );
        assert!(
            parse(PushSource::Harbor, br#"{"type":"DELETE_ARTIFACT"}"#)
                .unwrap()
                .is_empty()
        );

        let acr = br#"{"id":"1","action":"push","target":{"repository":"app","tag":"v1","digest":"sha256:dd"},"request":{"host":"myreg.azurecr.io"}}"#;
        assert_eq!(
            parse(PushSource::Acr, acr).unwrap()[0].reference(),
            "myreg.azurecr.io/app:v1"
        );

        let gh = br#"{"action":"published","package":{"name":"api","namespace":"Org","package_type":"CONTAINER","package_version":{"container_metadata":{"tag":{"name":"v3","digest":"sha256:ee"}}}}}"#;
        assert_eq!(
            parse(PushSource::Ghcr, gh).unwrap()[0].reference(),
            "ghcr.io/org/api:v3"
        );
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        assert!(
            parse(PushSource::Distribution, b"{not json")
                .unwrap_err()
                .starts_with("malformed JSON")
        );
        assert_eq!(
            parse(PushSource::Distribution, b"{}").unwrap_err(),
            "missing `events`"
        );
        assert_eq!(
            parse(PushSource::Dockerhub, b"{}").unwrap_err(),
            "missing `repository.repo_name`"
        );
        assert_eq!(PushSource::parse("quay"), None);
    }
}
