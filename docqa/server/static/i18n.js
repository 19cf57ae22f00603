// UI strings in English and Chinese; the browser's language picks (?lang=zh|en overrides).
const STRINGS = {
  en: {
    "nav.chat": "Chat", "nav.kbs": "Knowledge bases", "key.button": "API key",
    "key.prompt": "This server needs an API key (Authorization: Bearer). Enter it (kept in this browser):",
    "chat.new": "New conversation", "chat.empty": "No conversations yet.", "chat.kb": "Knowledge base",
    "chat.placeholder": "Ask a question about your documents…", "chat.send": "Ask", "chat.stop": "Stop",
    "chat.sources": "Sources", "chat.noSources": "Sources appear here as soon as the passages are found.",
    "chat.welcome": "Ask anything about the documents in this knowledge base. Answers cite their sources as [n]: click one to read the passage.",
    "chat.stopped": "(stopped)", "chat.delete": "Delete", "chat.export": "Export", "chat.cited": "cited",
    "chat.noKb": "There is no knowledge base yet: create one and upload documents first.",
    "chat.abstained": "nothing relevant found", "chat.error": "Error",
    "kbs.title": "Knowledge bases", "kbs.new": "New knowledge base", "kbs.create": "Create", "kbs.name": "name",
    "kbs.delete": "Delete knowledge base", "kbs.confirmDelete": "Delete the knowledge base “{name}” and all its documents?",
    "kbs.drop": "Drop files here, or", "kbs.choose": "choose files", "kbs.types": "PDF, Markdown, text, HTML, Word — English or Chinese",
    "kbs.docs": "Documents", "kbs.noDocs": "No documents yet.", "col.name": "Name", "col.status": "Status",
    "col.chunks": "Chunks", "col.pages": "Pages", "col.size": "Size", "col.actions": "",
    "doc.delete": "Delete", "doc.retry": "Retry", "doc.confirmDelete": "Delete “{name}”?",
    "status.ok": "ready", "status.failed": "failed", "status.queued": "queued", "status.ingesting": "ingesting",
    "status.embedding": "embedding", "status.cancelled": "cancelled", "status.duplicate": "duplicate",
    "status.uploading": "uploading", "status.done": "done", "status.running": "running",
    "upload.progress": "Uploading {name}", "upload.duplicate": "{name} is already in the knowledge base",
    "job.title": "Ingest", "job.cancel": "Cancel",
    "upgrade.rebuild": "Search here does not read document names yet (a question naming a command or file ranks better where it does). Rebuilding the indexes takes seconds and re-embeds nothing.",
    "upgrade.reingest": "Chinese passages here are embedded as their own text, which this embedder cannot read; a knowledge base made now embeds them as their English gloss (better Chinese search). Create a new knowledge base and upload the documents again to have it.",
    "kbs.rebuild": "Rebuild indexes", "kbs.rebuilt": "Indexes rebuilt: {chunks} passages",
    "preview.page": "page {page} of {pages}", "preview.original": "Open the original file", "preview.whole": "whole document",
  },
  zh: {
    "nav.chat": "问答", "nav.kbs": "知识库", "key.button": "API 密钥",
    "key.prompt": "此服务器需要 API 密钥（Authorization: Bearer）。请输入（保存在本浏览器中）：",
    "chat.new": "新对话", "chat.empty": "还没有对话。", "chat.kb": "知识库",
    "chat.placeholder": "就你的文档提问……", "chat.send": "提问", "chat.stop": "停止",
    "chat.sources": "来源", "chat.noSources": "检索到段落后，来源会立即显示在这里。",
    "chat.welcome": "可以就这个知识库里的文档提任何问题。回答以 [n] 标注来源：点击即可查看原文段落。",
    "chat.stopped": "（已停止）", "chat.delete": "删除", "chat.export": "导出", "chat.cited": "已引用",
    "chat.noKb": "还没有知识库：请先创建一个并上传文档。",
    "chat.abstained": "没有找到相关内容", "chat.error": "错误",
    "kbs.title": "知识库", "kbs.new": "新建知识库", "kbs.create": "创建", "kbs.name": "名称",
    "kbs.delete": "删除知识库", "kbs.confirmDelete": "删除知识库“{name}”及其全部文档？",
    "kbs.drop": "把文件拖到这里，或", "kbs.choose": "选择文件", "kbs.types": "PDF、Markdown、文本、HTML、Word——中文或英文",
    "kbs.docs": "文档", "kbs.noDocs": "还没有文档。", "col.name": "名称", "col.status": "状态",
    "col.chunks": "片段", "col.pages": "页数", "col.size": "大小", "col.actions": "",
    "doc.delete": "删除", "doc.retry": "重试", "doc.confirmDelete": "删除“{name}”？",
    "status.ok": "就绪", "status.failed": "失败", "status.queued": "排队中", "status.ingesting": "处理中",
    "status.embedding": "向量化", "status.cancelled": "已取消", "status.duplicate": "重复",
    "status.uploading": "上传中", "status.done": "完成", "status.running": "运行中",
    "upload.progress": "正在上传 {name}", "upload.duplicate": "{name} 已在知识库中",
    "upgrade.rebuild": "这个知识库的检索还不读取文档名（问题里提到命令或文件名时，读取文档名的检索排序更好）。重建索引只需几秒，不会重新向量化。",
    "upgrade.reingest": "这里的中文段落是按原文向量化的，而当前的向量模型读不懂中文；现在新建的知识库会按英文释义向量化（中文检索更好）。新建一个知识库并重新上传文档即可。",
    "kbs.rebuild": "重建索引", "kbs.rebuilt": "索引已重建：{chunks} 个片段",
    "job.title": "入库", "job.cancel": "取消",
    "preview.page": "第 {page} 页，共 {pages} 页", "preview.original": "打开原始文件", "preview.whole": "整篇文档",
  },
};

function pickLanguage() {
  const forced = new URLSearchParams(location.search).get("lang");
  if (forced && STRINGS[forced]) return forced;
  const langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
  for (const l of langs) {
    const base = String(l).toLowerCase().split("-")[0];
    if (STRINGS[base]) return base;
  }
  return "en";
}

export const LANG = pickLanguage();

export function t(key, vars = {}) {
  const s = STRINGS[LANG]?.[key] ?? STRINGS.en[key] ?? key;
  return s.replace(/\{(\w+)\}/g, (_, k) => (k in vars ? String(vars[k]) : ""));
}

export function translatePage(root = document) {
  document.documentElement.lang = LANG === "zh" ? "zh-CN" : "en";
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
}
