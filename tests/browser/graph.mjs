// The lineage graph, the rollout page and the image page, in a real
// browser: Debian's Chromium driven by playwright-core.
// Usage: node graph.mjs BASE_URL TOKEN ROLLOUT_ID OUT_DIR
// The rollout (tests/dashboard.rs sets it up) has an image done, one
// refused by a gate, one blocked behind it and one awaiting approval.
// Checks the graph against the API (node count, edges, every node's state
// and colour), clicks a node through to its image page, approves the
// waiting deploy through the API and watches the open page follow the
// live event without a reload. Writes graph.png, rollout.png and image.png
// to OUT_DIR; prints a JSON report. Exit 0 when all held.
import { chromium } from "playwright-core";

const [base, token, rollout, out] = process.argv.slice(2);
const fail = (msg) => { console.error("FAIL: " + msg); process.exit(1); };
// The palette is part of the product (docs/img, the legend): a change
// here is deliberate.
const COLOURS = {
  ok: "#12b76a", stale: "#f79009", unchecked: "#d0d5dd", error: "#fda29b",
  waiting: "#b2ddff", building: "#2e90fa", verifying: "#6172f3",
  awaiting_approval: "#9e77ed", deploying: "#0ba5ec", failed: "#d92d20",
  refused: "#c11574", blocked: "#667085", cancelled: "#e4e7ec",
};
async function api(path, init = {}) {
  const r = await fetch(base + "/api/v1" + path, { ...init, headers: { Authorization: "Bearer " + token, "Content-Type": "application/json", ...(init.headers || {}) } });
  if (!r.ok) fail(path + ": " + r.status + " " + await r.text());
  return r.json();
}

