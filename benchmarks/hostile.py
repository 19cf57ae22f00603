"""Ingest of the hostile folder (tests/hostile.py) beside good files: wall time and peak RSS of the whole process tree.

    python benchmarks/hostile.py [--max-file-mb 100] [--memory-mb 1024]

Runs the real `python -m docqa ingest` (model included) on a fresh folder and knowledge base, and samples every
20 ms the resident memory of the ingest process and its children (the sandbox worker, restarted after each crash),
reporting the peak of the sum, of the main process and of any worker. Prints each file's outcome.

Limits: sampling can miss a spike shorter than 20 ms (a worker killed by its RLIMIT_AS cap never holds more than
the cap, so the worker's true peak is bounded by --memory-mb).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # first: this file is also called hostile.py

from _util import machine  # noqa: E402
from hostile import build_hostile_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-file-mb", type=int, default=100)
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        t = time.perf_counter()
        cases = build_hostile_folder(docs)
        build_s = time.perf_counter() - t
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "DOCQA_MAX_FILE_MB": str(a.max_file_mb),
            "DOCQA_FILE_MEMORY_MB": str(a.memory_mb),
            "DOCQA_FILE_TIMEOUT": str(a.timeout),
        }
        cmd = [sys.executable, "-m", "docqa", "ingest", str(docs), "--index", str(Path(tmp) / "kb"), "--json"]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        ps = psutil.Process(proc.pid)
        peak_total = peak_main = peak_worker = 0
        workers: set[int] = set()
        while proc.poll() is None:
            try:
                main_rss = ps.memory_info().rss
                kids = ps.children(recursive=True)
                kid_rss = []
                for k in kids:
                    try:
                        kid_rss.append(k.memory_info().rss)
                        workers.add(k.pid)
                    except psutil.Error:
                        pass
                peak_main = max(peak_main, main_rss)
                peak_worker = max([peak_worker, *kid_rss])
                peak_total = max(peak_total, main_rss + sum(kid_rss))
            except psutil.Error:
                pass
            time.sleep(0.02)
        out = proc.stdout.read() if proc.stdout else ""
        wall = time.perf_counter() - t
    report = json.loads(out)
    print(f"hostile-folder ingest on {machine()}")
    print(
        f"  {len(cases)} entries built in {build_s:.1f}s; ingest exit code {proc.returncode}, wall {wall:.1f}s "
        f"(model load included)"
    )
    print(
        f"  peak RSS: process tree {peak_total >> 20} MB, ingest process {peak_main >> 20} MB, "
        f"sandbox worker {peak_worker >> 20} MB (cap {a.memory_mb} MB address space); {len(workers)} worker PIDs seen"
    )
    print(f"  added {report['added']}, failed {len(report['failed'])}, skipped {len(report['skipped'])}")
    for f in report["failed"]:
        print(f"    failed  {Path(f['path']).name:18} {f['reason']}")
    for f in report["skipped"]:
        print(f"    skipped {Path(f['path']).name:18} {f['reason']}")


if __name__ == "__main__":
    main()
