// overseer web UI: plain JavaScript, no framework, no build step.
// Four views behind hash routes: #/ask (streamed, cited answers), #/search,
// #/digest[/ID] (saved digests, making a new one), #/lab.
// Text from documents is only ever set as text (textContent, text nodes) or escaped
// before markup is built; links from documents are made only for http(s) URLs.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
};
const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => (
  { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function toast(msg) {
  const t = $("#toast");
  t.textContent = msg;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 2500);
}

async function apiError(resp) {
  try {
    const j = await resp.json();
    let m = j.message || j.error || resp.statusText;
    const ra = resp.headers.get("Retry-After");
    if (ra) m += ` (retry in ${ra} s)`;
    return m;
  } catch (_) {
    return `${resp.status} ${resp.statusText}`;
  }
}

// Only http(s) links from the index are made clickable.
function safeUrl(u) {
  try {
    const url = new URL(u);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch (_) {
    return null;
  }
}

function authorsText(a) {
  if (!a) return "";
  const list = Array.isArray(a) ? a : [a];
  if (list.length > 3) return `${list.slice(0, 3).join(", ")} et al.`;
  return list.join(", ");
}

function dateText(d) {
  return d ? String(d).slice(0, 10) : "";
}

// ---------- routing ----------
const views = ["ask", "search", "digest", "lab"];
function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const view = views.includes(parts[0]) ? parts[0] : "ask";
  for (const v of views) {
    $(`#view-${v}`).hidden = v !== view;
    const tab = $(`.tabs a[data-tab=${v}]`);
    tab.classList.toggle("active", v === view);
    if (v === view) tab.setAttribute("aria-current", "page"); else tab.removeAttribute("aria-current");
  }
  if (view === "lab") loadLab(parts[1] ? decodeURIComponent(parts[1]) : null);
  if (view === "digest") loadDigests(parts[1] ? decodeURIComponent(parts[1]) : null);
  if (view === "search" && parts[1]) {
    const q = decodeURIComponent(parts[1]);
    $("#search-q").value = q;
    runSearch();
  }
}
window.addEventListener("hashchange", route);

// ---------- status ----------
async function refreshStatus() {
  const s = $("#status");
  try {
    const r = await fetch("/healthz");
    const j = await r.json();
    const docs = j.documents == null ? "?" : j.documents;
    s.textContent = `${docs} documents · ${j.model || "no model"}`;
    s.classList.toggle("ok", r.ok);
    serverModel = j.model || null;
    digestFormForModel();
  } catch (_) {
    s.textContent = "offline";
    s.classList.remove("ok");
  }
}

// ---------- SSE over fetch (POST) ----------
async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

// ---------- markdown-ish rendering with citation chips ----------
// Text is escaped first; only a few inline forms are turned back into markup.
function inlineMd(s) {
  return s
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>")
    .replace(/\[(\d+(?:\s*,\s*\d+)*)\]/g, (_, nums) =>
      nums.split(",").map((n) => `<button type="button" class="cite" data-n="${Number(n)}">${Number(n)}</button>`).join(""));
}

function renderMarkdown(text) {
  const blocks = escapeHtml(text).split(/\n{2,}/);
  return blocks.map((b) => {
    // Group consecutive bullet / numbered lines into lists; other lines form paragraphs.
    const out = [];
    let kind = null;
    let items = [];
    let para = [];
    const flushPara = () => { if (para.length) out.push(`<p>${para.map(inlineMd).join("<br>")}</p>`); para = []; };
    const flushList = () => { if (items.length) out.push(`<${kind}>${items.map((i) => `<li>${inlineMd(i)}</li>`).join("")}</${kind}>`); items = []; kind = null; };
    for (const line of b.split("\n")) {
      const ul = line.match(/^\s*[-*] (.*)$/);
      const ol = line.match(/^\s*\d+[.)] (.*)$/);
      const k = ul ? "ul" : ol ? "ol" : null;
      if (k) {
        flushPara();
        if (kind && kind !== k) flushList();
        kind = k;
        items.push((ul || ol)[1]);
      } else {
        flushList();
        para.push(line);
      }
    }
    flushPara();
    flushList();
    return out.join("");
  }).join("");
}

