// The docqa web UI: chat (conversations kept on the server), source preview, knowledge bases and uploads.
import { api, ApiError, setKey, stream, upload } from "./api.js";
import { t, translatePage } from "./i18n.js";

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function toast(message) {
  const box = $("#toast");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 5000);
}

async function guarded(fn) {
  try { return await fn(); } catch (e) {
    if (e instanceof ApiError && e.status === 401) { askKey(); return undefined; }
    if (e && e.name === "AbortError") return undefined;
    toast(`${t("chat.error")}: ${e.message}`);
    return undefined;
  }
}

function askKey() {
  const key = prompt(t("key.prompt"));
  if (key !== null) { setKey(key.trim()); route(); }
}

const fmtSize = (n) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : n >= 1024 ? `${Math.round(n / 1024)} KB` : `${n} B`);
const statusLabel = (s) => t(`status.${s}`);

// ------------------------------------------------------------------ answer text with [n] chips
const CITE = /([\[【])\s*(\d{1,4}(?:\s*[,，、\-–]\s*\d{1,4})*)\s*([\]】])/g;

function expand(group) {
  const out = [];
  for (const part of group.split(/\s*[,，、]\s*/)) {
    const range = part.split(/\s*[\-–]\s*/).map(Number);
    if (range.length === 2 && range[1] >= range[0] && range[1] - range[0] < 50) {
      for (let n = range[0]; n <= range[1]; n++) out.push(n);
    } else out.push(...range);
  }
  return out;
}

function renderAnswer(target, text, sources, onChip) {
  target.replaceChildren();
  const byN = new Map(sources.map((s) => [s.n, s]));
  let last = 0;
  for (const m of text.matchAll(CITE)) {
    const before = text.slice(last, m.index);
    if (before) target.append(before);
    const nums = expand(m[2]);
    if (nums.every((n) => byN.has(n))) {
      for (const n of nums) {
        const s = byN.get(n);
        target.append(el("button", { type: "button", class: "chip", title: `${s.location}${s.section ? " — " + s.section : ""}`,
          "data-n": n, onclick: () => onChip(s) }, `${n}`));
      }
    } else target.append(m[0]); // numbers that point to no passage stay plain text, never a chip
    last = m.index + m[0].length;
  }
  if (last < text.length) target.append(text.slice(last));
}

// ------------------------------------------------------------------ source preview
const preview = { source: null, page: 1, pages: 1 };

async function openSource(s, page) {
  preview.source = s;
  preview.page = page || s.page || 1;
  await guarded(async () => {
    const q = new URLSearchParams();
    if (s.chunk_id !== undefined && (page === undefined || page === (s.page || 1))) q.set("chunk_id", s.chunk_id);
    const base = `/api/v1/kbs/${encodeURIComponent(s.kb)}/documents/${encodeURIComponent(s.document_id)}`;
    const p = await api("GET", `${base}/pages/${preview.page}?${q}`);
    preview.pages = p.pages;
    $("#preview-title").textContent = `[${s.n}] ${p.name}${s.section ? " — " + s.section : ""}`;
    $("#preview-page").textContent = s.page ? t("preview.page", { page: p.page, pages: p.pages }) : t("preview.whole");
    $("#preview-prev").disabled = !s.page || p.page <= 1;
    $("#preview-next").disabled = !s.page || p.page >= p.pages;
    $("#preview-file").href = `${base}/file?inline=true`;
    const pre = $("#preview-text");
    pre.replaceChildren();
    // the passage as cited (a hit may span several chunks), else the cited chunk the server located
    const at = s.text && (page === undefined || page === (s.page || 1)) ? p.text.indexOf(s.text) : -1;
    const span = at >= 0 ? [at, at + s.text.length] : p.highlight;
    if (span) {
      const [a, b] = span;
      const mark = el("mark", { id: "cited-passage" }, p.text.slice(a, b));
      pre.append(p.text.slice(0, a), mark, p.text.slice(b));
      $("#preview").hidden = false;
      mark.scrollIntoView({ block: "center" });
    } else {
      pre.append(p.text);
      $("#preview").hidden = false;
    }
  });
}

