"""docqa.bm25: exact BM25 (against a brute-force reference and bm25s), Chinese recall, incremental consistency,
tombstones, rollback, document frequencies, the code-term boost."""

from __future__ import annotations

import math
import random
import sqlite3
from collections import Counter

import pytest

from docqa import bm25
from docqa.bm25 import LexicalIndex
from docqa.tokenize import tokenize, tokenize_query

# ------------------------------------------------------------------------------------------ helpers


def _index(tmp_path, name: str = "kb.sqlite3", **kw) -> tuple[sqlite3.Connection, LexicalIndex]:
    conn = sqlite3.connect(tmp_path / name)
    conn.executescript(LexicalIndex.SCHEMA)
    return conn, LexicalIndex(conn, **kw)


def _reference_bm25(docs: dict[int, str], query: str, k1: float = 1.2, b: float = 0.75) -> dict[int, float]:
    """Brute force over every document: Lucene idf, tf / (tf + k1 (1 - b + b dl / avgdl))."""
    toks = {cid: tokenize(t) for cid, t in docs.items()}
    n = len(toks)
    avgdl = sum(len(t) for t in toks.values()) / n
    df = Counter(term for t in toks.values() for term in set(t))
    out = {}
    for cid, t in toks.items():
        tf = Counter(t)
        s = 0.0
        for q in set(tokenize_query(query)):
            if tf[q]:
                idf = math.log(1 + (n - df[q] + 0.5) / (df[q] + 0.5))
                s += idf * tf[q] / (tf[q] + k1 * (1 - b + b * len(t) / avgdl))
        if s > 0:
            out[cid] = s
    return out


def _assert_matches_reference(idx: LexicalIndex, docs: dict[int, str], query: str, **kw) -> None:
    ref = _reference_bm25(docs, query, **kw)
    got = idx.search(query, k=len(docs) + 5, **kw)
    assert {c for c, _ in got} == set(ref)
    for cid, score in got:
        assert score == pytest.approx(ref[cid], rel=1e-9)
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)


WORDS = (
    "install package kernel module network interface mount filesystem fstab apt dpkg boot grub "
    "user group permission file directory log service systemd config editor shell bash"
).split()
ZH = "安装 软件包 内核 模块 网络 接口 挂载 文件系统 用户 权限 目录 日志 服务 配置 编辑器".split()


def _random_docs(rng: random.Random, ids) -> dict[int, str]:
    docs = {}
    for cid in ids:
        n = rng.randint(3, 40)
        words = [rng.choice(WORDS) if rng.random() < 0.7 else rng.choice(ZH) for _ in range(n)]
        docs[cid] = " ".join(words)
    return docs


# ------------------------------------------------------------------------------------------ BM25


def test_exact_bm25_against_reference(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bm25, "_FANOUT", 2)  # merge often, so several levels exist with few adds
    rng = random.Random(7)
    docs = _random_docs(rng, range(1, 301))
    conn, idx = _index(tmp_path)
    ids = list(docs)
    for i in range(0, len(ids), 7):  # many small adds: exercises segment merges across levels
        idx.add(ids[i : i + 7], [docs[c] for c in ids[i : i + 7]])
    conn.commit()
    levels = {r[0] for r in conn.execute("SELECT level FROM lex_postings")}
    assert max(levels) >= 2
    for q in ["install kernel module", "fstab mount", "安装软件包", "网络接口配置", "grub grub boot", "dpkg"]:
        _assert_matches_reference(idx, docs, q)
    _assert_matches_reference(idx, docs, "network service log", k1=0.9, b=0.4)


def test_exact_bm25_against_bm25s(tmp_path) -> None:
    bm25s = pytest.importorskip("bm25s")
    rng = random.Random(3)
    docs = _random_docs(rng, range(1, 121))
    conn, idx = _index(tmp_path)
    idx.add(list(docs), list(docs.values()))
    corpus = [tokenize(t) for t in docs.values()]
    vocab = sorted({t for d in corpus for t in d})
    tid = {t: i for i, t in enumerate(vocab)}
    retriever = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
    retriever.index(
        bm25s.tokenization.Tokenized(ids=[[tid[t] for t in d] for d in corpus], vocab=tid), show_progress=False
    )
    for q in ["install package", "kernel module mount", "用户权限"]:
        qids = [tid[t] for t in set(tokenize_query(q)) if t in tid]
        ref = retriever.get_scores(qids)
        got = dict(idx.search(q, k=500))
        for pos, cid in enumerate(docs):
            assert got.get(cid, 0.0) == pytest.approx(float(ref[pos]), rel=1e-5, abs=1e-6)


