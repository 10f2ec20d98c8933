// The lineaged dashboard: an overview, the image and rollout lists, and a
// page per image and per rollout with the lineage drawn. Served by the
// daemon (src/api/ui.rs); its data comes from /api/v1 with the token typed
// into the page. Layout by dagre (vendored, /ui/dagre.min.js); the drawing
// is ours (SVG). Pages are hash routes: #/, #/images, #/images/REF,
// #/rollouts, #/rollouts/ID. Every text from the API goes in through
// textContent, never as HTML.
"use strict";

const tokenInput = document.getElementById("token");
tokenInput.value = sessionStorage.getItem("lineaged-token") || "";
// A new token reloads the page shown and the live stream; the browser's
// own change event on blur (after a script set the value) is not new.
let tokenUsed = tokenInput.value;
tokenInput.addEventListener("change", () => {
  if (tokenInput.value === tokenUsed) return;
  tokenUsed = tokenInput.value;
  sessionStorage.setItem("lineaged-token", tokenInput.value);
  route();
  follow(true);
});
const headers = () => tokenInput.value ? { Authorization: "Bearer " + tokenInput.value } : {};
const $ = (id) => document.getElementById(id);

async function api(path) {
  const r = await fetch("/api/v1" + path, { headers: headers() });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(r.status + " " + (body.message || r.statusText));
  return body;
}

// Colours by state: the `state` of /api/v1/graph nodes (src/api/graph.rs
// checks every state it can send has one here).
const COLOURS = {
  ok: "#12b76a", stale: "#f79009", unchecked: "#d0d5dd", error: "#fda29b",
  waiting: "#b2ddff", building: "#2e90fa", verifying: "#6172f3",
  awaiting_approval: "#9e77ed", deploying: "#0ba5ec", failed: "#d92d20",
  refused: "#c11574", blocked: "#667085", cancelled: "#e4e7ec",
};
const LIGHT = new Set(["stale", "unchecked", "error", "waiting", "cancelled"]);
// Rollout stages → colour state (as graph.rs maps them).
const STAGE = {
  waiting: "waiting", queued: "building", building: "building", built: "building",
  verifying: "verifying", awaiting_approval: "awaiting_approval", waiting_for_window: "deploying",
  deploying: "deploying", done: "ok", failed: "failed", deploy_failed: "failed",
  blocked: "blocked", refused: "refused", cancelled: "cancelled",
};
const ROLLOUT_STATE = { running: "building", succeeded: "ok", failed: "failed", partially_failed: "failed", cancelled: "cancelled" };