// A name inside a quoted attribute selector.
const cssq = (s) => s.replace(/["\\]/g, "\\$&");
// waitForFunction, failing with what the page shows instead.
async function until(page, what, fn, arg, timeout = 20000) {
  try {
    await page.waitForFunction(fn, arg, { timeout });
  } catch (e) {
    const shown = await page.evaluate(() => location.hash + "\n" + document.getElementById("page").innerText.slice(0, 800));
    fail(what + ": " + e.message.split("\n")[0] + "\npage: " + shown);
  }
}

// The drawn graph as the page has it.
async function drawn(page) {
  return page.$$eval("#lineage svg g.node", (gs) => gs.map((g) => ({
    name: g.dataset.name, state: g.dataset.state, fill: g.querySelector("rect").getAttribute("fill"),
    label: g.querySelector("text").textContent,
  })));
}
// Same nodes, states and colours as the API view; every edge drawn.
async function matches(page, view, what) {
  const nodes = await drawn(page);
  if (nodes.length !== view.nodes.length) fail(`${what}: ${nodes.length} nodes drawn, the API has ${view.nodes.length}`);
  for (const n of view.nodes) {
    const d = nodes.find((x) => x.name === n.name);
    if (!d) fail(`${what}: ${n.name} not drawn`);
    if (d.state !== n.state) fail(`${what}: ${n.name} drawn ${d.state}, API ${n.state}`);
    if (d.fill !== COLOURS[n.state]) fail(`${what}: ${n.name} (${n.state}) filled ${d.fill}, want ${COLOURS[n.state]}`);
  }
  const edges = await page.$$eval("#lineage svg path.edge", (ps) => ps.map((p) => p.dataset.from + " -> " + p.dataset.to));
  const want = view.edges.map(([a, b]) => view.nodes[a].name + " -> " + view.nodes[b].name);
  if (edges.length !== want.length || !want.every((e) => edges.includes(e))) fail(`${what}: edges ${JSON.stringify(edges)} != ${JSON.stringify(want)}`);
  return nodes;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const report = {};
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text() + " " + (m.location().url || "")); });
  // The token, as a person types it; it stays for the session.
  await page.goto(base + "/");
  await page.fill("#token", token);
  await page.dispatchEvent("#token", "change");

  // The rollout page: graph, waves, cause.
  await page.goto(base + "/#/rollouts/" + rollout);
  await until(page, "the rollout page", (r) => document.getElementById("page-title")?.textContent === "Rollout " + r
    && document.querySelector("#lineage svg g.node") !== null, rollout);
  if (await page.locator("#overview").isVisible()) fail("the overview shows on the rollout page");
  const view = await api("/graph?rollout=" + rollout + "&limit=300");
  const states = new Set(view.nodes.map((n) => n.state));
  for (const s of ["ok", "refused", "blocked", "awaiting_approval"]) if (!states.has(s)) fail("rollout lacks a " + s + " image: " + JSON.stringify(view.nodes));
  const nodes = await matches(page, view, "rollout graph");
  report.rollout_nodes = nodes.length;
  report.states = [...states].sort();
  const detail = await api("/rollouts/" + rollout);
  const rows = await page.locator("#waves tbody tr[data-image]").count();
  if (rows !== detail.waves.flat().length) fail(`waves table has ${rows} images, the rollout ${detail.waves.flat().length}`);
  const waveRows = await page.locator("#waves tr.wave").count();
  if (waveRows !== detail.waves.length) fail(`${waveRows} wave headers for ${detail.waves.length} waves`);
  const cause = await page.locator("#causes li").first().textContent();
  if (!/ moved from sha256:.* to sha256:/.test(cause)) fail("cause: " + cause);
  const refused = detail.waves.flat().find((i) => i.state === "refused");
  const refusedRow = await page.locator(`#waves tr[data-image="${cssq(refused.image)}"]`).textContent();
  if (!refusedRow.includes(refused.reason)) fail("refused row lacks the gate's reason: " + refusedRow);
  await page.screenshot({ path: out + "/rollout.png", fullPage: true });

  // Click-through: the waiting image's node opens its page.
  const waiting = view.nodes.find((n) => n.state === "awaiting_approval");
  await page.locator(`#lineage g.node[data-name="${cssq(waiting.name)}"]`).click();
  await until(page, "the image page after a click", (n) => document.getElementById("page-title")?.textContent === n, waiting.name);
  if (decodeURIComponent(new URL(page.url()).hash) !== "#/images/" + waiting.name) fail("hash after click: " + page.url());
  await until(page, "the clicked image's graph", (n) => document.querySelector("#lineage svg g.node.centre")?.dataset.name === n, waiting.name);
  const imageView = await api("/graph?image=" + encodeURIComponent(waiting.name));
  await matches(page, imageView, "image graph");
  const centre = await page.$eval("#lineage g.node.centre", (g) => g.dataset.name);
  if (centre !== waiting.name) fail("centre drawn: " + centre);
  const history = await page.locator("text=Digest history").count();
  if (!history) fail("image page has no digest history");
  const verdict = await page.locator("text=Gate verdicts >> xpath=.. >> [data-state]").first().getAttribute("data-state");
  if (verdict !== "ok") fail("the passed signature verdict is drawn " + verdict);
  await page.screenshot({ path: out + "/image.png", fullPage: true });

  // Live update: the deploy is approved elsewhere; the open page turns the
  // node from awaiting approval without reloading.
  await page.evaluate(() => { window.__notReloaded = true; });
  const pending = await api("/approvals?state=pending");
  const approval = pending.approvals.find((a) => a.image === waiting.name);
  if (!approval) fail("no pending approval for " + waiting.name);
  await api("/approvals/" + approval.id + "/approve", { method: "POST", body: JSON.stringify({ reason: "approved while the page watched" }) });
  await until(page, "the node after approval", (n) => {
    const g = document.querySelector(`#lineage g.node[data-name="${CSS.escape(n)}"]`);
    return g && g.dataset.state !== "awaiting_approval";
  }, waiting.name);
  if (!await page.evaluate(() => window.__notReloaded === true)) fail("the page reloaded");
  report.after_approval = await page.$eval(`#lineage g.node[data-name="${cssq(waiting.name)}"]`, (g) => g.dataset.state);
  report.approved = approval.id;

  // The graph of the lineage's middle: ancestors above, descendants below.
  const mid = view.nodes.find((n) => n.state === "ok" && n.managed);
  await page.goto(base + "/#/images/" + encodeURIComponent(mid.name));
  await until(page, "the middle image's page", (n) => document.getElementById("page-title")?.textContent === n
    && document.querySelector("#lineage svg g.node.centre")?.dataset.name === n, mid.name);
  await matches(page, await api("/graph?image=" + encodeURIComponent(mid.name)), "middle graph");
  // Ancestors are drawn above their descendants.
  const y = await page.$$eval("#lineage g.node", (gs) => Object.fromEntries(gs.map((g) => [g.dataset.name, g.querySelector("rect").y.baseVal.value])));
  const mv = await api("/graph?image=" + encodeURIComponent(mid.name));
  for (const [a, b] of mv.edges) {
    if (!(y[mv.nodes[a].name] < y[mv.nodes[b].name])) fail(`${mv.nodes[a].name} is not drawn above its child ${mv.nodes[b].name}`);
  }
  await page.locator("#lineage").screenshot({ path: out + "/graph.png" });

  // The image list links to the pages.
  await page.goto(base + "/#/images");
  await until(page, "the image list", () => document.getElementById("page-title")?.textContent === "Images"
    && document.querySelector("#page tbody a") !== null);
  const listed = await page.locator("#page tbody tr").count();
  if (listed !== view.total) fail(`image list shows ${listed} of ${view.total}`);

  if (errors.length) fail("page errors: " + errors.join("; "));
  console.log(JSON.stringify(report));
} finally {
  await browser.close();
}
