//! Finding an image's referrers (signatures, attestations): the OCI 1.1
//! referrers API `GET /v2/<name>/referrers/<digest>?artifactType=…`, and
//! where the registry has none (distribution 2.8 answers 404), the
//! referrers tag fallback: the index at tag `sha256-<hex>`.

use crate::registry::manifest::{Descriptor, Manifest};
use crate::registry::{ImageRef, RegistryClient, RegistryError};

/// A referrers index lists a few descriptors; refuse anything near this.
pub const MAX_INDEX: usize = 256 * 1024;
/// Referrers looked at per image and artifact type.
pub const MAX_REFERRERS: usize = 32;

/// The fallback tag for `digest` (`sha256:abc` → `sha256-abc`).
pub fn fallback_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The referrers of `digest` with `artifact_type`, from the API or, when
/// the registry has none, the fallback tag. Empty when there are none.
pub async fn list(
    client: &RegistryClient,
    image: &ImageRef,
    digest: &str,
    artifact_type: &str,
) -> Result<Vec<Descriptor>, RegistryError> {
    let api = client
        .referrers_index(image, digest, artifact_type, MAX_INDEX)
        .await;
    let body = match api {
        Ok(Some(body)) => body,
        // No referrers API here: the tag schema.
        Ok(None) => match client
            .manifest_limited(image, &fallback_tag(digest), MAX_INDEX)
            .await
        {
            Ok((body, _, _)) => body,
            Err(RegistryError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        },
        Err(e) => return Err(e),
    };
    let index: Manifest =
        serde_json::from_slice(&body).map_err(|e| RegistryError::BadResponse {
            registry: image.registry().to_string(),
            detail: format!("referrers index is not JSON: {e}"),
        })?;
    Ok(index
        .manifests
        .into_iter()
        .filter(|d| d.artifact_type.as_deref() == Some(artifact_type))
        .take(MAX_REFERRERS)
        .collect())
}

/// The first layer of referrer `d` whose media type is one of `media`:
/// (media type, bytes), at most `max` of them, digest checked. `Ok(Err)`
/// says why a referrer is unusable (malformed, missing, refused by the
/// registry); `Err` is registry trouble that may pass (retry).
pub async fn layer_of(
    client: &RegistryClient,
    image: &ImageRef,
    d: &Descriptor,
    media: &[&str],
    max: usize,
) -> Result<Result<(String, Vec<u8>), String>, RegistryError> {
    use crate::registry::validate_digest;
    if validate_digest(&d.digest).is_err() {
        return Ok(Err("invalid digest".into()));
    }
    let m = match client.manifest_limited(image, &d.digest, MAX_INDEX).await {
        Ok((body, _, _)) => body,
        Err(e) if e.retryable() => return Err(e),
        Err(e) => return Ok(Err(e.to_string())),
    };
    let Ok(m) = serde_json::from_slice::<Manifest>(&m) else {
        return Ok(Err("manifest is not JSON".into()));
    };
    let Some(l) = m
        .layers
        .iter()
        .find(|l| media.contains(&l.media_type.as_str()))
    else {
        return Ok(Err(format!("no {} layer", media.join(" or "))));
    };
    if validate_digest(&l.digest).is_err() || l.size as usize > max {
        return Ok(Err(format!(
            "layer `{}` is invalid or larger than {max} bytes",
            l.media_type
        )));
    }
    match client.blob(image, &l.digest, max).await {
        Ok(b) => Ok(Ok((l.media_type.clone(), b))),
        Err(e) if e.retryable() => Err(e),
        Err(e) => Ok(Err(e.to_string())),
    }
}