// DOM helpers.
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-")) e.dataset[k.slice(5)] = v; else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}
function cell(text, cls) { return el("td", { text: text ?? "-", class: cls || "" }); }
// Rows are redrawn only when their data changed: a live refresh never
// replaces what someone is about to click or type into.
const drawnData = {};
function fill(id, rows, count, data) {
  const tb = $(id);
  if (count !== undefined) $("n-" + count[0]).textContent = "(" + count[1] + ")";
  const key = JSON.stringify(data);
  if (data !== undefined && drawnData[id] === key) return;
  drawnData[id] = key;
  if (!rows.length) rows = [[cell("none", "muted")]];
  tb.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells)));
}
function table(head, rows) {
  const body = rows.length ? rows.map((cells) => el("tr", {}, ...cells))
    : [el("tr", {}, el("td", { class: "muted", text: "none", colSpan: head.length }))];
  return el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))), el("tbody", {}, ...body));
}
const short = (d) => d ? d.slice(0, 19) : "-";
const time = (ms) => ms ? new Date(ms).toLocaleString() : "-";
function ago(ms) {
  if (!ms) return "-";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 90 ? s + " s ago" : s < 5400 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
}
function span(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 90 ? s + " s" : s < 5400 ? Math.round(s / 60) + " min" : (s / 3600).toFixed(1) + " h";
}
const imageHref = (name) => "#/images/" + encodeURIComponent(name);
const rolloutHref = (id) => "#/rollouts/" + id;
function imageLink(name) { return el("a", { href: imageHref(name), class: "mono", text: name }); }
function badge(state, text) {
  const b = el("span", { class: "badge", text: (text || state).replaceAll("_", " ") });
  b.dataset.state = state;
  b.style.background = COLOURS[state] || "#eee";
  b.style.color = LIGHT.has(state) || !COLOURS[state] ? "#1d2329" : "#fff";
  return b;
}
// A link to a CI run; only http(s) URLs become links.
function runLink(url) {
  if (url && /^https?:\/\//.test(url)) return el("a", { href: url, text: "run", rel: "noopener", target: "_blank", title: url });
  return document.createTextNode(url || "-");
}
function td(...children) { return el("td", {}, ...children); }

// ---------------------------------------------------------------------
// The lineage drawn: /api/v1/graph views laid out by dagre, top to bottom
// (bases above what is built on them), each image a box in its state's
// colour; a click opens the image's page.

// A short label: no registry host, no docker.io/library/.
function label(name) {
  const rest = name.replace(/^docker\.io\/library\//, "");
  const slash = rest.indexOf("/");
  const host = slash > 0 ? rest.slice(0, slash) : "";
  return /[.:]/.test(host) || host === "localhost" ? rest.slice(slash + 1) : rest;
}

function legend(nodes) {
  const counts = {};
  for (const n of nodes) counts[n.state] = (counts[n.state] || 0) + 1;
  const box = el("div", { class: "legend" });
  for (const state of Object.keys(COLOURS)) {
    if (counts[state]) box.append(badge(state, state.replaceAll("_", " ") + " " + counts[state]));
  }
  return box;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

function drawGraph(view) {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "TB", ranker: "longest-path", nodesep: 16, ranksep: 44, marginx: 14, marginy: 24 });
  g.setDefaultEdgeLabel(() => ({}));
  view.nodes.forEach((n, i) => g.setNode(String(i), { width: Math.min(300, 20 + 7.3 * label(n.name).length), height: 30 }));
  view.edges.forEach(([a, b]) => g.setEdge(String(a), String(b)));
  dagre.layout(g);
  const { width, height } = g.graph();
  const root = svg("svg", { width: Math.ceil(width), height: Math.ceil(height), viewBox: `0 0 ${Math.ceil(width)} ${Math.ceil(height)}`, role: "img" });
  root.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
    svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#98a2b3" }))));
  for (const e of g.edges()) {
    const pts = g.edge(e).points;
    const d = pts.map((p, i) => (i ? "L" : "M") + p.x.toFixed(1) + "," + p.y.toFixed(1)).join(" ");
    root.append(svg("path", { class: "edge", d, "marker-end": "url(#arrow)", "data-from": view.nodes[e.v].name, "data-to": view.nodes[e.w].name }));
  }
  const centres = new Set(view.centres);
  view.nodes.forEach((n, i) => {
    const box = g.node(String(i));
    const x = box.x - box.width / 2, y = box.y - box.height / 2;
    const title = svg("title");
    title.textContent = n.name + "\n" + n.detail.replaceAll("_", " ") + (n.reason ? "\n" + n.reason : "") +
      (n.digest ? "\n" + short(n.digest) : "");
    const text = svg("text", { x: box.x, y: box.y + 4, "text-anchor": "middle", fill: LIGHT.has(n.state) ? "#1d2329" : "#fff" });
    text.textContent = label(n.name);
    const node = svg("g", { class: "node" + (centres.has(n.name) ? " centre" : ""), "data-name": n.name, "data-state": n.state, tabindex: 0 },
      title, svg("rect", { x, y, width: box.width, height: box.height, rx: 6, fill: COLOURS[n.state] || "#eee", stroke: "#0003" }), text);
    if (n.hidden_parents) {
      const t = svg("text", { class: "hidden-count", x: box.x, y: y - 5, "text-anchor": "middle" });
      t.textContent = "+" + n.hidden_parents + " parent" + (n.hidden_parents > 1 ? "s" : "");
      node.append(t);
    }
    if (n.hidden_children) {
      const t = svg("text", { class: "hidden-count", x: box.x, y: y + box.height + 13, "text-anchor": "middle" });
      t.textContent = "+" + n.hidden_children + " more below";
      node.append(t);
    }
    const open = () => { location.hash = imageHref(n.name); };
    node.addEventListener("click", open);
    node.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
    root.append(node);
  });
  return el("div", { class: "graph" }, root);
}

function graphSection(view, controls) {
  if (!view.nodes.length) {
    return el("section", { id: "lineage" }, el("h2", { text: "Lineage" }), controls || null,
      el("p", { class: "muted", id: "graph-note", text: "Nothing to draw: none of these images is in the configured lineage now." }));
  }
  const hidden = view.nodes.reduce((s, n) => s + n.hidden_parents + n.hidden_children, 0);
  const note = view.nodes.length + " of " + view.total + " images drawn" +
    (view.truncated ? "; the limit cut the view" : "") + (hidden ? "; the +N marks show edges to images not drawn" : "");
  return el("section", { id: "lineage" }, el("h2", { text: "Lineage " }, el("span", { class: "n", id: "graph-note", text: note })),
    controls || null, legend(view.nodes), drawGraph(view));
}

// ---------------------------------------------------------------------
// Pages.

let current = null;   // the page shown: { load(), onEvent(ev) }
// At most one reload per 400 ms while events arrive (a throttle: a busy
// stream must not postpone it for ever).
let reloadTimer = null;
function reloadSoon(page) {
  if (reloadTimer) return;
  reloadTimer = setTimeout(() => { reloadTimer = null; if (current === page) page.load(); }, 400);
}
// Loads of one page may overlap (the route's, then a live reload): only
// the newest one draws.
function begin(page) { page.seq = (page.seq || 0) + 1; return page.seq; }
const stale = (page, seq) => current !== page || page.seq !== seq;
// A page is redrawn only when its data changed (see `fill`).
function unchanged(page, data) {
  const key = JSON.stringify(data);
  if (page.drawn === key) return true;
  page.drawn = key;
  return false;
}
function pageError(page, e) {
  page.drawn = null;
  if (current !== page) return;
  $("page").replaceChildren(el("section", {}, el("h2", { text: "Cannot show this page" }), el("p", { class: "bad", id: "page-error", text: e.message })));
}

function imagePage(name, params) {
  const page = {
    up: Number(params.get("up") || 3), down: Number(params.get("down") || 3), limit: Number(params.get("limit") || 150),
    names: new Set([name]), typed: {},
    async load() {
      try {
        const seq = begin(page), enc = encodeURIComponent(name);
        const [d, view] = await Promise.all([api("/images/" + enc),
          api(`/graph?image=${enc}&up=${page.up}&down=${page.down}&limit=${page.limit}`)]);
        if (stale(page, seq) || unchanged(page, [d, view])) return;
        page.names = new Set(view.nodes.map((n) => n.name));
        const me = view.nodes.find((n) => n.name === d.image.name) || { state: "unchecked", detail: "unchecked" };
        const facts = el("dl", { class: "facts" });
        const fact = (k, ...v) => facts.append(el("dt", { text: k }), el("dd", {}, ...v));
        fact("state", badge(me.state, me.detail));
        fact("digest", el("span", { class: "mono", text: d.image.current_digest || "not seen yet" }));
        fact("kind", d.image.managed ? "built by lineaged's lineage (managed)" : "external base");
        fact("checked", ago(d.image.last_checked_at) + (d.image.last_changed_at ? "; changed " + ago(d.image.last_changed_at) : ""));
        if (d.image.last_error) fact("last error", el("span", { class: "bad", text: d.image.last_error }));
        if (d.stale.stale) fact("stale", el("span", { class: "warn", text: d.stale.why }));
        if (d.registry) fact("registry", d.registry.host + ": " + d.registry.state + (d.registry.last_error ? " (" + d.registry.last_error + ")" : ""));
        const links = (names) => names.length ? names.flatMap((p, i) => i ? [", ", imageLink(p)] : [imageLink(p)]) : ["none"];
        fact("parents", ...links(d.parents));
        fact("children", ...links(d.children));
        fact("why rebuilt", d.cause && d.cause.text ? el("span", { id: "cause", text: d.cause.text }) : "not rebuilt by lineaged yet",
          d.cause && d.cause.rollout_id ? el("span", {}, " (", el("a", { href: rolloutHref(d.cause.rollout_id), text: "rollout " + d.cause.rollout_id }), ")") : null);

        const controls = el("form", { class: "controls", id: "graph-controls" });
        for (const [k, title] of [["up", "levels up"], ["down", "levels down"], ["limit", "at most"]]) {
          const input = el("input", { type: "number", min: k === "limit" ? 1 : 0, max: k === "limit" ? 500 : 50, value: page.typed[k] ?? page[k], name: k });
          // What is typed survives a live redraw.
          input.addEventListener("input", () => { page.typed[k] = input.value; });
          controls.append(el("label", {}, title + " ", input));
        }
        controls.append(el("button", { text: "redraw" }));
        controls.addEventListener("submit", (ev) => {
          ev.preventDefault();
          const f = new FormData(controls);
          location.hash = imageHref(name) + "?" + new URLSearchParams(f).toString();
        });

        const jobs = d.jobs.map((j) => [cell(j.id), cell(j.kind), td(badge(STAGE[j.state] || (j.state === "succeeded" ? "ok" : j.state === "pending" ? "waiting" : j.state === "running" ? "building" : "failed"), j.state)),
          cell(j.attempt + "/" + j.max_attempts), cell(time(j.created_at)),
          cell(j.finished_at ? span(j.finished_at - j.created_at) : "-"), td(j.rollout_id ? el("a", { href: rolloutHref(j.rollout_id), text: String(j.rollout_id) }) : "-"),
          td(runLink(j.run_url)), cell(j.last_error, j.last_error ? "bad" : "")]);
        const rollouts = d.rollouts.map((r) => [td(el("a", { href: rolloutHref(r.rollout_id), text: "rollout " + r.rollout_id })), cell(r.wave),
          td(badge(STAGE[r.state] || "unchecked", r.state)), cell(short(r.built_digest), "mono"), cell(r.reason, r.reason ? "bad" : "")]);
        const gates = d.gates.flatMap((g) => (g.verdicts || []).map((v) => [cell(short(g.digest), "mono"), cell(g.purpose), cell(v.gate),
          td(badge({ passed: "ok", warned: "stale", refused: "refused" }[v.result] || "error", v.result)), cell(v.reason)]));
        $("page").replaceChildren(
          el("section", {}, el("h2", { class: "mono", id: "page-title", text: d.image.name }), facts),
          graphSection(view, controls),
          el("section", {}, el("h2", { text: "Digest history" }),
            table(["digest", "seen by", "at"], d.digest_history.map((o) => [cell(o.digest, "mono"), cell(o.source), cell(time(o.at))]))),
          el("section", {}, el("h2", { text: "Jobs: rebuilds, gate checks, deploys" }),
            table(["id", "kind", "state", "attempt", "created", "took", "rollout", "CI run", "error"], jobs)),
          el("section", {}, el("h2", { text: "In rollouts" }), table(["rollout", "wave", "state", "built", "reason"], rollouts)),
          el("section", {}, el("h2", { text: "Gate verdicts" }), table(["digest", "for", "gate", "result", "reason"], gates)));
      } catch (e) { pageError(page, e); }
    },
    // Anything about an image drawn here redraws the page.
    onEvent(ev) { if (ev.image && page.names.has(ev.image)) reloadSoon(page); },
  };
  return page;
}

function rolloutPage(id) {
  const page = {
    async load() {
      try {
        const seq = begin(page);
        const [d, view] = await Promise.all([api("/rollouts/" + id), api("/graph?rollout=" + id + "&limit=300")]);
        if (stale(page, seq) || unchanged(page, [d, view])) return;
        const r = d.rollout, imgs = d.waves.flat();
        const facts = el("dl", { class: "facts" });
        const fact = (k, ...v) => facts.append(el("dt", { text: k }), el("dd", {}, ...v));
        fact("state", badge(ROLLOUT_STATE[r.state] || "unchecked", r.state));
        fact("started", time(r.created_at));
        fact(r.finished_at ? "took" : "running for", span((r.finished_at || Date.now()) - r.created_at));
        const causes = el("ul", { id: "causes" }, ...d.causes.map((c) =>
          el("li", { text: c.text + " — " + c.kind.replace("rollout_", "") + " " + time(c.at) })));
        fact("why", causes);
        const counts = {};
        for (const i of imgs) counts[STAGE[i.state]] = (counts[STAGE[i.state]] || 0) + 1;
        fact("images", imgs.length + " in " + d.waves.length + " waves");
        const rows = [];
        d.waves.forEach((wave, w) => {
          rows.push(el("tr", { class: "wave" }, el("td", { colSpan: 8, text: "Wave " + (w + 1) + " (" + wave.length + ")" })));
          for (const i of wave) {
            const finished = ["done", "failed", "deploy_failed", "blocked", "refused", "cancelled"].includes(i.state);
            const timing = finished ? "after " + span(i.updated_at - r.created_at) : "for " + span(Date.now() - i.updated_at);
            rows.push(el("tr", { "data-image": i.image }, td(imageLink(i.image)), td(badge(STAGE[i.state] || "unchecked", i.state)),
              cell(timing), cell(i.build_attempts), cell(short(i.built_digest), "mono"),
              cell(i.job_id), td(runLink(i.run_url)), cell(i.reason, i.reason ? "bad" : "")));
          }
        });
        const waves = el("table", { id: "waves" }, el("thead", {}, el("tr", {},
          ...["image", "state", "when", "builds", "built", "job", "CI run", "reason"].map((h) => el("th", { text: h })))), el("tbody", {}, ...rows));
        $("page").replaceChildren(
          el("section", {}, el("h2", { id: "page-title", text: "Rollout " + r.id }), facts),
          graphSection(view),
          el("section", {}, el("h2", { text: "Waves" }), waves));
      } catch (e) { pageError(page, e); }
    },
    onEvent(ev) { if (ev.rollout_id === id) reloadSoon(page); },
  };
  return page;
}

function causeSummary(c) {
  if (!c) return "-";
  if (c.image) return c.image + " moved (" + c.source + ")";
  if (c.requested) return (c.by || "an operator") + " requested " + c.requested;
  if (c.reconcile) return "reconcile: " + c.reconcile.length + " on outdated bases";
  return JSON.stringify(c);
}

function rolloutsPage(params) {
  const page = {
    async load() {
      try {
        const seq = begin(page), state = params.get("state");
        const list = await api("/rollouts?limit=100" + (state ? "&state=" + encodeURIComponent(state) : ""));
        if (stale(page, seq)) return;
        $("page").replaceChildren(el("section", {}, el("h2", { id: "page-title", text: "Rollouts" }),
          table(["id", "state", "started", "took", "cause"], list.rollouts.map((r) => [
            td(el("a", { href: rolloutHref(r.id), text: String(r.id) })), td(badge(ROLLOUT_STATE[r.state] || "unchecked", r.state)),
            cell(time(r.created_at)), cell(r.finished_at ? span(r.finished_at - r.created_at) : "running"), cell(causeSummary(r.cause))]))));
      } catch (e) { pageError(page, e); }
    },
    onEvent(ev) { if (ev.kind.startsWith("rollout_")) reloadSoon(page); },
  };
  return page;
}

function imagesPage(params) {
  const page = {
    async load() {
      try {
        const q = new URLSearchParams({ limit: "200" });
        for (const k of ["state", "managed", "registry", "after"]) if (params.get(k)) q.set(k, params.get(k));
        const seq = begin(page);
        const list = await api("/images?" + q);
        if (stale(page, seq)) return;
        const filter = el("form", { class: "controls", id: "image-filter" });
        const select = el("select", { name: "state" }, ...["", "rebuilding", "error", "stale", "unchecked", "ok"].map((s) =>
          el("option", { value: s, text: s || "any state", selected: s === (params.get("state") || "") })));
        filter.append(el("label", {}, "state ", select), el("button", { text: "filter" }));
        filter.addEventListener("submit", (ev) => { ev.preventDefault(); location.hash = "#/images" + (select.value ? "?state=" + select.value : ""); });
        const colour = { rebuilding: "building", error: "error", stale: "stale", unchecked: "unchecked", ok: "ok" };
        const more = list.next ? el("a", { href: "#/images?" + new URLSearchParams({ ...Object.fromEntries(params), after: list.next }), text: "next page" }) : null;
        $("page").replaceChildren(el("section", {}, el("h2", { id: "page-title", text: "Images" }), filter,
          table(["image", "kind", "state", "digest", "checked"], list.images.map((i) => [td(imageLink(i.name)),
            cell(i.managed ? "managed" : "external"), td(badge(colour[i.state] || "unchecked", i.state)),
            cell(short(i.current_digest), "mono"), cell(ago(i.last_checked_at))])), more));
      } catch (e) { pageError(page, e); }
    },
    onEvent() {},
  };
  return page;
}

// ---------------------------------------------------------------------
// The overview.

// Approve or reject with the token typed into the page (write role).
async function decide(id, verb, reason) {
  const r = await fetch("/api/v1/approvals/" + id + "/" + verb, {
    method: "POST", headers: { ...headers(), "Content-Type": "application/json" },
    body: JSON.stringify(reason ? { reason } : {}) });
  const body = await r.json().catch(() => ({}));
  $("approval-msg").textContent = r.ok ? "approval " + id + " " + body.state + " by " + body.decided_by
    : "approval " + id + ": " + r.status + " " + (body.message || r.statusText);
  $("approval-msg").className = r.ok ? "ok" : "bad";
  refresh();
}
// Reasons being typed survive the live refreshes that redraw the rows.
const reasons = {};
function approvalRow(a) {
  const reason = el("input", { placeholder: "reason (optional)", value: reasons[a.id] || "" });
  reason.addEventListener("input", () => { reasons[a.id] = reason.value; });
  const act = el("td");
  for (const verb of ["approve", "reject"]) {
    const b = el("button", { text: verb, class: verb, "data-approval": a.id });
    b.addEventListener("click", () => decide(a.id, verb, reason.value.trim()));
    act.append(b, " ");
  }
  const left = Math.max(0, a.expires_at - Date.now()) / 60000;
  const expires = left >= 120 ? Math.round(left / 60) + " h" : Math.round(left) + " min";
  return [cell(a.id), td(imageLink(a.image)), cell(a.stage), cell(short(a.digest), "mono"), cell("in " + expires), td(reason), act];
}

async function refresh() {
  try {
    const [stale, rollouts, failed, dead, regs, recent, approvals] = await Promise.all([
      api("/images?state=stale&limit=100"), api("/rollouts?state=running&limit=50"),
      api("/jobs?state=failed&limit=100"), api("/jobs?state=dead&limit=100"), api("/registries"),
      api("/rollouts?limit=5"), api("/approvals?state=pending&limit=100")]);
    fill("approvals", approvals.approvals.map(approvalRow), ["approvals", approvals.approvals.length], approvals.approvals);
    fill("stale", stale.images.map((i) => [td(imageLink(i.name)), cell(short(i.current_digest), "mono"), cell(i.state, "warn")]),
      ["stale", stale.images.length + (stale.next ? "+" : "")]);
    const running = rollouts.rollouts.filter((r) => r.state === "running");
    const details = await Promise.all(running.map((r) => api("/rollouts/" + r.id)));
    fill("rollouts", details.map((d) => {
      const imgs = d.waves.flat(); const n = (...s) => imgs.filter((i) => s.includes(i.state)).length;
      return [td(el("a", { href: rolloutHref(d.rollout.id), text: String(d.rollout.id) })), cell(imgs.length), cell(n("done"), "ok"), cell(n("queued", "building", "built", "verifying")),
        cell(n("awaiting_approval", "waiting_for_window", "deploying")), cell(n("waiting")),
        cell(n("failed", "blocked", "refused", "deploy_failed"), n("failed", "blocked", "refused", "deploy_failed") ? "bad" : "")];
    }), ["rollouts", running.length]);
    // Refusals in the newest rollouts, with the gate's reason.
    const recentDetails = await Promise.all(recent.rollouts.map((r) => api("/rollouts/" + r.id)));
    const refused = recentDetails.flatMap((d) => d.waves.flat().filter((i) => i.state === "refused"));
    fill("refused", refused.map((i) => [td(el("a", { href: rolloutHref(i.rollout_id), text: String(i.rollout_id) })), td(imageLink(i.image)), cell(i.reason, "bad")]),
      ["refused", refused.length]);
    const inCi = details.flatMap((d) => d.waves.flat().filter((i) => ["queued", "building"].includes(i.state)));
    fill("ci", inCi.map((i) => [cell(i.rollout_id), td(imageLink(i.image)), cell(i.state), cell(i.job_id), td(runLink(i.run_url))]),
      ["ci", inCi.length]);
    const jobs = failed.jobs.concat(dead.jobs);
    fill("jobs", jobs.map((j) => [cell(j.id), cell(j.state, "bad"), j.image ? td(imageLink(j.image)) : cell("-"), cell(j.last_error)]), ["jobs", jobs.length]);
    fill("regs", regs.registries.map((r) => [cell(r.host, "mono"), cell(r.state, r.state === "healthy" ? "ok" : r.state === "unchecked" ? "muted" : "bad"),
      cell(r.ratelimit_limit != null ? r.ratelimit_remaining + "/" + r.ratelimit_limit : "-"), cell(r.last_error)]),
      ["regs", regs.registries.filter((r) => !["healthy", "unchecked"].includes(r.state)).length + " not healthy"]);
  } catch (e) { $("conn").textContent = "error: " + e.message; $("conn").className = "bad"; }
}
const overview = { load: refresh, onEvent() { reloadSoon(overview); } };

$("lookup").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const ref = $("ref").value.trim();
  if (ref) location.hash = imageHref(ref);
});

