"""Question -> ranked passages: dense (FAISS) and lexical (BM25) search, fused, cleaned up.

    >>> r = Retriever(kb, get_embedder(), settings)
    >>> hits = r.search("怎么解压 tar.gz 文件？", k=5)          # mode from settings: hybrid by default
    >>> hits[0].location, hits[0].scores
    ('tar.txt', {'rrf': 0.016, 'bm25': 12.3, 'dense': 0.21})
    >>> r.is_relevant("今天天气怎么样？", r.search("今天天气怎么样？"))
    False

**Fusion** is weighted reciprocal rank fusion (RRF, `rrf_k` = 60): score = wd / (k + dense_rank) +
wb / (k + bm25_rank). Plain RRF trusts both lists equally, which hurts when one of them is noise, so the weights
(`fusion_weights`) follow the query:

- *language*: the default embedder (all-MiniLM-L6-v2) was trained on English; for a Chinese question its ranking
  is close to random (dev set: dense hit@5 0.06 vs BM25 0.71), so the dense weight is multiplied by
  `UNCOVERED_DENSE` (0) when the question's language is not in `Embedder.languages`;
- *confidence*: each list's weight is scaled by how clearly its best candidate stands out of its own pool:
  dense by (top cosine - median cosine of the first 40) / 0.2, BM25 by (top score / median score - 1) / 2,
  each clipped to [0.2, 3]. A paraphrased question whose BM25 matches are generic words gets a flat BM25 list
  and little BM25 weight; an exact command or option name gets a peaked one.

The configured `dense_weight` / `bm25_weight` multiply these.

**Feedback** (pseudo-relevance feedback through the passage vectors), for a question in a language the embedder
does not cover: the English-only model cannot compare a Chinese question with a Chinese passage, but it can
compare two Chinese passages (shared characters, commands, paths), so the first `FEEDBACK_DEPTH` (10) fused
passages are re-ordered by  bm25 / best bm25 + `FEEDBACK_WEIGHT` (0.5) * cosine(passage, centroid), where the
centroid is the mean of the top `FEEDBACK_SEEDS` (3) BM25 passages' stored vectors weighted 1/rank. Passages
that agree with the strongest BM25 matches rise; lone matches on a generic word sink. Only the top ten are
re-ordered, so hit@10 cannot drop, and it costs a few FAISS `reconstruct` calls (no extra search). Tried and
dropped (they lowered hit@5 on both evaluation sets): fusing a third RRF list from a dense search with the
centroid (Chinese and English), Rocchio-expanding the English query vector, a dense search on the Latin part
of a Chinese question ("grep -w"), a words-only BM25 list, other `rrf_k` values and score-based fusion.

Measured (hit@5, corpora/dev_qa.jsonl | a second corpus of 2,618 chunks with 55 questions): Chinese dense
0.065 | 0.074, BM25 0.742 | 0.593, hybrid 0.774 | 0.630; English dense 0.677 | 0.786, BM25 0.516 | 0.536,
hybrid 0.710 | 0.821 (README has the full table; one question is about 3 points).

**Hygiene**: a passage is dropped when it mostly repeats one already taken: overlapping chunks of one document
(over half of the new chunk's span), or near-identical text from another file (the same paragraph as PDF and HTML:
80% of its character 5-grams already seen in one taken passage). `neighbours = N` appends up to N chunks on each
side of a hit (same document and page), joined at their offsets so the splitter's overlap is not repeated.

**Relevance** (`is_relevant`, used by `ask` to abstain) — see its docstring.

Limits: the confidence scaling and the relevance thresholds were calibrated for all-MiniLM-L6-v2 and the BM25
of docqa/lexical.py on the sample corpus; another embedding model may need `min_relevance` set explicitly.
"""

from __future__ import annotations

import re
import sqlite3
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .config import Settings
from .documents import Hit
from .embed import Embedder
from .errors import ConfigError, StoreCorruptError
from .lang import detect_language
from .store import ChunkRow, KnowledgeBase

_NON_WORD = re.compile(r"[\W_]+")

