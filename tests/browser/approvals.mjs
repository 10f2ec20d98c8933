// The dashboard's approvals, in a real browser: Debian's Chromium driven by
// playwright-core. Usage: node approvals.mjs BASE_URL TOKEN PENDING SCREENSHOT
// Lists the PENDING approvals with their buttons, approves the first with a
// reason and rejects the second using the write token typed into the page,
// and checks what the page says after each. Exit 0 when all held.
import { chromium } from "playwright-core";

const [base, token, pending, shot] = process.argv.slice(2);
const want = Number(pending);
const fail = (msg) => { console.error("FAIL: " + msg); process.exit(1); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(base + "/");
  const buttons = page.locator("#approvals button.approve");
  await buttons.nth(want - 1).waitFor({ timeout: 20000 });
  if (await buttons.count() !== want) fail(`expected ${want} approve buttons, saw ${await buttons.count()}`);
  if (await page.locator("#approvals button.reject").count() !== want) fail("reject buttons missing");
  const count = await page.locator("#n-approvals").textContent();
  if (count !== `(${want})`) fail(`header count ${count}`);
  const rows = await page.locator("#approvals tr").allTextContents();
  if (!rows.every((r) => r.includes("deploy") && r.includes("sha256:"))) fail("rows: " + JSON.stringify(rows));
  await page.screenshot({ path: shot, fullPage: false });

  // A decision without a token is refused, and the page says so.
  await page.locator("#approvals tr").first().locator("button.approve").click();
  await page.waitForFunction(() => /401/.test(document.getElementById("approval-msg").textContent));

  await page.fill("#token", token);
  await page.dispatchEvent("#token", "change");
  const first = page.locator("#approvals tr").first();
  const firstId = await first.locator("td").first().textContent();
  await first.locator("input").fill("checked in Chromium");
  await first.locator("button.approve").click();
  await page.waitForFunction((id) => document.getElementById("approval-msg").textContent
    === `approval ${id} approved by release-manager`, firstId);
  // The row goes; the other stays until it is rejected.
  await page.waitForFunction(() => document.querySelectorAll("#approvals button.approve").length === 1);
  await page.locator("#approvals tr").first().locator("button.reject").click();
  await page.waitForFunction(() => /rejected by release-manager$/.test(document.getElementById("approval-msg").textContent));
  await page.waitForFunction(() => document.getElementById("n-approvals").textContent === "(0)");
  if (errors.length) fail("page errors: " + errors.join("; "));
  console.log(JSON.stringify({ approved: Number(firstId), screenshot: shot }));
} finally {
  await browser.close();
}