// ---------- the conversation ----------
const conversation = []; // {role, content, sources, citations, followups}
let asking = null; // AbortController of the running answer

function sourceFor(turn, n) {
  const c = (turn.citations || []).find((x) => Number(x.n) === n);
  const s = (turn.sources || [])[n - 1];
  if (!c && !s) return null;
  return { ...(s || {}), ...(c || {}), n };
}

function words(s) {
  return new Set((s.toLowerCase().match(/[a-z0-9]{4,}/g) || []));
}

// The passage with the sentence(s) that best match the citing sentence highlighted.
function highlightPassage(passage, citing) {
  const sentences = passage.match(/[^.!?\n]+[.!?]*\s*|\n+/g) || [passage];
  const cw = words(citing || "");
  const scores = sentences.map((s) => {
    let k = 0;
    for (const w of words(s)) if (cw.has(w)) k++;
    return k;
  });
  const best = Math.max(0, ...scores);
  if (best === 0) return `<mark>${escapeHtml(passage)}</mark>`;
  return sentences.map((s, i) => (scores[i] >= Math.max(1, best * 0.6)
    ? `<mark>${escapeHtml(s)}</mark>` : escapeHtml(s))).join("");
}

function citingSentence(chip) {
  const p = chip.closest("p, li");
  if (!p) return "";
  const text = p.textContent;
  const idx = text.indexOf(chip.textContent);
  const before = text.slice(0, Math.max(0, idx));
  const start = Math.max(before.lastIndexOf(". "), before.lastIndexOf("? "), before.lastIndexOf("! "));
  return before.slice(start + 1);
}

function openSource(turn, n, chip) {
  const src = sourceFor(turn, n);
  const panel = $("#source-panel");
  const card = $("#source-card");
  document.querySelectorAll(".cite.active").forEach((c) => c.classList.remove("active"));
  if (chip) chip.classList.add("active");
  card.replaceChildren();
  if (!src) {
    card.append(el("p", { class: "muted", text: `Source [${n}] is not among the retrieved passages.` }));
  } else {
    const url = safeUrl(src.url);
    const passage = typeof src.passage === "string" ? src.passage : (src.passage && src.passage.text) || "";
    const quote = el("blockquote");
    quote.innerHTML = highlightPassage(passage, chip ? citingSentence(chip) : (turn.question || ""));
    const meta = [authorsText(src.authors), dateText(src.date), src.source].filter(Boolean).join(" · ");
    card.append(el("div", { class: "source-card" },
      el("h2", {}, el("span", { class: "num", text: n }), url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: src.title || url }) : (src.title || "Untitled")),
      el("div", { class: "meta", text: meta }),
      src.supported === false ? el("span", { class: "badge", text: "weakly supported by this passage" })
        : src.supported === true ? el("span", { class: "badge ok", text: "supported" }) : null,
      quote,
      url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", class: "muted", text: url }) : null,
      src.id ? el("p", {}, el("button", { type: "button", class: "ghost", text: "Open document", onclick: () => openDocument(src.id) })) : null,
    ));
  }
  panel.hidden = false;
  $(".chat-layout").classList.add("with-source");
}

function closeSource() {
  $("#source-panel").hidden = true;
  $(".chat-layout").classList.remove("with-source");
  document.querySelectorAll(".cite.active").forEach((c) => c.classList.remove("active"));
}

function renderAnswer(turn, node, streaming) {
  const ans = node.querySelector(".answer");
  ans.innerHTML = renderMarkdown(turn.content || "");
  ans.classList.toggle("streaming", streaming);
  const cited = new Set((turn.citations || []).map((c) => Number(c.n)));
  for (const chip of ans.querySelectorAll(".cite")) {
    const n = Number(chip.dataset.n);
    const src = sourceFor(turn, n);
    if (!src) chip.classList.add("missing");
    else if (src.supported === false) chip.classList.add("weak");
    chip.title = src ? (src.title || `Source ${n}`) : "no such source";
    if (!streaming && turn.citations && !cited.has(n) && !src) chip.classList.add("missing");
  }
}

