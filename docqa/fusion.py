"""The pure ranking rules behind docqa/retrieve.py: fusion weights, weighted RRF, feedback re-ordering, near-duplicates.

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

**Feedback** (`feedback_order`: pseudo-relevance feedback through the passage vectors), for a question in a
language the embedder does not cover: the English-only model cannot compare a Chinese question with a Chinese
passage, but it can compare two Chinese passages (shared characters, commands, paths), so the first
`FEEDBACK_DEPTH` (10) fused passages are re-ordered by  bm25 / best bm25 + `FEEDBACK_WEIGHT` (0.5) *
cosine(passage, centroid), where the centroid is the mean of the top `FEEDBACK_SEEDS` (3) BM25 passages' stored
vectors weighted 1/rank. Passages that agree with the strongest BM25 matches rise; lone matches on a generic word
sink. Only the top ten are re-ordered, so hit@10 cannot drop. Tried and dropped (they lowered hit@5 on both
evaluation sets): fusing a third RRF list from a dense search with the centroid (Chinese and English),
Rocchio-expanding the English query vector, a dense search on the Latin part of a Chinese question ("grep -w"),
a words-only BM25 list, other `rrf_k` values and score-based fusion.

**Hygiene**: a passage is dropped when it mostly repeats one already taken: overlapping chunks of one document
(`mostly_overlaps`: over half of the new chunk's span), or near-identical text from another file
(`is_near_duplicate`: the same paragraph as PDF and HTML, 80% of its character 5-grams already seen in one taken
passage).

Limits: the confidence scaling was calibrated for all-MiniLM-L6-v2 and docqa/bm25.py's BM25 on the sample corpus.
Everything here is pure: no knowledge base, no model (`feedback_order` reads vectors through the lookup it is
given).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Protocol, TypeVar

import numpy as np

from .config import Settings
from .text import detect_language

__all__ = [
    "BM25_RATIO_REF", "CONFIDENCE_POOL", "DENSE_GAP_REF", "DUPLICATE_CONTAINMENT", "FEEDBACK_DEPTH",
    "FEEDBACK_SEEDS", "FEEDBACK_WEIGHT", "UNCOVERED_DENSE", "WEIGHT_CLIP", "bm25_confidence", "dense_confidence",
    "feedback_order", "fusion_weights", "is_near_duplicate", "mostly_overlaps", "rrf_fuse", "shingles",
]  # fmt: skip

#: dense weight multiplier for a question in a language the embedder does not cover
UNCOVERED_DENSE = 0.0
#: candidates per signal that the confidence of a list is measured over (fixed, so weights do not depend on k)
CONFIDENCE_POOL = 40
DENSE_GAP_REF = 0.2
BM25_RATIO_REF = 2.0
WEIGHT_CLIP = (0.2, 3.0)
#: feedback re-ordering for uncovered languages (module docstring); FEEDBACK_WEIGHT = 0 turns it off
FEEDBACK_SEEDS = 3
FEEDBACK_WEIGHT = 0.5
FEEDBACK_DEPTH = 10
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


# -- feedback ------------------------------------------------------------------------------------------------------


def feedback_order(
    head: Sequence[tuple[Id, float]],
    bm25_list: Sequence[tuple[Id, float]],
    vectors: Callable[[list[Id]], Mapping[Id, np.ndarray]],
) -> list[tuple[Id, float]] | None:
    """The feedback re-ordering of `head` (module docstring), or None to keep the order as it is.

        >>> on, off = np.array([1.0, 0.0]), np.array([0.0, 1.0])
        >>> vecs = {1: on, 2: on, 3: on, 4: off, 5: on}
        >>> bm25 = [(1, 10.0), (2, 9.0), (3, 8.0), (4, 7.9), (5, 7.8)]
        >>> [cid for cid, _ in feedback_order(bm25, bm25, lambda ids: vecs)]
        [1, 2, 3, 5, 4]

    `head` is the (chunk id, BM25 score) of the first fused passages, every one a BM25 match, in fused order;
    `bm25_list` the whole BM25 list, best first (its top FEEDBACK_SEEDS are the seeds); `vectors(ids)` returns
    unit vectors by id (ids it lacks are left out). Returns (chunk id, cosine to the centroid) in the new order:
    by bm25 / best bm25 + FEEDBACK_WEIGHT x cosine, ties kept in `head`'s order. None when FEEDBACK_WEIGHT is 0,
    when fewer than two passages or no positive BM25 score are given, or when a passage's vector is missing."""
    if FEEDBACK_WEIGHT <= 0 or len(head) < 2 or not bm25_list or bm25_list[0][1] <= 0:
        return None
    seeds = [cid for cid, _ in bm25_list[:FEEDBACK_SEEDS]]
    ids = [cid for cid, _ in head]
    vecs = vectors(list(dict.fromkeys(seeds + ids)))
    found = [i for i, cid in enumerate(seeds) if cid in vecs]
    if not found or any(cid not in vecs for cid in ids):
        return None
    centroid = sum(vecs[seeds[i]] / (i + 1) for i in found)
    centroid = centroid / max(float(np.linalg.norm(centroid)), 1e-12)
    best = bm25_list[0][1]
    scored = [(cid, bm25, float(vecs[cid] @ centroid)) for cid, bm25 in head]
    scored.sort(key=lambda t: -(t[1] / best + FEEDBACK_WEIGHT * t[2]))  # stable: ties keep the head's order
    return [(cid, cos) for cid, _, cos in scored]


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
    s = _NON_WORD.sub("", text.casefold())
    return {s[i : i + _SHINGLE] for i in range(max(len(s) - _SHINGLE + 1, 1))}


def is_near_duplicate(text_shingles: set[str], taken: Sequence[set[str]]) -> bool:
    """At least DUPLICATE_CONTAINMENT (80%) of a passage's `shingles` are in those of one taken passage.

    Containment, not similarity: a short paragraph repeated inside a longer chunk counts as a repeat."""
    return any(len(text_shingles & t) >= DUPLICATE_CONTAINMENT * len(text_shingles) for t in taken)
