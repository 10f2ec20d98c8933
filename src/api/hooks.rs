//! `POST /api/v1/hooks/registry/{source}`: registry push notifications.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::config::Secret;
use crate::registry::ImageRef;
use crate::store::DigestSource;
use crate::watch::{PushSource, parse_push};

/// A registry push notification (CNCF Distribution, Docker Hub, Harbor,
/// ACR, GitHub packages).
#[utoipa::path(post, path = "/api/v1/hooks/registry/{source}", tag = "hooks",
    params(("source" = String, Path, description = "distribution, dockerhub, harbor, acr or ghcr")),
    request_body(content = Object, content_type = "application/json", description = "The registry's own notification body"),
    responses((status = 202, description = "Tracked images re-checked", body = Object),
        (status = 400, description = "Malformed body"), (status = 401, description = "Wrong token or signature"),
        (status = 404, description = "Unknown source or no receiver configured"), (status = 413, description = "Body too large"),
        (status = 422, description = "A Harbor scan event for nothing tracked")))]
pub async fn registry_hook(
    State(s): State<AppState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let src = PushSource::parse(&source).ok_or_else(|| {
        ApiError::NotFound(format!(
            "unknown push source `{source}` (distribution, dockerhub, harbor, acr, ghcr)"
        ))
    })?;
    let r = &s.cfg.receivers;
    let secret = match src {
        PushSource::Distribution => r.distribution.as_ref(),
        PushSource::Dockerhub => r.dockerhub.as_ref(),
        PushSource::Harbor => r.harbor.as_ref(),
        PushSource::Acr => r.acr.as_ref(),
        PushSource::Ghcr => r.ghcr.as_ref(),
    }
    .ok_or_else(|| {
        ApiError::NotFound(format!(
            "no receiver configured for `{source}` (receivers.{source} in the config)"
        ))
    })?;
    let body = super::error::read_body(body, super::MAX_HOOK_BODY)?;
    match src {
        PushSource::Ghcr => verify_github_signature(&headers, &body, secret)?,
        _ => super::auth::check_secret(&headers, secret)?,
    }
    if src == PushSource::Harbor {
        let scans = crate::policy::harbor::parse(&body).map_err(ApiError::BadRequest)?;
        if !scans.is_empty() {
            return harbor_scans(&s, scans).await;
        }
    }
    let pushed = parse_push(src, &body).map_err(ApiError::BadRequest)?;

    let mut tracked = Vec::new();
    let mut ignored = Vec::new();
    for p in pushed {
        let text = p.reference();
        match resolve_tracked(&s, &p) {
            Some(image) => {
                if let Some(w) = &s.watch {
                    w.recheck_expecting(image.clone(), DigestSource::Push, p.digest.clone());
                }
                tracked.push(image.to_string());
            }
            None => ignored.push(text),
        }
    }
    tracing::info!(
        source = src.as_str(),
        tracked = tracked.len(),
        ignored = ignored.len(),
        "push event"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "tracked": tracked, "ignored": ignored })),
    ))
}

/// Harbor's scan results: recorded per digest for `scan: { source: harbor }`
/// rules. A scan of nothing lineaged tracks is refused with 422.
async fn harbor_scans(
    s: &AppState,
    scans: Vec<crate::policy::harbor::HarborScan>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let mut recorded = Vec::new();
    let mut ignored = Vec::new();
    let now = crate::store::now_millis();
    for scan in scans {
        // The tracked images of that repository (by host and path; when
        // Harbor sits behind a proxy, by path alone).
        let path = scan.repository.split_once('/').map_or("", |(_, p)| p);
        let by_host: Vec<&crate::config::Image> = s
            .cfg
            .images
            .iter()
            .filter(|i| format!("{}/{}", i.name.registry(), i.name.repository()) == scan.repository)
            .collect();
        let images = if by_host.is_empty() {
            s.cfg
                .images
                .iter()
                .filter(|i| i.name.repository() == path)
                .collect()
        } else {
            by_host
        };
        if images.is_empty() {
            ignored.push(format!(
                "{}@{}: not a tracked repository",
                scan.repository, scan.digest
            ));
            continue;
        }
        let report = serde_json::to_string(&scan.report).unwrap_or_default();
        for image in images {
            let name = image.name.to_string();
            s.store
                .save_scan_report(&scan.digest, "harbor", &name, &report, now)
                .await?;
            // The image's check may be waiting for exactly this.
            s.store.hasten_verify_jobs(&name, now).await?;
            recorded.push(format!("{name}@{}", scan.digest));
        }
    }
    tracing::info!(
        recorded = recorded.len(),
        ignored = ignored.len(),
        "harbor scan results"
    );
    if recorded.is_empty() {
        return Err(ApiError::Unprocessable(format!(
            "no tracked image in this scan event: {}",
            ignored.join("; ")
        )));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "recorded": recorded, "ignored": ignored })),
    ))
}

/// The tracked image a push names: by host, repository and tag; when the
/// sender's host differs from the configured one (a registry behind a
/// proxy), the only tracked image with that repository and tag.
fn resolve_tracked(s: &AppState, p: &crate::watch::Pushed) -> Option<ImageRef> {
    if let Ok(r) = ImageRef::parse(&p.reference())
        && s.cfg.images.iter().any(|i| i.name == r)
    {
        return Some(r);
    }
    let mut same = s.cfg.images.iter().filter(|i| {
        i.name.tag() == Some(p.tag.as_str())
            && (i.name.repository() == p.repository
                || i.name.repository() == format!("library/{}", p.repository))
    });
    let first = same.next()?;
    same.next().is_none().then(|| first.name.clone())
}

fn verify_github_signature(
    headers: &HeaderMap,
    body: &[u8],
    secret: &Secret,
) -> Result<(), ApiError> {
    let sig = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .ok_or_else(|| ApiError::Unauthorized("missing X-Hub-Signature-256".into()))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .map_err(|e| ApiError::Internal(Box::new(std::io::Error::other(e.to_string()))))?;
    mac.update(body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if bool::from(
        sig.trim()
            .to_ascii_lowercase()
            .as_bytes()
            .ct_eq(want.as_bytes()),
    ) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("signature does not match".into()))
    }
}
