"""Answers as a stream of events, computed in a worker thread: `sources` (before the first token), `delta`
(text pieces), `done` (the validated citations) or `error`.

    async for kind, data in stream_answer(state, "manuals", "How do I make a venv?", history=[]):
        ...

The library does the work (docqa.chat.Chat over docqa.answer.ask: follow-up rewriting, retrieval, the budgeted
prompt, generation, citation parsing); this module adds only the transport. The thread waits for a slot in the
model's queue (`ServerState.slot`: a semaphore per loaded model) before it starts, and keeps the slot until it
has really finished, so one model never runs more generations at once than it has slots, while the event loop
stays free for searches and listings. When the consumer goes away (the client disconnected), `cancel` is set
and the generator stops after its current token (GenerationOptions.cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from ..documents import Answer, Hit
from ..errors import DocQAError
from ..text import detect_language
from .state import ServerState

Event = tuple[str, Any]

FOOTNOTE_TITLE = {"en": "Sources:", "zh": "来源："}


def document_id(state: ServerState, kb: str, hit_source: str, kb_document_id: int) -> str:
    """The API id of the document a hit comes from: its upload id, else `d<knowledge-base id>`."""
    row = state.db.row("SELECT id FROM uploads WHERE kb = ? AND path = ?", (kb, hit_source))
    return row["id"] if row else f"d{kb_document_id}"


def source_json(state: ServerState, kb: str, n: int, h: Hit) -> dict[str, Any]:
    return {
        "n": n,
        "source": Path(h.source).name,
        "path": h.source,
        "page": h.page,
        "section": h.section,
        "score": round(float(h.score), 6),
        "text": h.text,
        "chunk_id": h.chunk_id,
        "kb": kb,
        "document_id": document_id(state, kb, h.source, h.document_id),
        "location": h.location,
    }


def footnotes(answer_text: str, sources: Sequence[dict[str, Any]], cited: Sequence[int]) -> str:
    """The sources list appended to the text for clients that ignore the `docqa` fields.

    >>> footnotes("Use venv [1].", [{"n": 1, "location": "venv.md", "section": "Create"}], [1])
    '\\n\\nSources:\\n[1] venv.md — Create'
    """
    if not cited:
        return ""
    by_n = {s["n"]: s for s in sources}
    lines = [
        f"[{n}] {by_n[n]['location']}" + (f" — {by_n[n]['section']}" if by_n[n].get("section") else "")
        for n in cited
        if n in by_n
    ]
    return "\n\n" + FOOTNOTE_TITLE[detect_language(answer_text or "x")] + "\n" + "\n".join(lines) if lines else ""


def done_json(state: ServerState, kb: str, answer: Answer, sources: list[dict[str, Any]]) -> dict[str, Any]:
    by_n = {s["n"]: s for s in sources}
    return {
        "answer": answer.text,
        "cited": answer.citations,
        "invalid_citations": answer.invalid_citations,
        "sources": [by_n[n] for n in answer.citations if n in by_n],
        "abstained": answer.abstained,
        "rewritten_query": answer.rewritten_query,
        "model": answer.model,
        "timings": {k: round(v, 4) for k, v in answer.timings.items()},
    }


async def stream_answer(
    state: ServerState,
    kb: str,
    question: str,
    history: Sequence[tuple[str, str, str | None]] = (),
    cancel: threading.Event | None = None,
    overrides: dict[str, Any] | None = None,
) -> AsyncIterator[Event]:
    """Events of one answer; `history` = earlier (question, answer, rewritten-or-None) turns, oldest first;
    `overrides` = settings for this answer only (temperature, top_p, max_new_tokens)."""
    # imported here, in the event loop's thread, before _work needs it in a worker: imports are not thread-safe
    from ..chat import Chat, Session, Turn  # noqa: F401

    state.kb(kb)  # a NotFound now, before the stream starts
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event | None] = asyncio.Queue()
    cancel = cancel or threading.Event()
    sem = state.slot(state.generator_name())
    await sem.acquire()

    def put(ev: Event | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone (server shutting down)
            loop.call_soon_threadsafe(events.put_nowait, ev)

    def release() -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(sem.release)

    work_args = (state, kb, question, history, cancel, overrides, put, release)
    finished = False
    try:
        threading.Thread(target=_work, args=work_args, name="docqa-generate", daemon=True).start()
    except BaseException:
        sem.release()
        raise
    try:
        while (ev := await events.get()) is not None:
            yield ev
        finished = True
    finally:
        if not finished:
            cancel.set()


def _work(
    state: ServerState,
    kb: str,
    question: str,
    history: Sequence[tuple[str, str, str | None]],
    cancel: threading.Event,
    overrides: dict[str, Any] | None,
    put: Callable[[Event | None], None],
    release: Callable[[], None],
) -> None:
    """None; answers in the calling (worker) thread, handing each event to `put`, then frees the slot and puts None."""
    from ..chat import Chat, Session, Turn

    sent_sources: list[dict[str, Any]] | None = None
    try:
        with state.retriever(kb) as r:
            gen = state.generator(r)
            session = Session(turns=[Turn(question=q, answer=a, rewritten=rw) for q, a, rw in history])
            settings = state.settings_for(state.kb(kb)).replace(**(overrides or {}))
            chat = Chat(r, gen, settings, session)

            def on_plan(plan) -> None:
                nonlocal sent_sources
                sent_sources = [source_json(state, kb, i + 1, h) for i, h in enumerate(plan.passages)]
                put(("sources", sent_sources))

            def on_text(piece: str) -> None:
                nonlocal sent_sources
                if sent_sources is None:  # an abstention: no passages, but the order of events holds
                    sent_sources = []
                    put(("sources", sent_sources))
                put(("delta", piece))

            answer = chat.ask(question, on_text=on_text, cancel=cancel, on_plan=on_plan)
        if sent_sources is None:
            sent_sources = []
            put(("sources", sent_sources))
        put(("done", done_json(state, kb, answer, sent_sources) | {"cancelled": cancel.is_set()}))
    except DocQAError as e:
        put(("error", e))
    except Exception as e:  # reported to the client as an error event, never a hung stream
        put(("error", e))
    finally:
        release()
        put(None)
