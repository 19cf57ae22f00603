"""A fast, deterministic stand-in for the embedding model, and a `docqa` command line that uses it.

    $ python tests/fakeembed.py ingest DIR --index KB      # the real CLI, ingest, sandbox and store
    >>> HashEmbedder().encode(["tar archive", "archive tar"]).shape
    (2, 384)

Why: the crash-consistency, corruption and concurrency tests start dozens of `docqa` processes; with the real model
each spends seconds importing torch before it touches the knowledge base. `HashEmbedder` hashes words into a
384-dimensional bag of words (so dense search still finds shared words) under the name of the default model, so
a knowledge base it builds opens with the default settings. Everything else in the process is the real code.

Limits: the vectors carry no meaning beyond shared words; only for tests and benchmarks of the machinery.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import zlib
from collections.abc import Sequence

import numpy as np

from docqa.config import EMBEDDED_EMBED_MODEL
from docqa.embed import Embedder
from docqa.text import HAN

_TOKEN = re.compile(f"[{HAN}]|[^\\W{HAN}]+|[^\\w\\s]")  # one token per Han character, else per word


class HashEmbedder(Embedder):
    name = EMBEDDED_EMBED_MODEL
    dim = 384
    max_tokens = 256
    languages = frozenset({"en"})

    def count_tokens(self, text: str) -> int:
        return len(_TOKEN.findall(text))

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in _TOKEN.findall(t.lower()):
                out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
            if not out[i].any():
                out[i, 0] = 1.0
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


CRASH_POINTS = ("faiss_partial", "faiss_written", "manifest", "manifest_written")


def install() -> None:
    """Make this process's `get_embedder` return a HashEmbedder (ingest and search both look it up at call time).

    With DOCQA_TEST_CRASH="POINT:N" the process also SIGKILLs itself at the N-th commit step POINT (1-based;
    creating a knowledge base writes vectors.0.faiss and the manifest once): faiss_partial (half of the new FAISS
    file written to its .tmp), faiss_written (FAISS file in place, SQLite not committed), manifest (SQLite
    committed, manifest not written), manifest_written (old FAISS files not yet deleted).
    """
    import docqa.embed
    import docqa.ingest

    fake = HashEmbedder()
    docqa.embed.get_embedder = lambda *a, **k: fake  # type: ignore[assignment]
    docqa.ingest.get_embedder = lambda *a, **k: fake  # type: ignore[assignment]
    crash = os.environ.get("DOCQA_TEST_CRASH")
    if crash:
        point, n = crash.split(":")
        _install_crash(point, int(n))


def _install_crash(point: str, n: int) -> None:
    import docqa.store.files as store  # write_atomic lives there; the store modules call it through it

    if point not in CRASH_POINTS:
        raise SystemExit(f"unknown crash point {point}")
    real = store.write_atomic
    seen = {"faiss": 0, "manifest": 0}

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def write_atomic(path, data):  # type: ignore[no-untyped-def]
        kind = "faiss" if path.name.endswith(".faiss") else "manifest"
        seen[kind] += 1
        hit = seen[kind] == n
        if hit and point == "faiss_partial" and kind == "faiss":
            with open(path.with_name(path.name + ".tmp"), "wb") as f:
                f.write(data[: len(data) // 2])
            die()
        if hit and point == "manifest" and kind == "manifest":
            die()
        real(path, data)
        if hit and point == "faiss_written" and kind == "faiss":
            die()
        if hit and point == "manifest_written" and kind == "manifest":
            die()

    store.write_atomic = write_atomic


def main() -> None:
    install()
    from docqa.cli import app

    app(prog_name="docqa")


if __name__ == "__main__":
    sys.exit(main())
