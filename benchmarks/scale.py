"""Benchmark docqa at scale: build time, memory, dense / BM25 / hybrid latency and ANN recall@10 per size.

    .venv/bin/python benchmarks/scale.py                            # 100K and 1M chunks
    .venv/bin/python benchmarks/scale.py --sizes 100000,1000000,10000000

Per size a real knowledge base is built through the store's own batch API (`KnowledgeBase.batch()` /
`put_document`: SQLite rows with float16 vectors, BM25 postings, the FAISS index docqa's `ann = "auto"` picks,
with its training and size-class changes as an ingest would see them), in commits of a quarter of the size. The
embedding model is not run over a million synthetic texts: the vectors are synthetic, 384-d and clustered
(topics > sub-topics > noise, ~50 chunks per sub-topic, nearest-neighbour cosine ~0.6-0.7 as with real MiniLM
embeddings), so ANN recall is that of clustered data, not of uniform noise. The text is synthetic too: 80%
English chunks of 70 words drawn Zipf-like (exponent 1.05) from a vocabulary headed by the sample corpus's own
English words (so the benchmark questions hit real terms) with a tail of made-up words, and 20% Chinese chunks of
50 words drawn Zipf-like from jieba's dictionary (words separated by spaces). Tokenizing 1M chunks with docqa's
tokenizer takes ~25 minutes on this machine, so the build tokenizes through a per-word cache of it, which gives
the same terms on this space-separated text: the script checks that on 300 chunks before it builds. Search
always uses the real tokenizer.

Measured per size: build seconds and peak RSS; the search process's RSS growth when it loads the index; p50/p95
of `Retriever.search` (docqa's real retrieve path, with the real embedding model encoding the question) in dense,
bm25 and hybrid mode over 40 questions (half English, half Chinese); BM25 alone (`LexicalIndex.search`, 100
queries of 2-6 Zipf-drawn terms); recall@10 of the knowledge base's ANN index against exact search (numpy / flat
over the same float16-rounded vectors) on 200 held-out vectors of the same clusters, and exact flat search
latency in the same process as the baseline (the ANN speed-up is the ratio). Sizes from docqa's PQ_MIN (4M) get
IVF-PQ; `--dim 128` keeps 10M in memory but then skips the retrieve-path timings (the model's vectors are 384-d).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from _util import QUESTIONS, machine, peak_rss_mb, percentile  # noqa: E402

import docqa.bm25  # noqa: E402
from docqa.config import Settings  # noqa: E402
from docqa.documents import Chunk  # noqa: E402
from docqa.store import DocumentInfo, KnowledgeBase  # noqa: E402
from docqa.tokenize import tokenize  # noqa: E402

EN_WORDS, ZH_WORDS = 70, 50
CODE_TERMS = ["/etc/fstab", "-L", "--force", "apt-get", "dpkg", "grep", "tar", "-w", "-v", "sort()", "logging.info"]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Vectors:
    """Clustered unit vectors: topic centre + sub-topic offset + per-chunk noise (deterministic per offset)."""

    def __init__(self, n: int, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.seed = dim, seed
        topics = _unit(rng.standard_normal((max(8, n // 5000), dim)))
        n_sub = max(16, n // 50)
        self.sub = _unit(topics[rng.integers(0, len(topics), n_sub)] + 0.7 * _unit(rng.standard_normal((n_sub, dim))))

    def batch(self, start: int, m: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, start))
        lab = rng.integers(0, len(self.sub), m)
        return _unit(self.sub[lab] + 0.8 * _unit(rng.standard_normal((m, self.dim))))


class Texts:
    """Zipf-distributed English (sample-corpus words first, made-up words after) and Chinese (jieba) chunks."""

    def __init__(self, seed: int = 0, en_vocab: int = 150_000):
        import jieba

        self.rng = np.random.default_rng(seed)
        counts = collections.Counter()
        for name in ("python-sorting-howto.txt", "python-logging-howto.md", "manpages-zh-README.md"):
            counts.update(re.findall(r"[a-z]{2,}", (ROOT / "corpora" / "sample" / name).read_text("utf-8").lower()))
        head = [w for w, _ in counts.most_common()]
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        tail = set()
        while len(head) + len(tail) < en_vocab - len(CODE_TERMS):
            tail.add("".join(self.rng.choice(letters, self.rng.integers(4, 10))))
        self.en = np.array(head[:200] + CODE_TERMS + head[200:] + sorted(tail - set(head)), dtype=object)
        with open(os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), encoding="utf-8") as f:
            entries = sorted((line.split()[:2] for line in f), key=lambda e: -int(e[1]))
        self.zh = np.array([w for w, _ in entries[:60_000]], dtype=object)
        self.p_en = self._zipf(len(self.en), 1.05)
        self.p_zh = self._zipf(len(self.zh), 1.0)
        self.cache: dict[str, list[str]] = {}

    @staticmethod
    def _zipf(n: int, s: float) -> np.ndarray:
        w = 1.0 / (np.arange(n) + 2.0) ** s
        return w / w.sum()

    def chunks(self, m: int) -> list[str]:
        zh = self.rng.random(m) < 0.2
        out = []
        en_idx = self.rng.choice(len(self.en), size=(int((~zh).sum()), EN_WORDS), p=self.p_en)
        zh_idx = self.rng.choice(len(self.zh), size=(int(zh.sum()), ZH_WORDS), p=self.p_zh)
        ie = iz = 0
        for is_zh in zh:
            if is_zh:
                out.append(" ".join(self.zh[zh_idx[iz]]))
                iz += 1
            else:
                out.append(" ".join(self.en[en_idx[ie]]))
                ie += 1
        return out

    def query(self, rng: np.random.Generator) -> str:
        words, p = (self.zh, self.p_zh) if rng.random() < 0.2 else (self.en, self.p_en)
        return " ".join(words[rng.choice(len(words), size=int(rng.integers(2, 7)), p=p)])

    def fast_tokenize(self, text: str, *, bigrams: bool = True) -> list[str]:
        """docqa's tokenize for these space-separated chunks, one cached call per distinct word."""
        out: list[str] = []
        cache = self.cache
        for w in text.split(" "):
            t = cache.get(w)
            if t is None:
                t = cache[w] = tokenize(w, bigrams=bigrams)
            out.extend(t)
        return out


