//! `GET /api/v1/graph`: the whole lineage as JSON, DOT or Mermaid, or, with
//! `image=` or `rollout=`, a neighbourhood to draw: never the whole of a
//! 100,000-image lineage, with counts of what is left out, and each image
//! with the state the dashboard colours it by.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::auth::authorize;
use super::{ApiError, AppState, Q};
use crate::config::Role;
use crate::lineage::GraphFormat;
use crate::registry::ImageRef;
use crate::rollout::ImageState as Stage;
use crate::store::GraphState;

/// Most levels a view walks up or down.
const MAX_LEVELS: u32 = 50;
/// Most images a view draws.
const MAX_NODES: usize = 500;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GraphQuery {
    /// json (default), dot or mermaid; dot and mermaid only for the whole
    /// lineage.
    format: Option<String>,
    /// Draw this image (a reference, normalised like the config) with its
    /// ancestors and descendants.
    image: Option<String>,
    /// Draw this rollout: its images and the parents they were rebuilt on.
    rollout: Option<i64>,
    /// Ancestor levels to walk, 0..=50 (default 3; a rollout view: 1).
    up: Option<u32>,
    /// Descendant levels to walk, 0..=50 (default 3; a rollout view: all
    /// its waves).
    down: Option<u32>,
    /// At most this many images, 1..=500 (default 150): the nearest are
    /// kept.
    limit: Option<usize>,
}

/// A drawable part of the lineage.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct GraphView {
    /// The images the view is centred on (the asked image, or the
    /// rollout's first wave).
    centres: Vec<String>,
    /// The rollout drawn, for `rollout=`.
    rollout_id: Option<i64>,
    nodes: Vec<GraphNode>,
    /// Parent → child, as indexes into `nodes`.
    edges: Vec<[usize; 2]>,
    /// The node limit left images out (each node says how many of its
    /// parents and children are not drawn).
    truncated: bool,
    /// Images in the whole lineage.
    total: usize,
}

/// One image of a view.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct GraphNode {
    name: String,
    managed: bool,
    /// Levels from the nearest centre: negative for ancestors.
    distance: i32,
    /// Parents and children not drawn.
    hidden_parents: usize,
    hidden_children: usize,
    /// What the dashboard colours the image by: ok, stale, unchecked,
    /// error, waiting, building, verifying, awaiting_approval, deploying,
    /// failed, refused, blocked, cancelled. In a rollout view, the image's
    /// stage in that rollout; otherwise its newest rollout's stage while
    /// that runs (or when it failed, was refused or blocked), else what the
    /// watcher knows (error, stale, unchecked, ok).
    state: &'static str,
    /// What `state` comes from: the rollout stage (`queued`, `built`,
    /// `deploy_failed`, …) or the image's stored state.
    detail: String,
    /// Its current digest.
    digest: Option<String>,
    /// The rollout `state` comes from, if one.
    rollout_id: Option<i64>,
    /// Its wave in the drawn rollout.
    wave: Option<i32>,
    /// Why it failed, was refused or blocked; the watcher's last error.
    reason: Option<String>,
}

/// The colour class of a rollout stage.
fn stage_class(s: Stage) -> &'static str {
    match s {
        Stage::Waiting => "waiting",
        Stage::Queued | Stage::Building | Stage::Built => "building",
        Stage::Verifying => "verifying",
        Stage::AwaitingApproval => "awaiting_approval",
        Stage::WaitingForWindow | Stage::Deploying => "deploying",
        Stage::Done => "ok",
        Stage::Failed | Stage::DeployFailed => "failed",
        Stage::Blocked => "blocked",
        Stage::Refused => "refused",
        Stage::Cancelled => "cancelled",
    }
}

/// What the watcher knows of an image.
fn watched_class(g: &GraphState) -> &'static str {
    if g.last_error.is_some() {
        "error"
    } else if g.stale {
        "stale"
    } else if g.last_checked_at.is_none() {
        "unchecked"
    } else {
        "ok"
    }
}

/// An image's state outside a rollout view: its newest rollout's stage
/// while that rollout runs, or when the image ended there failed, refused
/// or blocked (a later rollout replaces it); else what the watcher knows.
fn image_class(g: &GraphState) -> (&'static str, String, Option<i64>) {
    if let Some(stage) = g.entry_state.as_deref().and_then(Stage::parse) {
        let running = g.rollout_running == Some(true) && !stage.is_finished();
        let bad = matches!(
            stage,
            Stage::Failed | Stage::DeployFailed | Stage::Refused | Stage::Blocked
        );
        if running || bad {
            return (stage_class(stage), stage.as_str().to_string(), g.rollout_id);
        }
    }
    let c = watched_class(g);
    (c, c.to_string(), None)
}

