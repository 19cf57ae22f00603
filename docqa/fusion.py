"""The pure ranking rules behind docqa/retrieve.py: fusion weights, weighted RRF, merging, near-duplicates.

    >>> rrf_fuse([[7, 3], [3, 9]], weights=(1.0, 2.0), k=60)          # dense ids, BM25 ids, best first
    {7: 0.01639..., 3: 0.04891..., 9: 0.03225...}
    >>> fusion_weights("怎么解压文件？", frozenset({"en"}), Settings())   # English-only embedder, Chinese question
    (0.0, 1.0)
    >>> is_near_duplicate(shingles("The same paragraph."), [shingles("the same paragraph")])
    True

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

Tried and dropped earlier (they lowered hit@5 on both evaluation sets): fusing a third RRF list from a dense
search with a pseudo-relevance centroid (Chinese and English), Rocchio-expanding the English query vector, a dense
search on the Latin part of a Chinese question ("grep -w"), a words-only BM25 list, other `rrf_k` values and
score-based fusion. The pseudo-relevance re-ordering of the Chinese head (`feedback_order`) was dropped in round 2
(docqa/retrieve.py's docstring has the figures of that round).

**Merging** (`merge_target`): fragments of one place in a document crowd the top k (one held-out top 5 came
from pages 171, 172, 172, 171, 175), so a candidate of the same document within `MERGE_SPAN` (2) ordinals of a
chunk of a hit already taken, or of the same section and page as that hit's best chunk, joins that hit, as long
as the hit then spans at most `MERGE_MAX_CHUNKS` (5) consecutive chunks; the retriever shows the merged span as
one passage.

**Hygiene**: a passage is dropped when it mostly repeats one already taken: overlapping chunks of one document
(`mostly_overlaps`: over half of the new chunk's span), or near-identical text from another file
(`is_near_duplicate`: the same paragraph as PDF and HTML, 80% of its character 5-grams already seen in one taken
passage).

Limits: the confidence scaling was calibrated for all-MiniLM-L6-v2 and docqa/bm25.py's BM25 on the sample corpus.
Everything here is pure: no knowledge base, no model.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Hashable, Sequence
from functools import lru_cache
from typing import Protocol, TypeVar

from .config import Settings
from .text import detect_language

__all__ = [
    "BM25_RATIO_REF",
    "CONFIDENCE_POOL",
    "DENSE_GAP_REF",
    "DUPLICATE_CONTAINMENT",
    "MERGE_MAX_CHUNKS",
    "MERGE_SPAN",
    "UNCOVERED_DENSE",
    "WEIGHT_CLIP",
    "bm25_confidence",
    "dense_confidence",
    "fusion_weights",
    "is_near_duplicate",
    "merge_target",
    "mostly_overlaps",
    "rrf_fuse",
    "shingles",
]

#: dense weight multiplier for a question in a language the embedder does not cover
UNCOVERED_DENSE = 0.0
#: candidates per signal that the confidence of a list is measured over (fixed, so weights do not depend on k)
CONFIDENCE_POOL = 40
DENSE_GAP_REF = 0.2
BM25_RATIO_REF = 2.0
WEIGHT_CLIP = (0.2, 3.0)
#: adjacent-fragment merging (`merge_target`): ordinals within MERGE_SPAN of a taken fragment join it, and one
#: merged passage spans at most MERGE_MAX_CHUNKS consecutive chunks
MERGE_SPAN = 2
MERGE_MAX_CHUNKS = 5
#: near-duplicate rule: share of a passage's character 5-grams already in one taken passage
DUPLICATE_CONTAINMENT = 0.8
_SHINGLE = 5
_NON_WORD = re.compile(r"[\W_]+")

Id = TypeVar("Id", bound=Hashable)


# -- fusion weights ------------------------------------------------------------------------------------------------


def _clip(x: float) -> float:
    lo, hi = WEIGHT_CLIP
    return min(hi, max(lo, x))


def dense_confidence(scores: Sequence[float]) -> float:
    """How far the best cosine stands above the pool's median, in units of DENSE_GAP_REF (clipped).

    >>> dense_confidence([0.8, 0.4, 0.39]), dense_confidence([0.5])      # a single score says nothing
    (2.0, 1.0)
    """
    pool = list(scores[:CONFIDENCE_POOL])
    if len(pool) < 2:
        return 1.0
    return _clip((pool[0] - statistics.median(pool)) / DENSE_GAP_REF)


def bm25_confidence(scores: Sequence[float]) -> float:
    """How many times the best BM25 score exceeds the pool's median, minus one, in units of BM25_RATIO_REF.

    >>> bm25_confidence([20.0, 5.0, 4.0]), bm25_confidence([5.0, 4.9, 4.8])
    (1.5, 0.2)
    """
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


# -- reciprocal rank fusion ----------------------------------------------------------------------------------------


#: evidence re-ranking (`evidence_order`): the first EVIDENCE_DEPTH fused hits are re-ranked by RRF of their fused
#: rank and their rank by best answer unit, the latter at EVIDENCE_WEIGHT (docqa/retrieve.py, rule 4)
EVIDENCE_DEPTH = 20
EVIDENCE_WEIGHT = 0.5
EVIDENCE_RRF_K = 60


def evidence_order(
    evidence: Sequence[float], weight: float = EVIDENCE_WEIGHT, k: int = EVIDENCE_RRF_K, depth: int = EVIDENCE_DEPTH
) -> list[int]:
    """The new order (indexes) of a ranked list whose items have `evidence` scores: the first `depth` by
    1 / (k + rank) + weight / (k + rank by evidence), ranks from 1; the rest stay where they are. Ties keep the
    list's order.

        >>> evidence_order([0.1, 0.9, 0.2], weight=1.0, k=1)   # 1/2+1/4, 1/3+1/2, 1/4+1/3
        [1, 0, 2]
        >>> evidence_order([0.1, 0.9, 0.2], weight=0.5, k=60)  # at half weight, a better place by one isn't enough
        [0, 1, 2]
    """
    n = min(depth, len(evidence))
    by_evidence = sorted(range(n), key=lambda i: -evidence[i])
    ev_rank = {i: r for r, i in enumerate(by_evidence, 1)}
    score = {i: 1 / (k + i + 1) + weight / (k + ev_rank[i]) for i in range(n)}
    return sorted(range(n), key=lambda i: -score[i]) + list(range(n, len(evidence)))


#: share of the question's own RRF weights that each query expansion's lists get (docqa/expand.py; untuned: no
#: capable model on the development machine to measure it with)
EXPANSION_WEIGHT = 0.5


def rrf_fuse(lists: Sequence[Sequence[Id]], weights: Sequence[float], k: int) -> dict[Id, float]:
    """Weighted reciprocal rank fusion: id -> sum over the lists holding it of weight / (k + rank), rank from 1.

        >>> rrf_fuse([["a", "b"], ["b"]], weights=(1.0, 0.5), k=1)
        {'a': 0.5, 'b': 0.5833...}

    Ids come out in order of first appearance (all of the first list, then the new ones of the second, ...), not
    sorted: the caller breaks ties its own way. An id listed twice in one list counts at its first place. A
    weight of 0 still lists that list's ids, with 0 from it."""
    if len(lists) != len(weights):
        raise ValueError(f"{len(lists)} lists for {len(weights)} weights")
    fused: dict[Id, float] = {}
    for ids, w in zip(lists, weights):
        seen: set[Id] = set()
        for rank, cid in enumerate(ids, 1):
            if cid in seen:
                continue
            seen.add(cid)
            fused[cid] = fused.get(cid, 0.0) + w / (k + rank)
    return fused


