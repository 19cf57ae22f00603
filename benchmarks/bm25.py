"""Benchmark docqa.bm25 (with docqa.tokenize): add throughput, search p50/p95 and DB size at 10K and 100K chunks.

    .venv/bin/python benchmarks/bm25.py            # 10K and 100K
    .venv/bin/python benchmarks/bm25.py 20000      # custom sizes

Corpus: real English text (Debian changelogs/copyright files under /usr/share/doc, gzip or plain) cut into
~200-word chunks, plus 20% Chinese chunks sampled Zipf-like by frequency from jieba's own dictionary (real words,
not real sentences). The text is recycled with a shuffle when the machine has fewer words than needed.
Indexing runs in transactions of 256 chunks (add() calls of 64) on a temp SQLite file, as an ingest would.
Queries: 100 random 2-6 word spans of the corpus (some full of common terms) plus fixed hard ones; each is
timed 5 times and the median taken, then p50/p95 over queries are printed.
"""

from __future__ import annotations

import gzip
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docqa.bm25 import LexicalIndex  # noqa: E402
from docqa.tokenize import segmenter_name, tokenize  # noqa: E402


def english_words(limit: int = 6_000_000) -> list[str]:
    words: list[str] = []
    for p in sorted(Path("/usr/share/doc").rglob("*")):
        if len(words) >= limit:
            break
        try:
            if p.suffix == ".gz":
                raw = gzip.open(p).read(2_000_000)
            elif p.name in ("copyright", "README", "NEWS") or p.suffix in (".txt", ".md"):
                raw = p.read_bytes()[:2_000_000]
            else:
                continue
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        words.extend(raw.decode("utf-8", "replace").split())
    return words


def chinese_sampler(rng: random.Random):
    import jieba

    entries = []
    with open(os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), encoding="utf-8") as f:
        for line in f:
            w, freq, *_ = line.split()
            entries.append((w, int(freq)))
    entries.sort(key=lambda e: -e[1])
    entries = entries[:60_000]
    words = [w for w, _ in entries]
    weights = [1.0 / (i + 1) for i in range(len(words))]  # Zipf over the frequency rank
    punct = "，。、；"

    def chunk(n_chars: int = 300) -> str:
        out, size = [], 0
        for w in rng.choices(words, weights, k=n_chars // 2):
            out.append(w)
            size += len(w)
            if rng.random() < 0.08:
                out.append(rng.choice(punct))
            if size >= n_chars:
                break
        return "".join(out)

    return chunk


def make_chunks(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = english_words()
    zh = chinese_sampler(rng)
    chunks, pos = [], 0
    for _ in range(n):
        if rng.random() < 0.2:
            chunks.append(zh())
            continue
        if pos + 200 > len(words):
            pos = 0
            rng.shuffle(words)  # recycle; shuffled so chunks are not exact duplicates
        chunks.append(" ".join(words[pos : pos + 200]))
        pos += 200
    return chunks


def bench(n: int, chunks: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "kb.sqlite3"
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # what a WAL store should use; FULL adds an fsync per commit
        conn.executescript(LexicalIndex.SCHEMA)
        idx = LexicalIndex(conn)
        texts = chunks[:n]
        t0 = time.perf_counter()
        tok_time = 0.0
        for i in range(0, n, 256):
            with conn:
                for j in range(i, min(i + 256, n), 64):
                    batch = texts[j : min(j + 64, i + 256, n)]
                    idx.add(list(range(j + 1, j + 1 + len(batch))), batch)
        add_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        for t in texts[: min(n, 5000)]:
            tokenize(t)
        tok_time = (time.perf_counter() - t1) / min(n, 5000) * n
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = path.stat().st_size / 2**20
        rng = random.Random(1)
        queries = [
            "how to install a package",
            "the package is installed",
            "fix bug in debian release",
            "如何安装软件包",
            "系统 配置 文件",
            "dpkg -L",
            "/etc/fstab mount",
            "version upload new",
        ]
        while len(queries) < 108:
            t = texts[rng.randrange(n)].split()
            if len(t) < 8:
                t = list(texts[rng.randrange(n)][:12])
            s = rng.randrange(len(t) - 6)
            queries.append(" ".join(t[s : s + rng.randint(2, 6)]))
        lat = []
        for q in queries:
            runs = []
            for _ in range(5):
                a = time.perf_counter()
                idx.search(q, k=10)
                runs.append(time.perf_counter() - a)
            lat.append(statistics.median(runs) * 1000)
        lat.sort()
        worst = max(zip(lat, queries))
        print(
            f"{n:>7} chunks: add {n / add_s:7.0f} chunks/s ({add_s:.1f} s; tokenizing alone ~{tok_time:.1f} s), "
            f"search p50 {lat[len(lat) // 2]:.2f} ms p95 {lat[int(len(lat) * 0.95)]:.2f} ms "
            f"max {worst[0]:.1f} ms, DB {size:.0f} MiB, segments {conn.execute('SELECT COUNT(*) FROM lex_postings').fetchone()[0]}"
        )
        n_pre = conn.execute("SELECT COUNT(*) FROM lex_terms").fetchone()[0]
        a = time.perf_counter()
        with conn:
            idx.remove(list(range(1, 1 + n // 100)))
        print(f"         remove 1% ({n // 100} chunks): {time.perf_counter() - a:.2f} s; vocabulary {n_pre} terms")
        conn.close()


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000]
    t = time.perf_counter()
    tokenize("预热分词器")
    print(f"segmenter {segmenter_name()} ready in {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    chunks = make_chunks(max(sizes))
    print(f"corpus of {len(chunks)} chunks built in {time.perf_counter() - t:.1f} s")
    for n in sizes:
        bench(n, chunks)


if __name__ == "__main__":
    main()
