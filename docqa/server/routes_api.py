"""The native API under /api/v1: knowledge bases, documents and uploads, search, ingest jobs, conversations, keys.

Plain `def` routes run in FastAPI's thread pool (they touch SQLite); the upload, chat and job-progress routes are
`async` because they stream. Server-sent events are `event: NAME` + `data: JSON` pairs: a chat streams
`sources` (before the first token), `delta` ({"text"}), then `done` (the answer and its validated citations) or
`error`; a job streams `progress` until `done`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse

from ..store.rows import CHUNK_ROWS, ChunkRow
from .answering import stream_answer
from .auth import SCOPES, create_key, scoped
from .errors import BadRequest, NotFound, error_body
from .jobs import TERMINAL, JobManager, touch
from .state import ServerState
from .uploads import content_disposition, receive_files

read = APIRouter(prefix="/api/v1", dependencies=[Depends(scoped("read"))])
ingest = APIRouter(prefix="/api/v1", dependencies=[Depends(scoped("ingest"))])
admin = APIRouter(prefix="/api/v1", dependencies=[Depends(scoped("admin"))])
routers = (read, ingest, admin)

#: types a browser would run script in: never shown inline from this origin
ACTIVE_TYPES = {
    "text/html",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/xml",
    "application/xml",
    "text/javascript",
    "application/javascript",
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _state(request: Request) -> ServerState:
    return request.app.state.docqa


def _jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


# ---------------------------------------------------------------------- knowledge bases
@read.get("/kbs")
def list_kbs(request: Request) -> dict[str, Any]:
    state = _state(request)
    state.discover()  # knowledge bases made by `docqa ingest` since the server started
    out = []
    for name in state.kb_names():
        h = state.kb(name)
        docs = chunks = 0
        if h.exists:
            with state.retriever(name) as r:
                docs, chunks = len(r.kb.documents()), r.kb.chunk_count()
        out.append({"id": name, "name": name, "documents": docs, "chunks": chunks, "model": f"docqa/{name}"})
    return {"kbs": out}


@admin.post("/kbs", status_code=201)
def create_kb(request: Request, body: dict = Body(...)) -> dict[str, Any]:
    h = _state(request).create_kb(str(body.get("name", "")))
    return {"id": h.name, "name": h.name, "documents": 0, "chunks": 0, "model": f"docqa/{h.name}"}


@admin.delete("/kbs/{kb}")
def delete_kb(request: Request, kb: str) -> dict[str, Any]:
    state = _state(request)
    state.kb(kb)
    # after the jobs queued before it, in the writer's thread: nothing writes while the folder goes
    _jobs(request).run_exclusive(kb, lambda: state.drop_kb(kb)).result()
    state.db.execute("DELETE FROM uploads WHERE kb = ?", (kb,))
    return {"deleted": kb}


# ---------------------------------------------------------------------- documents
def _documents(state: ServerState, kb: str) -> list[dict[str, Any]]:
    with state.retriever(kb) as r:
        kb_docs = {d.path: d for d in r.kb.documents()}
    out = []
    for u in state.db.rows("SELECT * FROM uploads WHERE kb = ? ORDER BY created", (kb,)):
        d = kb_docs.pop(u["path"], None)
        status, error = u["status"], u["error"]
        if status not in ("queued", "ingesting", "embedding") and d is not None:
            status, error = d.status, d.error
        out.append(
            {
                "id": u["id"],
                "name": u["name"],
                "size": u["size"],
                "sha256": u["sha256"],
                "status": status,
                "error": error,
                "chunks": d.chunks if d else 0,
                "pages": d.pages if d else None,
                "job_id": u["job_id"],
                "uploaded": True,
                "created": u["created"],
            }
        )
    for d in kb_docs.values():
        out.append(
            {
                "id": f"d{d.id}",
                "name": Path(d.path).name,
                "path": d.path,
                "size": d.size,
                "sha256": d.sha256,
                "status": d.status,
                "error": d.error,
                "chunks": d.chunks,
                "pages": d.pages,
                "job_id": None,
                "uploaded": False,
                "created": d.updated_at,
            }
        )
    return out


def _find_document(state: ServerState, kb: str, doc_id: str) -> dict[str, Any]:
    """{path, name, upload (row or None), kb_id (knowledge-base document id or None)}."""
    state.kb(kb)
    upload = state.db.row("SELECT * FROM uploads WHERE kb = ? AND id = ?", (kb, doc_id))
    with state.retriever(kb) as r:
        docs = r.kb.documents()
    if upload is not None:
        d = next((d for d in docs if d.path == upload["path"]), None)
        return {"path": upload["path"], "name": upload["name"], "upload": upload, "kb_id": d.id if d else None}
    if doc_id.startswith("d") and doc_id[1:].isdigit():
        d = next((d for d in docs if d.id == int(doc_id[1:])), None)
        if d is not None:
            return {"path": d.path, "name": Path(d.path).name, "upload": None, "kb_id": d.id}
    raise NotFound(f"no document {doc_id!r} in {kb!r}")


@read.get("/kbs/{kb}/documents")
def list_documents(request: Request, kb: str) -> dict[str, Any]:
    return {"documents": _documents(_state(request), kb)}


@ingest.post("/kbs/{kb}/documents", status_code=202)
async def upload_documents(request: Request, kb: str):
    state = _state(request)
    h = state.kb(kb)
    limit = state.config.upload_limit
    received = await receive_files(request, h.files_dir / ".incoming", limit, total_limit=limit * 16)

    def register() -> tuple[list[dict], list[dict]]:
        with state.retriever(kb) as r:
            known = {d.sha256: d for d in r.kb.documents() if d.sha256 and d.status == "ok"}
        documents, new = [], []
        seen: dict[str, str] = {}
        for rec in received:
            dup = state.db.row(
                "SELECT id, name FROM uploads WHERE kb = ? AND sha256 = ? AND status NOT IN ('failed', 'cancelled')",
                (kb, rec.sha256),
            )
            dup_id = dup["id"] if dup else seen.get(rec.sha256)
            if dup_id is None and rec.sha256 in known:
                dup_id = f"d{known[rec.sha256].id}"
            if dup_id is not None:
                rec.tmp_path.unlink(missing_ok=True)
                documents.append(
                    {
                        "id": dup_id,
                        "name": rec.name,
                        "size": rec.size,
                        "sha256": rec.sha256,
                        "status": "duplicate",
                        "duplicate_of": dup_id,
                    }
                )
                continue
            doc_id = uuid.uuid4().hex[:16]
            dest = h.files_dir / doc_id / rec.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(rec.tmp_path, dest)
            now = time.time()
            row = {
                "id": doc_id,
                "kb": kb,
                "name": rec.name,
                "sha256": rec.sha256,
                "size": rec.size,
                "path": os.path.abspath(dest),
                "status": "queued",
                "created": now,
                "updated": now,
            }
            state.db.insert("uploads", row)
            seen[rec.sha256] = doc_id
            new.append(row)
            documents.append(
                {"id": doc_id, "name": rec.name, "size": rec.size, "sha256": rec.sha256, "status": "queued"}
            )
        return documents, new

    documents, new = await asyncio.to_thread(register)
    job_id = _jobs(request).submit(kb, new) if new else None
    for d in documents:
        if d["status"] == "queued":
            d["job_id"] = job_id
    return JSONResponse({"job_id": job_id, "documents": documents}, status_code=202)


@ingest.delete("/kbs/{kb}/documents/{doc_id}")
def delete_document(request: Request, kb: str, doc_id: str) -> dict[str, Any]:
    from ..store import KnowledgeBase

    state = _state(request)
    doc = _find_document(state, kb, doc_id)
    h = state.kb(kb)

    def remove() -> int:
        with KnowledgeBase.open(h.path, writable=True) as w:
            return w.remove_documents([doc["path"]])

    n = _jobs(request).run_exclusive(kb, remove).result()
    if doc["upload"] is not None:
        state.db.execute("DELETE FROM uploads WHERE id = ?", (doc_id,))
        shutil.rmtree(Path(doc["path"]).parent, ignore_errors=True)
    return {"deleted": doc_id, "removed_from_index": n}


@ingest.post("/kbs/{kb}/documents/{doc_id}/retry", status_code=202)
def retry_document(request: Request, kb: str, doc_id: str) -> dict[str, Any]:
    state = _state(request)
    doc = _find_document(state, kb, doc_id)
    if doc["upload"] is None:
        raise BadRequest("only uploaded documents can be retried here; re-run `docqa ingest` for the others")
    if not Path(doc["path"]).exists():
        raise NotFound("the uploaded file is gone; upload it again")
    touch(doc["path"])  # a failed file keeps its size and mtime: ingest must look at it again
    job_id = _jobs(request).submit(kb, [doc["upload"]])
    return {"job_id": job_id, "documents": [{"id": doc_id, "name": doc["name"], "status": "queued"}]}


@read.get("/kbs/{kb}/documents/{doc_id}/file")
def document_file(request: Request, kb: str, doc_id: str, inline: bool = False):
    doc = _find_document(_state(request), kb, doc_id)
    if not Path(doc["path"]).is_file():
        raise NotFound(f"the original of {doc['name']} is not on the server any more")
    import mimetypes

    media = mimetypes.guess_type(doc["name"])[0] or "application/octet-stream"
    headers = {"X-Content-Type-Options": "nosniff"}
    if media in ACTIVE_TYPES:  # an uploaded page must not run script in this origin: download it, sandboxed
        inline = False
        headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    headers["Content-Disposition"] = content_disposition(doc["name"], inline)
    return FileResponse(doc["path"], media_type=media, headers=headers)


def page_text(rows: list[ChunkRow]) -> tuple[str, dict[int, tuple[int, int]]]:
    """The text of a page's chunks joined at their offsets (overlaps once), and each chunk's span in it. Joined the
    way the retriever joins a merged hit's chunks, so a hit's text on this page is a substring of it."""
    parts: list[str] = []
    spans: dict[int, tuple[int, int]] = {}
    length = 0
    end: int | None = None
    for r in sorted(rows, key=lambda r: (r.start, r.ordinal)):
        text = r.text
        if end is not None and r.start < end:
            cut = min(end - r.start, len(text))
            begin = length - cut
            text = text[cut:]
        else:
            if parts:  # chunks that do not touch: one newline, as docqa.retrieve.join_at_offsets joins a hit
                parts.append("\n")
                length += 1
            begin = length
        parts.append(text)
        length += len(text)
        spans[r.id] = (max(begin, 0), length)
        end = r.end if end is None else max(end, r.end)
    return "".join(parts), spans


@read.get("/kbs/{kb}/documents/{doc_id}/pages/{page}")
def document_page(request: Request, kb: str, doc_id: str, page: int, chunk_id: int | None = None) -> dict[str, Any]:
    """The text of one page (for a format without pages, page 1 is the whole document), and where the chunk
    `chunk_id` (a cited passage) lies in it: `highlight: [start, end]`."""
    state = _state(request)
    doc = _find_document(state, kb, doc_id)
    if doc["kb_id"] is None:
        raise NotFound(f"{doc['name']} is not in the index (yet)")
    with state.retriever(kb) as r, r.kb.snapshot():
        conn = r.kb.conn
        pages = conn.execute("SELECT max(page) FROM chunks WHERE document_id = ?", (doc["kb_id"],)).fetchone()[0]
        if pages is None:
            rows = [ChunkRow(*x) for x in conn.execute(f"{CHUNK_ROWS} WHERE c.document_id = ?", (doc["kb_id"],))]
        else:
            rows = [
                ChunkRow(*x)
                for x in conn.execute(f"{CHUNK_ROWS} WHERE c.document_id = ? AND c.page = ?", (doc["kb_id"], page))
            ]
    if not rows:
        raise NotFound(f"{doc['name']} has no page {page}")
    text, spans = page_text(rows)
    return {
        "document_id": doc_id,
        "name": doc["name"],
        "page": page,
        "pages": pages or 1,
        "text": text,
        "highlight": list(spans[chunk_id]) if chunk_id in spans else None,
        "chunks": [{"chunk_id": cid, "start": s, "end": e} for cid, (s, e) in spans.items()],
    }


# ---------------------------------------------------------------------- search
@read.post("/search")
def search(request: Request, body: dict = Body(...)) -> dict[str, Any]:
    """`{query, kb_ids: [kb], k, mode}` -> `{results: [...]}`, each a `docqa search --json` hit plus its `kb`."""
    state = _state(request)
    query = str(body.get("query") or "").strip()
    if not query:
        raise BadRequest("query is empty")
    kbs = body.get("kb_ids") or state.kb_names()
    if not isinstance(kbs, list):
        raise BadRequest("kb_ids must be a list of knowledge-base names")
    try:
        k = int(body.get("k") or state.settings.top_k)
    except (TypeError, ValueError):
        raise BadRequest("k must be an integer") from None
    if not 1 <= k <= 100:
        raise BadRequest("k must be between 1 and 100")
    mode = body.get("mode")
    results = []
    t0 = time.perf_counter()
    for kb in kbs:
        state.kb(str(kb))
        with state.retriever(str(kb)) as r:
            for h in r.search(query, k=k, mode=mode):
                j = h.to_json() | {"kb": kb, "document_id": _doc_id(state, str(kb), h.source, h.document_id)}
                results.append(j)
    if len(kbs) > 1:
        results.sort(key=lambda j: -j["score"])
        results = results[:k]
        for i, j in enumerate(results):
            j["rank"] = i + 1
    return {"query": query, "results": results, "seconds": round(time.perf_counter() - t0, 4)}


def _doc_id(state: ServerState, kb: str, source: str, kb_document_id: int) -> str:
    from .answering import document_id

    return document_id(state, kb, source, kb_document_id)


# ---------------------------------------------------------------------- jobs
@ingest.get("/jobs")
def list_jobs(request: Request, kb: str | None = None) -> dict[str, Any]:
    from .jobs import public_job

    state = _state(request)
    rows = state.db.rows("SELECT * FROM jobs WHERE (? IS NULL OR kb = ?) ORDER BY created DESC LIMIT 100", (kb, kb))
    return {"jobs": [public_job(j) for j in rows]}


@ingest.get("/jobs/{job_id}")
def get_job(request: Request, job_id: str) -> dict[str, Any]:
    return _jobs(request).get(job_id)


@ingest.delete("/jobs/{job_id}")
def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    return _jobs(request).cancel(job_id)


@ingest.get("/jobs/{job_id}/events")
async def job_events(request: Request, job_id: str):
    jobs = _jobs(request)
    first = await asyncio.to_thread(jobs.get, job_id)

    async def stream():
        last = None
        job = first
        while True:
            key = (job["status"], job["stage"], job["progress"], json.dumps(job["files"]))
            if key != last:
                yield sse("progress", job)
                last = key
            if job["status"] in TERMINAL:
                yield sse("done", job)
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.25)
            job = await asyncio.to_thread(jobs.get, job_id)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


# ---------------------------------------------------------------------- conversations
def _conversation(state: ServerState, conv_id: str) -> dict[str, Any]:
    conv = state.db.row("SELECT * FROM conversations WHERE id = ?", (conv_id,))
    if conv is None:
        raise NotFound(f"no conversation {conv_id!r}")
    conv["messages"] = state.db.rows(
        "SELECT id, role, content, rewritten, sources, cited, abstained, created FROM messages "
        "WHERE conversation_id = ? ORDER BY id",
        (conv_id,),
    )
    return conv


@read.post("/conversations", status_code=201)
def create_conversation(request: Request, body: dict = Body(default={})) -> dict[str, Any]:
    state = _state(request)
    kb = body.get("kb") or (state.kb_names()[0] if len(state.kb_names()) == 1 else None)
    if not kb:
        raise BadRequest("kb is required (the knowledge base this conversation asks)")
    state.kb(kb)
    now = time.time()
    cid = uuid.uuid4().hex[:16]
    state.db.insert(
        "conversations",
        {"id": cid, "kb": kb, "title": str(body.get("title") or "")[:200], "created": now, "updated": now},
    )
    return _conversation(state, cid)


@read.get("/conversations")
def list_conversations(request: Request) -> dict[str, Any]:
    rows = _state(request).db.rows("SELECT * FROM conversations ORDER BY updated DESC")
    return {"conversations": rows}


@read.get("/conversations/{conv_id}")
def read_conversation(request: Request, conv_id: str) -> dict[str, Any]:
    return _conversation(_state(request), conv_id)


@read.patch("/conversations/{conv_id}")
def update_conversation(request: Request, conv_id: str, body: dict = Body(...)) -> dict[str, Any]:
    state = _state(request)
    _conversation(state, conv_id)
    values = {}
    if "title" in body:
        values["title"] = str(body["title"])[:200]
    if "kb" in body:
        state.kb(str(body["kb"]))
        values["kb"] = str(body["kb"])
    if values:
        state.db.update("conversations", conv_id, values)
    return _conversation(state, conv_id)


@read.delete("/conversations/{conv_id}")
def delete_conversation(request: Request, conv_id: str) -> dict[str, Any]:
    state = _state(request)
    _conversation(state, conv_id)
    state.db.execute("DELETE FROM messages WHERE conversation_id = ?", (conv_id,))
    state.db.execute("DELETE FROM conversations WHERE id = ?", (conv_id,))
    return {"deleted": conv_id}


@read.get("/conversations/{conv_id}/export")
def export_conversation(request: Request, conv_id: str, format: str = "md"):
    conv = _conversation(_state(request), conv_id)
    title = conv["title"] or "conversation"
    if format == "json":
        return JSONResponse(conv, headers={"Content-Disposition": content_disposition(f"{title}.json")})
    if format != "md":
        raise BadRequest("format must be md or json")
    lines = [f"# {title}", "", f"Knowledge base: {conv['kb']}", ""]
    for m in conv["messages"]:
        if m["role"] == "user":
            lines += [f"**Q:** {m['content']}", ""]
        else:
            lines += [m["content"], ""]
            by_n = {s["n"]: s for s in m["sources"]}
            cited = [by_n[n] for n in m["cited"] if n in by_n]
            if cited:
                lines += (
                    ["Sources:"]
                    + [
                        f"- [{s['n']}] {s['location']}" + (f" — {s['section']}" if s.get("section") else "")
                        for s in cited
                    ]
                    + [""]
                )
    return PlainTextResponse(
        "\n".join(lines),
        media_type="text/markdown; charset=utf-8",
        headers={"Content-Disposition": content_disposition(f"{title}.md")},
    )


@read.post("/conversations/{conv_id}/messages")
async def ask_in_conversation(request: Request, conv_id: str, body: dict = Body(...)):
    """Ask `{question}` in the conversation: an SSE stream of sources, delta, done | error. The question is saved
    at once and the answer when it ends (a stopped answer is saved as far as it got), so a refresh loses nothing."""
    state = _state(request)
    conv = await asyncio.to_thread(_conversation, state, conv_id)
    question = str(body.get("question") or "").strip()
    if not question:
        raise BadRequest("question is empty")
    kb = str(body.get("kb") or conv["kb"])
    state.kb(kb)
    history: list[tuple[str, str, str | None]] = []
    pending = None
    for m in conv["messages"]:
        if m["role"] == "user":
            pending = m
        elif pending is not None:
            if not m["abstained"] and m["content"]:
                history.append((pending["content"], m["content"], pending["rewritten"]))
            pending = None
    now = time.time()
    user_id = state.db.insert(
        "messages", {"conversation_id": conv_id, "role": "user", "content": question, "created": now}
    )
    values: dict[str, Any] = {"kb": kb}
    if not conv["title"]:
        values["title"] = question[:60]
    state.db.update("conversations", conv_id, values)
    cancel = threading.Event()
    events = stream_answer(state, kb, question, history, cancel=cancel)

    def save(text: str, sources: list, done: dict | None) -> None:
        state.db.insert(
            "messages",
            {
                "conversation_id": conv_id,
                "role": "assistant",
                "content": text,
                "sources": sources,
                "cited": done["cited"] if done else [],
                "abstained": int(bool(done and done["abstained"])),
                "created": time.time(),
            },
        )
        if done and done.get("rewritten_query"):
            state.db.execute("UPDATE messages SET rewritten = ? WHERE id = ?", (done["rewritten_query"], user_id))
        state.db.update("conversations", conv_id, {})

    async def stream():
        sources: list = []
        pieces: list[str] = []
        saved = False
        try:
            yield sse("start", {"conversation_id": conv_id, "message_id": user_id})
            async for kind, data in events:
                if kind == "sources":
                    sources = data
                    yield sse("sources", {"sources": data})
                elif kind == "delta":
                    pieces.append(data)
                    yield sse("delta", {"text": data})
                elif kind == "done":
                    save(data["answer"], sources, data)
                    saved = True
                    yield sse("done", data)
                elif kind == "error":
                    yield sse("error", error_body(data)["error"])
                    return
        finally:
            if not saved and pieces:
                save("".join(pieces).strip(), sources, None)
            await events.aclose()

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


# ---------------------------------------------------------------------- keys
@admin.post("/keys", status_code=201)
def add_key(request: Request, body: dict = Body(...)) -> dict[str, Any]:
    """`{name, scope}` -> `{name, scope, key}`: the key is shown this once (only its SHA-256 is kept)."""
    state = _state(request)
    name, scope = str(body.get("name") or "").strip(), body.get("scope", "read")
    if not name or scope not in SCOPES:
        raise BadRequest(f"name is required and scope one of {', '.join(SCOPES)}")
    if state.db.row("SELECT 1 AS x FROM api_keys WHERE name = ?", (name,)):
        from .errors import Conflict

        raise Conflict(f"a key named {name!r} exists")
    return {"name": name, "scope": scope, "key": create_key(state, name, scope)}


@admin.get("/keys")
def list_keys(request: Request) -> dict[str, Any]:
    return {"keys": _state(request).db.rows("SELECT name, scope, created FROM api_keys ORDER BY name")}


@admin.delete("/keys/{name}")
def delete_key(request: Request, name: str) -> dict[str, Any]:
    if not _state(request).db.execute("DELETE FROM api_keys WHERE name = ?", (name,)):
        raise NotFound(f"no key {name!r}")
    return {"deleted": name}
