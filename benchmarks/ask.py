"""Benchmark `docqa.answer.ask`: the demo model end to end on CPU, and the cost outside the model at 100K chunks.

    .venv/bin/python benchmarks/ask.py                    # both parts
    .venv/bin/python benchmarks/ask.py --chunks 20000     # smaller synthetic index
    .venv/bin/python benchmarks/ask.py --skip-demo        # only the retrieval + prompt part

Part 1 (demo): a 6-document knowledge base is ingested with the real embedder; each question is asked with the
embedded demo model (Gemma 3 270M, greedy, max_new_tokens 64) after one warm-up; time to first token (from the
call, so retrieval and prompt included) and total time are reported as medians over the questions.

Part 2 (outside the model): a knowledge base of N synthetic chunks (default 100,000; text from benchmarks/bm25.py:
real English words from /usr/share/doc plus 20% Chinese words from jieba's dictionary; random unit vectors, since
the FAISS flat index costs the same whatever the vectors) is written through the real store. Then `ask` runs with
50 candidates, ChatGLM2's real tokenizer and [Round n] format at an 8K context (a two-turn history), and a model
that returns at once, so `total` is exactly retrieval (query embedding + FAISS + BM25 + fusion + SQLite) + prompt
assembly, measured with torch's default thread count and with 1 thread. Target: median < 300 ms.

Limits: timings depend on other load on the machine. On 2 cores with another busy process, torch's
intra-op threads wait on each other: one query embedding then takes ~480 ms instead of ~10 ms with 1 thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _util import machine, percentile  # noqa: E402

from docqa.answer import ask  # noqa: E402
from docqa.config import Settings  # noqa: E402
from docqa.generate.base import Generator  # noqa: E402

DOCS = {
    "nginx.md": "# nginx\n\nInstall nginx with `sudo apt install nginx`. The web server starts automatically.\n\n"
    "The nginx configuration file is /etc/nginx/nginx.conf. After editing it, run `sudo nginx -s reload`.\n",
    "redis.md": "# Redis\n\nInstall Redis with `sudo apt install redis-server`. Redis listens on port 6379.\n\n"
    "The Redis configuration file is /etc/redis/redis.conf. Restart redis-server after editing it.\n",
    "venv.md": "# Virtual environments\n\nTo create one, run `python3 -m venv tutorial-env`. This creates the "
    "tutorial-env directory with a copy of the interpreter. Activate it with `source tutorial-env/bin/activate`.\n",
    "tar.txt": "tar 命令\n\n解压文件：使用 tar -xzvf archive.tar.gz 可以解压一个用 gzip 压缩的归档。"
    "选项 -x 表示提取，-z 表示通过 gzip 过滤。\n\n创建归档：tar -cf archive.tar foo bar 会把 foo 和 bar 打包。\n",
    "fstab.txt": "文件系统表\n\n/etc/fstab 文件描述了系统启动时要挂载的文件系统。修改 /etc/fstab 之后，可以运行 "
    "mount -a 挂载所有文件系统来检查配置是否正确。\n",
    "dpkg.md": "# dpkg\n\n`dpkg -L package` lists the files a package installed. `dpkg -S /path` finds the package "
    "that owns a file. `dpkg -l` lists installed packages.\n",
}
DEMO_QUESTIONS = [
    "How do I install nginx?",
    "Where is the Redis configuration file?",
    "How do I create a Python virtual environment?",
    "怎么解压 tar.gz 文件？",
    "修改 /etc/fstab 之后怎么检查？",
    "Which command lists the files of a package?",
]


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:7.1f} ms, p95 {percentile(values, 95) * 1000:7.1f} ms"


def bench_demo(root: Path) -> None:
    from docqa.generate.demo import DemoGenerator
    from docqa.ingest import ingest
    from docqa.retrieve import open_retriever

    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text, encoding="utf-8")
    s = Settings(index=root / "demo-kb", temperature=0.0, max_new_tokens=64)
    ingest([root / "docs"], s)
    retriever = open_retriever(s)
    t = time.perf_counter()
    gen = DemoGenerator()
    load = time.perf_counter() - t
    ask(DEMO_QUESTIONS[0], retriever, gen, s)  # warm-up: first forward passes, embedder
    first, total, gen_tokens, prompt_tokens = [], [], [], []
    for q in DEMO_QUESTIONS:
        a = ask(q, retriever, gen, s, abstain=False)
        first.append(a.timings["first_token"])
        total.append(a.timings["total"])
        gen_tokens.append(gen.count_tokens(a.text))
        prompt_tokens.append(gen.count_tokens(gen.render([{"role": "user", "content": "x"}])) + sum(a.passage_tokens))
        print(
            f"  {q[:44]:<46} first token {a.timings['first_token']:5.2f} s, total {a.timings['total']:5.2f} s, "
            f"{gen_tokens[-1]:3d} tokens out: {a.text[:60]!r}"
        )
    print(
        f"demo model (Gemma 3 270M, CPU): load {load:.1f} s; over {len(DEMO_QUESTIONS)} questions "
        f"(~{statistics.median(prompt_tokens):.0f} prompt tokens, median {statistics.median(gen_tokens):.0f} out): "
        f"time to first token {ms(first)}; total {ms(total)}"
    )


class _ChatGLM2Format(Generator):
    """ChatGLM2's tokenizer and prompt format, answering instantly: isolates the cost outside the model."""

    name = "chatglm2-format"
    context_length = 8192

    def __init__(self):
        from docqa.generate.chatglm2_tokenizer import ChatGLM2Tokenizer

        self.tok = ChatGLM2Tokenizer(ROOT / "tests/data/chatglm2/tokenizer.model")

    def count_tokens(self, text: str) -> int:
        return self.tok.count_tokens(text)

    def render(self, messages) -> str:
        from docqa.generate.chatglm2 import messages_to_query_history

        return self.tok.build_chat_prompt(*messages_to_query_history(messages))

    def stream(self, prompt, options=None):
        yield "ok [1]"


