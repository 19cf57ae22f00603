"""Ingest throughput: pages/s, chunks/s, peak RSS, and the share of wall time spent outside the embedding model.

    python benchmarks/ingest.py [CORPUS ...] [--repeat 3]

For each corpus (default: corpora/sample) it runs a fresh ingest `--repeat` times into temp knowledge bases and
reports medians; the baseline, in the same process, is the embedding model alone encoding the same chunk texts
(so `outside-model share` = 1 - embed/total). Then it re-runs the ingest on an unchanged folder (the no-op sync) and
reports how much faster it is than the first run (target: at least 20x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _util import machine, peak_rss_mb  # noqa: E402

from docqa.config import Settings  # noqa: E402
from docqa.embed import get_embedder  # noqa: E402
from docqa.ingest import ingest  # noqa: E402
from docqa.store import KnowledgeBase, index_text  # noqa: E402


def bench(corpus: Path, repeat: int) -> None:
    emb = get_embedder()
    emb.encode(["warm up"])
    totals, embeds, reports = [], [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            s = Settings(index=Path(tmp) / "kb")
            r = ingest([corpus], s, emb)
            totals.append(r.seconds)
            embeds.append(r.embed_seconds)
            reports.append(r)
            t = time.perf_counter()
            noop = ingest([corpus], s, emb)
            noop_s = time.perf_counter() - t
            assert noop.unchanged == r.added + r.updated + r.unchanged, "the re-run must skip every file"
            with KnowledgeBase.open(s.index) as kb:
                texts = [index_text(c.section, c.text) for c in kb.chunks(range(kb.chunk_count() * 4 + 10)).values()]
    t = time.perf_counter()
    emb.encode(texts, batch_size=32)
    baseline = time.perf_counter() - t
    r = reports[0]
    total, embed = statistics.median(totals), statistics.median(embeds)
    print(f"corpus {corpus}: {r.added} files ({len(r.failed)} failed), {r.pages} PDF pages, {r.chunks} chunks")
    print(f"  ingest wall (median of {repeat}): {total:.2f} s   runs: {', '.join(f'{x:.2f}' for x in totals)}")
    print(f"  chunks/s {r.chunks / total:.1f}   files/s {r.added / total:.1f}   PDF pages/s {r.pages / total:.1f}")
    print(
        f"  embedding inside ingest {embed:.2f} s; outside-model share {100 * (1 - embed / total):.1f}% (target < 15%)"
    )
    print(
        f"  baseline: model alone on the same {len(texts)} texts {baseline:.2f} s -> ingest/baseline {total / baseline:.2f}x"
    )
    print(f"  no-op re-run {noop_s * 1000:.0f} ms -> {total / noop_s:.0f}x faster than the first run (target >= 20x)")
    print(f"  peak RSS {peak_rss_mb():.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpora", nargs="*", type=Path, default=[Path("corpora/sample")])
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    print(f"ingest benchmark on {machine()}")
    for c in a.corpora:
        bench(c, a.repeat)


if __name__ == "__main__":
    main()
