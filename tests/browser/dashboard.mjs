// Drives the dashboard of a running `gearbox demo` in Debian's headless Chromium.
//
//   node tests/browser/dashboard.mjs http://127.0.0.1:PORT
//
// Environment: CHROMIUM (default /usr/bin/chromium); SCREENSHOT_DIR, if set, receives
// overview.png, topic.png, dlq.png and lineage.png. Exits non-zero, naming the step, on the
// first failed check. crates/gearbox/tests/dashboard_browser.rs runs it against the real binary.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const base = process.argv[2];
if (!base) throw new Error("usage: dashboard.mjs <dashboard url>");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR || "";

// Bounds of every wait (ms).
const PIPELINES_WAIT_MS = 30_000;
const STATE_CHANGE_WAIT_MS = 120_000;
const EVENT_WAIT_MS = 30_000;
const DLQ_WAIT_MS = 120_000;
const LINEAGE_WAIT_MS = 60_000;
const POLL_MS = 500;
// Dead letters waited for before the redrive: with two or more, a drop is unmistakable even if
// one more order is dead-lettered while the page reloads.
const DLQ_DEPTH_BEFORE_REDRIVE_MIN = 2;
// With SCREENSHOT_DIR set, how long to wait for a card that needs attention before the
// overview screenshot (it is taken either way).
const SCREENSHOT_ATTENTION_WAIT_MS = 40_000;
// The demo's pipelines (crates/gearbox/src/demo.rs).
const DEMO_PIPELINES = 6;

let step = "start";
function check(ok, message) {
  if (!ok) throw new Error(`${step}: ${message}`);
}

async function until(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${step}: timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

async function shot(page, name) {
  if (!SCREENSHOT_DIR) return;
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOT_DIR, `${name}.png`), fullPage: false });
  console.log(`screenshot ${name}.png`);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const problems = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  // Records CSP violations; an init script runs through the DevTools protocol, outside the
  // page's CSP, so this does not weaken what is being tested.
  await context.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`),
    );
  });
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console error on ${page.url()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error on ${page.url()}: ${e}`));
  const noViolations = async () => {
    const csp = await page.evaluate(() => window.__csp);
    check(csp.length === 0, `CSP violations: ${csp.join("; ")}`);
  };

  step = "overview: pipeline cards";
  await page.goto(base + "/");
  const headers = (await page.request.get(base + "/")).headers();
  check(headers["content-security-policy"]?.includes("script-src 'self'"), "no CSP header");
  await until(`${DEMO_PIPELINES} pipeline cards`, PIPELINES_WAIT_MS, async () =>
    (await page.locator("article.card.pipeline").count()) >= DEMO_PIPELINES,
  );
  check((await page.locator("article.card.topic").count()) >= 5, "topic cards missing");
  await noViolations();

  step = "overview: a card changes state without a reload";
  await page.evaluate(() => (window.__notReloaded = true));
  const health = () =>
    page.$$eval("article.card.pipeline", (cards) =>
      Object.fromEntries(cards.map((c) => [c.dataset.pipeline, c.className])),
    );
  const before = await health();
  const changed = await until("a pipeline card to change its status class", STATE_CHANGE_WAIT_MS, async () => {
    const now = await health();
    return Object.keys(now).find((name) => name in before && now[name] !== before[name]);
  });
  const after = await health();
  console.log(`card ${changed}: "${before[changed]}" -> "${after[changed]}"`);
  check(await page.evaluate(() => window.__notReloaded === true), "the page was reloaded");
  check(
    (await page.locator("#live").getAttribute("data-refreshed-at")) !== null,
    "the fragment was never refreshed",
  );
  await noViolations();
  if (SCREENSHOT_DIR) {
    const attention = async () => Number(await page.locator("#attention-count").textContent()) >= 1;
    const deadline = Date.now() + SCREENSHOT_ATTENTION_WAIT_MS;
    while (!(await attention()) && Date.now() < deadline) await page.waitForTimeout(POLL_MS);
  }
  await shot(page, "overview");

  step = "topic browser: an event id";
  await page.goto(base + "/ui/topics/orders");
  const eventId = await until("an event in the orders topic", EVENT_WAIT_MS, async () => {
    const ids = await page.locator("code.event-id").allTextContents();
    return ids[0];
  });
  console.log(`event id from the topic browser: ${eventId}`);
  await page.locator("details.event").first().locator("summary").click();
  check(
    (await page.locator("details.event[open] pre.json").first().textContent()).includes('"specversion"'),
    "the event's JSON is not shown",
  );
  await noViolations();
  await shot(page, "topic");

  step = "DLQ browser: redrive";
  await page.goto(base + "/ui/dlq/orders");
  const depthNow = async () => Number(await page.locator("#dlq-depth").textContent());
  const depthBefore = await until(`${DLQ_DEPTH_BEFORE_REDRIVE_MIN} dead-lettered orders`, DLQ_WAIT_MS, async () => {
    const d = await depthNow();
    return d >= DLQ_DEPTH_BEFORE_REDRIVE_MIN ? d : 0;
  });
  await shot(page, "dlq");
  await Promise.all([page.waitForURL(/redriven=/), page.locator("#redrive").click()]);
  const redriven = Number((await page.locator("#redriven").textContent()).match(/\d+/)[0]);
  const depthAfter = await depthNow();
  console.log(`DLQ depth ${depthBefore} -> ${depthAfter}, ${redriven} redriven`);
  check(redriven >= 1, `nothing was redriven (${redriven})`);
  check(depthAfter < depthBefore, `the DLQ depth did not drop (${depthBefore} -> ${depthAfter})`);
  await noViolations();

  step = "lineage: search by event id";
  await page.goto(base + "/ui/lineage");
  await page.locator('select[name="by"]').selectOption("event");
  await page.locator('input[name="q"]').fill(eventId);
  await Promise.all([page.waitForURL(/\/ui\/lineage\?/), page.locator('#lineage-form button[type="submit"]').click()]);
  // Lineage writes its hops in the background; reload until they are readable.
  await until("the event's trace", LINEAGE_WAIT_MS, async () => {
    if ((await page.locator("#lineage").getAttribute("data-state")) === "done") return true;
    await page.reload();
    return false;
  });
  check((await page.locator("#lineage tr.hop-appended").count()) >= 1, "the trace has no `appended` hop");
  check((await page.locator("#lineage code.event-id").first().textContent()) === eventId, "wrong event traced");
  await noViolations();

  step = "lineage: search by correlation id";
  await until("the order, its shipment and its invoice in one correlation", LINEAGE_WAIT_MS, async () => {
    await page.goto(`${base}/ui/lineage?by=correlation&q=${encodeURIComponent(eventId)}`);
    return (await page.locator("#lineage section.trace-event").count()) >= 3;
  });
  const causes = await page.locator("#lineage section.trace-event h2 a code").allTextContents();
  console.log(`correlation ${eventId}: caused by ${causes.join(", ")}`);
  check(causes.includes(eventId), "no event in the correlation names the order as its cause");
  await noViolations();
  await shot(page, "lineage");

  step = "console";
  check(problems.length === 0, `console errors or page errors:\n${problems.join("\n")}`);
  console.log("dashboard browser test passed");
} finally {
  await browser.close();
}