fn levels(v: Option<u32>, default: u32, name: &str) -> Result<u32, ApiError> {
    match v {
        None => Ok(default),
        Some(n) if n <= MAX_LEVELS => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "{name} must be 0..={MAX_LEVELS}, got {n}"
        ))),
    }
}

/// `GET /api/v1/graph`: the lineage as JSON, or `?format=dot|mermaid` as
/// text; with `image=` or `rollout=`, a neighbourhood with states.
#[utoipa::path(get, path = "/api/v1/graph", tag = "graph", params(GraphQuery),
    responses((status = 200, description = "The whole lineage (JSON, DOT or Mermaid text), or with `image=` / `rollout=` a view to draw", body = GraphView),
        (status = 400, description = "Bad parameter"), (status = 401, description = "No or unknown token"),
        (status = 404, description = "No such image or rollout")),
    security(("bearer" = [])))]
pub async fn graph(
    State(s): State<AppState>,
    headers: HeaderMap,
    Q(q): Q<GraphQuery>,
) -> Result<Response, ApiError> {
    authorize(&s, &headers, Role::Read)?;
    let format = q.format.as_deref().unwrap_or("json");
    if q.image.is_none() && q.rollout.is_none() {
        if q.up.is_some() || q.down.is_some() || q.limit.is_some() {
            return Err(ApiError::BadRequest(
                "up, down and limit need image= or rollout=".into(),
            ));
        }
        return whole(&s, format);
    }
    if format != "json" {
        return Err(ApiError::BadRequest(format!(
            "format: a view (image= or rollout=) is JSON only, got `{format}`"
        )));
    }
    if q.image.is_some() && q.rollout.is_some() {
        return Err(ApiError::BadRequest(
            "give image= or rollout=, not both".into(),
        ));
    }
    let limit = match q.limit {
        None => 150,
        Some(n) if (1..=MAX_NODES).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "limit must be 1..={MAX_NODES}, got {n}"
            )));
        }
    };
    let lineage = &s.lineage;
    // The rollout's stages by image, for a rollout view.
    let mut stages: HashMap<String, (Stage, i32, Option<String>)> = HashMap::new();
    let (centres, up, down) = match (&q.image, q.rollout) {
        (Some(raw), _) => {
            let r = ImageRef::parse(raw.trim())
                .map_err(|e| ApiError::BadRequest(format!("image: {e}")))?;
            if !lineage.contains(&r) {
                return Err(ApiError::NotFound(format!("image {r} is not tracked")));
            }
            (vec![r], levels(q.up, 3, "up")?, levels(q.down, 3, "down")?)
        }
        (None, Some(id)) => {
            s.store
                .rollout(id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("rollout {id} not found")))?;
            let images = s.store.rollout_images(id).await?;
            // Its images still in the lineage (the config may have changed
            // since): the first wave of those (sorted by name), drawn down
            // through every wave; a rollout of 10,000 images still draws
            // `limit`. None left: an empty view.
            let present: Vec<(ImageRef, i32)> = images
                .iter()
                .filter_map(|i| Some((ImageRef::parse(&i.image).ok()?, i.wave)))
                .filter(|(r, _)| lineage.contains(r))
                .collect();
            let waves = present.iter().map(|(_, w)| *w).max().unwrap_or(0);
            let first = present.iter().map(|(_, w)| *w).min().unwrap_or(0);
            let mut centres: Vec<ImageRef> = present
                .into_iter()
                .filter(|(_, w)| *w == first)
                .map(|(r, _)| r)
                .collect();
            centres.sort();
            centres.truncate(limit);
            for i in images {
                stages.insert(i.image, (i.state, i.wave, i.reason));
            }
            (
                centres,
                levels(q.up, 1, "up")?,
                levels(q.down, (waves - first).max(0) as u32, "down")?,
            )
        }
        (None, None) => unreachable!("handled above"),
    };
    let hood = lineage.neighbourhood(&centres, up, down, limit);
    let names: Vec<String> = hood.nodes.iter().map(|n| n.name.to_string()).collect();
    let known: HashMap<String, GraphState> = s
        .store
        .graph_states(&names)
        .await?
        .into_iter()
        .map(|g| (g.name.clone(), g))
        .collect();
    let nodes = hood
        .nodes
        .into_iter()
        .zip(names)
        .map(|(n, name)| {
            let g = known.get(&name);
            let mut node = GraphNode {
                managed: n.managed,
                distance: n.distance,
                hidden_parents: n.hidden_parents,
                hidden_children: n.hidden_children,
                state: "unchecked",
                detail: "unchecked".into(),
                digest: g.and_then(|g| g.current_digest.clone()),
                rollout_id: None,
                wave: None,
                reason: g.and_then(|g| g.last_error.clone()),
                name,
            };
            if let Some((stage, wave, reason)) = stages.get(&node.name) {
                node.state = stage_class(*stage);
                node.detail = stage.as_str().to_string();
                node.rollout_id = q.rollout;
                node.wave = Some(*wave);
                node.reason = reason.clone();
            } else if let Some(g) = g {
                let (state, detail, rollout) = image_class(g);
                node.state = state;
                node.detail = detail;
                node.rollout_id = rollout;
                if rollout.is_some() {
                    node.reason = g.entry_reason.clone();
                }
            }
            node
        })
        .collect();
    Ok(axum::Json(GraphView {
        centres: centres.iter().map(ToString::to_string).collect(),
        rollout_id: q.rollout,
        nodes,
        edges: hood.edges.into_iter().map(|(a, b)| [a, b]).collect(),
        truncated: hood.truncated,
        total: lineage.len(),
    })
    .into_response())
}