function renderSourcesList(turn, node) {
  const list = node.querySelector(".sources-list");
  list.replaceChildren();
  let cites = turn.citations && turn.citations.length ? turn.citations : [];
  if (!cites.length && (turn.sources || []).length) {
    // Nothing cited: still let the reader check what was retrieved.
    list.append(el("li", { class: "muted", text: "Retrieved passages (not cited):" }));
    cites = turn.sources.map((_, i) => ({ n: i + 1 }));
  }
  for (const c of cites) {
    const src = sourceFor(turn, Number(c.n)) || {};
    list.append(el("li", {}, el("button", {
      type: "button", text: `[${c.n}] ${src.title || "Untitled"}`,
      onclick: () => openSource(turn, Number(c.n), null),
    }), src.date ? el("span", { class: "muted", text: ` · ${dateText(src.date)}` }) : null));
  }
  list.hidden = cites.length === 0;
}

function renderFollowups(turn, node) {
  const box = node.querySelector(".followups");
  box.replaceChildren(...(turn.followups || []).map((q) =>
    el("button", { type: "button", class: "suggestion", text: q, onclick: () => ask(q) })));
}

function addUserMessage(text) {
  $("#welcome").hidden = true;
  const node = el("div", { class: "msg user" }, el("div", { class: "bubble", text }));
  $("#conversation").append(node);
}

function addAssistantMessage(turn) {
  const node = el("div", { class: "msg assistant" },
    el("div", { class: "bubble" },
      el("div", { class: "phase", text: "Searching the literature…" }),
      el("div", { class: "answer" }),
      el("ul", { class: "sources-list", hidden: true }),
      el("div", { class: "followups" })));
  node.addEventListener("click", (e) => {
    const chip = e.target.closest(".cite");
    if (chip && !chip.classList.contains("missing")) openSource(turn, Number(chip.dataset.n), chip);
  });
  $("#conversation").append(node);
  return node;
}

function scrollDown() {
  window.scrollTo({ top: document.body.scrollHeight });
}

async function ask(question) {
  question = question.trim();
  if (!question || asking) return;
  const mode = $("#mode").value;
  const history = conversation.slice(-6).map((t) => ({ role: t.role, content: t.content }));
  conversation.push({ role: "user", content: question });
  addUserMessage(question);
  const turn = { role: "assistant", content: "", sources: [], citations: null, followups: [], question };
  const node = addAssistantMessage(turn);
  const phase = node.querySelector(".phase");
  scrollDown();
  $("#question").value = "";
  $("#send").disabled = true;
  asking = new AbortController();
  let finished = false;
  try {
    const resp = await fetch("/api/ask", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ question, mode, history }),
      signal: asking.signal,
    });
    if (!resp.ok) throw new Error(await apiError(resp));
    let tokens = 0;
    for await (const ev of sseEvents(resp)) {
      const data = JSON.parse(ev.data);
      switch (ev.event) {
        case "retrieval":
          phase.textContent = `Found ${data.count} passages in ${data.ms} ms · writing…`;
          break;
        case "sources":
          turn.sources = data.sources || [];
          break;
        case "token":
          turn.content += data.text;
          tokens++;
          renderAnswer(turn, node, true);
          if (tokens % 8 === 0) scrollDown();
          break;
        case "replace":
          turn.content = data.text;
          renderAnswer(turn, node, true);
          break;
        case "citations":
          turn.citations = data.citations || [];
          break;
        case "followups":
          turn.followups = data.followups || [];
          break;
        case "done":
          if (typeof data.answer === "string") turn.content = data.answer;
          if (Array.isArray(data.citations)) turn.citations = data.citations;
          if (Array.isArray(data.followups)) turn.followups = data.followups;
          if (data.abstained) phase.textContent = "The indexed sources do not answer this.";
          else {
            const n = (turn.citations || []).length;
            phase.textContent = n === 0 ? "No sources cited" : n === 1 ? "1 source cited" : `${n} sources cited`;
          }
          finished = true;
          break;
        case "error":
          throw new Error(data.message || "generation failed");
        default:
          break;
      }
    }
    if (!finished) throw new Error("the answer stream ended early");
  } catch (e) {
    if (e.name === "AbortError") phase.textContent = "Stopped.";
    else {
      phase.textContent = "";
      phase.append(el("span", { class: "error-text", text: `Error: ${e.message}` }));
    }
  } finally {
    asking = null;
    $("#send").disabled = false;
    renderAnswer(turn, node, false);
    renderSourcesList(turn, node);
    renderFollowups(turn, node);
    conversation.push(turn);
    scrollDown();
  }
}

