"""The OpenAI-compatible endpoints: `GET /v1/models` and `POST /v1/chat/completions`.

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused-on-loopback")
    r = client.chat.completions.create(model="docqa/manuals", messages=[{"role": "user", "content": "..."}])
    r.choices[0].message.content, r.model_extra["docqa"]["cited"]

Each knowledge base is a model `docqa/<kb>` (a bare `docqa` means the only one when there is one). The last user
message is the question, the earlier user/assistant pairs the history (follow-ups are rewritten as docqa.chat
does); system messages are ignored (docqa's own grounded instruction applies). `temperature`, `top_p` and
`max_tokens` (or `max_completion_tokens`) apply to that answer; other OpenAI options are accepted and ignored.

Citations: the response carries a top-level `docqa` object. Non-streaming: `docqa.sources` (every passage the
answer was given, numbered as in the text: n, source, page, section, score, text) and `docqa.cited`. Streaming:
the first chunk (role only, empty content) carries `docqa.sources`, once, before any text; text chunks carry
nothing extra; the finishing chunk (`finish_reason: "stop"`) carries `docqa.cited`; then `data: [DONE]`. No chunk
has an empty `choices`. With `"citation_style": "footnotes"` a "Sources:" list of the cited passages is also
appended to the text itself, for clients that ignore extra fields.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .answering import footnotes, stream_answer
from .auth import scoped
from .errors import BadRequest, NotFound, error_body
from .state import ServerState

router = APIRouter(prefix="/v1", dependencies=[Depends(scoped("read"))])


def _state(request: Request) -> ServerState:
    return request.app.state.docqa


@router.get("/models")
def models(request: Request) -> dict[str, Any]:
    state = _state(request)
    state.discover()  # knowledge bases made by `docqa ingest` since the server started
    gen = state.generator_name()
    now = int(time.time())
    data = [
        {
            "id": f"docqa/{kb}",
            "object": "model",
            "created": now,
            "owned_by": "docqa",
            "docqa": {"knowledge_base": kb, "generator": gen},
        }
        for kb in state.kb_names()
    ]
    return {"object": "list", "data": data}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def parse_messages(messages: Any) -> tuple[str, list[tuple[str, str, None]]]:
    """(question, history) from OpenAI messages: the last user message, and the user/assistant pairs before it.

    >>> parse_messages([{"role": "user", "content": "a?"}, {"role": "assistant", "content": "A"},
    ...                 {"role": "user", "content": "b?"}])
    ('b?', [('a?', 'A', None)])
    """
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise BadRequest("messages has no user message (the last one is the question)")
    last = users[-1]
    question = _text(messages[last].get("content")).strip()
    if not question:
        raise BadRequest("the last user message is empty")
    history: list[tuple[str, str, None]] = []
    pending: str | None = None
    for m in messages[:last]:
        role, text = m.get("role"), _text(m.get("content")).strip()
        if role == "user":
            pending = text
        elif role == "assistant" and pending is not None:
            history.append((pending, text, None))
            pending = None
    return question, history


def sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The request's sampling options as settings for this answer (unset ones keep the server's).

    >>> sampling({"temperature": 0, "max_tokens": 64, "top_p": None})
    {'temperature': 0.0, 'max_new_tokens': 64}
    """
    out: dict[str, Any] = {}
    try:
        if body.get("temperature") is not None:
            out["temperature"] = float(body["temperature"])
        if body.get("top_p") is not None:
            out["top_p"] = float(body["top_p"])
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None:
            out["max_new_tokens"] = int(limit)
    except (TypeError, ValueError):
        raise BadRequest("temperature, top_p and max_tokens must be numbers") from None
    if out.get("max_new_tokens", 1) < 1 or not 0 <= out.get("temperature", 0) <= 2:
        raise BadRequest("max_tokens must be >= 1 and temperature between 0 and 2")
    return out


def resolve_model(state: ServerState, model: Any) -> str:
    names = state.kb_names()
    if isinstance(model, str) and model.startswith("docqa/") and model[6:] in names:
        return model[6:]
    if model in (None, "", "docqa") and len(names) == 1:
        return names[0]
    if isinstance(model, str) and model in names:
        return model
    raise NotFound(f"no model {model!r}; models are {', '.join('docqa/' + n for n in names) or '(none)'}")


