"""/api/v1/conversations: create, list, read, rename, delete, export; ask in one (an SSE stream of sources,
delta, done | error)."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Body, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from .answering import stream_answer
from .errors import BadRequest, NotFound, error_body
from .routes_common import SSE_HEADERS, read, sse, state_of
from .state import ServerState
from .uploads import content_disposition


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
    state = state_of(request)
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
    rows = state_of(request).db.rows("SELECT * FROM conversations ORDER BY updated DESC")
    return {"conversations": rows}


@read.get("/conversations/{conv_id}")
def read_conversation(request: Request, conv_id: str) -> dict[str, Any]:
    return _conversation(state_of(request), conv_id)


@read.patch("/conversations/{conv_id}")
def update_conversation(request: Request, conv_id: str, body: dict = Body(...)) -> dict[str, Any]:
    state = state_of(request)
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
    state = state_of(request)
    _conversation(state, conv_id)
    state.db.execute("DELETE FROM messages WHERE conversation_id = ?", (conv_id,))
    state.db.execute("DELETE FROM conversations WHERE id = ?", (conv_id,))
    return {"deleted": conv_id}


@read.get("/conversations/{conv_id}/export")
def export_conversation(request: Request, conv_id: str, format: str = "md"):
    conv = _conversation(state_of(request), conv_id)
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
    state = state_of(request)
    conv = await asyncio.to_thread(_conversation, state, conv_id)
    question = str(body.get("question") or "").strip()
    if not question:
        raise BadRequest("question is empty")
    kb = str(body.get("kb") or conv["kb"])
    state.kb(kb)
    history = _history(conv["messages"])
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
    save = functools.partial(_save_answer, state, conv_id, user_id)
    return StreamingResponse(
        _relay(events, conv_id, user_id, save), media_type="text/event-stream", headers=SSE_HEADERS
    )


def _history(messages: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    """(question, answer, rewritten question) of each answered turn; abstentions and empty answers left out."""
    history: list[tuple[str, str, str | None]] = []
    pending = None
    for m in messages:
        if m["role"] == "user":
            pending = m
        elif pending is not None:
            if not m["abstained"] and m["content"]:
                history.append((pending["content"], m["content"], pending["rewritten"]))
            pending = None
    return history


def _save_answer(state: ServerState, conv_id: str, user_id: int, text: str, sources: list, done: dict | None) -> None:
    """None; saves the assistant's message (and the question's rewriting, when there is one)."""
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


async def _relay(events: Any, conv_id: str, user_id: int, save: Callable[[str, list, dict | None], None]):
    """The answer's events as SSE text; saves the answer when done, or as far as it got when stopped early."""
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