function setupPreview() {
  $("#preview-close").addEventListener("click", () => { $("#preview").hidden = true; });
  $("#preview").addEventListener("click", (e) => { if (e.target.id === "preview") $("#preview").hidden = true; });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("#preview").hidden = true; });
  $("#preview-prev").addEventListener("click", () => openSource(preview.source, preview.page - 1));
  $("#preview-next").addEventListener("click", () => openSource(preview.source, preview.page + 1));
}

// ------------------------------------------------------------------ chat
const chat = { conversations: [], current: null, kbs: [], controller: null };

function sourcesPanel(panel, sources, cited = []) {
  panel.replaceChildren(el("h3", { text: t("chat.sources") }));
  if (!sources.length) { panel.append(el("p", { class: "muted", text: t("chat.noSources") })); return; }
  const list = el("ol", { class: "sources" });
  for (const s of sources) {
    const isCited = cited.includes(s.n);
    list.append(el("li", { class: isCited ? "source cited" : "source", "data-n": s.n },
      el("button", { type: "button", class: "source-open", onclick: () => openSource(s) },
        el("span", { class: "chip static" }, `${s.n}`), " ", el("strong", { text: s.location }),
        s.section ? el("span", { class: "muted" }, ` — ${s.section}`) : null,
        isCited ? el("span", { class: "badge" }, t("chat.cited")) : null),
      el("p", { class: "snippet", text: s.text.length > 220 ? s.text.slice(0, 220) + "…" : s.text })));
  }
  panel.append(list);
}

function messageView(m, sourcesTarget) {
  if (m.role === "user") return el("div", { class: "msg user" }, el("div", { class: "bubble", text: m.content }));
  const body = el("div", { class: "bubble answer" });
  renderAnswer(body, m.content, m.sources || [], openSource);
  const box = el("div", { class: "msg assistant" }, body);
  box.addEventListener("click", (e) => { if (!e.target.closest(".chip")) sourcesPanel(sourcesTarget, m.sources || [], m.cited || []); });
  return box;
}

async function loadConversations() {
  const r = await api("GET", "/api/v1/conversations");
  chat.conversations = r.conversations;
}

