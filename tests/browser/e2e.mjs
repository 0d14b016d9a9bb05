// End-to-end test of the overseer web UI in headless Debian Chromium (playwright-core,
// never a downloaded browser build). Expects a running `overseer serve` (the Rust test
// crates/cli/tests/serve_browser.rs starts one with a small corpus, SmolLM2 and a
// fixture lab run) and checks: the chat page streams an answer token by token, a
// citation chip opens a source card with a highlighted passage, search shows results,
// and the lab page shows a plot. Screenshots at desktop and phone widths go to OUTDIR.
//
// Usage: node e2e.mjs URL OUTDIR
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const base = process.argv[2];
const outDir = process.argv[3] || "tests-output/browser";
if (!base) {
  console.error("usage: node e2e.mjs URL OUTDIR");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(outDir, { recursive: true });
const userDataDir = mkdtempSync(join(tmpdir(), "overseer-chromium-"));

const DESKTOP = { width: 1280, height: 860 };
const PHONE = { width: 390, height: 844 };
const step = (m) => console.log(`e2e: ${m}`);
function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  viewport: DESKTOP,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failed = false;
try {
  const page = context.pages()[0] || (await context.newPage());
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  // ---- chat ----
  step(`open ${base}`);
  await page.goto(base, { waitUntil: "load" });
  await page.waitForSelector("#status.ok", { timeout: 30_000 });
  await page.screenshot({ path: join(outDir, "home-desktop.png") });

  const question = process.env.E2E_QUESTION || "What is reward hacking?";
  step(`ask: ${question}`);
  await page.fill("#question", question);
  await page.press("#question", "Enter");

  // Watch the answer grow while it streams: several distinct lengths before the end.
  const lengths = await page.evaluate(async () => {
    const seen = new Set();
    const t0 = Date.now();
    for (;;) {
      const a = document.querySelector(".msg.assistant .answer");
      if (a && a.textContent.length > 0) seen.add(a.textContent.length);
      const done = a && !a.classList.contains("streaming") && document.querySelector("#send") && !document.querySelector("#send").disabled;
      if (done && seen.size > 0) break;
      if (Date.now() - t0 > 300_000) break;
      await new Promise((r) => setTimeout(r, 25));
    }
    return [...seen];
  });
  const phase = await page.textContent(".msg.assistant .phase");
  step(`answer streamed in ${lengths.length} visible steps; status: ${phase.trim()}`);
  check(!/error/i.test(phase), `the answer failed: ${phase}`);
  check(lengths.length >= 3, `tokens did not stream (saw ${lengths.length} distinct lengths)`);

  // Open a citation: a chip in the answer, else an entry of the sources list.
  let chip = await page.$(".msg.assistant .answer .cite:not(.missing)");
  let via = "citation chip in the answer";
  if (!chip) {
    chip = await page.$(".msg.assistant .sources-list button");
    via = "sources list";
  }
  check(chip, "the answer has no citation to open");
  await chip.click();
  await page.waitForSelector("#source-panel:not([hidden]) .source-card h2", { timeout: 5_000 });
  const title = (await page.textContent("#source-card h2")).trim();
  const marked = await page.$$eval("#source-card blockquote mark", (m) => m.length);
  step(`source card opened via ${via}: ${title} (${marked} highlighted spans)`);
  check(title.length > 1, "source card has no title");
  check(marked > 0, "quoted passage is not highlighted");
  await page.screenshot({ path: join(outDir, "chat-desktop.png"), fullPage: false });
  await page.setViewportSize(PHONE);
  await page.screenshot({ path: join(outDir, "chat-phone.png") });
  await page.click("#close-source");
  await page.screenshot({ path: join(outDir, "chat-phone-answer.png") });
  await page.setViewportSize(DESKTOP);

  // ---- search ----
  step("search");
  await page.goto(`${base}#/search`);
  await page.fill("#search-q", process.env.E2E_SEARCH || "adversarial robustness");
  await page.click("#search-form button[type=submit]");
  await page.waitForSelector(".result", { timeout: 30_000 });
  const nResults = await page.$$eval(".result", (r) => r.length);
  step(`${nResults} search results`);
  check(nResults > 0, "no search results");
  await page.screenshot({ path: join(outDir, "search-desktop.png") });

  // ---- lab ----
  step("lab");
  await page.goto(`${base}#/lab`);
  await page.waitForSelector(".plot img", { timeout: 15_000 });
  await page.waitForFunction(() => [...document.querySelectorAll(".plot img")].every((i) => i.complete && i.naturalWidth > 0), null, { timeout: 15_000 });
  const plots = await page.$$eval(".plot img", (i) => i.length);
  step(`${plots} plot(s) rendered`);
  check(plots > 0, "lab page shows no plot");
  await page.screenshot({ path: join(outDir, "lab-desktop.png"), fullPage: true });
  await page.setViewportSize(PHONE);
  await page.screenshot({ path: join(outDir, "lab-phone.png") });

  check(consoleErrors.length === 0, `console errors: ${consoleErrors.join(" | ")}`);
  step(`ok; screenshots in ${outDir}`);
} catch (e) {
  failed = true;
  console.error(`e2e: FAILED: ${e.message}`);
  try {
    const p = context.pages()[0];
    if (p) await p.screenshot({ path: join(outDir, "failure.png"), fullPage: true });
  } catch (_) { /* best effort */ }
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