function conversationMarkdown() {
  const out = ["# Conversation with overseer", ""];
  for (const t of conversation) {
    if (t.role === "user") out.push(`**Question:** ${t.content}`, "");
    else {
      out.push(`**Answer:** ${t.content}`, "");
      const cites = t.citations || [];
      if (cites.length) {
        out.push("Sources:");
        for (const c of cites) {
          const s = sourceFor(t, Number(c.n)) || {};
          const bits = [s.title || "Untitled", authorsText(s.authors), dateText(s.date)].filter(Boolean).join(", ");
          out.push(`- [${c.n}] ${bits}${s.url ? ` <${s.url}>` : ""}`);
        }
        out.push("");
      }
    }
  }
  return out.join("\n");
}

async function copyMarkdown() {
  const md = conversationMarkdown();
  try {
    await navigator.clipboard.writeText(md);
    toast("Conversation copied as markdown");
  } catch (_) {
    const ta = el("textarea", {}, md);
    document.body.append(ta);
    ta.select();
    const ok = document.execCommand && document.execCommand("copy");
    ta.remove();
    toast(ok ? "Conversation copied as markdown" : "Copy failed");
  }
}

async function shareMarkdown() {
  const md = conversationMarkdown();
  if (navigator.share) {
    try {
      await navigator.share({ title: "overseer conversation", text: md });
      return;
    } catch (_) { /* fall back to a download */ }
  }
  const a = el("a", { href: URL.createObjectURL(new Blob([md], { type: "text/markdown" })), download: "overseer-conversation.md" });
  document.body.append(a);
  a.click();
  a.remove();
  toast("Conversation saved as markdown");
}

function newConversation() {
  if (asking) asking.abort();
  conversation.length = 0;
  $("#conversation").replaceChildren($("#welcome"));
  $("#welcome").hidden = false;
  closeSource();
}

// ---------- documents ----------
async function openDocument(id) {
  const dlg = $("#doc-dialog");
  const body = $("#doc-body");
  body.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
  if (!dlg.open) dlg.showModal();
  const r = await fetch(`/api/documents/${encodeURIComponent(id)}`);
  if (!r.ok) {
    body.replaceChildren(el("p", { class: "error-text", text: await apiError(r) }));
    return;
  }
  const d = await r.json();
  const url = safeUrl(d.url);
  const chunks = d.chunks || d.passages || [];
  body.replaceChildren(
    el("h2", {}, url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: d.title || url }) : (d.title || id)),
    el("p", { class: "muted", text: [authorsText(d.authors), dateText(d.date || d.date_published), d.source].filter(Boolean).join(" · ") }),
    ...chunks.map((c) => el("div", { class: "chunk" },
      c.heading_path && c.heading_path.length ? el("div", { class: "heading", text: c.heading_path.join(" › ") }) : null,
      typeof c === "string" ? c : (c.text || ""))));
}

// ---------- search ----------
function highlightTerms(text, query) {
  const terms = [...words(query)];
  let html = escapeHtml(text);
  if (!terms.length) return html;
  const re = new RegExp(`\\b(${terms.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|")})\\w*`, "gi");
  return html.replace(re, "<mark>$&</mark>");
}