// ---------------------------------------------------------------------
// Routing: #/, #/images[?state=…], #/images/REF[?up=&down=&limit=],
// #/rollouts[?state=…], #/rollouts/ID.
function decode(s) { try { return decodeURIComponent(s); } catch { return s; } }
function route() {
  const [path, query] = (location.hash.replace(/^#/, "") || "/").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  let page, nav = parts[0] || "overview";
  if (!parts.length) page = overview;
  else if (parts[0] === "images" && parts.length === 1) page = imagesPage(params);
  else if (parts[0] === "images") page = imagePage(decode(parts.slice(1).join("/")), params);
  else if (parts[0] === "rollouts" && parts.length === 1) page = rolloutsPage(params);
  else if (parts[0] === "rollouts" && /^\d+$/.test(parts[1])) page = rolloutPage(Number(parts[1]));
  else { page = overview; nav = "overview"; }
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("on", a.dataset.nav === nav);
  current = page;
  $("overview").hidden = page !== overview;
  $("page").hidden = page === overview;
  if (page !== overview) $("page").replaceChildren(el("p", { class: "muted", text: "loading…" }));
  document.title = page === overview ? "lineaged" : "lineaged · " + decode(parts.slice(1).join("/") || parts[0]);
  page.load();
}
window.addEventListener("hashchange", route);

// Live events: fetch streaming (EventSource cannot send a token), resumed
// from the last id after a drop. Each event goes to the overview's list
// and to the page shown, which redraws when it concerns it.
let lastId = 0, generation = 0, stream = null;
function show(ev) {
  const li = document.createElement("li");
  const t = new Date(ev.at).toLocaleTimeString();
  const d = (ev.data && typeof ev.data === "object") ? ev.data : {};
  const extra = ["registry", "state", "reason", "by", "old", "new"].filter((k) => d[k] != null)
    .map((k) => k + "=" + (String(d[k]).startsWith("sha256:") ? short(d[k]) : d[k])).join(" ");
  li.textContent = t + "  " + ev.kind + (ev.image ? "  " + ev.image : "") +
    (ev.rollout_id ? "  rollout " + ev.rollout_id : "") + (extra ? "  " + extra : "");
  if (/failed|blocked|degraded|refused/.test(ev.kind)) li.className = "bad";
  $("events").prepend(li);
  while ($("events").children.length > 200) $("events").lastChild.remove();
  if (current) current.onEvent(ev);
}
// One stream at a time: a new token aborts the old one, and a retry timer
// only acts for the stream generation that set it.
async function follow(restart) {
  if (restart) { generation++; if (stream) stream.abort(); }
  const mine = generation;
  const abort = stream = new AbortController();
  try {
    // First connection: the last 50 events, then live; later: resume.
    const q = lastId ? "after=" + lastId : "tail=50";
    const r = await fetch("/api/v1/events?" + q, { headers: headers(), signal: abort.signal });
    if (!r.ok) throw new Error(String(r.status));
    $("conn").textContent = "live"; $("conn").className = "ok";
    const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done || mine !== generation) break;
      buf += dec.decode(value, { stream: true });
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, end); buf = buf.slice(end + 2);
        const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (!data) continue;
        const ev = JSON.parse(data); lastId = Math.max(lastId, ev.id); show(ev);
      }
    }
  } catch (e) {
    if (mine === generation) { $("conn").textContent = "reconnecting (" + e.message + ")"; $("conn").className = "warn"; }
  }
  if (mine === generation) setTimeout(() => { if (mine === generation) follow(false); }, 2000);
}
route();
follow(true);
