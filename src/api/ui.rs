//! The dashboard's files, compiled into the binary: no CDN, so it works in
//! air-gapped clusters. `/` is the page; `/ui/{file}` its script and the
//! vendored layout library (`ui/vendor/README.md` says where it comes
//! from). Each file has an ETag, and browsers revalidate (`no-cache`), so
//! an upgraded daemon never serves a stale script.

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, P};

/// (name, content type, body).
const FILES: [(&str, &str, &str); 4] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "dagre.min.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/vendor/dagre.min.js"),
    ),
    (
        "LICENSE-dagre",
        "text/plain; charset=utf-8",
        include_str!("ui/vendor/LICENSE-dagre"),
    ),
];

/// A strong ETag per file: the version and a hash of the content.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|(_, _, body)| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            body.hash(&mut h);
            HeaderValue::from_str(&format!(
                "\"{}-{:016x}\"",
                env!("CARGO_PKG_VERSION"),
                h.finish()
            ))
            .expect("ASCII")
        })
        .collect()
});

pub(super) fn serve(name: &str, headers: &HeaderMap) -> Option<Response> {
    let i = FILES.iter().position(|(n, _, _)| *n == name)?;
    let (_, content_type, body) = FILES[i];
    let etag = ETAGS[i].clone();
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii() == etag.as_bytes())
    }) {
        return Some((StatusCode::NOT_MODIFIED, [(header::ETAG, etag), cache]).into_response());
    }
    Some(
        (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::ETAG, etag),
                cache,
            ],
            body,
        )
            .into_response(),
    )
}

/// The dashboard page: overview (approvals, stale images, rollouts, failing
/// jobs, registries, live events), the image list, the lineage graph, and a
/// page per rollout and per image. Its data comes from the API with the
/// token typed into it.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "HTML page", content_type = "text/html"),
        (status = 304, description = "Not modified (`If-None-Match`)")))]
pub async fn dashboard(headers: HeaderMap) -> Response {
    serve("index.html", &headers).expect("index.html is compiled in")
}

/// The dashboard's script and vendored libraries.
#[utoipa::path(get, path = "/ui/{file}", tag = "operations",
    params(("file" = String, Path, description = "app.js, dagre.min.js or LICENSE-dagre")),
    responses((status = 200, description = "The file", content_type = "text/javascript"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 404, description = "No such file")))]
pub async fn asset(headers: HeaderMap, P(file): P<String>) -> Result<Response, ApiError> {
    match file.as_str() {
        "index.html" => None,
        f => serve(f, &headers),
    }
    .ok_or_else(|| ApiError::NotFound(format!("no dashboard file `{file}`")))
}