async function runSearch(e) {
  if (e) e.preventDefault();
  const form = $("#search-form");
  const params = new URLSearchParams();
  for (const [k, v] of new FormData(form)) if (String(v).trim()) params.set(k, String(v).trim());
  if (!params.get("q")) return;
  const info = $("#search-info");
  const list = $("#search-results");
  info.textContent = "Searching…";
  const t0 = performance.now();
  const r = await fetch(`/api/search?${params}`);
  if (!r.ok) {
    info.textContent = await apiError(r);
    list.replaceChildren();
    return;
  }
  const j = await r.json();
  const ms = Math.round(performance.now() - t0);
  info.textContent = `${j.results.length} results in ${ms} ms`;
  const q = params.get("q");
  list.replaceChildren(...j.results.map((h) => {
    const passage = typeof h.passage === "string" ? h.passage : (h.passage && h.passage.text) || "";
    const p = el("p", { class: "passage" });
    p.innerHTML = highlightTerms(passage.length > 600 ? `${passage.slice(0, 600)}…` : passage, q);
    const url = safeUrl(h.url);
    return el("li", { class: "result" },
      el("h3", {}, el("button", { type: "button", text: h.title || h.id, onclick: () => openDocument(h.id) })),
      el("div", { class: "meta" },
        [authorsText(h.authors), dateText(h.date), h.source, `score ${Number(h.score).toFixed(3)}`].filter(Boolean).join(" · "),
        url ? " · " : "", url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: "link" }) : null),
      p);
  }));
}

// ---------- lab ----------
const pct = (x) => (typeof x === "number" ? `${Math.round(x * 100)}%` : "–");

async function loadLab(selected) {
  const listBox = $("#lab-list");
  const detail = $("#lab-detail");
  const r = await fetch("/api/lab/runs");
  if (!r.ok) {
    listBox.replaceChildren(el("p", { class: "error-text", text: await apiError(r) }));
    return;
  }
  const { runs } = await r.json();
  if (!runs.length) {
    listBox.replaceChildren(el("div", { class: "welcome" },
      el("h1", { text: "No refusal-lab runs yet" }),
      el("p", { text: "Run `overseer refusal run --model M --out DATA/lab/NAME` and reload this page." })));
    detail.replaceChildren();
    return;
  }
  const id = selected || runs[0].id;
  listBox.replaceChildren(el("h1", { text: "Refusal-direction runs" }), el("div", { class: "runs" }, ...runs.map((run) => {
    const sel = run.selected || {};
    return el("a", { class: `run-card${run.id === id ? " active" : ""}`, href: `#/lab/${encodeURIComponent(run.id)}`},
      el("h3", { text: run.id }),
      el("div", { class: "muted", text: `${run.model || "unknown model"}` }),
      el("div", { class: "muted", text: `layer ${sel.layer ?? "–"} · position ${sel.position ?? "–"}` }),
      el("div", { text: `harmful refusal ${pct(run.baseline && run.baseline.harmful_refusal_rate)} → ${pct(run.ablation && run.ablation.harmful_refusal_rate)} ablated` }));
  })));
  const d = await fetch(`/api/lab/runs/${encodeURIComponent(id)}`);
  if (!d.ok) {
    detail.replaceChildren(el("p", { class: "error-text", text: await apiError(d) }));
    return;
  }
  const run = await d.json();
  const rows = [
    ["Baseline", run.baseline],
    ["Ablation", run.ablation],
    ["Addition", run.addition],
  ];
  const examples = Array.isArray(run.examples) ? run.examples : [];
  const cols = examples.length ? [...new Set(examples.slice(0, 20).flatMap((x) => Object.keys(x)))].slice(0, 6) : [];
  detail.replaceChildren(
    el("h2", { text: run.id }),
    el("p", { class: "muted", text: `${run.model || ""}${typeof run.kl === "number" ? ` · KL ${run.kl.toFixed(3)}` : ""}` }),
    el("div", { class: "table-wrap" }, el("table", { class: "rates" },
      el("thead", {}, el("tr", {}, el("th", { text: "Intervention" }), el("th", { text: "Harmful refusal" }), el("th", { text: "Harmless refusal" }))),
      el("tbody", {}, ...rows.map(([name, v]) => el("tr", {}, el("td", { text: name }),
        el("td", { text: pct(v && v.harmful_refusal_rate) }), el("td", { text: pct(v && v.harmless_refusal_rate) })))))),
    el("div", { class: "plots" }, ...(run.plots || []).map((p) => el("figure", { class: "plot" },
      el("img", { src: p.url, alt: `plot ${p.name}`, loading: "lazy" }),
      el("figcaption", { text: p.name })))),
    examples.length ? el("h3", { text: "Example completions" }) : null,
    examples.length ? el("div", { class: "table-wrap" }, el("table", { class: "examples-table" },
      el("thead", {}, el("tr", {}, ...cols.map((c) => el("th", { text: c })))),
      el("tbody", {}, ...examples.slice(0, 20).map((x) => el("tr", {}, ...cols.map((c) => el("td", {
        text: typeof x[c] === "string" ? x[c] : JSON.stringify(x[c]),
      }))))))) : null,
    run.report_md ? el("details", {}, el("summary", { text: "Full report (markdown)" }), el("pre", { class: "report-md", text: run.report_md })) : null,
  );
}