def test_top_k_order_and_limits(tmp_path) -> None:
    conn, idx = _index(tmp_path)
    idx.add([1, 2, 3], ["fstab fstab fstab mount", "fstab and other words here", "nothing relevant"])
    got = idx.search("fstab", k=1)
    assert got[0][0] == 1 and len(got) == 1
    assert [c for c, _ in idx.search("fstab", k=10)] == [1, 2]
    assert idx.search("fstab", k=0) == []
    assert idx.search("", k=5) == []
    assert idx.search("the of what is", k=5) == []
    assert idx.search("什么是", k=5) == []
    assert idx.search("zzzunknown", k=5) == []


def test_chinese_paraphrase_recall(tmp_path) -> None:
    passages = {
        1: "使用 apt-get install 命令可以安装新的软件包，系统会自动处理依赖关系。",
        2: "编辑 /etc/fstab 文件可以让分区在开机时自动挂载。",
        3: "内核模块可以用 modprobe 加载，用 lsmod 列出已加载的模块。",
        4: "网络接口的配置保存在 /etc/network/interfaces 中。",
        5: "用户和用户组的权限决定了谁可以读写一个文件。",
        6: "系统日志由 systemd-journald 收集，可以用 journalctl 查看。",
        7: "软件包管理器会记录每个已安装的文件。",
        8: "防火墙规则可以用 nftables 管理。",
    }
    conn, idx = _index(tmp_path)
    idx.add(list(passages), list(passages.values()))
    cases = {
        "怎样装软件并处理依赖": 1,
        "开机自动挂载分区": 2,
        "如何加载内核驱动模块": 3,
        "网卡接口怎么配置": 4,
        "文件读写权限": 5,
        "查看系统日志": 6,
        "dpkg 依赖": 1,
        "modprobe": 3,
        "包管理": 7,  # jieba: 包/管理 vs 软件包/管理器 -- only the bigram 包管 links them
    }
    for q, want in cases.items():
        got = idx.search(q, k=3)
        assert got and got[0][0] == want, (q, got)
    # the bigrams are what finds the differently segmented compound
    conn2, plain = _index(tmp_path, "plain.sqlite3", bigrams=False)
    plain.add(list(passages), list(passages.values()))
    assert not plain.search("包管理", k=3) or plain.search("包管理", k=3)[0][0] != 7


# ------------------------------------------------------------------------------------------ consistency


def _check_consistency(conn: sqlite3.Connection, idx: LexicalIndex, docs: dict[int, str]) -> None:
    assert idx.count() == len(docs)
    assert idx.chunk_ids() == set(docs)
    toks = {c: tokenize(t) for c, t in docs.items()}
    n_docs, total = idx._meta()
    assert (n_docs, total) == (len(docs), sum(len(t) for t in toks.values()))
    df = Counter(term for t in toks.values() for term in set(t))
    stored = {t: d for t, d in conn.execute("SELECT term, df FROM lex_terms WHERE df != 0")}
    assert stored == dict(df)
    lengths = dict(conn.execute("SELECT chunk_id, length FROM lex_docs"))
    assert lengths == {c: len(t) for c, t in toks.items()}


def test_add_remove_update_consistency(tmp_path) -> None:
    rng = random.Random(11)
    conn, idx = _index(tmp_path)
    docs: dict[int, str] = {}
    next_id = 1
    for step in range(60):
        op = rng.random()
        if op < 0.55 or not docs:
            new = _random_docs(rng, range(next_id, next_id + rng.randint(1, 12)))
            next_id += len(new)
            idx.add(list(new), list(new.values()))
            docs.update(new)
        elif op < 0.8:
            gone = rng.sample(sorted(docs), min(len(docs), rng.randint(1, 8)))
            idx.remove(gone + [10_000])  # unknown ids are ignored
            for c in gone:
                del docs[c]
        elif op < 0.9:  # update in place: same ids, new text
            upd = rng.sample(sorted(docs), min(len(docs), 3))
            new = _random_docs(rng, upd)
            idx.add(list(new), list(new.values()))
            docs.update(new)
        else:  # id reuse after removal (SQLite may hand out a deleted rowid again)
            reuse = max(docs)
            idx.remove([reuse])
            new = _random_docs(rng, [reuse])
            idx.add([reuse], [new[reuse]])
            docs.update(new)
        if step % 10 == 9:
            conn.commit()
            _check_consistency(conn, idx, docs)
            for q in ["install package", "fstab", "安装 网络", "grub boot shell"]:
                _assert_matches_reference(idx, docs, q)
    _check_consistency(conn, idx, docs)


def test_tombstones_are_purged(tmp_path) -> None:
    rng = random.Random(5)
    conn, idx = _index(tmp_path)
    docs = _random_docs(rng, range(1, 401))
    idx.add(list(docs), list(docs.values()))
    idx.remove(range(1, 301))  # more than the purge threshold
    assert conn.execute("SELECT COUNT(*) FROM lex_dead").fetchone()[0] == 0
    live = {c: t for c, t in docs.items() if c > 300}
    for (data,) in conn.execute("SELECT data FROM lex_postings"):
        assert (bm25.np.frombuffer(data, dtype=bm25._POSTING)["cid"] > 300).all()
    _check_consistency(conn, idx, live)
    _assert_matches_reference(idx, live, "kernel module network")


