"""Question -> ranked passages: dense (FAISS) and lexical (BM25) search, fused, cleaned up.

    >>> r = Retriever(kb, get_embedder(), settings)
    >>> hits = r.search("怎么解压 tar.gz 文件？", k=5)          # mode from settings: hybrid by default
    >>> hits[0].location, hits[0].scores
    ('tar.txt', {'bm25': 12.3, 'dense': 0.21, 'rrf': 0.016})

Fusion is weighted reciprocal rank fusion (RRF, k=60). The weights follow the query: an English-only embedding
model ranks Chinese questions close to randomly, so for a query in a language the embedder does not cover the dense
weight is cut (see `fusion_weights`). Results are de-duplicated (overlapping chunks of one document count once),
optionally expanded with neighbouring chunks, and `is_relevant` tells whether anything found is worth answering from.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass

from .config import Settings
from .documents import Hit
from .embed import Embedder
from .errors import ConfigError, StoreCorruptError
from .store import ChunkRow, KnowledgeBase

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_language(text: str) -> str:
    """'zh' when the text is mostly Chinese characters, else 'en' (all docqa needs to weight its signals)."""
    cjk = len(_CJK.findall(text))
    latin_words = len(re.findall(r"[A-Za-z]+", text))
    return "zh" if cjk and cjk >= latin_words else "en"


def fusion_weights(query: str, embedder_languages: frozenset[str], settings: Settings) -> tuple[float, float]:
    """(dense, bm25) weights for this query. The configured weights are scaled down for a signal that cannot
    work: dense for a language the embedding model does not cover."""
    dense, bm25 = settings.dense_weight, settings.bm25_weight
    if detect_language(query) not in embedder_languages:
        dense *= 0.25
    return dense, bm25


@dataclass
class _Candidate:
    chunk_id: int
    dense: float | None = None
    dense_rank: int | None = None
    bm25: float | None = None
    bm25_rank: int | None = None
    fused: float = 0.0


class Retriever:
    """Searches one knowledge base with one embedder; keep it around to search many questions."""

    def __init__(self, kb: KnowledgeBase, embedder: Embedder, settings: Settings, reranker=None):
        self.kb = kb
        self.embedder = embedder
        self.settings = settings
        self.reranker = reranker
        self.last_timings: dict[str, float] = {}

    def search(self, query: str, k: int | None = None, mode: str | None = None) -> list[Hit]:
        mode = mode or self.settings.mode
        if mode not in ("dense", "bm25", "hybrid"):
            raise ConfigError(f"mode must be dense, bm25 or hybrid, got {mode!r}")
        k = k or self.settings.top_k
        query = query.strip()
        if not query:
            return []
        pool = max(k * 4, 40)  # candidates per signal before fusion and de-duplication
        t0 = time.perf_counter()
        try:
            with self.kb.snapshot():
                cands: dict[int, _Candidate] = {}
                if mode in ("dense", "hybrid"):
                    vec = self.embedder.encode_query(query)
                    for rank, (cid, score) in enumerate(self.kb.dense_search(vec, pool)):
                        cands.setdefault(cid, _Candidate(cid)).__dict__.update(dense=score, dense_rank=rank)
                if mode in ("bm25", "hybrid"):
                    for rank, (cid, score) in enumerate(self.kb.lexical.search(query, pool)):
                        cands.setdefault(cid, _Candidate(cid)).__dict__.update(bm25=score, bm25_rank=rank)
                ranked = self._rank(query, mode, cands)
                hits = self._to_hits(ranked, k, mode)
        except sqlite3.DatabaseError as e:
            raise StoreCorruptError(f"the knowledge base database is damaged ({e}); see `docqa verify`") from None
        if self.reranker is not None and hits:
            hits = self.reranker.rerank(query, hits)[:k]
        for i, h in enumerate(hits):
            h.rank = i + 1
        self.last_timings = {"retrieval": time.perf_counter() - t0}
        return hits

    def _rank(self, query: str, mode: str, cands: dict[int, _Candidate]) -> list[_Candidate]:
        if mode == "dense":
            for c in cands.values():
                c.fused = c.dense if c.dense is not None else -1.0
        elif mode == "bm25":
            for c in cands.values():
                c.fused = c.bm25 if c.bm25 is not None else -1.0
        else:
            wd, wb = fusion_weights(query, self.embedder.languages, self.settings)
            rk = self.settings.rrf_k
            for c in cands.values():
                c.fused = (wd / (rk + c.dense_rank + 1) if c.dense_rank is not None else 0.0) + (
                    wb / (rk + c.bm25_rank + 1) if c.bm25_rank is not None else 0.0
                )
        return sorted(cands.values(), key=lambda c: c.fused, reverse=True)

    def _to_hits(self, ranked: list[_Candidate], k: int, mode: str) -> list[Hit]:
        rows = self.kb.chunks(c.chunk_id for c in ranked[: k * 4])
        hits: list[Hit] = []
        taken: dict[int, list[ChunkRow]] = {}
        for c in ranked:
            row = rows.get(c.chunk_id)
            if row is None:
                continue
            # overlapping chunks of the same document (the splitter's overlap) add nothing: keep the better one
            if any(r.start < row.end and row.start < r.end for r in taken.get(row.document_id, [])):
                continue
            taken.setdefault(row.document_id, []).append(row)
            scores = {"rrf": c.fused} if mode == "hybrid" else {}
            if c.dense is not None:
                scores["dense"] = c.dense
            if c.bm25 is not None:
                scores["bm25"] = c.bm25
            hits.append(
                Hit(
                    chunk_id=row.id, score=c.fused, source=row.source, text=row.text, page=row.page,
                    section=row.section, ordinal=row.ordinal, document_id=row.document_id, scores=scores,
                )
            )  # fmt: skip
            if len(hits) == k:
                break
        if self.settings.neighbours > 0:
            self._expand(hits)
        return hits

    def _expand(self, hits: list[Hit]) -> None:
        """Append the text of up to `neighbours` chunks on each side (same document, same page)."""
        n = self.settings.neighbours
        for h in hits:
            around = [o for o in range(h.ordinal - n, h.ordinal + n + 1) if o != h.ordinal and o >= 0]
            rows = self.kb.neighbours(h.document_id, around)
            before = [rows[o] for o in sorted(rows) if o < h.ordinal and rows[o].page == h.page]
            after = [rows[o] for o in sorted(rows) if o > h.ordinal and rows[o].page == h.page]
            h.text = "\n".join([*(r.text for r in before), h.text, *(r.text for r in after)])

    def is_relevant(self, query: str, hits: list[Hit]) -> bool:
        """Whether the hits hold anything worth answering from (False -> `ask` abstains)."""
        if not hits:
            return False
        if self.settings.min_relevance > 0:
            return max(h.scores.get("dense", 0.0) for h in hits) >= self.settings.min_relevance
        best_dense = max((h.scores.get("dense", -1.0) for h in hits), default=-1.0)
        has_bm25 = any(h.scores.get("bm25", 0.0) > 0 for h in hits)
        if detect_language(query) in self.embedder.languages:
            return best_dense >= 0.25 or has_bm25
        return has_bm25


def open_retriever(settings: Settings) -> Retriever:
    """A Retriever over the knowledge base at `settings.index`, with the embedding model it was built with."""
    from .embed import get_embedder

    kb = KnowledgeBase.open(settings.index)
    if settings.embed_model != kb.embed_model and settings.embed_model != Settings.embed_model:
        kb.close()
        from .errors import ModelMismatchError

        raise ModelMismatchError(
            f"{settings.index} was built with {kb.embed_model!r}, not {settings.embed_model!r}; search it with its own model"
        )
    embedder = get_embedder(kb.embed_model, settings.embed_device)
    reranker = None
    if settings.reranker:
        from .rerank import CrossEncoderReranker

        reranker = CrossEncoderReranker(settings.reranker, settings.embed_device)
    return Retriever(kb, embedder, settings, reranker)
