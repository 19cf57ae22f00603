"""Benchmark retrieval: p50/p95 latency of dense, BM25 and hybrid search at 10K and 100K chunks, plus CLI startup.

    .venv/bin/python benchmarks/search.py              # 10K and 100K chunks
    .venv/bin/python benchmarks/search.py 20000        # custom sizes

The knowledge base is built through `KnowledgeBase.batch()` (the real store, FAISS flat index and BM25 postings)
with random unit vectors (FAISS cost does not depend on what the vectors mean) and real text: sentences of the
sample corpus's English and Chinese plain-text files, shuffled into ~120-word chunks (80% English, 20% Chinese).
The real embedding model is loaded, so dense and hybrid timings include encoding the question. Each question is
timed once after a warm-up; p50/p95 are over 40 questions (half English, half Chinese) per mode.
Targets (2 cores): p50 < 50 ms dense and < 100 ms hybrid at 100K chunks; `docqa --help` < 1 s.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from _util import QUESTIONS, machine, percentile  # noqa: E402

from docqa.config import Settings  # noqa: E402
from docqa.documents import Chunk  # noqa: E402
from docqa.embed import get_embedder  # noqa: E402
from docqa.retrieve import Retriever  # noqa: E402
from docqa.store import DocumentInfo, KnowledgeBase  # noqa: E402

SAMPLE = ROOT / "corpora" / "sample"


def sentences() -> tuple[list[str], list[str]]:
    from docqa.load import load_file

    en, zh = [], []
    for name, out in (
        ("python-sorting-howto.txt", en),
        ("python-logging-howto.md", en),
        ("grep.zh-cn.txt", zh),
        ("tar.zh-cn.gb18030.txt", zh),
    ):
        text = load_file(SAMPLE / name).text
        out.extend(s.strip() for s in re.split(r"(?<=[.!?。！？])\s*|\n{2,}", text) if len(s.strip()) > 10)
    return en, zh


def build(path: Path, n: int, dim: int, model: str, rng: random.Random) -> None:
    en, zh = sentences()
    kb = KnowledgeBase.open(path, create=True, writable=True, embed_model=model, dim=dim)
    nrng = np.random.default_rng(0)
    per_doc, per_commit = 100, 20_000
    made = 0
    try:
        while made < n:
            with kb.batch() as b:
                stop = min(n, made + per_commit)
                while made < stop:
                    m = min(per_doc, stop - made)
                    chunks, pos = [], 0
                    for i in range(m):
                        pool = zh if rng.random() < 0.2 else en
                        text = " ".join(rng.choice(pool) for _ in range(6))
                        chunks.append(Chunk(text=text, start=pos, end=pos + len(text), ordinal=i, n_tokens=120))
                        pos += len(text)
                    vec = nrng.standard_normal((m, dim)).astype(np.float32)
                    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
                    b.put_document(DocumentInfo(path=f"/bench/doc{made}.txt", chunks=m), chunks, vec)
                    made += m
    finally:
        kb.close()


def bench(n: int, embedder) -> dict[str, tuple[float, float]]:
    rng = random.Random(n)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        build(Path(d) / "kb", n, embedder.dim, embedder.name, rng)
        print(f"  built {n} chunks in {time.perf_counter() - t:.0f}s", flush=True)
        kb = KnowledgeBase.open(Path(d) / "kb")
        try:
            r = Retriever(kb, embedder, Settings(index=Path(d) / "kb"))
            out = {}
            for mode in ("dense", "bm25", "hybrid"):
                r.search(QUESTIONS[0], k=5, mode=mode)  # warm-up: FAISS file, SQLite pages, model
                times = []
                for q in QUESTIONS * 2 + QUESTIONS[:8]:
                    t = time.perf_counter()
                    r.search(q, k=5, mode=mode)
                    times.append(1000 * (time.perf_counter() - t))
                out[mode] = (percentile(times, 50), percentile(times, 95))
            return out
        finally:
            kb.close()


def cli_startup() -> float:
    exe = ROOT / ".venv" / "bin" / "docqa"
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "docqa", "--help"]
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        runs.append(time.perf_counter() - t)
    return sorted(runs)[2]


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000]
    print(f"search latency ({machine()})")
    embedder = get_embedder()
    embedder.encode(["warm up"])
    rows = []
    for n in sizes:
        res = bench(n, embedder)
        rows.append((n, res))
        print(
            f"  {n:>7} chunks: " + "  ".join(f"{m} p50 {p50:.1f} ms p95 {p95:.1f} ms" for m, (p50, p95) in res.items()),
            flush=True,
        )
    print("\n| chunks | dense p50 / p95 (ms) | bm25 p50 / p95 (ms) | hybrid p50 / p95 (ms) |\n|---|---|---|---|")
    for n, res in rows:
        print(
            f"| {n:,} | " + " | ".join(f"{res[m][0]:.1f} / {res[m][1]:.1f}" for m in ("dense", "bm25", "hybrid")) + " |"
        )
    print(f"\n`docqa --help` startup (median of 5): {cli_startup():.2f} s")


if __name__ == "__main__":
    main()