// ---------- digest ----------
const TOKEN_KEY = "overseer-admin-token";
let serverModel; // the served model's name; null without one (from /healthz)
let digestJob = null; // the job this page is polling

function storedToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (_) { return ""; }
}
function storeToken(t) {
  try { sessionStorage.setItem(TOKEN_KEY, t); } catch (_) { /* private mode */ }
}

function whenText(created) {
  return created ? String(created).slice(0, 16).replace("T", " ") : "";
}

// Without a model the server cannot write summaries: the box is unticked and locked.
function digestFormForModel() {
  const box = $("#digest-form").elements.summaries;
  if (serverModel === null) {
    box.checked = false;
    box.disabled = true;
    box.parentElement.title = "no model is loaded on this server";
  } else if (serverModel !== undefined) {
    box.disabled = false;
    box.parentElement.removeAttribute("title");
  }
}

async function loadDigests(selected) {
  const list = $("#digest-list");
  const detail = $("#digest-detail");
  const form = $("#digest-form");
  if (!form.elements.token.value) form.elements.token.value = storedToken();
  const r = await fetch("/api/digests");
  if (!r.ok) {
    list.replaceChildren(el("li", { class: "error-text", text: await apiError(r) }));
    return;
  }
  const { digests } = await r.json();
  if (!digests.length) {
    list.replaceChildren(el("li", { class: "muted", text: "No digests yet: make one below, or run `overseer digest`." }));
    $("#digest-new").open = true;
    detail.replaceChildren(el("div", { class: "welcome" },
      el("h1", { text: "No digests yet" }),
      el("p", { text: "A digest groups what the index holds that is new by the research agenda's topics, ranks it and summarises it with citations." })));
    return;
  }
  const id = selected || digests[0].id;
  list.replaceChildren(...digests.map((d) => el("li", {},
    el("a", { class: `digest-card${d.id === id ? " active" : ""}`, href: `#/digest/${encodeURIComponent(d.id)}` },
      el("strong", { class: "digest-card-title", text: d.title || d.id }),
      el("span", { class: "muted", text: `${whenText(d.created)} · ${d.items} item${d.items === 1 ? "" : "s"}` }),
      el("span", { class: "muted covers", text: d.covers || "" })))));
  await showDigest(id);
}

// A summary as text, its [n] citation marks set apart (still text, never markup).
function summaryNode(text) {
  const p = el("p", { class: "digest-summary" });
  for (const part of String(text).split(/(\[\d+(?:,\s*\d+)*\])/)) {
    if (/^\[\d+(?:,\s*\d+)*\]$/.test(part)) p.append(el("span", { class: "cite-n", text: part }));
    else if (part) p.append(document.createTextNode(part));
  }
  return p;
}

