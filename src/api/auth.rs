//! API tokens: `Authorization: Bearer <token>` against `api.tokens`, compared
//! in constant time. Read endpoints are open with `api.public_read: true`.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::config::{Role, Secret};

/// Checks the caller may use an endpoint needing `need`; returns the
/// token's name (for audit) when one was presented.
pub fn authorize(
    s: &AppState,
    headers: &HeaderMap,
    need: Role,
) -> Result<Option<String>, ApiError> {
    let presented = bearer(headers);
    let Some(presented) = presented else {
        if need == Role::Read && s.cfg.api.public_read {
            return Ok(None);
        }
        return Err(ApiError::Unauthorized(
            "missing Authorization: Bearer token".into(),
        ));
    };
    // Compare against every token so timing does not reveal which matched.
    let mut found = None;
    for t in &s.cfg.api.tokens {
        if bool::from(presented.as_bytes().ct_eq(t.token.expose().as_bytes())) {
            found = Some(t);
        }
    }
    let Some(token) = found else {
        return Err(ApiError::Unauthorized("unknown token".into()));
    };
    if token.role < need {
        return Err(ApiError::Forbidden(format!(
            "token `{}` is read-only",
            token.name
        )));
    }
    Ok(Some(token.name.clone()))
}

/// The token of an `Authorization: Bearer <token>` header, trimmed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Checks a bearer token against one secret (push receivers, the metrics
/// token), in constant time.
pub fn check_secret(headers: &HeaderMap, secret: &Secret) -> Result<(), ApiError> {
    let got = bearer(headers)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer token".into()))?;
    if bool::from(got.as_bytes().ct_eq(secret.expose().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("wrong token".into()))
    }
}
