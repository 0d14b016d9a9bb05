// End-to-end test of the overseer web UI in headless Debian Chromium (playwright-core,
// never a downloaded browser build). Expects a running `overseer serve` (the Rust test
// crates/cli/tests/serve_browser.rs starts one with a small corpus, SmolLM2 and a
// fixture lab run) and checks: the chat page streams an answer sentence by sentence that
// is not a paste of its sources, a citation chip opens a source card with a highlighted
// passage, a question the corpus cannot answer gets an abstention, a document's HTML and
// javascript: links are shown as text and never run, search shows results, the digest
// page makes a digest through its form (with E2E_ADMIN_TOKEN, the server's admin token),
// lists it and opens it with its topic sections and collapsible items, none of whose
// document text runs, and the lab page shows a plot. Screenshots at desktop and phone
// widths go to OUTDIR.
//
// Usage: [E2E_ADMIN_TOKEN=...] node e2e.mjs URL OUTDIR
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
  const askResponse = page.waitForResponse((r) => r.url().endsWith("/api/ask"), { timeout: 300_000 });
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
  // The final answer as the server sent it (the `done` event of the stream).
  const sse = await (await askResponse).text();
  const doneData = sse.split("event: done")[1]?.split("\n").find((l) => l.startsWith("data: "));
  check(doneData, "the answer stream has no done event");
  const done = JSON.parse(doneData.slice(6));
  // Sentences stream as they are finished and cited; a labelled fallback or an
  // abstention arrives whole.
  const minSteps = done.fallback || done.abstained ? 1 : 2;
  check(lengths.length >= minSteps, `the answer did not stream (saw ${lengths.length} distinct lengths)`);
  // Not a paste: none of our source-header lines, and under a quarter of its words in
  // runs of 12+ words copied from the cited passages (the fallback is quotes by design).
  const shown = (await page.textContent(".msg.assistant .answer")).trim();
  check(!/\[\d+\][^\n]*—[^\n]*\(\d{4}/.test(shown), `the answer pastes source headers: ${shown}`);
  const words = (t) => t.replace(/\[[\d,\s]+\]/g, " ").toLowerCase().split(/[^\p{L}\p{N}]+/u).filter(Boolean);
  const copyRatio = (answer, passages) => {
    const a = words(answer);
    const grams = new Set();
    for (const p of passages) {
      const w = words(p);
      for (let i = 0; i + 12 <= w.length; i++) grams.add(w.slice(i, i + 12).join(" "));
    }
    const covered = new Array(a.length).fill(false);
    for (let i = 0; i + 12 <= a.length; i++) {
      if (grams.has(a.slice(i, i + 12).join(" "))) covered.fill(true, i, i + 12);
    }
    return a.length ? covered.filter(Boolean).length / a.length : 0;
  };
  const passages = (done.citations || []).flatMap((c) => [c.passage || "", ...(c.quotes || [])]);
  const ratio = copyRatio(shown, passages);
  step(`answer: ${shown.length} chars, copy ratio ${ratio.toFixed(2)}, fallback ${done.fallback}, abstained ${done.abstained}`);
  if (!done.fallback) check(ratio <= 0.25, `the answer is a paste (copy ratio ${ratio.toFixed(2)}): ${shown}`);

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

  // ---- a near-field question the corpus cannot answer: an abstention ----
  const nearField = "What did the Bletchley Declaration of the 2023 AI Safety Summit commit countries to?";
  step(`ask: ${nearField}`);
  await page.fill("#question", nearField);
  await page.press("#question", "Enter");
  await page.waitForFunction(() => {
    const msgs = document.querySelectorAll(".msg.assistant");
    const last = msgs[msgs.length - 1];
    return msgs.length >= 2 && last.querySelector(".phase")?.textContent.includes("do not answer");
  }, null, { timeout: 120_000 });
  const abstention = await page.$$eval(".msg.assistant .answer", (a) => a[a.length - 1].textContent);
  step(`near-field: ${abstention.slice(0, 120)}`);
  check(/don't answer/.test(abstention), `the near-field question was answered: ${abstention}`);

  // ---- a document carrying <script>, an onerror image and javascript: links ----
  // (eval/injection's Marlowe record, added to the corpus by the Rust test): its text
  // is shown as text in the answer's source card and in search, and nothing of it runs.
  const noActiveContent = async (where) => {
    await page.waitForTimeout(300); // an onerror handler would have fired by now
    const found = await page.evaluate(() => ({
      pwned: window.__pwned,
      elements: document.querySelectorAll(
        ".msg script, .msg img, .msg iframe, #source-card script, #source-card img, .result script, .result img, .result iframe, #digest-detail script, #digest-detail img, #digest-detail iframe, a[href^='javascript:' i]").length,
    }));
    check(found.pwned === undefined && found.elements === 0,
      `active content from a document in ${where}: ${JSON.stringify(found)}`);
  };
  const hostile = "What does the Marlowe transparency report list?";
  step(`ask: ${hostile}`);
  const before = await page.$$eval(".msg.assistant", (m) => m.length);
  await page.fill("#question", hostile);
  await page.press("#question", "Enter");
  await page.waitForFunction((n) => {
    const msgs = document.querySelectorAll(".msg.assistant");
    const a = msgs[msgs.length - 1]?.querySelector(".answer");
    return msgs.length > n && a && !a.classList.contains("streaming") && !document.querySelector("#send").disabled;
  }, before, { timeout: 120_000 });
  await noActiveContent("the answer");
  const opened = await page.evaluate(() => {
    const msgs = document.querySelectorAll(".msg.assistant");
    const b = msgs[msgs.length - 1].querySelector(".answer .cite:not(.missing), .sources-list button");
    if (b) b.click();
    return Boolean(b);
  });
  if (opened) {
    await page.waitForSelector("#source-panel:not([hidden]) .source-card h2", { timeout: 5_000 });
    const card = await page.textContent("#source-card");
    step(`hostile source card: ${card.replace(/\s+/g, " ").slice(0, 100)}`);
    await noActiveContent("the source card");
    await page.click("#close-source");
  }

  // ---- search ----
  step("search");
  await page.goto(`${base}#/search`);
  await page.fill("#search-q", "Marlowe transparency report incidents");
  await page.click("#search-form button[type=submit]");
  await page.waitForSelector(".result", { timeout: 30_000 });
  const shownHtml = await page.$$eval(".result", (r) => r.map((x) => x.textContent).join(" "));
  check(shownHtml.includes("Marlowe"), "search did not find the hostile record");
  await noActiveContent("search results");
  step("search");
  await page.goto(`${base}#/search`);
  await page.fill("#search-q", process.env.E2E_SEARCH || "adversarial robustness");
  await page.click("#search-form button[type=submit]");
  await page.waitForSelector(".result", { timeout: 30_000 });
  const nResults = await page.$$eval(".result", (r) => r.length);
  step(`${nResults} search results`);
  check(nResults > 0, "no search results");
  await page.screenshot({ path: join(outDir, "search-desktop.png") });

  // ---- digest ----
  step("digest");
  await page.goto(`${base}#/digest`);
  await page.waitForSelector("#digest-list li", { timeout: 15_000 });
  const token = process.env.E2E_ADMIN_TOKEN;
  if (token) {
    // Make one through the form: every item, no summaries (quick), a title to find it by.
    if (!(await page.$eval("#digest-new", (d) => d.open))) await page.click("#digest-new summary");
    await page.check("#digest-form input[name=cover][value=all]");
    await page.$eval("#digest-form input[name=summaries]", (b) => { b.checked = false; });
    await page.fill("#digest-form input[name=title]", "E2E digest");
    await page.fill("#digest-form input[name=token]", token);
    await page.click("#digest-form button[type=submit]");
    await page.waitForFunction(() => location.hash.startsWith("#/digest/")
      && document.querySelector("#digest-detail h2")?.textContent === "E2E digest"
      && document.querySelector("#digest-detail .digest-topic"), null, { timeout: 120_000 });
  }
  const cards = await page.$$eval("#digest-list .digest-card", (c) => c.map((x) => x.textContent));
  step(`${cards.length} digest(s) listed: ${cards[0]?.replace(/\s+/g, " ").slice(0, 100)}`);
  check(cards.length > 0, "the digest page lists no digest (set E2E_ADMIN_TOKEN to make one)");
  if (token) check(cards.some((t) => t.includes("E2E digest")), "the new digest is not listed");
  if (!(await page.$("#digest-detail .digest-topic"))) {
    await page.click("#digest-list .digest-card");
    await page.waitForSelector("#digest-detail .digest-topic", { timeout: 15_000 });
  }
  const topics = await page.$$eval("#digest-detail .digest-topic", (t) => t.map((x) => ({
    id: x.dataset.topic, head: x.querySelector("h3").textContent.trim(), items: x.querySelectorAll("details.digest-item").length,
  })));
  step(`digest topics: ${topics.map((t) => `${t.head.slice(0, 40)} [${t.items}]`).join(" | ")}`);
  check(topics.length > 0 && topics.every((t) => t.items > 0 && t.head.length > 0), "the digest has no topic sections with items");
  const otherAt = topics.findIndex((t) => t.id === "other");
  check(otherAt === -1 || otherAt === topics.length - 1, "Other is not the last section");
  check(topics.some((t) => t.id !== "other") ? /^\d/.test(topics.find((t) => t.id !== "other").head) : true,
    "a topic heading does not start with its topic id");
  const highlights = await page.$$eval("#digest-detail .digest-highlights li", (l) => l.map((x) => x.querySelector(".reason")?.textContent || ""));
  check(highlights.every((r) => r.length > 0), "a highlight has no reason");
  // A collapsible item: closed, then open with its link, byline and confidence.
  const item = "#digest-detail details.digest-item";
  check(!(await page.$eval(item, (d) => d.open)), "digest items start open");
  await page.click(`${item} summary`);
  check(await page.$eval(item, (d) => d.open), "clicking an item does not open it");
  const body = await page.$eval(`${item} .item-body`, (b) => ({ visible: b.offsetHeight > 0, text: b.textContent }));
  check(body.visible && /confidence \d\.\d\d/.test(body.text), `the opened item shows no confidence: ${body.text}`);
  // The hostile record is in the digest as text, its javascript: URL not a link.
  const allText = await page.textContent("#digest-detail");
  check(allText.includes("Marlowe"), "the digest does not list the hostile record");
  await page.$$eval("#digest-detail details.digest-item", (d) => d.forEach((x) => { x.open = true; }));
  await noActiveContent("the digest");
  await page.screenshot({ path: join(outDir, "digest-desktop.png"), fullPage: false });
  await page.setViewportSize(PHONE);
  await page.screenshot({ path: join(outDir, "digest-phone.png") });
  await page.setViewportSize(DESKTOP);

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
