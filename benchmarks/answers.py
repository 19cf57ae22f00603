"""Benchmark the answers: `docqa eval --answers` on the dev set, the extractive answerer against the demo model.

    .venv/bin/python benchmarks/answers.py                          # extractive on every question, demo on 40
    .venv/bin/python benchmarks/answers.py --demo-questions 0       # extractive only
    .venv/bin/python benchmarks/answers.py --index indexes/dev      # reuse a knowledge base of the dev corpus

The knowledge base of corpora/sample + corpora/dev (the dev set's documents) is built with the real embedder the
first time (indexes/dev, about a minute). Both answerers see the same retrieval (default hybrid settings) and
are judged as `docqa eval --answers` judges (docqa/evaluate_answers.py): answer_key = the answer holds the
answer's command or option; answer_acc = it holds every keyword; cited_acc = a cited passage holds them; chars =
median answer length; latencies are medians, after_retrieval_s = total - retrieval. The demo model is slow (about
a second per answer on 2 cores), so it answers the first N questions of each language of the reporting half,
and the extractive answerer's figures on the same questions are printed beside it.

Limits: string matching judges a correct paraphrase wrong; figures move by about one point per question on the
halves of ~80-100 questions, so differences below 2-3 points are noise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _util import machine  # noqa: E402

from docqa.config import Settings  # noqa: E402
from docqa.evaluate import load_qa  # noqa: E402
from docqa.evaluate_answers import answerer_settings, evaluate_answers, markdown_table  # noqa: E402
from docqa.generate import get_generator  # noqa: E402


def ensure_index(index: Path) -> None:
    from docqa.ingest import ingest

    t = time.perf_counter()
    report = ingest([ROOT / "corpora" / "sample", ROOT / "corpora" / "dev"], Settings(index=index))
    if report.added or report.updated:
        print(f"ingested the dev corpus into {index} in {time.perf_counter() - t:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", type=Path, default=ROOT / "indexes" / "dev")
    ap.add_argument("--qa", type=Path, default=ROOT / "corpora" / "dev_qa.jsonl")
    ap.add_argument("--demo-questions", type=int, default=20, help="per language, from the reporting half")
    args = ap.parse_args()
    print(machine())
    ensure_index(args.index)
    from docqa.retrieve import open_retriever

    settings = Settings(index=args.index)
    items = load_qa(args.qa)
    retriever = open_retriever(settings)
    gen = get_generator(answerer_settings(settings, "extractive"))
    print("\nextractive, every question:")
    print(markdown_table(evaluate_answers(items, retriever, {"extractive": gen}, settings)))
    if args.demo_questions <= 0:
        return
    subset = []
    for lang in ("en", "zh"):
        subset += [it for it in items if it.lang == lang and it.split == "report"][: args.demo_questions]
    demo_settings = answerer_settings(settings, "demo")
    demo = get_generator(demo_settings)
    print(f"\nthe same {len(subset)} reporting-half questions, extractive vs demo:")
    rep = evaluate_answers(subset, retriever, {"extractive": gen}, settings)
    rep_demo = evaluate_answers(subset, retriever, {"demo": demo}, demo_settings)
    rep.groups.update(rep_demo.groups)
    print(markdown_table(rep))
    for lang in ("en", "zh"):
        e, d = rep.groups["extractive"][lang], rep_demo.groups["demo"][lang]
        ratio = d["after_retrieval_s"] / max(e["after_retrieval_s"], 1e-6)
        print(
            f"{lang}: answer_key extractive {e['answer_key']:.2f} vs demo {d['answer_key']:.2f}; "
            f"time after retrieval: demo / extractive = {ratio:.0f}x"
        )


if __name__ == "__main__":
    main()