async function chatView(convId) {
  const view = $("#view");
  const [kbs] = await Promise.all([api("GET", "/api/v1/kbs"), loadConversations()]);
  chat.kbs = kbs.kbs;
  let conv = null;
  if (convId) conv = await api("GET", `/api/v1/conversations/${encodeURIComponent(convId)}`).catch(() => null);
  chat.current = conv;

  const list = el("ul", { class: "conv-list" });
  for (const c of chat.conversations) {
    list.append(el("li", { class: conv && c.id === conv.id ? "active" : "" },
      el("a", { href: `#/chat/${c.id}`, title: c.title }, c.title || "…"),
      el("span", { class: "muted small" }, c.kb)));
  }
  if (!chat.conversations.length) list.append(el("li", { class: "muted", text: t("chat.empty") }));

  const picker = el("select", { id: "kb-picker", "aria-label": t("chat.kb") },
    chat.kbs.map((k) => el("option", { value: k.name, selected: conv ? k.name === conv.kb : undefined }, `${k.name} (${k.documents})`)));
  picker.addEventListener("change", async () => {
    if (chat.current) await guarded(() => api("PATCH", `/api/v1/conversations/${chat.current.id}`, { kb: picker.value }));
  });

  const sources = el("aside", { class: "sources-panel", id: "sources-panel" });
  const messages = el("div", { class: "messages", id: "messages" });
  if (!chat.kbs.length) messages.append(el("p", { class: "welcome", text: t("chat.noKb") }));
  else if (!conv || !conv.messages.length) messages.append(el("p", { class: "welcome", text: t("chat.welcome") }));
  let lastAssistant = null;
  for (const m of conv ? conv.messages : []) {
    messages.append(messageView(m, sources));
    if (m.role === "assistant") lastAssistant = m;
  }
  sourcesPanel(sources, lastAssistant ? lastAssistant.sources : [], lastAssistant ? lastAssistant.cited : []);

  const input = el("textarea", { id: "question", rows: 2, placeholder: t("chat.placeholder"), "aria-label": t("chat.placeholder") });
  const send = el("button", { type: "submit", id: "send", class: "primary", text: t("chat.send") });
  const stop = el("button", { type: "button", id: "stop", text: t("chat.stop"), hidden: true,
    onclick: () => chat.controller && chat.controller.abort() });
  const form = el("form", { class: "ask", onsubmit: (e) => { e.preventDefault(); ask(); } }, input, send, stop);
  input.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); ask(); } });

  async function ask() {
    const question = input.value.trim();
    if (!question || chat.controller || !chat.kbs.length) return;
    let c = chat.current;
    if (!c) {
      c = await guarded(() => api("POST", "/api/v1/conversations", { kb: picker.value }));
      if (!c) return;
      chat.current = c;
      history.replaceState(null, "", `#/chat/${c.id}`);
    }
    input.value = "";
    const welcome = $(".welcome", messages);
    if (welcome) welcome.remove();
    messages.append(messageView({ role: "user", content: question }, sources));
    const body = el("div", { class: "bubble answer streaming" });
    const box = el("div", { class: "msg assistant" }, body);
    messages.append(box);
    box.scrollIntoView({ block: "end" });
    let text = "", srcs = [], cited = [];
    chat.controller = new AbortController();
    send.hidden = true; stop.hidden = false;
    try {
      await stream("POST", `/api/v1/conversations/${c.id}/messages`, { question, kb: picker.value }, (name, data) => {
        if (name === "sources") { srcs = data.sources; sourcesPanel(sources, srcs); }
        else if (name === "delta") { text += data.text; renderAnswer(body, text, srcs, openSource); box.scrollIntoView({ block: "end" }); }
        else if (name === "done") { text = data.answer; cited = data.cited; renderAnswer(body, text, srcs, openSource); sourcesPanel(sources, srcs, cited); }
        else if (name === "error") { body.append(el("div", { class: "error", text: `${t("chat.error")}: ${data.message}` })); }
      }, chat.controller.signal);
    } catch (e) {
      if (e.name === "AbortError") body.append(el("span", { class: "muted", text: ` ${t("chat.stopped")}` }));
      else if (e instanceof ApiError && e.status === 401) askKey();
      else body.append(el("div", { class: "error", text: `${t("chat.error")}: ${e.message}` }));
    } finally {
      chat.controller = null;
      send.hidden = false; stop.hidden = true;
      body.classList.remove("streaming");
      const m = { role: "assistant", content: text, sources: srcs, cited };
      box.addEventListener("click", (e) => { if (!e.target.closest(".chip")) sourcesPanel(sources, m.sources, m.cited); });
      await guarded(loadConversations);
      renderList();
    }
  }

  function renderList() {
    list.replaceChildren();
    for (const c of chat.conversations) {
      list.append(el("li", { class: chat.current && c.id === chat.current.id ? "active" : "" },
        el("a", { href: `#/chat/${c.id}`, title: c.title }, c.title || "…"), el("span", { class: "muted small" }, c.kb)));
    }
  }

  const tools = conv ? el("div", { class: "conv-tools" },
    el("a", { href: `/api/v1/conversations/${conv.id}/export?format=md`, download: "", text: t("chat.export") }),
    el("button", { type: "button", class: "link danger", text: t("chat.delete"), onclick: async () => {
      await guarded(() => api("DELETE", `/api/v1/conversations/${conv.id}`));
      location.hash = "#/chat";
    } })) : null;

  view.replaceChildren(el("div", { class: "chat-layout" },
    el("aside", { class: "sidebar" },
      el("button", { type: "button", class: "primary wide", id: "new-chat", text: t("chat.new"), onclick: () => {
        if (location.hash === "#/chat") route(); else location.hash = "#/chat";
      } }), list),
    el("section", { class: "chat-main" },
      el("div", { class: "chat-head" }, el("label", {}, `${t("chat.kb")} `, picker), tools),
      messages, form),
    sources));
  input.focus();
}