@contextmanager
def cached_tokenizer(texts: Texts):
    real = docqa.bm25.tokenize
    docqa.bm25.tokenize = texts.fast_tokenize
    try:
        yield
    finally:
        docqa.bm25.tokenize = real


def build(path: Path, n: int, vec: Vectors, texts: Texts, model: str) -> float:
    sample = texts.chunks(300)
    bad = [t for t in sample if texts.fast_tokenize(t) != tokenize(t)]
    if bad:
        raise SystemExit(
            f"the cached tokenizer disagrees with docqa's on {len(bad)} of 300 chunks, e.g. {bad[0][:80]!r}"
        )
    kb = KnowledgeBase.open(path, create=True, writable=True, embed_model=model, dim=vec.dim, ann="auto")
    per_doc, per_commit = 100, max(25_000, n // 4)
    made, t0 = 0, time.perf_counter()
    try:
        with cached_tokenizer(texts):
            while made < n:
                t = time.perf_counter()
                with kb.batch() as b:
                    stop = min(n, made + per_commit)
                    while made < stop:
                        m = min(per_doc, stop - made)
                        body = texts.chunks(m)
                        chunks, pos = [], 0
                        for i, text in enumerate(body):
                            chunks.append(Chunk(text=text, start=pos, end=pos + len(text), ordinal=i, n_tokens=120))
                            pos += len(text) + 1
                        b.put_document(DocumentInfo(path=f"/bench/doc{made}.txt", chunks=m), chunks, vec.batch(made, m))
                        made += m
                print(
                    f"    commit to {made:>9,} chunks: {time.perf_counter() - t:6.1f} s, index {kb.index.params}",
                    flush=True,
                )
    finally:
        kb.close()
    return time.perf_counter() - t0


def bench(n: int, dim: int, embedder, work: Path, nq: int = 200, reuse: bool = False) -> dict:
    vec = Vectors(n, dim)
    texts = Texts()
    path = work / f"kb{n}"
    peak0 = peak_rss_mb()
    if reuse and (path / "kb.sqlite").exists():
        with KnowledgeBase.open(path) as kb:
            if kb.chunk_count() != n:
                raise SystemExit(f"{path} holds {kb.chunk_count()} chunks, not {n}: remove it or use another --work")
        build_s = float("nan")  # reused: no build figures
    else:
        build_s = build(path, n, vec, texts, embedder.name if embedder else "synthetic")
    res: dict = {"build_s": build_s, "peak_rss_mb": max(peak0, peak_rss_mb())}

    qv = _unit(np.concatenate([vec.batch(10**12 + i, 1) for i in range(nq)]))  # held-out points, same clusters
    truth, flat_ms = _truth(vec, n, qv)
    res["flat_p50"] = percentile(flat_ms, 50)

    before = rss_mb()
    kb = KnowledgeBase.open(path)
    try:
        with kb.snapshot():
            index = kb.index
            res["index_rss_mb"] = rss_mb() - before
            res["index_file_mb"] = (path / kb.backend.location(kb.generation)).stat().st_size / 2**20
            res["db_mb"] = (path / "kb.sqlite").stat().st_size / 2**20
            res["params"] = index.params
            got, ann_ms = [], []
            for q in qv:
                t = time.perf_counter()
                hits = kb.dense_search(q, 10)
                ann_ms.append(1000 * (time.perf_counter() - t))
                got.append([i for i, _ in hits])
        res["recall"] = float(np.mean([len(set(g) & set(t.tolist())) / 10 for g, t in zip(got, truth)]))
        res["ann_p50"] = percentile(ann_ms, 50)

        rng = np.random.default_rng(7)
        bq = [texts.query(rng) for _ in range(100)]
        kb.lexical.search(bq[0], 10)
        lat = []
        for q in bq:
            t = time.perf_counter()
            kb.lexical.search(q, 10)
            lat.append(1000 * (time.perf_counter() - t))
        res["bm25_alone"] = (percentile(lat, 50), percentile(lat, 95))

        if embedder is not None and embedder.dim == dim:
            from docqa.retrieve import Retriever

            r = Retriever(kb, embedder, Settings(index=path))
            for mode in ("dense", "bm25", "hybrid"):
                r.search(QUESTIONS[0], k=5, mode=mode)  # warm-up: SQLite pages, model
                times, parts = [], collections.defaultdict(list)
                for q in QUESTIONS * 2 + QUESTIONS[:8]:
                    t = time.perf_counter()
                    got = r.search(q, k=5, mode=mode)
                    times.append(1000 * (time.perf_counter() - t))
                    for part in ("embed", "dense", "bm25"):
                        if part in got.timings:
                            parts[part].append(1000 * got.timings[part])
                res[mode] = (percentile(times, 50), percentile(times, 95))
                res[mode + "_parts"] = {part: percentile(v, 50) for part, v in parts.items()}
    finally:
        kb.close()
    return res


def _truth(vec: Vectors, n: int, queries: np.ndarray) -> tuple[np.ndarray, list[float]]:
    import faiss

    flat = faiss.IndexFlatIP(vec.dim)
    per_doc = 100
    # regenerate exactly the batches the build made (one per document of 100 chunks)
    for s in range(0, n, per_doc):
        flat.add(_unit(vec.batch(s, min(per_doc, n - s)).astype(np.float16).astype(np.float32)))
    _, ids = flat.search(queries, 10)
    times = []
    for q in queries[:40]:
        t = time.perf_counter()
        flat.search(q[None], 10)
        times.append(1000 * (time.perf_counter() - t))
    del flat
    return ids + 1, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated chunk counts")
    ap.add_argument("--dim", type=int, default=384, help="vector dimension (below 384: no retrieve-path timings)")
    ap.add_argument("--no-model", action="store_true", help="skip the embedding model (no retrieve-path timings)")
    ap.add_argument("--work", default=None, help="keep the knowledge bases in this folder (default: a temp folder)")
    ap.add_argument("--reuse", action="store_true", help="with --work: measure the knowledge bases already there")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"scale benchmark ({machine()}, FAISS threads {_threads()})", flush=True)
    embedder = None
    if not args.no_model:
        from docqa.embed import get_embedder

        embedder = get_embedder()
        embedder.encode(["warm up"])
    tokenize("预热分词器")
    with contextlib.ExitStack() as stack:
        d = args.work or stack.enter_context(tempfile.TemporaryDirectory())
        Path(d).mkdir(parents=True, exist_ok=True)
        lines = []
        for n in sizes:
            print(f"size {n}: building", flush=True)
            res = bench(n, args.dim, embedder, Path(d), reuse=args.reuse)
            p = res["params"]
            print(
                f"  build {res['build_s']:.0f} s, peak RSS {res['peak_rss_mb']:.0f} MB; search process RSS "
                f"+{res['index_rss_mb']:.0f} MB on loading the index ({res['index_file_mb']:.0f} MB file), SQLite "
                f"{res['db_mb']:.0f} MB; index {p}",
                flush=True,
            )
            print(
                f"  dense ANN alone p50 {res['ann_p50']:.2f} ms vs exact flat {res['flat_p50']:.1f} ms "
                f"({res['flat_p50'] / max(res['ann_p50'], 1e-6):.0f}x); BM25 alone p50 {res['bm25_alone'][0]:.1f} ms "
                f"p95 {res['bm25_alone'][1]:.1f} ms",
                flush=True,
            )
            if "hybrid" in res:
                print(
                    "  retrieve: "
                    + "  ".join(
                        f"{m} p50 {res[m][0]:.1f} ms p95 {res[m][1]:.1f} ms" for m in ("dense", "bm25", "hybrid")
                    ),
                    flush=True,
                )
                print(
                    "  hybrid p50 by part: "
                    + ", ".join(f"{k} {v:.1f} ms" for k, v in res["hybrid_parts"].items())
                    + " (the rest: fusion, chunk rows, de-duplication)",
                    flush=True,
                )
                line = f"size {n}: hybrid p50 {res['hybrid'][0]:.1f} ms p95 {res['hybrid'][1]:.1f} ms; recall@10 {res['recall']:.2f}"
            else:
                line = (
                    f"size {n}: dense p50 {res['ann_p50']:.1f} ms; recall@10 {res['recall']:.2f} (no model: no hybrid)"
                )
            print(line, flush=True)
            lines.append(line)
            if not args.work:
                for f in Path(d).glob(f"kb{n}/*"):
                    f.unlink()
        print("\n" + "\n".join(lines))


def _threads() -> int:
    import faiss

    return faiss.omp_get_max_threads()


if __name__ == "__main__":
    main()