# -- near-duplicates -----------------------------------------------------------------------------------------------


class Span(Protocol):
    """What `mostly_overlaps` needs of a chunk (docqa.store's ChunkRow has it)."""

    document_id: int
    start: int
    end: int


def mostly_overlaps(row: Span, taken: Sequence[Span]) -> bool:
    """Over half of `row`'s span (its character offsets) is already covered by one taken chunk of its document.

    The splitter's usual overlap (a fifth of a chunk) stays below half, so consecutive chunks are both kept."""
    span = max(row.end - row.start, 1)
    for r in taken:
        if r.document_id == row.document_id and min(r.end, row.end) - max(r.start, row.start) > span / 2:
            return True
    return False


def shingles(text: str) -> set[str]:
    """The character 5-grams of `text` case-folded, without punctuation and spaces (a shorter text: itself).

    >>> sorted(shingles("A-b c, D e!"))
    ['abcde']
    """
    return set(_shingles(text))  # a copy: callers grow merged hits' sets


@lru_cache(maxsize=256)
def _shingles(text: str) -> frozenset[str]:
    # every search builds dozens of hits from chunks the previous searches mostly saw too; a chunk's set is ~100 KB
    # (a 5-gram per character), so the cache holds a few searches' worth, not the knowledge base
    s = _NON_WORD.sub("", text.casefold())
    return frozenset(s[i : i + _SHINGLE] for i in range(max(len(s) - _SHINGLE + 1, 1)))