// ------------------------------------------------------------------ knowledge bases
const uploads = new Map(); // name -> {fraction, status}

async function kbsView(kbName) {
  const view = $("#view");
  const { kbs } = await api("GET", "/api/v1/kbs");
  const current = kbName || (kbs[0] && kbs[0].name);
  const nameInput = el("input", { id: "new-kb-name", placeholder: t("kbs.name"), pattern: "[\\w.\\-]+", required: true, "aria-label": t("kbs.name") });
  const side = el("aside", { class: "sidebar" },
    el("h2", { text: t("kbs.title") }),
    el("ul", { class: "conv-list" }, kbs.map((k) => el("li", { class: k.name === current ? "active" : "" },
      el("a", { href: `#/kbs/${encodeURIComponent(k.name)}` }, k.name), el("span", { class: "muted small" }, `${k.documents}`)))),
    el("form", { class: "new-kb", onsubmit: async (e) => {
      e.preventDefault();
      const made = await guarded(() => api("POST", "/api/v1/kbs", { name: nameInput.value.trim() }));
      if (made) location.hash = `#/kbs/${encodeURIComponent(made.name)}`;
    } }, el("h3", { text: t("kbs.new") }), nameInput, el("button", { type: "submit", text: t("kbs.create") })));
  const main = el("section", { class: "kb-main" });
  view.replaceChildren(el("div", { class: "kb-layout" }, side, main));
  if (current) await kbDetail(main, current, kbs.find((k) => k.name === current));
}

// what a knowledge base made by an older docqa lacks (`upgrades`), with the rebuild it can have at once
function upgradeNotes(kb, entry) {
  const codes = (entry && entry.upgrades) || [];
  if (!codes.length) return el("div", { id: "kb-upgrades", hidden: true });
  return el("div", { class: "notice", id: "kb-upgrades" }, codes.map((code) => el("p", {},
    el("span", { text: t(`upgrade.${code}`) }),
    code === "rebuild" ? el("button", { type: "button", id: "rebuild", text: t("kbs.rebuild"), onclick: async (e) => {
      e.target.disabled = true;
      const r = await guarded(() => api("POST", `/api/v1/kbs/${encodeURIComponent(kb)}/rebuild`));
      if (r) { toast(t("kbs.rebuilt", { chunks: r.chunks })); await kbsView(kb); } else e.target.disabled = false;
    } }) : null)));
}

