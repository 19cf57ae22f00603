"""docqa.bm25's evaluation at scale keeps exact results: top-k ids and scores equal those of a brute-force BM25
over the same texts, for small k (where pruning and caching could cut corners), on a Zipf-distributed corpus
whose postings span several segment levels, with removals, re-adds and a write between two searches."""

from __future__ import annotations

import math
import sqlite3
from collections import Counter

import numpy as np
import pytest

from docqa import bm25
from docqa.bm25 import LexicalIndex
from docqa.tokenize import tokenize, tokenize_query

VOCAB = [f"w{i}" for i in range(400)] + "安装 软件包 内核 模块 网络 挂载 日志 服务 配置 目录".split()


def _corpus(n: int, seed: int = 0) -> dict[int, str]:
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(len(VOCAB)) + 2.0) ** 1.05
    p /= p.sum()
    return {i + 1: " ".join(np.array(VOCAB)[rng.choice(len(VOCAB), int(rng.integers(5, 40)), p=p)]) for i in range(n)}


class Brute:
    """BM25 by brute force over every text (tokenized once per corpus state)."""

    def __init__(self, docs: dict[int, str]):
        self.tf = {cid: Counter(tokenize(t)) for cid, t in docs.items()}
        self.dl = {cid: sum(c.values()) for cid, c in self.tf.items()}
        self.n, self.avgdl = len(self.tf), sum(self.dl.values()) / len(self.tf)
        self.df = Counter(term for c in self.tf.values() for term in c)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        scores = {}
        terms = set(tokenize_query(query))
        for cid, tf in self.tf.items():
            s = 0.0
            for q in terms:
                if tf[q]:
                    idf = math.log(1 + (self.n - self.df[q] + 0.5) / (self.df[q] + 0.5))
                    s += idf * tf[q] / (tf[q] + 1.2 * (0.25 + 0.75 * self.dl[cid] / self.avgdl))
            if s > 0:
                scores[cid] = s
        return sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:k]


def _same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-9)
    # ids equal except where two scores tie to within rounding (then either order is right)
    for (gi, gs), (wi, ws) in zip(got, want):
        assert gi == wi or gs == pytest.approx(ws, rel=1e-9)


def test_top_k_equals_brute_force_on_a_zipf_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(bm25, "_FANOUT", 4)  # several segment levels from a few dozen adds
    conn = sqlite3.connect(tmp_path / "kb.sqlite3")
    conn.executescript(LexicalIndex.SCHEMA)
    idx = LexicalIndex(conn)
    docs = _corpus(800)
    ids = list(docs)
    with conn:
        for i in range(0, len(ids), 20):
            part = ids[i : i + 20]
            idx.add(part, [docs[c] for c in part])
    rng = np.random.default_rng(1)
    queries = [" ".join(rng.choice(VOCAB[:60], int(rng.integers(2, 7)))) for _ in range(12)] + ["w0 w1", "w3 安装 w200"]
    brute = Brute(docs)
    for q in queries:
        want = brute.search(q, 40)
        for k in (1, 5, 40):
            _same(idx.search(q, k), want[:k])
    with conn:  # remove and re-add: tombstones, then replaced texts
        gone = ids[100:160]
        idx.remove(gone)
        for c in gone:
            del docs[c]
        new = _corpus(30, seed=9)
        for c, t in zip(ids[:30], new.values()):
            docs[c] = t
        idx.add(ids[:30], list(new.values()))
    brute = Brute(docs)
    for q in queries[:6]:
        want = brute.search(q, 10)
        for k in (1, 10):
            _same(idx.search(q, k), want[:k])


def test_top_k_paths_agree_and_break_ties_by_id():
    """The dense (bincount) and the sorted (unique) summing paths give the same list; a tie at the k-th place
    goes to the smaller chunk id."""
    rng = np.random.default_rng(3)
    cid = rng.integers(1, 5000, 20_000)
    w = rng.integers(1, 4, cid.size).astype(np.float64)  # small integers: many exact ties
    dense = bm25._top_k(cid, w, 7)  # 16 * 20000 >= 5000: dense
    sparse = bm25._top_k(cid + 10**9, w, 7)  # ids far beyond the postings' count: sorted path
    assert [(c + 10**9, s) for c, s in dense] == sparse
    sums = Counter()
    for c, x in zip(cid.tolist(), w.tolist()):
        sums[c] += x
    want = sorted(sums.items(), key=lambda x: (-x[1], x[0]))[:7]
    assert dense == want