function openDigestItem(n) {
  const d = document.getElementById(`digest-item-${Number(n)}`);
  if (!d) return;
  d.open = true;
  d.scrollIntoView({ block: "start", behavior: "smooth" });
}

function digestItemNode(it, topicTitles) {
  const url = safeUrl(it.url);
  const conf = typeof it.confidence === "number" ? it.confidence.toFixed(2) : "–";
  const also = (it.secondary || []).map((t) => (topicTitles[t] ? `${t} ${topicTitles[t]}` : t));
  return el("details", { class: `digest-item${it.uncertain ? " uncertain" : ""}`, id: `digest-item-${Number(it.n)}` },
    el("summary", {},
      el("span", { class: "num", text: `[${it.n}]` }),
      el("span", { class: "item-title", text: it.title || it.id }),
      it.highlight ? el("span", { class: "badge ok", text: "highlight" }) : null,
      it.uncertain ? el("span", { class: "badge", text: "uncertain" }) : null),
    el("div", { class: "item-body" },
      el("p", { class: "item-link" }, url
        ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: it.title || url })
        : el("span", { text: it.title || it.id })),
      el("p", { class: "meta", text: [authorsText(it.authors), dateText(it.date), it.source].filter(Boolean).join(" · ") }),
      el("p", { class: "meta confidence" },
        `confidence ${conf}`,
        it.uncertain ? el("span", { class: "badge", title: "under the classifier's floor: the topic is a guess", text: "uncertain" }) : null,
        also.length ? ` · also under ${also.join("; ")}` : null),
      it.highlight ? el("p", { class: "reason", text: it.highlight }) : null,
      it.summary ? summaryNode(it.summary) : el("p", { class: "muted", text: "No summary: this digest was made without summaries." }),
      it.summary_fallback ? el("p", { class: "muted", text: "The model's summary failed the checks: this is the item's own opening, quoted." }) : null));
}

async function showDigest(id) {
  const detail = $("#digest-detail");
  const r = await fetch(`/api/digests/${encodeURIComponent(id)}`);
  if (!r.ok) {
    detail.replaceChildren(el("p", { class: "error-text", text: await apiError(r) }));
    return;
  }
  const d = await r.json();
  const items = Array.isArray(d.items) ? d.items : [];
  const item = (n) => items[Number(n) - 1];
  // Other last, whatever order the file has.
  const sections = [...(d.sections || [])].sort((a, b) => (a.id === "other") - (b.id === "other"));
  const topicTitles = Object.fromEntries(sections.filter((s) => s.id !== "other").map((s) => [s.id, s.title]));
  const enc = encodeURIComponent(d.id);
  const fmt = (f, label) => el("a", { href: `/api/digests/${enc}?format=${f}`, target: "_blank", rel: "noopener noreferrer", text: label });
  const hl = (d.highlights || []).map(item).filter(Boolean);
  const stats = d.stats || {};
  detail.replaceChildren(...[
    el("h2", { text: d.title || d.id }),
    el("p", { class: "muted", text: [`${items.length} item${items.length === 1 ? "" : "s"}`, d.covers, `made ${whenText(d.created)}`,
      d.summarizer ? `summaries by ${d.summarizer}` : null,
      stats.uncertain ? `${stats.uncertain} uncertain` : null].filter(Boolean).join(" · ") }),
    el("p", { class: "digest-formats muted" }, "Open as ", fmt("html", "HTML"), " · ", fmt("md", "Markdown"), " · ", fmt("atom", "Atom"), " · ", fmt("json", "JSON")),
    items.length ? null : el("p", { class: "muted", text: "Nothing new: no indexed item matches this selection." }),
    hl.length ? el("section", { class: "digest-highlights" },
      el("h3", { text: "Highlights" }),
      el("ol", {}, ...hl.map((it) => el("li", {},
        el("button", { type: "button", class: "linkish", text: `[${it.n}] ${it.title || it.id}`, onclick: () => openDigestItem(it.n) }),
        el("div", { class: "reason", text: it.highlight || "" }))))) : null,
    ...sections.map((s) => el("section", { class: "digest-topic", "data-topic": s.id },
      el("h3", {}, s.id === "other" ? "Other" : el("span", { class: "topic-id", text: s.id }), s.id === "other" ? null : ` ${s.title || ""}`,
        el("span", { class: "muted count", text: ` (${(s.items || []).length})` })),
      ...(s.items || []).map(item).filter(Boolean).map((it) => digestItemNode(it, topicTitles)))),
  ].filter(Boolean));
}

