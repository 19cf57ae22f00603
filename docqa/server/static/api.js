// Calls to the docqa API: JSON requests, server-sent events over fetch (so a key can travel in a header and
// an AbortController can stop a stream), and uploads with progress (XMLHttpRequest).
const KEY = "docqa.apiKey";

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = localStorage.getItem(KEY);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

export function setKey(key) {
  if (key) localStorage.setItem(KEY, key); else localStorage.removeItem(KEY);
}

async function failure(r) {
  let message = `${r.status} ${r.statusText}`;
  try { const body = await r.json(); if (body.error) message = body.error.message; } catch (_) { /* not JSON */ }
  return new ApiError(r.status, message);
}

export async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  if (!r.ok) throw await failure(r);
  const type = r.headers.get("content-type") || "";
  return type.includes("json") ? r.json() : r.text();
}

// POST/GET `path` and call onEvent(name, data) for each server-sent event until the stream ends.
export async function stream(method, path, body, onEvent, signal) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  if (!r.ok) throw await failure(r);
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(name, JSON.parse(data));
    }
  }
}

// Upload one file (multipart field "files"); onProgress(fraction) while the bytes go out.
export function upload(kb, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/v1/kbs/${encodeURIComponent(kb)}/documents`);
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* empty */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, (body.error && body.error.message) || `${xhr.status}`));
    };
    xhr.onerror = () => reject(new ApiError(0, "network error"));
    const form = new FormData();
    form.append("files", file, file.name);
    xhr.send(form);
  });
}
