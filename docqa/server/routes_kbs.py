"""/api/v1 knowledge bases and their documents: list, create, delete; upload, delete, retry; the original file
and the text of one page with a cited passage's place in it."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import Body, Request
from fastapi.responses import FileResponse, JSONResponse

from ..store.rows import CHUNK_ROWS, ChunkRow
from .errors import BadRequest, NotFound
from .jobs import touch
from .routes_common import admin, ingest, jobs_of, read, state_of
from .state import ServerState
from .uploads import content_disposition, receive_files

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


# ---------------------------------------------------------------------- knowledge bases
@read.get("/kbs")
def list_kbs(request: Request) -> dict[str, Any]:
    state = state_of(request)
    state.discover()  # knowledge bases made by `docqa ingest` since the server started
    return {"kbs": [_kb_entry(state, name) for name in state.kb_names()]}


def _kb_entry(state: ServerState, name: str) -> dict[str, Any]:
    """One knowledge base as the API lists it; `upgrades` / `notes`: what it lacks, made by an older docqa."""
    from ..ingest import UPGRADE_NOTES, upgrades

    h = state.kb(name)
    docs = chunks = 0
    codes: list[str] = []
    if h.exists:
        with state.retriever(name) as r:
            docs, chunks = len(r.kb.documents()), r.kb.chunk_count()
            codes = upgrades(r.kb, r.embedder.languages)
    return {
        "id": name,
        "name": name,
        "documents": docs,
        "chunks": chunks,
        "model": f"docqa/{name}",
        "upgrades": codes,
        "notes": [UPGRADE_NOTES[c] for c in codes],
    }


@admin.post("/kbs", status_code=201)
def create_kb(request: Request, body: dict = Body(...)) -> dict[str, Any]:
    h = state_of(request).create_kb(str(body.get("name", "")))
    return _kb_entry(state_of(request), h.name)


@admin.post("/kbs/{kb}/rebuild")
def rebuild_kb(request: Request, kb: str) -> dict[str, Any]:
    """`docqa rebuild` for one knowledge base: its vector and lexical indexes made again from SQLite (no
    re-embedding), in the writer's thread after the jobs queued before it; what an older one lacks ("rebuild" in
    `upgrades`: document names in BM25) it then has."""
    from ..store import KnowledgeBase, store_options

    state = state_of(request)
    h = state.kb(kb)
    if not h.exists:
        raise NotFound(f"knowledge base {kb!r} has no documents yet: nothing to rebuild")

    def rebuild() -> dict[str, Any]:
        with KnowledgeBase.open(h.path, writable=True, validate=False, **store_options(state.settings)) as w:
            return w.rebuild()

    info = jobs_of(request).run_exclusive(kb, rebuild).result()
    return {**_kb_entry(state, kb), "generation": info["generation"]}


@admin.delete("/kbs/{kb}")
def delete_kb(request: Request, kb: str) -> dict[str, Any]:
    state = state_of(request)
    state.kb(kb)
    # after the jobs queued before it, in the writer's thread: nothing writes while the folder goes
    jobs_of(request).run_exclusive(kb, lambda: state.drop_kb(kb)).result()
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
    return {"documents": _documents(state_of(request), kb)}


@ingest.post("/kbs/{kb}/documents", status_code=202)
async def upload_documents(request: Request, kb: str):
    state = state_of(request)
    h = state.kb(kb)
    limit = state.config.upload_limit
    received = await receive_files(request, h.files_dir / ".incoming", limit, total_limit=limit * 16)
    documents, new = await asyncio.to_thread(_register_uploads, state, kb, h, received)
    job_id = jobs_of(request).submit(kb, new) if new else None
    for d in documents:
        if d["status"] == "queued":
            d["job_id"] = job_id
    return JSONResponse({"job_id": job_id, "documents": documents}, status_code=202)


def _register_uploads(state: ServerState, kb: str, h: Any, received: list) -> tuple[list[dict], list[dict]]:
    """Each received file's entry in the response, and the upload rows of the new ones (to ingest)."""
    with state.retriever(kb) as r:
        known = {d.sha256: d for d in r.kb.documents() if d.sha256 and d.status == "ok"}
    documents, new = [], []
    seen: dict[str, str] = {}
    for rec in received:
        dup_id = _duplicate_of(state, kb, rec.sha256, seen, known)
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
        row = _store_upload(state, kb, h, rec)
        seen[rec.sha256] = row["id"]
        new.append(row)
        documents.append(
            {"id": row["id"], "name": rec.name, "size": rec.size, "sha256": rec.sha256, "status": "queued"}
        )
    return documents, new


def _duplicate_of(state: ServerState, kb: str, sha256: str, seen: dict[str, str], known: dict) -> str | None:
    """The id of a live upload, an earlier file of this request or an indexed document with this content, or None."""
    dup = state.db.row(
        "SELECT id, name FROM uploads WHERE kb = ? AND sha256 = ? AND status NOT IN ('failed', 'cancelled')",
        (kb, sha256),
    )
    dup_id = dup["id"] if dup else seen.get(sha256)
    if dup_id is None and sha256 in known:
        dup_id = f"d{known[sha256].id}"
    return dup_id


def _store_upload(state: ServerState, kb: str, h: Any, rec: Any) -> dict[str, Any]:
    """The upload row of `rec`, once its file is moved into the knowledge base's files and the row inserted."""
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
    return row


@ingest.delete("/kbs/{kb}/documents/{doc_id}")
def delete_document(request: Request, kb: str, doc_id: str) -> dict[str, Any]:
    from ..store import KnowledgeBase, store_options

    state = state_of(request)
    doc = _find_document(state, kb, doc_id)
    h = state.kb(kb)

    def remove() -> int:
        with KnowledgeBase.open(h.path, writable=True, **store_options(state.settings)) as w:
            return w.remove_documents([doc["path"]])

    n = jobs_of(request).run_exclusive(kb, remove).result()
    if doc["upload"] is not None:
        state.db.execute("DELETE FROM uploads WHERE id = ?", (doc_id,))
        shutil.rmtree(Path(doc["path"]).parent, ignore_errors=True)
    return {"deleted": doc_id, "removed_from_index": n}


@ingest.post("/kbs/{kb}/documents/{doc_id}/retry", status_code=202)
def retry_document(request: Request, kb: str, doc_id: str) -> dict[str, Any]:
    state = state_of(request)
    doc = _find_document(state, kb, doc_id)
    if doc["upload"] is None:
        raise BadRequest("only uploaded documents can be retried here; re-run `docqa ingest` for the others")
    if not Path(doc["path"]).exists():
        raise NotFound("the uploaded file is gone; upload it again")
    touch(doc["path"])  # a failed file keeps its size and mtime: ingest must look at it again
    job_id = jobs_of(request).submit(kb, [doc["upload"]])
    return {"job_id": job_id, "documents": [{"id": doc_id, "name": doc["name"], "status": "queued"}]}


@read.get("/kbs/{kb}/documents/{doc_id}/file")
def document_file(request: Request, kb: str, doc_id: str, inline: bool = False):
    doc = _find_document(state_of(request), kb, doc_id)
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
    state = state_of(request)
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