function digestProgress(text, error) {
  const p = $("#digest-progress");
  p.replaceChildren(error ? el("span", { class: "error-text", text }) : document.createTextNode(text));
}

function stageText(s) {
  switch (s.stage) {
    case "ranked": return `Ranking… ${s.done}/${s.total}`;
    case "summarized": return `Writing summaries… ${s.done}/${s.total}`;
    default: return s.done ? `Selecting and filing items… ${s.done}` : "Selecting and filing items…";
  }
}

async function makeDigest(e) {
  e.preventDefault();
  if (digestJob) return;
  const f = $("#digest-form");
  const v = (name) => String(f.elements[name].value || "").trim();
  const body = { summaries: f.elements.summaries.checked };
  const cover = (f.querySelector("input[name=cover]:checked") || {}).value || "new";
  if (cover === "week") {
    if (!v("week")) return digestProgress("Pick a week (YYYY-Www).", true);
    body.week = v("week");
  } else if (cover === "range") {
    if (!v("since") && !v("until")) return digestProgress("Give a first or a last publication date.", true);
    if (v("since")) body.since = v("since");
    if (v("until")) body.until = v("until");
  } else if (cover === "all") {
    body.all = true;
  }
  if (v("title")) body.title = v("title");
  const token = v("token");
  if (!token) return digestProgress("Making a digest needs the server's admin token.", true);
  storeToken(token);
  const button = f.querySelector("button[type=submit]");
  button.disabled = true;
  digestProgress("Starting…");
  try {
    const r = await fetch("/api/digests", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    if (r.status !== 202) throw new Error(await apiError(r));
    digestJob = (await r.json()).job;
    for (;;) {
      await new Promise((res) => setTimeout(res, 500));
      const j = await fetch(`/api/digests/jobs/${encodeURIComponent(digestJob)}`);
      if (!j.ok) throw new Error(await apiError(j));
      const s = await j.json();
      if (s.state === "done") {
        digestProgress("Done.");
        const hash = `#/digest/${encodeURIComponent(s.digest)}`;
        if (location.hash === hash) loadDigests(s.digest); else location.hash = hash;
        break;
      }
      if (s.state === "failed") throw new Error(s.error || "the digest failed");
      digestProgress(stageText(s));
    }
  } catch (err) {
    digestProgress(`Error: ${err.message}`, true);
  } finally {
    digestJob = null;
    button.disabled = false;
  }
}

// ---------- wiring ----------
document.addEventListener("DOMContentLoaded", () => {
  $("#ask-form").addEventListener("submit", (e) => { e.preventDefault(); ask($("#question").value); });
  $("#question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); ask($("#question").value); }
  });
  for (const b of document.querySelectorAll("#examples .suggestion")) b.addEventListener("click", () => ask(b.textContent));
  $("#copy-md").addEventListener("click", copyMarkdown);
  $("#share-md").addEventListener("click", shareMarkdown);
  $("#new-chat").addEventListener("click", newConversation);
  $("#close-source").addEventListener("click", closeSource);
  $("#search-form").addEventListener("submit", runSearch);
  $("#digest-form").addEventListener("submit", makeDigest);
  route();
  refreshStatus();
  setInterval(refreshStatus, 30000);
});