def is_near_duplicate(text_shingles: set[str], taken: Sequence[set[str]]) -> bool:
    """At least DUPLICATE_CONTAINMENT (80%) of a passage's `shingles` are in those of one taken passage.

    Containment, not similarity: a short paragraph repeated inside a longer chunk counts as a repeat.

        >>> is_near_duplicate(shingles("abcdefghij"), [shingles("xxabcdefghijyy")]), is_near_duplicate(
        ...     shingles("abcdefghij"), [shingles("abcdeXXXXX")])
        (True, False)
    """
    n = len(text_shingles)
    need = DUPLICATE_CONTAINMENT * n
    allowed = n - math.ceil(need)  # shingles that may be missing from a passage that repeats this one
    for t in taken:
        if len(t) < need:
            continue  # too small to hold 80% of them
        missing = 0
        for s in text_shingles:  # stop at the first miss too many: most pairs are not repeats
            if s not in t:
                missing += 1
                if missing > allowed:
                    break
        else:
            return True
    return False


# -- merging adjacent fragments ------------------------------------------------------------------------------------


class Placed(Protocol):
    """What `merge_target` needs of a chunk (docqa.store's ChunkRow has it)."""

    document_id: int
    ordinal: int
    page: int | None
    section: str


def merge_target(row: Placed, groups: Sequence[Sequence[Placed]]) -> int | None:
    """The index of the first taken group that `row` joins, or None when it starts a hit of its own.

        >>> from types import SimpleNamespace as C
        >>> taken = [[C(document_id=1, ordinal=10, page=3, section="A")]]
        >>> merge_target(C(document_id=1, ordinal=12, page=4, section="B"), taken)       # 2 chunks away
        0
        >>> merge_target(C(document_id=2, ordinal=11, page=3, section="A"), taken) is None  # another document
        True

    Each group is the chunks of one hit, first the one that earned it. `row` joins a group of its document when its
    ordinal is within MERGE_SPAN of a member's, or when it shares the group's first chunk's (non-empty) section
    and (known) page, provided the group then still spans at most MERGE_MAX_CHUNKS consecutive ordinals (a row
    inside the span always joins)."""
    for i, g in enumerate(groups):
        if not g or g[0].document_id != row.document_id:
            continue
        ords = [r.ordinal for r in g]
        lo, hi = min(ords), max(ords)
        near = any(abs(o - row.ordinal) <= MERGE_SPAN for o in ords)
        same_place = (
            bool(row.section) and row.section == g[0].section and row.page is not None and row.page == g[0].page
        )
        if not (near or same_place):
            continue
        if lo <= row.ordinal <= hi or max(hi, row.ordinal) - min(lo, row.ordinal) + 1 <= MERGE_MAX_CHUNKS:
            return i
    return None