def test_clear(tmp_path) -> None:
    conn, idx = _index(tmp_path)
    idx.add([1, 2], ["fstab", "grub"])
    idx.remove([1])
    idx.clear()
    assert idx.count() == 0 and idx.chunk_ids() == set() and idx.search("grub", k=3) == []
    idx.add([5], ["grub"])
    assert [c for c, _ in idx.search("grub", k=3)] == [5]


def test_rollback_leaves_index_unchanged(tmp_path) -> None:
    conn, idx = _index(tmp_path)
    idx.add([1, 2, 3], ["mount the fstab entry", "grub boot loader", "安装软件包"])
    conn.commit()

    def snapshot() -> list:
        tables = ["lex_meta", "lex_terms", "lex_postings", "lex_docs", "lex_dead"]
        return [sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in tables]

    before = snapshot()
    results = idx.search("fstab grub 软件", k=5)
    with pytest.raises(RuntimeError):
        with conn:
            idx.add([4, 5], ["fstab again", "more grub"])
            idx.remove([1])
            idx.add([2], ["replaced text"])
            raise RuntimeError("crash mid-ingest")
    assert snapshot() == before
    assert idx.search("fstab grub 软件", k=5) == results
    # a second connection sees the committed state only
    other = LexicalIndex(sqlite3.connect(tmp_path / "kb.sqlite3"))
    assert other.chunk_ids() == {1, 2, 3} and other.search("fstab grub 软件", k=5) == results


def test_add_validates_arguments(tmp_path) -> None:
    conn, idx = _index(tmp_path)
    with pytest.raises(ValueError):
        idx.add([1, 2], ["one"])
    with pytest.raises(ValueError):
        idx.add([1, 1], ["a", "b"])
    idx.add([], [])
    assert idx.count() == 0


def test_document_frequencies_count_live_chunks_only(tmp_path) -> None:
    conn, idx = _index(tmp_path)
    idx.add([1, 2, 3], ["mount the fstab entry", "fstab grub", "安装软件包"])
    assert idx.document_frequencies(["fstab", "grub", "软件包", "zzz"]) == {"fstab": 2, "grub": 1, "软件包": 1}
    idx.remove([2])  # a tombstoned chunk no longer counts, though its postings are still stored
    assert idx.document_frequencies(["fstab", "grub"]) == {"fstab": 1}
    assert idx.document_frequencies([]) == {}
    many = [f"t{i}" for i in range(1200)] + ["fstab"]  # more terms than one IN (...) batch
    assert idx.document_frequencies(many) == {"fstab": 1}


def test_code_boost_weights_exact_technical_terms(tmp_path):
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.executescript(LexicalIndex.SCHEMA)
    idx = LexicalIndex(conn)
    conn.execute("BEGIN")
    idx.add([1, 2, 3], ["grep 选项 说明 grep 选项 很多", "-w 只匹配完整的词", "其他 内容 无关"])
    conn.execute("COMMIT")
    plain = idx.search("grep 的 -w 选项", 3)
    boosted = idx.search("grep 的 -w 选项", 3, code_boost=3.0)
    assert plain[0][0] == 1  # two common words outweigh one rare option...
    assert boosted[0][0] == 2  # ...unless the exact option counts for more
    assert dict(boosted)[1] == dict(plain)[1]  # words keep their plain BM25 weight


def test_bigram_weight_scales_only_the_recall_bigrams(tmp_path):
    from docqa.tokenize import query_bigrams

    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.executescript(LexicalIndex.SCHEMA)
    idx = LexicalIndex(conn)
    conn.execute("BEGIN")
    idx.add([1, 2, 3], ["查看日志文件", "如何查看 日志", "无关 内容"])
    conn.execute("COMMIT")
    q = "如何查看日志"
    weak = query_bigrams(q)
    assert weak and all(len(t) == 2 for t in weak)
    plain = dict(idx.search(q, 3))
    same = dict(idx.search(q, 3, bigram_weight=1.0))
    half = dict(idx.search(q, 3, bigram_weight=0.5))
    assert same == plain
    # a passage matched on words only keeps its score; one that also matched a bigram loses part of that
    matched = {cid: set(tokenize(t)) for cid, t in [(1, "查看日志文件"), (2, "如何查看 日志")]}
    for cid in plain:
        if matched[cid] & weak:
            assert half[cid] < plain[cid]
        else:
            assert half[cid] == pytest.approx(plain[cid])
    assert dict(idx.search("grep -w", 3, bigram_weight=0.5)) == dict(idx.search("grep -w", 3))  # no CJK: no change