async function kbDetail(main, kb, entry) {
  const fileInput = el("input", { type: "file", multiple: true, id: "file-input", hidden: true });
  const drop = el("div", { class: "dropzone", id: "dropzone" },
    el("p", {}, `${t("kbs.drop")} `, el("button", { type: "button", class: "link", onclick: () => fileInput.click(), text: t("kbs.choose") })),
    el("p", { class: "muted small", text: t("kbs.types") }), fileInput);
  const progress = el("ul", { class: "upload-list", id: "upload-list" });
  const table = el("table", { class: "docs", id: "docs-table" });
  main.replaceChildren(
    el("div", { class: "kb-head" }, el("h2", { text: kb }),
      el("button", { type: "button", class: "link danger", text: t("kbs.delete"), onclick: async () => {
        if (!confirm(t("kbs.confirmDelete", { name: kb }))) return;
        await guarded(() => api("DELETE", `/api/v1/kbs/${encodeURIComponent(kb)}`));
        location.hash = "#/kbs";
      } })),
    upgradeNotes(kb, entry), drop, progress, el("h3", { text: t("kbs.docs") }), table);

  const refresh = () => guarded(async () => {
    const { documents } = await api("GET", `/api/v1/kbs/${encodeURIComponent(kb)}/documents`);
    table.replaceChildren(el("thead", {}, el("tr", {}, ["col.name", "col.status", "col.chunks", "col.pages", "col.size", "col.actions"].map((k) => el("th", { text: t(k) })))));
    const body = el("tbody");
    if (!documents.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: t("kbs.noDocs") })));
    for (const d of documents) {
      body.append(el("tr", { "data-name": d.name, "data-status": d.status },
        el("td", {}, el("a", { href: `/api/v1/kbs/${encodeURIComponent(kb)}/documents/${d.id}/file?inline=true`, target: "_blank", rel: "noopener" }, d.name)),
        el("td", {}, el("span", { class: `status ${d.status}`, title: d.error || "" }, statusLabel(d.status)), d.error ? el("div", { class: "muted small", text: d.error }) : null),
        el("td", { text: d.chunks || "" }), el("td", { text: d.pages || "" }), el("td", { text: d.size ? fmtSize(d.size) : "" }),
        el("td", { class: "actions" },
          d.status === "failed" && d.uploaded ? el("button", { type: "button", class: "small", text: t("doc.retry"), onclick: async () => {
            const r = await guarded(() => api("POST", `/api/v1/kbs/${encodeURIComponent(kb)}/documents/${d.id}/retry`));
            if (r) follow(r.job_id);
          } }) : null,
          el("button", { type: "button", class: "small danger", text: t("doc.delete"), onclick: async () => {
            if (!confirm(t("doc.confirmDelete", { name: d.name }))) return;
            await guarded(() => api("DELETE", `/api/v1/kbs/${encodeURIComponent(kb)}/documents/${d.id}`));
            refresh();
          } }))));
    }
    table.append(body);
  });

  function row(name) {
    let li = progress.querySelector(`li[data-name="${CSS.escape(name)}"]`);
    if (!li) {
      li = el("li", { "data-name": name }, el("span", { class: "name", text: name }), el("progress", { max: 1, value: 0 }), el("span", { class: "state" }));
      progress.append(li);
    }
    return li;
  }

  function setRow(name, fraction, status) {
    const li = row(name);
    $("progress", li).value = fraction;
    $(".state", li).textContent = statusLabel(status);
    li.dataset.status = status;
  }

  async function follow(jobId) {
    if (!jobId) return;
    await guarded(() => stream("GET", `/api/v1/jobs/${jobId}/events`, undefined, (name, job) => {
      for (const f of job.files) setRow(f.name, f.status === "ok" || f.status === "failed" ? 1 : Math.max(job.progress, 0.05), f.status);
      if (name === "done") refresh();
    }));
  }

  async function send(files) {
    for (const file of files) {
      setRow(file.name, 0, "uploading");
      const r = await guarded(() => upload(kb, file, (f) => setRow(file.name, f, "uploading")));
      if (!r) { setRow(file.name, 0, "failed"); continue; }
      for (const d of r.documents) {
        if (d.status === "duplicate") { setRow(d.name, 1, "duplicate"); toast(t("upload.duplicate", { name: d.name })); }
        else setRow(d.name, 0.05, "queued");
      }
      refresh();
      follow(r.job_id);
    }
  }

  fileInput.addEventListener("change", () => { send([...fileInput.files]); fileInput.value = ""; });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => send([...e.dataTransfer.files]));
  await refresh();
}

// ------------------------------------------------------------------ routing
async function route() {
  const [, page, arg] = (location.hash || "#/chat").split("/");
  const name = arg ? decodeURIComponent(arg) : undefined;
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.id === `nav-${page || "chat"}`);
  await guarded(() => (page === "kbs" ? kbsView(name) : chatView(name)));
}

// links to files and exports carry the API key when one is set (a plain link cannot send the header)
document.addEventListener("click", async (e) => {
  const a = e.target.closest("a[href^='/api/']");
  if (!a || !localStorage.getItem("docqa.apiKey")) return;
  e.preventDefault();
  await guarded(async () => {
    const r = await fetch(a.getAttribute("href"), { headers: { Authorization: `Bearer ${localStorage.getItem("docqa.apiKey")}` } });
    if (!r.ok) throw new ApiError(r.status, `${r.status}`);
    const url = URL.createObjectURL(await r.blob());
    window.open(url, "_blank", "noopener");
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  });
});

translatePage();
setupPreview();
$("#key-button").addEventListener("click", askKey);
window.addEventListener("hashchange", route);
route();
