"""docqa.fusion: the pure ranking rules (weights, weighted RRF, merging, near-duplicates), no knowledge base."""

from dataclasses import dataclass

import pytest

import docqa.fusion as F
from docqa.config import Settings
from docqa.fusion import (
    bm25_confidence,
    dense_confidence,
    fusion_weights,
    is_near_duplicate,
    mostly_overlaps,
    rrf_fuse,
    shingles,
)


def test_fusion_weights_follow_language_and_confidence():
    s = Settings()
    en = frozenset({"en"})
    wd_zh, wb_zh = fusion_weights("怎么解压文件？", en, s)
    wd_en, wb_en = fusion_weights("How do I extract a file?", en, s)
    assert wd_zh < 0.1 * wd_en and wb_zh == wb_en == 1.0
    # a multilingual embedder keeps the dense weight for Chinese
    assert fusion_weights("怎么解压文件？", frozenset({"en", "zh"}), s)[0] == wd_en
    # configured weights scale the result
    assert fusion_weights("How?", en, s.replace(dense_weight=0.5, bm25_weight=2.0)) == (0.5, 2.0)
    # a peaked list earns more weight than a flat one
    flat, peaked = [0.50, 0.49, 0.49, 0.48, 0.48], [0.80, 0.40, 0.39, 0.38, 0.37]
    assert dense_confidence(peaked) > dense_confidence(flat)
    assert bm25_confidence([20.0, 5, 4, 4, 3]) > bm25_confidence([5.0, 4.9, 4.8, 4.7, 4.6])
    wd1, wb1 = fusion_weights("How?", en, s, dense_scores=peaked, bm25_scores=[5.0, 4.9, 4.8])
    assert wd1 > wb1


def test_confidence_is_clipped_and_neutral_without_a_pool():
    assert dense_confidence([0.9]) == bm25_confidence([]) == 1.0
    assert dense_confidence([1.0, 0.0, 0.0]) == F.WEIGHT_CLIP[1]
    assert dense_confidence([0.5, 0.5, 0.5]) == F.WEIGHT_CLIP[0]
    assert bm25_confidence([3.0, 0.0, 0.0]) == F.WEIGHT_CLIP[1]  # a zero median: the top match stands alone


def test_rrf_fuse_sums_weighted_reciprocal_ranks():
    fused = rrf_fuse([[10, 20, 30], [30, 40]], weights=(1.0, 2.0), k=60)
    assert list(fused) == [10, 20, 30, 40]  # order of first appearance, not sorted
    assert fused[10] == pytest.approx(1 / 61) and fused[40] == pytest.approx(2 / 62)
    assert fused[30] == pytest.approx(1 / 63 + 2 / 61)
    # a zero weight still lists its ids, with nothing from that list
    assert rrf_fuse([[1], [2]], weights=(0.0, 1.0), k=0) == {1: 0.0, 2: 1.0}
    assert rrf_fuse([[5, 5, 6]], weights=(1.0,), k=0) == {5: 1.0, 6: pytest.approx(1 / 3)}  # first place counts
    assert rrf_fuse([], weights=(), k=60) == {}
    with pytest.raises(ValueError):
        rrf_fuse([[1]], weights=(1.0, 1.0), k=60)


def test_rrf_fuse_matches_the_formula_bit_for_bit():
    # retrieve.py used to inline (wd / (k + dense_rank + 1) or 0) + (wb / (k + bm25_rank + 1) or 0); rankings
    # depend on ties, so the function must give the very same floats, not merely close ones
    dense, bm25 = [3, 1, 4, 5], [9, 2, 6, 5, 3]
    wd, wb, k = 0.37, 1.9, 60
    fused = rrf_fuse([dense, bm25], (wd, wb), k)
    for cid in set(dense) | set(bm25):
        d = wd / (k + dense.index(cid) + 1) if cid in dense else 0.0
        b = wb / (k + bm25.index(cid) + 1) if cid in bm25 else 0.0
        assert fused[cid] == d + b


@dataclass
class _Placed:
    document_id: int
    ordinal: int
    page: int | None = None
    section: str = ""


def test_merge_target_joins_fragments_near_a_taken_hit():
    taken = [[_Placed(1, 10, 3, "A")], [_Placed(2, 4, 1, "B")]]
    assert F.merge_target(_Placed(1, 12), taken) == 0  # same document, 2 ordinals away
    assert F.merge_target(_Placed(1, 8), taken) == 0
    assert F.merge_target(_Placed(2, 3), taken) == 1
    assert F.merge_target(_Placed(1, 13), taken) is None  # 3 away, nothing else in common
    assert F.merge_target(_Placed(3, 10, 3, "A"), taken) is None  # another document
    assert F.merge_target(_Placed(1, 13, 3, "A"), taken) == 0  # same section and page: one place in the text
    assert F.merge_target(_Placed(1, 13, None, "A"), taken) is None  # an unknown page is no evidence
    assert F.merge_target(_Placed(1, 13, 3, ""), [[_Placed(1, 10, 3, "")]]) is None  # nor an empty section
    assert F.merge_target(_Placed(1, 0), []) is None


def test_merge_target_chains_but_caps_the_span():
    g = [_Placed(1, 10), _Placed(1, 12)]
    assert F.merge_target(_Placed(1, 14), [g]) == 0  # near the member at 12: span 10..14 = 5 chunks
    g.append(_Placed(1, 14))
    assert F.MERGE_MAX_CHUNKS == 5
    assert F.merge_target(_Placed(1, 15), [g]) is None  # 10..15 would be 6 chunks: a hit of its own
    assert F.merge_target(_Placed(1, 11), [g]) == 0  # inside the span always joins
    # the first group that can take it wins
    assert F.merge_target(_Placed(1, 16), [g, [_Placed(1, 17)]]) == 1


@dataclass
class _Span:
    document_id: int
    start: int
    end: int


def test_mostly_overlaps():
    taken = [_Span(1, 0, 100)]
    assert mostly_overlaps(_Span(1, 40, 120), taken)  # 60 of 80 characters already shown
    assert not mostly_overlaps(_Span(1, 80, 200), taken)  # the splitter's usual overlap: kept
    assert not mostly_overlaps(_Span(2, 0, 100), taken)  # another document
    assert not mostly_overlaps(_Span(1, 0, 100), [])


def test_near_duplicates_by_shingle_containment():
    para = "Python lists have a built-in list.sort() method that modifies the list in-place."
    assert shingles("Ab, c-D e!") == {"abcde"} and shingles("abc") == {"abc"}
    # the same paragraph from another format (case, punctuation and spacing differ) is a repeat
    assert is_near_duplicate(shingles(para.upper().replace(" ", "  ")), [shingles(para)])
    # contained in a longer passage: still a repeat; the other way round it is not
    longer = para + " There is also a sorted() built-in function that builds a new sorted list from an iterable."
    assert is_near_duplicate(shingles(para), [shingles(longer)])
    assert not is_near_duplicate(shingles(longer), [shingles(para)])
    assert not is_near_duplicate(shingles(para), [])
    # each taken passage is judged alone: two halves that together cover it do not make a repeat
    half = len(para) // 2
    assert not is_near_duplicate(shingles(para), [shingles(para[:half]), shingles(para[half:])])