@router.post("/chat/completions")
async def chat_completions(request: Request):
    state = _state(request)
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    kb = resolve_model(state, body.get("model"))
    model = f"docqa/{kb}"
    question, history = parse_messages(body.get("messages"))
    style = body.get("citation_style") or (body.get("docqa") or {}).get("citation_style") or "inline"
    if style not in ("inline", "footnotes"):
        raise BadRequest("citation_style must be 'inline' or 'footnotes'")
    head = {"id": "chatcmpl-" + uuid.uuid4().hex, "created": int(time.time()), "model": model}
    cancel = threading.Event()
    events = stream_answer(state, kb, question, history, cancel=cancel, overrides=sampling(body))
    if not body.get("stream"):
        sources, text, done = await _collect(request, events, cancel)
        if style == "footnotes":
            text += footnotes(text, sources, done.get("cited", []))
        return JSONResponse(_completion(head, text, sources, done))
    return StreamingResponse(
        _chunks(head, events, style),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _collect(request: Request, events: Any, cancel: threading.Event) -> tuple[list, str, dict]:
    """The sources, the answer's text and the `done` event of a whole answer (cancelled if the client hangs up)."""
    sources: list = []
    pieces: list[str] = []
    done: dict = {}

    async def collect() -> None:
        nonlocal sources, done
        async for kind, data in events:
            if kind == "sources":
                sources = data
            elif kind == "delta":
                pieces.append(data)
            elif kind == "done":
                done = data
            elif kind == "error":
                raise data

    task = asyncio.ensure_future(collect())
    while not task.done():  # a client that hangs up stops the generation here too
        await asyncio.wait([task], timeout=0.5)
        if not task.done() and await request.is_disconnected():
            cancel.set()
    task.result()
    return sources, done.get("answer", "".join(pieces).strip()), done


def _completion(head: dict[str, Any], text: str, sources: list, done: dict) -> dict[str, Any]:
    """The `chat.completion` object of a whole answer, with its `docqa` citations."""
    return {
        "id": head["id"],
        "object": "chat.completion",
        "created": head["created"],
        "model": head["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "docqa": {
            "sources": sources,
            "cited": done.get("cited", []),
            "invalid_citations": done.get("invalid_citations", []),
            "abstained": done.get("abstained", False),
            "rewritten_query": done.get("rewritten_query"),
            "timings": done.get("timings", {}),
        },
    }


def _chunk(head: dict[str, Any], delta: dict, finish: str | None = None, docqa: dict | None = None) -> str:
    """One `chat.completion.chunk` as an SSE `data:` line."""
    c: dict[str, Any] = {
        "id": head["id"],
        "object": "chat.completion.chunk",
        "created": head["created"],
        "model": head["model"],
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if docqa is not None:
        c["docqa"] = docqa
    return f"data: {json.dumps(c, ensure_ascii=False)}\n\n"


async def _chunks(head: dict[str, Any], events: Any, style: str):
    """The answer's events as streamed chunks, then `data: [DONE]` (or an error object)."""
    sources: list = []
    try:
        async for kind, data in events:
            if kind == "sources":
                sources = data
                yield _chunk(head, {"role": "assistant", "content": ""}, docqa={"sources": sources})
            elif kind == "delta":
                yield _chunk(head, {"content": data})
            elif kind == "done":
                if style == "footnotes" and (extra := footnotes(data["answer"], sources, data["cited"])):
                    yield _chunk(head, {"content": extra})
                yield _chunk(
                    head,
                    {},
                    "stop",
                    {
                        "cited": data["cited"],
                        "invalid_citations": data["invalid_citations"],
                        "abstained": data["abstained"],
                        "timings": data["timings"],
                    },
                )
            elif kind == "error":
                yield f"data: {json.dumps(error_body(data), ensure_ascii=False)}\n\n"
                return
        yield "data: [DONE]\n\n"
    finally:
        await events.aclose()  # sets `cancel` when the client went away before the end
