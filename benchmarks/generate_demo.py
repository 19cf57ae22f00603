"""Benchmark the embedded demo model (Gemma 3 270M): first (converting) load, cached load, time to first token,
decode tokens/s.

    .venv/bin/python benchmarks/generate_demo.py                  # converts into a fresh temporary cache (~1 min)
    .venv/bin/python benchmarks/generate_demo.py --cache-dir .cache/demo-gemma3-270m   # reuse a cache: no conversion
    .venv/bin/python benchmarks/generate_demo.py --json

Each load runs in its own subprocess so it includes importing torch/transformers, as `docqa ask` would (the
file cache is warm for the cached load). Generation is timed with `sample_tokens` directly (greedy, no stop at
blank lines) for a short prompt and for a ~1000-token retrieval-style prompt.

Limits: CPU timings depend on the machine and on whatever else runs on it; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LOAD_SNIPPET = """
import time, sys
t = time.perf_counter()
from docqa.generate.demo import DemoGenerator
DemoGenerator(cache_dir=sys.argv[1])
print(time.perf_counter() - t)
"""


def timed_load(cache_dir: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SNIPPET, str(cache_dir)], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    return float(out.strip().splitlines()[-1])


def long_prompt(gen, target_tokens: int = 1000) -> str:
    """Passages from docqa's own module docstrings, then a question: a realistic retrieval prompt."""
    import docqa.generate.base as base
    import docqa.generate.demo as demo

    text = ""
    for mod in (base, demo) * 8:
        text += f"Passage: {mod.__doc__.strip()}\n\n"
        if gen.count_tokens(text) >= target_tokens:
            break
    return text + "Question: How does StreamDecoder avoid emitting half a character?\n\nAnswer:"


def time_generation(gen, prompt: str, new_tokens: int) -> dict:
    from docqa.generate.base import GenerationOptions, sample_tokens

    ids = gen.tokenizer(prompt)["input_ids"]
    opts = GenerationOptions(max_new_tokens=new_tokens, temperature=0)
    t0 = time.perf_counter()
    first = None
    n = 0
    for _ in sample_tokens(gen.model, ids, opts, eos_ids=[]):
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return {
        "prompt_tokens": len(ids),
        "ttft_s": round(first - t0, 3),
        "new_tokens": n,
        "decode_tok_s": round((n - 1) / (end - first), 2) if n > 1 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", type=Path, help="an existing cache to use (skips the conversion timing)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    res: dict = {"threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    tmp = None
    if args.cache_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-demo-", dir=ROOT / ".cache" if (ROOT / ".cache").is_dir() else None))
        cache = tmp / "demo-gemma3-270m"
        res["first_load_s"] = round(timed_load(cache), 2)
    else:
        cache = args.cache_dir
    try:
        res["cached_load_s"] = round(timed_load(cache), 2)
        from docqa.generate.demo import DemoGenerator

        gen = DemoGenerator(cache_dir=cache)
        time_generation(gen, "Hello", 2)  # warm-up
        res["short"] = time_generation(gen, "The capital of France is", args.new_tokens)
        res["long"] = time_generation(gen, long_prompt(gen), args.new_tokens)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:>14}: {v}")


if __name__ == "__main__":
    main()
