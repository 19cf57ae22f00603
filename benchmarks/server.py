"""Benchmark `docqa serve`: p50/p95 search latency under 10 concurrent searchers, alone and while one generation
runs, against the real server process (real embedding model, uvicorn on a free loopback port).

    .venv/bin/python benchmarks/server.py                          # indexes/sample, extractive and demo answerer
    .venv/bin/python benchmarks/server.py --index indexes/sample --model demo --rounds 20

Each of the 10 searcher threads sends `rounds` POST /api/v1/search requests back to back (k=5, hybrid), with the
bilingual questions of benchmarks/search.py; meanwhile one thread streams POST /v1/chat/completions answers in a
loop. The server's own state goes to a temporary folder (the knowledge base is only read).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402
from _util import percentile  # noqa: E402

QUESTIONS = [
    "How do I create a virtual environment?",
    "怎么解压 tar.gz 文件？",
    "How do I install a package with pip?",
    "如何查看磁盘使用情况？",
    "What does the -r option of rm do?",
    "怎么修改文件权限？",
    "How do I read a file line by line in Python?",
    "/etc/fstab 是什么？",
    "How do I list open ports?",
    "怎么创建一个新用户？",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(index: Path, model: str, state: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        str(ROOT / ".venv/bin/docqa"),
        "serve",
        "--index",
        str(index),
        "--port",
        str(port),
        "--model",
        model,
        "--state-dir",
        str(state),
    ]
    log = open(state / "server.log", "wb")  # noqa: SIM115 - the process keeps it
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return p, url
        time.sleep(0.3)
    p.kill()
    raise SystemExit("server did not start")


def searchers(url: str, kb: str, rounds: int, n: int = 10) -> list[float]:
    times: list[float] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        with httpx.Client(timeout=120) as c:
            for r in range(rounds):
                q = QUESTIONS[(i + r) % len(QUESTIONS)]
                t = time.perf_counter()
                resp = c.post(url + "/api/v1/search", json={"query": q, "kb_ids": [kb], "k": 5})
                dt = time.perf_counter() - t
                resp.raise_for_status()
                with lock:
                    times.append(dt)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times


def generation_loop(url: str, kb: str, stop: threading.Event, out: dict) -> None:
    body = {
        "model": f"docqa/{kb}",
        "stream": True,
        "messages": [{"role": "user", "content": "How do I create a virtual environment in Python?"}],
    }
    with httpx.Client(timeout=600) as c:
        while not stop.is_set():
            t = time.perf_counter()
            first = None
            with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if first is None and '"content": "' in line and '"content": ""' not in line:
                        first = time.perf_counter() - t
            out.setdefault("first_token", []).append(first or 0.0)
            out.setdefault("total", []).append(time.perf_counter() - t)


def ms(xs: list[float], q: float) -> str:
    return f"{percentile(xs, q) * 1000:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", type=Path, default=ROOT / "indexes" / "sample")
    ap.add_argument("--model", action="append", help="extractive | demo | ... (repeatable)")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    kb = args.index.name
    for model in args.model or ["extractive", "demo"]:
        with tempfile.TemporaryDirectory() as state:
            p, url = start(args.index, model, Path(state))
            try:
                searchers(url, kb, 2)  # warm-up: retriever pool, model caches
                gen: dict = {}
                stop = threading.Event()
                one = searchers(url, kb, args.rounds, n=1)
                t0 = time.perf_counter()
                idle = searchers(url, kb, args.rounds)
                idle_s = time.perf_counter() - t0
                g = threading.Thread(target=generation_loop, args=(url, kb, stop, gen), daemon=True)
                g.start()
                time.sleep(1.0)
                t0 = time.perf_counter()
                busy = searchers(url, kb, args.rounds)
                busy_s = time.perf_counter() - t0
                stop.set()
                g.join(600)
                print(f"model={model} ({len(idle)} searches, 10 concurrent)")
                print(f"  one searcher, sequential: p50 {ms(one, 50)} ms, p95 {ms(one, 95)} ms")
                print(
                    f"  searches alone:           p50 {ms(idle, 50)} ms, p95 {ms(idle, 95)} ms, {len(idle) / idle_s:.1f}/s"
                )
                print(
                    f"  with one generation:      p50 {ms(busy, 50)} ms, p95 {ms(busy, 95)} ms, {len(busy) / busy_s:.1f}/s"
                )
                if gen.get("total"):
                    print(
                        f"  generation meanwhile:     {len(gen['total'])} answers, first token p50 "
                        f"{ms(gen['first_token'], 50)} ms, total p50 {ms(gen['total'], 50)} ms"
                    )
            finally:
                os.kill(p.pid, signal.SIGTERM)
                p.wait(30)


if __name__ == "__main__":
    main()