/// The whole lineage, as `format`.
fn whole(s: &AppState, format: &str) -> Result<Response, ApiError> {
    let (format, content_type) = match format {
        "json" => (GraphFormat::Json, "application/json"),
        "dot" => (GraphFormat::Dot, "text/vnd.graphviz; charset=utf-8"),
        "mermaid" => (GraphFormat::Mermaid, "text/plain; charset=utf-8"),
        other => {
            return Err(ApiError::BadRequest(format!(
                "format: expected json, dot or mermaid, got `{other}`"
            )));
        }
    };
    Ok((
        [(axum::http::header::CONTENT_TYPE, content_type)],
        s.lineage.render(format),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(entry: Option<&str>, running: Option<bool>) -> GraphState {
        GraphState {
            name: "r.io/a:1".into(),
            current_digest: None,
            last_checked_at: Some(1),
            last_error: None,
            stale: true,
            rollout_id: entry.map(|_| 7),
            entry_state: entry.map(str::to_string),
            entry_reason: None,
            rollout_running: running,
        }
    }

    #[test]
    fn an_image_shows_its_running_stage_or_a_bad_end_else_what_the_watcher_knows() {
        assert_eq!(image_class(&g(None, None)).0, "stale");
        assert_eq!(
            image_class(&g(Some("queued"), Some(true))),
            ("building", "queued".into(), Some(7))
        );
        assert_eq!(
            image_class(&g(Some("awaiting_approval"), Some(true))).0,
            "awaiting_approval"
        );
        // A finished rollout's stage no longer shows, unless it went badly.
        assert_eq!(image_class(&g(Some("done"), Some(false))).0, "stale");
        assert_eq!(image_class(&g(Some("building"), Some(false))).0, "stale");
        assert_eq!(image_class(&g(Some("refused"), Some(false))).0, "refused");
        assert_eq!(
            image_class(&g(Some("deploy_failed"), Some(false))).0,
            "failed"
        );
        let mut e = g(None, None);
        e.last_error = Some("unauthorized".into());
        assert_eq!(image_class(&e).0, "error");
        e.last_error = None;
        e.stale = false;
        e.last_checked_at = None;
        assert_eq!(image_class(&e).0, "unchecked");
    }

    #[test]
    fn every_stage_has_a_class_the_dashboard_colours() {
        let app = include_str!("ui/app.js");
        let start = app.find("const COLOURS = {").expect("COLOURS in app.js");
        let ui = &app[start..start + app[start..].find("};").expect("end of COLOURS")];
        for s in Stage::ALL {
            let c = stage_class(s);
            assert!(
                ui.contains(&format!("{c}:")),
                "app.js has no colour for {c}"
            );
        }
        for c in ["ok", "stale", "unchecked", "error"] {
            assert!(
                ui.contains(&format!("{c}:")),
                "app.js has no colour for {c}"
            );
        }
    }
}
