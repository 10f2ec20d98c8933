//! Manifest media types, image indexes and base annotations.

use serde::Deserialize;
use std::collections::BTreeMap;

use crate::config::Platform;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Every manifest type we accept, so no registry down-converts and reports
/// another digest.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

pub const BASE_NAME: &str = "org.opencontainers.image.base.name";
pub const BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// OCI 1.1: what a referrer is (signature, SBOM, …).
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub platform: Option<DescriptorPlatform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DescriptorPlatform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Manifest {
    /// The media type: the body's own field, else the response header.
    pub fn kind<'a>(&'a self, header: &'a str) -> &'a str {
        self.media_type
            .as_deref()
            .filter(|m| !m.is_empty())
            .unwrap_or(header)
    }

    /// The digest of the manifest for `want` inside an index. A wanted
    /// platform without a variant matches any variant (the first listed);
    /// `arm64` also matches `arm64/v8`.
    pub fn platform_digest(&self, want: &Platform) -> Option<&str> {
        self.manifests
            .iter()
            .find(|d| {
                d.platform.as_ref().is_some_and(|p| {
                    p.os == want.os
                        && p.architecture == want.architecture
                        && match (&want.variant, &p.variant) {
                            (None, _) => true,
                            (Some(w), Some(v)) => w == v,
                            (Some(w), None) => want.architecture == "arm64" && w == "v8",
                        }
                })
            })
            .map(|d| d.digest.as_str())
    }
}

/// The `org.opencontainers.image.base.*` pair recorded on an image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BaseAnnotations {
    pub name: Option<String>,
    pub digest: Option<String>,
}

impl BaseAnnotations {
    pub fn from_map(m: &BTreeMap<String, String>) -> BaseAnnotations {
        BaseAnnotations {
            name: m.get(BASE_NAME).cloned(),
            digest: m.get(BASE_DIGEST).cloned(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.digest.is_none()
    }
}

/// Labels from an image config blob (`config.Labels`), the fallback place
/// for base annotations.
pub fn config_labels(body: &[u8]) -> BTreeMap<String, String> {
    #[derive(Deserialize)]
    struct Cfg {
        #[serde(default)]
        config: Option<Inner>,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(default, rename = "Labels")]
        labels: Option<BTreeMap<String, String>>,
    }
    serde_json::from_slice::<Cfg>(body)
        .ok()
        .and_then(|c| c.config)
        .and_then(|c| c.labels)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        let v: Vec<&str> = s.split('/').collect();
        Platform {
            os: v[0].into(),
            architecture: v[1].into(),
            variant: v.get(2).map(|x| x.to_string()),
        }
    }

    #[test]
    fn picks_platforms_from_an_index() {
        let idx: Manifest = serde_json::from_str(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cc","size":1,"platform":{"os":"unknown","architecture":"unknown"}}]}"#).unwrap();
        assert!(is_index(idx.kind("")));
        assert_eq!(idx.platform_digest(&p("linux/amd64")), Some("sha256:aa"));
        assert_eq!(idx.platform_digest(&p("linux/arm64")), Some("sha256:bb"));
        assert_eq!(idx.platform_digest(&p("linux/arm64/v8")), Some("sha256:bb"));
        assert_eq!(idx.platform_digest(&p("linux/arm/v7")), None);
        assert_eq!(idx.platform_digest(&p("windows/amd64")), None);
    }

    #[test]
    fn reads_base_annotations_and_labels() {
        let m: Manifest = serde_json::from_str(r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:c","size":1},"annotations":{"org.opencontainers.image.base.name":"docker.io/library/python:3.12","org.opencontainers.image.base.digest":"sha256:dd"}}"#).unwrap();
        let b = BaseAnnotations::from_map(&m.annotations);
        assert_eq!(b.digest.as_deref(), Some("sha256:dd"));
        assert_eq!(b.name.as_deref(), Some("docker.io/library/python:3.12"));
        let labels = config_labels(
            br#"{"config":{"Labels":{"org.opencontainers.image.base.digest":"sha256:ee"}}}"#,
        );
        assert_eq!(
            BaseAnnotations::from_map(&labels).digest.as_deref(),
            Some("sha256:ee")
        );
        assert!(config_labels(b"not json").is_empty());
    }
}
