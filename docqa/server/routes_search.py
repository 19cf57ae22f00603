"""/api/v1/search: ranked passages from one or more knowledge bases."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Body, Request

from .errors import BadRequest
from .routes_common import read, state_of
from .state import ServerState


# ---------------------------------------------------------------------- search
@read.post("/search")
def search(request: Request, body: dict = Body(...)) -> dict[str, Any]:
    """`{query, kb_ids: [kb], k, mode}` -> `{results: [...], expansions: [...]}`: each result a `docqa search
    --json` hit plus its `kb`; `expansions` what was searched besides the query (a Chinese query's English
    dictionary gloss, per knowledge base: each has its own words), as in `docqa search --json`."""
    state = state_of(request)
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
    results, expansions = [], []
    t0 = time.perf_counter()
    for kb in kbs:
        state.kb(str(kb))
        with state.retriever(str(kb)) as r:
            found = r.search(query, k=k, mode=mode)
            expansions += [e for e in found.expansions if e not in expansions]
            for h in found:
                j = h.to_json() | {"kb": kb, "document_id": _doc_id(state, str(kb), h.source, h.document_id)}
                results.append(j)
    if len(kbs) > 1:
        results.sort(key=lambda j: -j["score"])
        results = results[:k]
        for i, j in enumerate(results):
            j["rank"] = i + 1
    return {"query": query, "results": results, "expansions": expansions, "seconds": round(time.perf_counter() - t0, 4)}


def _doc_id(state: ServerState, kb: str, source: str, kb_document_id: int) -> str:
    from .answering import document_id

    return document_id(state, kb, source, kb_document_id)