def build_synthetic_kb(path: Path, n: int, dim: int) -> None:
    import numpy as np
    from bm25 import make_chunks

    from docqa.documents import Chunk
    from docqa.embed import EMBEDDED_EMBED_MODEL
    from docqa.store import DocumentInfo, KnowledgeBase

    texts = make_chunks(n)
    rng = np.random.default_rng(0)
    per_doc = 100
    with KnowledgeBase.open(path, create=True, writable=True, embed_model=EMBEDDED_EMBED_MODEL, dim=dim) as kb:
        for start in range(0, n, 5000):
            with kb.batch() as b:
                for d in range(start, min(start + 5000, n), per_doc):
                    batch = texts[d : d + per_doc]
                    chunks = [
                        Chunk(
                            text=t,
                            start=i * 1000,
                            end=i * 1000 + len(t),
                            ordinal=i,
                            page=i // 3 + 1,
                            section=f"Section {d // per_doc}.{i // 10}",
                            n_tokens=200,
                        )
                        for i, t in enumerate(batch)
                    ]
                    vecs = rng.standard_normal((len(batch), dim)).astype("float32")
                    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                    b.put_document(
                        DocumentInfo(
                            path=f"/synthetic/doc{d // per_doc:05d}.pdf", chunks=len(batch), pages=len(batch) // 3 + 1
                        ),
                        chunks,
                        vecs,
                    )


def bench_outside_model(root: Path, n: int) -> None:
    import random

    from docqa.embed import get_embedder
    from docqa.retrieve import open_retriever
    from docqa.store import KnowledgeBase

    embedder = get_embedder()
    t = time.perf_counter()
    build_synthetic_kb(root / "big-kb", n, embedder.dim)
    print(f"synthetic knowledge base: {n} chunks written in {time.perf_counter() - t:.0f} s")
    s = Settings(index=root / "big-kb")
    retriever = open_retriever(s)
    gen = _ChatGLM2Format()
    history = [("How do I install a package?", "Use apt install NAME [1]."), ("怎么删除它？", "用 apt remove [2]。")]
    rng = random.Random(2)
    with KnowledgeBase.open(s.index) as kb:
        sample = [r.text for r in kb.chunks(rng.sample(range(1, n + 1), 30)).values()]
    queries = [
        "how to install a package",
        "the package is installed",
        "如何安装软件包",
        "系统 配置 文件",
        "dpkg -L",
        "/etc/fstab mount",
        "fix bug in debian release",
        "version upload new",
    ]
    for text in sample:
        words = text.split() if " " in text else list(text)
        i = rng.randrange(max(1, len(words) - 6))
        queries.append((" " if " " in text else "").join(words[i : i + rng.randint(2, 6)]))
    import torch

    default_threads = torch.get_num_threads()
    for threads in dict.fromkeys([default_threads, 1]):
        torch.set_num_threads(threads)
        ask(queries[0], retriever, gen, s, history=history)  # warm-up
        retrieval, prompt, total, n_passages, tokens = [], [], [], [], []
        for q in queries:
            a = ask(q, retriever, gen, s, history=history, abstain=False)
            retrieval.append(a.timings["retrieval"])
            prompt.append(a.timings["prompt"])
            total.append(a.timings["total"])
            n_passages.append(len(a.passages))
            tokens.append(sum(a.passage_tokens))
        print(
            f"outside the model at {n} chunks, {len(queries)} queries, 50 candidates, ChatGLM2 tokenizer, 8K context, "
            f"torch threads {threads}:"
        )
        print(f"  retrieval {ms(retrieval)}")
        print(
            f"  prompt    {ms(prompt)}  (median {statistics.median(n_passages):.0f} passages, "
            f"{statistics.median(tokens):.0f} passage tokens)"
        )
        print(f"  total     {ms(total)}  (target: median < 300 ms)")
    torch.set_num_threads(default_threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-index", action="store_true")
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as d:
        if not args.skip_demo:
            bench_demo(Path(d))
        if not args.skip_index:
            bench_outside_model(Path(d), args.chunks)


if __name__ == "__main__":
    main()