#: dense weight multiplier for a question in a language the embedder does not cover
UNCOVERED_DENSE = 0.0
#: candidates per signal that the confidence of a list is measured over (fixed, so weights do not depend on k)
CONFIDENCE_POOL = 40
DENSE_GAP_REF = 0.2
BM25_RATIO_REF = 2.0
WEIGHT_CLIP = (0.2, 3.0)
# Exact technical terms in a question (`-w`, `/etc/fstab`, `apt-get`) weigh 3x their BM25 idf, in bm25 and hybrid
# mode alike: measured on the dev set, Chinese bm25 hit@5 0.710 -> 0.742 (English unchanged; a second bilingual
# check set unchanged).
CODE_TERM_BOOST = 3.0
#: feedback re-ordering for uncovered languages (see the module docstring); FEEDBACK_WEIGHT = 0 turns it off
FEEDBACK_SEEDS = 3
FEEDBACK_WEIGHT = 0.5
FEEDBACK_DEPTH = 10
#: relevance thresholds (see Retriever.is_relevant)
DENSE_MIN = 0.32
KNOWN_MIN = 0.5
#: near-duplicate rule: share of a passage's character 5-grams already in one taken passage
DUPLICATE_CONTAINMENT = 0.8
_SHINGLE = 5


def _clip(x: float) -> float:
    lo, hi = WEIGHT_CLIP
    return min(hi, max(lo, x))


def dense_confidence(scores: Sequence[float]) -> float:
    """How far the best cosine stands above the pool's median, in units of DENSE_GAP_REF (clipped)."""
    pool = list(scores[:CONFIDENCE_POOL])
    if len(pool) < 2:
        return 1.0
    return _clip((pool[0] - statistics.median(pool)) / DENSE_GAP_REF)


def bm25_confidence(scores: Sequence[float]) -> float:
    """How many times the best BM25 score exceeds the pool's median, minus one, in units of BM25_RATIO_REF."""
    pool = list(scores[:CONFIDENCE_POOL])
    if len(pool) < 2:
        return 1.0
    med = statistics.median(pool)
    return WEIGHT_CLIP[1] if med <= 0 else _clip((pool[0] / med - 1.0) / BM25_RATIO_REF)


def fusion_weights(
    query: str,
    embedder_languages: frozenset[str],
    settings: Settings,
    dense_scores: Sequence[float] | None = None,
    bm25_scores: Sequence[float] | None = None,
) -> tuple[float, float]:
    """(dense, bm25) RRF weights for this query: the configured weights, times UNCOVERED_DENSE for dense when
    the query's language is not covered by the embedder, times each list's confidence when its scores (best
    first) are given. See the module docstring for why."""
    dense, bm25 = settings.dense_weight, settings.bm25_weight
    if detect_language(query) not in embedder_languages:
        dense *= UNCOVERED_DENSE
    if dense_scores is not None:
        dense *= dense_confidence(dense_scores)
    if bm25_scores is not None:
        bm25 *= bm25_confidence(bm25_scores)
    return dense, bm25


def _shingles(text: str) -> set[str]:
    s = _NON_WORD.sub("", text.casefold())
    return {s[i : i + _SHINGLE] for i in range(max(len(s) - _SHINGLE + 1, 1))}


@dataclass
class _Candidate:
    chunk_id: int
    dense: float | None = None
    dense_rank: int | None = None
    bm25: float | None = None
    bm25_rank: int | None = None
    feedback: float | None = None
    fused: float = 0.0


class Retriever:
    """Searches one knowledge base with one embedder; keep it around to search many questions."""

    def __init__(self, kb: KnowledgeBase, embedder: Embedder, settings: Settings, reranker=None):
        self.kb = kb
        self.embedder = embedder
        self.settings = settings
        self.reranker = reranker
        self.last_timings: dict[str, float] = {}
        #: the (dense, bm25) weights the last hybrid search used
        self.last_weights: tuple[float, float] | None = None

    def search(self, query: str, k: int | None = None, mode: str | None = None) -> list[Hit]:
        """The `k` best passages for `query`, best first (`Hit.rank` from 1). All reads happen inside one
        snapshot, so an ingest running meanwhile is seen wholly or not at all."""
        mode = mode or self.settings.mode
        if mode not in ("dense", "bm25", "hybrid"):
            raise ConfigError(f"mode must be dense, bm25 or hybrid, got {mode!r}")
        k = k or self.settings.top_k
        query = query.strip()
        self.last_timings = {}
        if not query:
            return []
        want = max(k, 20) if self.reranker is not None else k  # the reranker reorders a wider fused list
        pool = max(want * 4, CONFIDENCE_POOL)  # candidates per signal before fusion and de-duplication
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            with self.kb.snapshot():
                cands: dict[int, _Candidate] = {}
                dense_list: list[tuple[int, float]] = []
                bm25_list: list[tuple[int, float]] = []
                if mode in ("dense", "hybrid"):
                    t = time.perf_counter()
                    vec = self.embedder.encode_query(query)
                    timings["embed"] = time.perf_counter() - t
                    t = time.perf_counter()
                    dense_list = self.kb.dense_search(vec, pool)
                    timings["dense"] = time.perf_counter() - t
                    for rank, (cid, score) in enumerate(dense_list):
                        c = cands.setdefault(cid, _Candidate(cid))
                        c.dense, c.dense_rank = score, rank
                if mode in ("bm25", "hybrid"):
                    t = time.perf_counter()
                    bm25_list = self.kb.lexical.search(query, pool, code_boost=CODE_TERM_BOOST)
                    timings["bm25"] = time.perf_counter() - t
                    for rank, (cid, score) in enumerate(bm25_list):
                        c = cands.setdefault(cid, _Candidate(cid))
                        c.bm25, c.bm25_rank = score, rank
                ranked = self._rank(query, mode, cands, dense_list, bm25_list)
                hits = self._to_hits(ranked, want, mode)
        except sqlite3.DatabaseError as e:
            raise StoreCorruptError(f"the knowledge base database is damaged ({e}); see `docqa verify`") from None
        if self.reranker is not None and hits:
            t = time.perf_counter()
            hits = self.reranker.rerank(query, hits)
            timings["rerank"] = time.perf_counter() - t
        hits = hits[:k]
        for i, h in enumerate(hits):
            h.rank = i + 1
        timings["retrieval"] = time.perf_counter() - t0
        self.last_timings = timings
        return hits

    def _rank(
        self,
        query: str,
        mode: str,
        cands: dict[int, _Candidate],
        dense_list: list[tuple[int, float]],
        bm25_list: list[tuple[int, float]],
    ) -> list[_Candidate]:
        if mode == "dense":
            for c in cands.values():
                c.fused = c.dense if c.dense is not None else -1.0
        elif mode == "bm25":
            for c in cands.values():
                c.fused = c.bm25 if c.bm25 is not None else -1.0
        else:
            wd, wb = fusion_weights(
                query, self.embedder.languages, self.settings, [s for _, s in dense_list], [s for _, s in bm25_list]
            )
            self.last_weights = (wd, wb)
            rk = self.settings.rrf_k
            for c in cands.values():
                c.fused = (wd / (rk + c.dense_rank + 1) if c.dense_rank is not None else 0.0) + (
                    wb / (rk + c.bm25_rank + 1) if c.bm25_rank is not None else 0.0
                )
        # ties (e.g. dense weight 0 for every dense-only candidate) keep a stable, meaningful order
        ranked = sorted(
            cands.values(),
            key=lambda c: (-c.fused, c.bm25_rank if c.bm25_rank is not None else 1 << 30,
                           c.dense_rank if c.dense_rank is not None else 1 << 30, c.chunk_id),
        )  # fmt: skip
        if mode == "hybrid" and FEEDBACK_WEIGHT > 0 and detect_language(query) not in self.embedder.languages:
            self._feedback(ranked, bm25_list)
        return ranked

    def _feedback(self, ranked: list[_Candidate], bm25_list: list[tuple[int, float]]) -> None:
        """Re-order the first FEEDBACK_DEPTH BM25 candidates of `ranked` in place by BM25 score plus
        FEEDBACK_WEIGHT x their cosine to the centroid of the top FEEDBACK_SEEDS BM25 passages (module
        docstring). The re-ordered passages take over the fused scores of the places they move to, so scores
        stay in descending order."""
        import numpy as np

        depth = 0
        while depth < min(FEEDBACK_DEPTH, len(ranked)) and ranked[depth].bm25 is not None:
            depth += 1
        if depth < 2 or not bm25_list or bm25_list[0][1] <= 0:
            return
        seeds = [cid for cid, _ in bm25_list[:FEEDBACK_SEEDS]]
        ids = [c.chunk_id for c in ranked[:depth]]
        vecs = self._stored_vectors(list(dict.fromkeys(seeds + ids)))
        found = [i for i, cid in enumerate(seeds) if cid in vecs]
        if not found or any(cid not in vecs for cid in ids):
            return  # a vector is missing (should not happen within a snapshot): keep the BM25 order
        centroid = sum(vecs[seeds[i]] / (i + 1) for i in found)
        centroid = centroid / max(float(np.linalg.norm(centroid)), 1e-12)
        best = bm25_list[0][1]
        head = ranked[:depth]
        fused = [c.fused for c in head]
        for c in head:
            c.feedback = float(vecs[c.chunk_id] @ centroid)
        head.sort(key=lambda c: -(c.bm25 / best + FEEDBACK_WEIGHT * c.feedback))  # stable: ties keep BM25 order
        for c, f in zip(head, fused):
            c.fused = f
        ranked[:depth] = head

    def _stored_vectors(self, ids: list[int]):
        """chunk id -> unit vector, read back from the FAISS index (IndexIDMap2 keeps an id -> row map)."""
        import numpy as np

        index = self.kb.index
        out = {}
        for cid in ids:
            try:
                v = np.asarray(index.reconstruct(int(cid)), dtype=np.float32)
            except RuntimeError:  # id not in this generation's index
                continue
            out[cid] = v / max(float(np.linalg.norm(v)), 1e-12)
        return out

    def _to_hits(self, ranked: list[_Candidate], k: int, mode: str) -> list[Hit]:
        rows = self.kb.chunks(c.chunk_id for c in ranked[: k * 4])
        hits: list[Hit] = []
        taken_rows: list[ChunkRow] = []
        taken_shingles: list[set[str]] = []
        for c in ranked:
            row = rows.get(c.chunk_id)
            if row is None:
                continue
            if self._mostly_overlaps(row, taken_rows):
                continue
            sh = _shingles(row.text)
            if any(len(sh & t) >= DUPLICATE_CONTAINMENT * len(sh) for t in taken_shingles):
                continue
            taken_rows.append(row)
            taken_shingles.append(sh)
            scores = {"rrf": c.fused} if mode == "hybrid" else {}
            if c.dense is not None:
                scores["dense"] = c.dense
            if c.bm25 is not None:
                scores["bm25"] = c.bm25
            if c.feedback is not None:
                scores["feedback"] = c.feedback
            hits.append(
                Hit(
                    chunk_id=row.id, score=c.fused, source=row.source, text=row.text, page=row.page,
                    section=row.section, ordinal=row.ordinal, document_id=row.document_id, scores=scores,
                )
            )  # fmt: skip
            if len(hits) == k:
                break
        if self.settings.neighbours > 0:
            self._expand(hits, {r.id: r for r in taken_rows})
        return hits

    @staticmethod
    def _mostly_overlaps(row: ChunkRow, taken: list[ChunkRow]) -> bool:
        """Over half of `row`'s span is already covered by one taken chunk of the same document."""
        span = max(row.end - row.start, 1)
        for r in taken:
            if r.document_id == row.document_id and min(r.end, row.end) - max(r.start, row.start) > span / 2:
                return True
        return False

    def _expand(self, hits: list[Hit], rows: dict[int, ChunkRow]) -> None:
        """Add up to `neighbours` chunks on each side of every hit (same document, same page), joined at their
        character offsets so the overlap between consecutive chunks appears once."""
        n = self.settings.neighbours
        for h in hits:
            own = rows[h.chunk_id]
            around = [o for o in range(h.ordinal - n, h.ordinal + n + 1) if o != h.ordinal and o >= 0]
            found = self.kb.neighbours(h.document_id, around)
            before = [found[o] for o in sorted(found) if o < h.ordinal and found[o].page == h.page]
            after = [found[o] for o in sorted(found) if o > h.ordinal and found[o].page == h.page]
            # keep only the contiguous run next to the hit (a missing ordinal would leave a gap)
            while before and before[0].ordinal != h.ordinal - len(before):
                before.pop(0)
            after = [r for i, r in enumerate(after) if r.ordinal == h.ordinal + 1 + i]
            parts, end = [], None
            for r in [*before, own, *after]:
                text = r.text
                if end is not None and r.start < end:
                    text = text[min(end - r.start, len(text)) :]  # chunk text is the document slice [start, end)
                    sep = ""
                else:
                    sep = "\n" if parts else ""
                parts.append(sep + text)
                end = r.end if end is None else max(end, r.end)
            h.text = "".join(parts)

    def is_relevant(self, query: str, hits: list[Hit]) -> bool:
        """Whether the hits hold anything worth answering from (False -> `ask` abstains).

        The rule (calibrated on corpora/dev_qa.jsonl against 20 off-topic questions, 10 English and 10 Chinese:
        "What is the capital of France?", "how do I bake bread", "今天天气怎么样？", ...):

        - no hits -> False;
        - `settings.min_relevance` > 0 -> the best dense cosine among the hits must reach it (manual override);
        - a question in a language the embedder covers -> the best dense cosine >= DENSE_MIN (0.32). Dev
          questions scored 0.40-0.86, off-topic ones 0.11-0.25;
        - otherwise (Chinese with the English-only embedder, whose cosines are 0.47-0.56 for anything at all)
          -> at least KNOWN_MIN (half) of the question's distinct BM25 terms occur somewhere in the knowledge
          base. Off-topic questions are mostly words the documents never use. This is the weaker test: on the
          sample corpus it passes all 31 Chinese dev questions and 2 of 10 Chinese off-topic ones; on a second,
          bigger corpus 26 of 27 and 3 of 10. It errs towards answering, since the model is still told to
          answer only from the passages.
        """
        if not hits:
            return False
        dense = [h.scores["dense"] for h in hits if "dense" in h.scores]
        threshold = self.settings.min_relevance if self.settings.min_relevance > 0 else DENSE_MIN
        if self.settings.min_relevance > 0 or detect_language(query) in self.embedder.languages:
            if not dense:
                dense = self._dense_scores(query, hits)
            return max(dense, default=-1.0) >= threshold
        known, n_terms = self.known_term_share(query)
        return n_terms > 0 and known >= KNOWN_MIN

    def _dense_scores(self, query: str, hits: list[Hit]) -> list[float]:
        """Cosines of `hits` to the query (for hits from a BM25-only search)."""
        import numpy as np

        q = self.embedder.encode_query(query)
        v = self.embedder.encode([h.text for h in hits])
        return [float(x) for x in np.asarray(v) @ np.asarray(q)]

    def known_term_share(self, query: str) -> tuple[float, int]:
        """(share of the query's distinct BM25 terms that some live chunk contains, number of those terms)."""
        from .lexical import tokenize_query

        terms = sorted(set(tokenize_query(query)))
        if not terms:
            return 0.0, 0
        df: dict[str, int] = {}
        try:
            with self.kb.snapshot():
                # LexicalIndex has no document-frequency API; its lex_terms table is read directly (read-only)
                for i in range(0, len(terms), 500):
                    part = terms[i : i + 500]
                    q = f"SELECT term, df FROM lex_terms WHERE term IN ({','.join('?' * len(part))})"
                    df.update((t, int(d)) for t, d in self.kb.conn.execute(q, part))
        except sqlite3.DatabaseError as e:
            raise StoreCorruptError(f"the knowledge base database is damaged ({e}); see `docqa verify`") from None
        return sum(1 for t in terms if df.get(t, 0) > 0) / len(terms), len(terms)


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
    embedder = get_embedder(kb.embed_model, settings.embed_device, settings.embed_precision)
    reranker = None
    if settings.reranker:
        from .rerank import CrossEncoderReranker

        reranker = CrossEncoderReranker(settings.reranker, settings.embed_device)
    return Retriever(kb, embedder, settings, reranker)
