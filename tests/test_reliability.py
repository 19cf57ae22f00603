"""Reliability of the knowledge base under crashes, damage, concurrency and I/O errors.

Most tests run real `docqa` processes through tests/fakeembed.py: the real CLI, ingest, sandbox and store with a
hashing embedder instead of the model (a process starts in ~0.4 s instead of several), so dozens of crashes fit in
the default suite. The slow suite (`make test-slow`) kills the real `python -m docqa ingest` too and kills more
often (DOCQA_CRASH_KILLS sets the count).

What is checked after every SIGKILL: the knowledge base opens, `verify` finds no error, every document is complete
(its chunk texts are exactly what a clean ingest of that file version gives) or absent, and search works; the
next ingest finishes the job.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fakeembed import HashEmbedder

from docqa.errors import StoreCorruptError, StoreError
from docqa.store import DB_NAME, MANIFEST_NAME, DocumentInfo, KnowledgeBase

TESTS = Path(__file__).resolve().parent
FAKE = TESTS / "fakeembed.py"
PY = sys.executable
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "COLUMNS": "1000",
}  # Rich wraps messages at the terminal width: one line each, please
ENV.pop("DOCQA_TEST_CRASH", None)
WORDS = (
    "kernel package install network filesystem mount archive python venv module socket editor shell "
    "process memory signal thread daemon service config backup restore compile library cache"
).split()


def docqa(*args, real: bool = False, timeout: float = 120, env: dict | None = None, cwd=None):
    """Run `docqa ARGS` (fake embedder unless `real`) and return the CompletedProcess; a hang fails the test."""
    cmd = [PY, "-m", "docqa"] if real else [PY, str(FAKE)]
    return subprocess.run(
        cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env or ENV, cwd=cwd
    )


# ---------------------------------------------------------------------------------------------- a versioned corpus


class Corpus:
    """A folder of text files; every version ever written is kept, so its expected chunks can be computed."""

    def __init__(self, root: Path, n: int, seed: int = 0, max_words: int = 500, embedder=None):
        from docqa.config import Settings

        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.max_words = max_words
        self.emb = embedder or HashEmbedder()  # chunk boundaries depend on the embedder's token counts
        self.s = Settings()
        self.contents: dict[str, str] = {}  # sha256 -> text of every version ever written
        self._chunks: dict[str, list[str]] = {}
        self.current: dict[str, str] = {}  # path -> sha256 of what is on disk
        self.versions: Counter = Counter()
        self.next_id = 0
        for _ in range(n):
            self.add()

    def expected_chunks(self, sha: str) -> list[str]:
        """The chunk texts a clean ingest gives for the file version `sha` (computed when first asked)."""
        from docqa.chunk import chunk_document
        from docqa.load import load_file

        if sha not in self._chunks:
            scratch = self.root.parent / "scratch.txt"
            scratch.write_text(self.contents[sha])
            chunks = chunk_document(
                load_file(scratch),
                self.emb.count_tokens,
                self.s.chunk_tokens,
                self.s.chunk_overlap,
                self.emb.max_tokens - 2,
            )
            self._chunks[sha] = [c.text for c in chunks]
        return self._chunks[sha]

    def write(self, name: str) -> None:
        v = self.versions[name]
        self.versions[name] += 1
        n = self.rng.randint(15, self.max_words)
        words = [self.rng.choice(WORDS) for _ in range(n)]
        paras = [" ".join(words[i : i + 60]) + "." for i in range(0, n, 60)]
        data = f"{name} version {v} marker {name.replace('.', '')}v{v}.\n\n" + "\n\n".join(paras) + "\n"
        p = self.root / name
        p.write_text(data)
        sha = hashlib.sha256(data.encode()).hexdigest()
        self.contents[sha] = data
        self.current[str(p)] = sha

    def add(self) -> None:
        self.write(f"f{self.next_id:05d}.txt")
        self.next_id += 1

    def mutate(self, share: float = 0.7) -> None:
        """Change, delete and add files, so the next ingest updates, removes and adds."""
        names = [Path(p).name for p in self.current]
        for name in self.rng.sample(names, int(len(names) * share)):
            self.write(name)
        for name in self.rng.sample(names, max(1, len(names) // 20)):
            if str(self.root / name) in self.current:
                (self.root / name).unlink()
                del self.current[str(self.root / name)]
        for _ in range(max(1, len(names) // 20)):
            self.add()

    def check(self, kb_path: Path, complete: bool = False) -> int:
        """Assert the knowledge base holds whole documents only (all of them when `complete`); returns how many."""
        if not (kb_path / DB_NAME).exists():
            assert not complete
            return 0
        try:
            kb = KnowledgeBase.open(kb_path)
        except StoreCorruptError as e:
            # killed while creating the knowledge base, before its first commit or before its first manifest:
            # a clear error, and the next ingest completes the creation
            assert (
                "not an initialised knowledge base" in str(e)
                or "manifest.json is missing; run `docqa rebuild`" in str(e)
            ) and not complete, e
            return 0
        with kb:
            errors = [m for level, m in kb.verify() if level == "error"]
            assert not errors, errors
            with kb.snapshot():
                docs = kb.documents()
                rows = kb.conn.execute("SELECT document_id, text FROM chunks ORDER BY document_id, ordinal").fetchall()
                texts: dict[int, list[str]] = {}
                for doc_id, text in rows:
                    texts.setdefault(doc_id, []).append(text)
                for d in docs:
                    assert d.status == "ok", (d.path, d.error)
                    assert d.sha256 in self.contents, d.path
                    assert texts.get(d.id, []) == self.expected_chunks(d.sha256), f"{d.path} is partial"
                    if complete:
                        assert self.current.get(d.path) == d.sha256, f"{d.path}: stale or deleted version kept"
                if complete:
                    assert {d.path for d in docs} == set(self.current)
                if docs:  # search works and finds a present document by its marker
                    d = random.Random(len(docs)).choice(docs)
                    marker = texts[d.id][0].split("marker ")[1].split(".")[0]
                    hits = kb.lexical.search(marker, 3)
                    assert hits and kb.chunks([hits[0][0]])[hits[0][0]].source == d.path
                    vec = HashEmbedder().encode([texts[d.id][0]])[0]
                    assert kb.chunks([kb.dense_search(vec, 1)[0][0]])  # the nearest id is a live chunk
            return len(docs)


# ---------------------------------------------------------------------------------------------- crash consistency


def _cli_checks(kb_path: Path) -> None:
    r = docqa("verify", "--index", kb_path, real=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = docqa("search", "kernel archive", "--index", kb_path, "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"]


def crash_loop(tmp_path: Path, kills: int, n_files: int, seed: int, real: bool = False) -> dict:
    """SIGKILL `docqa ingest` at random moments until `kills` kills landed; check after each. Returns statistics."""
    if real:
        from docqa.embed import get_embedder

        emb = get_embedder()  # its tokenizer decides the chunks (the network itself is not loaded here)
    corpus = Corpus(
        tmp_path / "docs", n_files, seed, max_words=1250, embedder=emb if real else None
    )  # ~4 chunks a file
    kb = tmp_path / "kb"
    rng = random.Random(seed)
    cmd = ([PY, "-m", "docqa"] if real else [PY, str(FAKE)]) + ["ingest", str(corpus.root), "--index", str(kb)]
    est = 30.0 if real else 3.0  # a full run's length, updated from runs that finish
    stats: Counter = Counter()
    while stats["kills"] < kills:
        log = tmp_path / "ingest.log"
        with open(log, "w") as err:
            t0 = time.monotonic()
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=ENV)
            try:
                rc = p.wait(timeout=rng.uniform(0.25, est))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                rc = None
        took = time.monotonic() - t0
        out = log.read_text(errors="replace")
        if rc is None:
            stats["kills"] += 1
            commits = out.count("committed ")
            # StoreError: killed before the knowledge base existed (a slow start-up on a busy machine)
            with contextlib.suppress(StoreError, sqlite3.Error), KnowledgeBase.open(kb) as k:
                g = k.generation  # a FAISS file past the committed generation: killed inside a commit
                stats["kills inside a commit (uncommitted FAISS file left)"] += any(
                    int(f.name.split(".")[1]) > g for f in kb.glob("vectors.*.faiss*")
                )
            stats["kills after a commit in that run"] += commits > 0
            stats["kills before the plan (start-up)"] += " to load" not in out
            stats["commits before kills"] += commits
            n = corpus.check(kb)
            assert n > 0 or not stats["documents present after kills"]  # once there, documents never all vanish
            stats["documents present after kills"] += n
            if stats["kills"] % 15 == 0:
                _cli_checks(kb)
        else:
            assert rc == 0, out[-3000:]
            stats["completed runs"] += 1
            est = max(1.0, took * 1.1) if not real else max(est, took * 1.1)
            corpus.check(kb, complete=True)
        corpus.mutate()  # edits between runs, so that every run has work of several commits to do
    # the next ingest completes the job
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    corpus.check(kb, complete=True)
    with KnowledgeBase.open(kb) as k:
        assert k.verify() == []
    _cli_checks(kb)
    stats["files"] = len(corpus.current)
    return dict(stats)


def test_crash_loop_sigkill_30_times(tmp_path):
    stats = crash_loop(tmp_path, kills=30, n_files=400, seed=1)
    print(stats)
    assert stats["kills"] == 30
    assert stats["kills after a commit in that run"] >= 3  # kills landed in the commit-bearing middle of runs


@pytest.mark.slow
def test_crash_loop_many_kills(tmp_path):
    stats = crash_loop(tmp_path, kills=int(os.environ.get("DOCQA_CRASH_KILLS", 200)), n_files=800, seed=2)
    print(stats)
    assert stats["kills after a commit in that run"] >= stats["kills"] // 4


@pytest.mark.slow
def test_crash_loop_real_model(tmp_path):
    """The real `python -m docqa ingest` (model loaded each time), killed at random moments."""
    stats = crash_loop(
        tmp_path, kills=int(os.environ.get("DOCQA_CRASH_KILLS_REAL", 20)), n_files=300, seed=3, real=True
    )
    print(stats)
    assert stats["kills after a commit in that run"] >= 1 or stats["kills"] < 10


@pytest.mark.parametrize(
    "point",
    ["faiss_partial:3", "faiss_written:3", "manifest:3", "manifest_written:3", "faiss_written:1", "manifest:1"],
)
def test_kill_at_each_commit_step(tmp_path, point):
    """A kill pinned to each step of the commit protocol (N=1 is the knowledge base's creation)."""
    corpus = Corpus(tmp_path / "docs", 1100, seed=4, max_words=40)  # one chunk per file: commits of 512
    kb = tmp_path / "kb"
    r = subprocess.run(
        [PY, str(FAKE), "ingest", corpus.root, "--index", kb],
        capture_output=True,
        text=True,
        env={**ENV, "DOCQA_TEST_CRASH": point},
        timeout=120,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    committed = r.stderr.count("committed ")
    n = corpus.check(kb)
    step, nth = point.split(":")
    if nth == "3":  # the 2nd ingest commit (the 1st was creation)
        # before the SQLite commit the batch is lost; from the SQLite commit on it is kept
        assert n == (512 if step in ("faiss_partial", "faiss_written") else 1024), (n, committed)
    leftovers = sorted(p.name for p in kb.glob("vectors.*"))
    r = docqa("ingest", corpus.root, "--index", kb)
    assert r.returncode == 0, r.stderr[-2000:]
    corpus.check(kb, complete=True)
    with KnowledgeBase.open(kb) as k:
        assert k.verify() == []
        gen = k.generation
    # orphans of the crash are gone; only the current generation and the one before are kept
    assert sorted(p.name for p in kb.glob("vectors.*")) == [f"vectors.{gen - 1}.faiss", f"vectors.{gen}.faiss"], (
        leftovers
    )


# ---------------------------------------------------------------------------------------------- verify / rebuild


DIM = 8


def _small_kb(path: Path) -> Path:
    rng = np.random.default_rng(0)
    from docqa.documents import Chunk

    with KnowledgeBase.open(path, create=True, writable=True, embed_model="m", dim=DIM) as kb:
        for d in range(3):
            texts = [f"doc{d} chunk{i} words about kernel{d}" for i in range(4)]
            chunks = [Chunk(text=t, start=i * 50, end=i * 50 + len(t), ordinal=i) for i, t in enumerate(texts)]
            v = rng.normal(size=(4, DIM)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            with kb.batch() as b:
                b.put_document(DocumentInfo(path=f"/d/{d}.txt", sha256="x"), chunks, v)
    return path


def _errors(path: Path) -> list[str]:
    with KnowledgeBase.open(path, validate=False) as kb:
        return [m for level, m in kb.verify() if level == "error"]


def _raw(path: Path, *sql: str) -> None:
    c = sqlite3.connect(path / DB_NAME, isolation_level=None)
    for q in sql:
        c.execute(q)
    c.close()


def _rebuild(path: Path) -> dict:
    with KnowledgeBase.open(path, writable=True, validate=False) as kb:
        return kb.rebuild()


def test_verify_faiss_ids_differ_from_chunk_rows(tmp_path):
    kb = _small_kb(tmp_path / "kb")
    _raw(kb, "DELETE FROM chunks WHERE id = 2")  # behind the store's back: FAISS and BM25 still know chunk 2
    errs = _errors(kb)
    assert any("FAISS index holds 12 vectors, the database 11 chunks (1 unknown ids, 0 missing)" in e for e in errs)
    assert any("lexical index covers 12 chunks" in e for e in errs)
    assert any("1 documents have a chunk count" in e for e in errs)
    # rebuild repairs the indexes; the lost row itself cannot come back, and verify keeps saying so
    assert _rebuild(kb)["chunks"] == 11
    assert _errors(kb) == ["1 documents have a chunk count that does not match their chunks (a partial document)"]


def test_verify_lexical_mismatch_and_rebuild(tmp_path):
    kb = _small_kb(tmp_path / "kb")
    _raw(kb, "DELETE FROM lex_docs WHERE chunk_id IN (3, 4)")
    assert _errors(kb) == [
        "lexical index covers 10 chunks, the database has 12; run `docqa rebuild` to restore the indexes from the "
        "database (or `docqa verify` for details)"
    ]
    _rebuild(kb)
    assert _errors(kb) == []
    with KnowledgeBase.open(kb) as k, k.snapshot():
        assert [cid for cid, _ in k.lexical.search("chunk3 kernel0", 1)] == [4]


def test_verify_wrong_vector_size(tmp_path):
    kb = _small_kb(tmp_path / "kb")
    _raw(kb, "UPDATE chunks SET vector = zeroblob(6) WHERE id = 5")
    assert _errors(kb) == ["1 chunks have a stored vector of the wrong size"]
    with pytest.raises(StoreCorruptError, match="/d/1.txt"):  # names the document to ingest again
        _rebuild(kb)
    assert _errors(kb) == ["1 chunks have a stored vector of the wrong size"]  # a failed rebuild changes nothing


def test_verify_faiss_file_of_another_dimension(tmp_path):
    import zlib

    import faiss

    kb = _small_kb(tmp_path / "kb")
    with KnowledgeBase.open(kb) as k:
        gen = k.generation
    blob = faiss.serialize_index(faiss.IndexIDMap2(faiss.IndexFlatIP(DIM * 2))).tobytes()
    (kb / f"vectors.{gen}.faiss").write_bytes(blob)
    _raw(
        kb,
        f"UPDATE meta SET value = '{len(blob)}' WHERE key = 'faiss_size'",
        f"UPDATE meta SET value = '{zlib.crc32(blob)}' WHERE key = 'faiss_crc32'",
    )
    assert any(f"has dimension {DIM * 2}, expected {DIM}" in e for e in _errors(kb))
    _rebuild(kb)
    assert _errors(kb) == []


# ---------------------------------------------------------------------------------------------- damaged files


@pytest.fixture(scope="module")
def built_kb(tmp_path_factory):
    """A knowledge base built by the CLI (fake embedder), its files, and a baseline search result."""
    root = tmp_path_factory.mktemp("built")
    corpus = Corpus(root / "docs", 150, seed=5)
    kb = root / "kb"
    r = docqa("ingest", corpus.root, "--index", kb)
    assert r.returncode == 0, r.stderr
    r = docqa("search", "f00042txtv0", "--index", kb, "--json", "-k", "3")
    baseline = json.loads(r.stdout)["results"]
    assert baseline[0]["source"].endswith("f00042.txt")
    return kb, baseline


def _damage(path: Path, how: str, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 3]
    elif how == "zero":
        start = rng.randrange(0, max(1, len(data) - 4096))
        data[start : start + 4096] = bytes(len(data[start : start + 4096]))
    elif how == "flip":
        for _ in range(8):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def _copy_kb(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _search_outcome(kb: Path, baseline, exact: bool = True) -> str:
    """Search in a child process (a segfault or hang must not take the test run down); 'ok' or the error line."""
    r = docqa("search", "f00042txtv0", "--index", kb, "--json", "-k", "3", timeout=60)
    assert r.returncode in (0, 1), (r.returncode, r.stderr[-2000:])  # never a signal (segfault) or traceback
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    if r.returncode == 0:
        got = json.loads(r.stdout)["results"]
        if not exact:  # after a rebuild the dense scores come from the float16 copies: same hits, other decimals
            got, baseline = ([(h["chunk_id"], h["text"]) for h in x] for x in (got, baseline))
        assert got == baseline, "damage gave silently different results"
        return "ok"
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


def cli(*args) -> tuple[int, str]:
    """`docqa verify/rebuild/list` in this process (they load no model; the child-process runs above cover the
    entry point): (exit code, stdout + stderr)."""
    from typer.testing import CliRunner

    from docqa.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "1000"})
    return r.exit_code, r.output


@pytest.mark.parametrize("how", ["truncate", "zero", "flip"])
@pytest.mark.parametrize("target", ["faiss", "manifest"])
def test_damaged_index_files_via_cli(tmp_path, built_kb, target, how):
    """FAISS file and manifest: search refuses with a message naming `docqa rebuild`; verify fails; rebuild heals."""
    src, baseline = built_kb
    kb = _copy_kb(src, tmp_path / "kb")
    with KnowledgeBase.open(kb) as k:
        gen = k.generation
    path = kb / (f"vectors.{gen}.faiss" if target == "faiss" else MANIFEST_NAME)
    _damage(path, how, random.Random(hash((target, how)) & 0xFFFF))
    msg = _search_outcome(kb, baseline)
    assert "docqa rebuild" in msg
    rc, out = cli("verify", "--index", kb)
    assert rc == 1 and "docqa rebuild" in out
    rc, out = cli("rebuild", "--index", kb)
    assert rc == 0, out
    assert cli("verify", "--index", kb)[0] == 0
    assert _search_outcome(kb, baseline, exact=False) == "ok"


@pytest.mark.parametrize("how", ["truncate", "zero", "flip"])
def test_damaged_sqlite_via_cli(tmp_path, built_kb, how):
    """The database: a clear error, or (damage in pages search does not read) correct results and a failing verify."""
    src, baseline = built_kb
    kb = _copy_kb(src, tmp_path / "kb")
    if how == "flip":
        # eight random flips may all land in a page's free space, which no check can (or needs to) see, and where
        # they land moves with the stored paths' length (pytest's tmp dirs): flip bytes of stored chunk text
        data = bytearray((kb / DB_NAME).read_bytes())
        rng = random.Random(7)
        spots = [m.start() for m in re.finditer(rb"txtv\d", bytes(data))]
        assert spots, "the corpus markers are not in the database file"
        for i in rng.sample(spots, min(8, len(spots))):
            data[i] ^= 1 << rng.randrange(8)
        (kb / DB_NAME).write_bytes(bytes(data))
    else:
        _damage(kb / DB_NAME, how, random.Random(7))
    outcome = _search_outcome(kb, baseline)
    rc, out = cli("verify", "--index", kb)
    assert rc == 1, (outcome, out)
    if outcome != "ok":
        assert "damaged" in outcome or "malformed" in outcome


def test_bit_flip_in_unread_sqlite_page_is_caught_by_verify(tmp_path, built_kb):
    """SQLite has no page checksums: damage to a page search never reads goes unnoticed until `docqa verify`."""
    src, baseline = built_kb
    kb = _copy_kb(src, tmp_path / "kb")
    c = sqlite3.connect(kb / DB_NAME)
    # the documents(path) index: ingest and listings use it, search never does (it reads chunks_by_document for a
    # hit's adjacent chunks, and documents by id)
    (root,) = c.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_documents_1'").fetchone()
    (page_size,) = c.execute("PRAGMA page_size").fetchone()
    c.close()
    with open(kb / DB_NAME, "r+b") as f:  # the index's b-tree page type byte: 0x0a/0x02 -> garbage
        f.seek((root - 1) * page_size)
        b = f.read(1)[0]
        f.seek((root - 1) * page_size)
        f.write(bytes([b ^ 0x41]))
    assert _search_outcome(kb, baseline) == "ok"  # search is not affected...
    r = docqa("verify", "--index", kb, "--json", real=True, timeout=60)
    assert r.returncode == 1  # ...but verify's integrity check sees it
    assert "malformed" in json.loads(r.stdout)["problems"][0]["message"], r.stdout


@pytest.fixture(scope="module")
def kb_with_wal(tmp_path_factory):
    """A knowledge base whose last commit is still only in kb.sqlite-wal (its writer was killed before a
    checkpoint), with its corpus; copied by each test."""
    root = tmp_path_factory.mktemp("wal")
    Corpus(root / "docs", 600, seed=8, max_words=40)  # one chunk per file: commits of 512 and 88
    kb = root / "kb"
    r = subprocess.run(
        [PY, str(FAKE), "ingest", root / "docs", "--index", kb],
        capture_output=True,
        text=True,
        env={**ENV, "DOCQA_TEST_CRASH": "manifest_written:3"},
        timeout=120,
    )
    assert r.returncode == -signal.SIGKILL
    assert (kb / (DB_NAME + "-wal")).stat().st_size > 0
    return root


@pytest.mark.parametrize("how", ["truncate", "zero", "flip"])
def test_damaged_wal_via_cli(tmp_path, kb_with_wal, how):
    """A damaged WAL: SQLite drops the frames from the damage on, i.e. whole commits. The knowledge base then reads
    as an older commit, which the manifest (written after the lost commit) gives away; nothing is half-read."""
    import shutil

    shutil.copytree(kb_with_wal, tmp_path / "w")
    kb = tmp_path / "w" / "kb"
    _damage(kb / (DB_NAME + "-wal"), how, random.Random(9))
    s = docqa("search", "kernel", "--index", kb, "--json", timeout=60)
    assert s.returncode in (0, 1) and "Traceback" not in s.stderr, s.stderr[-2000:]
    rc, out = cli("verify", "--index", kb, "--json")
    report = json.loads(out)
    if s.returncode == 1:
        assert "docqa rebuild" in s.stderr or "damaged" in s.stderr, s.stderr
        assert rc == 1, out
        assert cli("rebuild", "--index", kb)[0] == 0
    else:  # the damage hit nothing that mattered: both commits are there
        assert rc == 0 and report["chunks"] == 600, out
    # whatever survived is whole, and a re-ingest brings everything back
    r = docqa("ingest", tmp_path / "w" / "docs", "--index", kb)
    assert r.returncode == 0, r.stderr[-2000:]
    with KnowledgeBase.open(kb) as k:
        assert k.verify() == [] and k.chunk_count() == 600
    print(how, "search:", s.stderr.strip() or "ok", "verify:", report)


# ---------------------------------------------------------------------------------------------- concurrency


def test_second_ingest_fails_fast_and_readers_see_only_commits(tmp_path):
    corpus = Corpus(tmp_path / "docs", 1600, seed=10, max_words=40)  # one chunk per file: 4 commits
    kb = tmp_path / "kb"
    writer = subprocess.Popen(
        [PY, str(FAKE), "ingest", corpus.root, "--index", kb],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 60
        while not (kb / MANIFEST_NAME).exists():  # created: from here on every state is a committed one
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.02)

        # a second ingest, with the real model configured, fails before it loads the model
        other = tmp_path / "other"
        other.mkdir()
        (other / "a.txt").write_text("another file")
        t = time.perf_counter()
        r = docqa("ingest", other, "--index", kb, real=True, timeout=60)
        second_ingest_s = time.perf_counter() - t
        assert r.returncode == 1 and f"knowledge base is locked by PID {writer.pid}" in r.stderr, r.stderr
        assert second_ingest_s < 3.0, second_ingest_s  # interpreter start-up included; see the report

        # searches in another process: run the CLI a few times while we read in a loop here
        cli_results: list[subprocess.CompletedProcess] = []
        stop = threading.Event()

        def cli_search() -> None:
            while not stop.is_set():
                cli_results.append(docqa("search", "kernel mount", "--index", kb, "--json", timeout=60))

        th = threading.Thread(target=cli_search)
        th.start()
        generations, reads = set(), 0
        with KnowledgeBase.open(kb) as k:
            while writer.poll() is None:
                with k.snapshot():
                    generations.add(k.generation)
                    counts = dict(k.conn.execute("SELECT document_id, count(*) FROM chunks GROUP BY document_id"))
                    docs = k.documents()
                    assert all(counts.get(d.id, 0) == d.chunks for d in docs)  # whole documents only
                    assert set(counts) == {d.id for d in docs}
                    assert k.index.count() == sum(counts.values()) == k.lexical.count()
                    for cid, _ in k.lexical.search(random.choice(WORDS), 5):
                        assert cid in k.chunks([cid])
                reads += 1
        stop.set()
        th.join(60)
        assert writer.wait() == 0
        assert len(generations) >= 3, generations  # the reads spanned several commits
        assert cli_results and all(x.returncode == 0 for x in cli_results), [x.stderr for x in cli_results][-1:]
        print(
            f"second ingest refused in {second_ingest_s:.2f}s; {reads} snapshot reads over generations "
            f"{sorted(generations)}; {len(cli_results)} CLI searches"
        )
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    corpus.check(kb, complete=True)


# ---------------------------------------------------------------------------------------------- I/O errors


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _put(kb: KnowledgeBase, path: str, n: int = 2, seed: int = 0) -> None:
    from docqa.documents import Chunk

    chunks = [Chunk(text=f"{path} part {i}", start=i * 10, end=i * 10 + 9, ordinal=i) for i in range(n)]
    with kb.batch() as b:
        b.put_document(DocumentInfo(path=path, sha256="x"), chunks, _vecs(n, seed))


class _FailingConn:
    """A connection that fails the statement matching `when` like a full disk does (sqlite3.Connection cannot be
    monkeypatched)."""

    def __init__(self, conn: sqlite3.Connection, when: str):
        self._conn, self._when = conn, when

    def execute(self, sql: str, *args):
        if sql.startswith(self._when):
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def _state(path: Path) -> tuple:
    with KnowledgeBase.open(path) as kb:
        assert not [m for lv, m in kb.verify() if lv == "error"]
        return kb.generation, [(d.path, d.chunks) for d in kb.documents()], kb.chunk_count()


@pytest.mark.parametrize("when", ["COMMIT", "INSERT INTO chunks"])
def test_sqlite_disk_full_keeps_previous_state(tmp_path, when):
    path = tmp_path / "kb"
    with KnowledgeBase.open(path, create=True, writable=True, embed_model="m", dim=DIM) as kb:
        _put(kb, "/d/a.txt")
    before = _state(path)
    with KnowledgeBase.open(path, writable=True) as kb:
        real = kb.conn
        kb.conn = _FailingConn(real, when)  # type: ignore[assignment]
        with pytest.raises(StoreError, match="database or disk is full.*unchanged"):
            _put(kb, "/d/b.txt", seed=1)
        kb.conn = real
        assert not kb.conn.in_transaction
        assert sorted(p.name for p in path.glob("vectors.*")) == ["vectors.0.faiss", "vectors.1.faiss"]
        _put(kb, "/d/c.txt", seed=2)  # the same writer carries on once there is room again
    assert _state(path)[1] == [("/d/a.txt", 2), ("/d/c.txt", 2)]
    assert before[1] == [("/d/a.txt", 2)]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_faiss_rename_error_keeps_previous_state(tmp_path, monkeypatch, err):
    import docqa.store.files as store

    path = tmp_path / "kb"
    with KnowledgeBase.open(path, create=True, writable=True, embed_model="m", dim=DIM) as kb:
        _put(kb, "/d/a.txt")
        real = os.replace

        def failing(src, dst):
            if str(dst).endswith(".faiss"):
                raise OSError(err, os.strerror(err))
            return real(src, dst)

        monkeypatch.setattr(store.os, "replace", failing)
        words = "the disk is full" if err == errno.ENOSPC else "Input/output error"
        with pytest.raises(
            StoreError, match=f"could not write vectors.2.faiss: {words}; the knowledge base is unchanged"
        ):
            _put(kb, "/d/b.txt", seed=1)
        monkeypatch.setattr(store.os, "replace", real)
    assert not list(path.glob("*.tmp")) and not (path / "vectors.2.faiss").exists()
    assert _state(path)[:2] == (1, [("/d/a.txt", 2)])


def test_manifest_write_error_keeps_the_new_state(tmp_path, monkeypatch):
    """The commit point is SQLite's: a manifest that cannot be written only lags, and the next writer fixes it."""
    import docqa.store.files as store

    path = tmp_path / "kb"
    with KnowledgeBase.open(path, create=True, writable=True, embed_model="m", dim=DIM) as kb:
        _put(kb, "/d/a.txt")
        real = store.write_atomic

        def failing(p, data):
            if p.name == MANIFEST_NAME:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(p, data)

        monkeypatch.setattr(store, "write_atomic", failing)
        _put(kb, "/d/b.txt", seed=1)
        monkeypatch.setattr(store, "write_atomic", real)
    with KnowledgeBase.open(path) as kb:  # readers accept a manifest one commit behind
        assert [d.path for d in kb.documents()] == ["/d/a.txt", "/d/b.txt"]
        assert kb.verify() == [
            ("warning", "manifest.json lags one commit behind (interrupted commit; repaired by the next write)")
        ]
    KnowledgeBase.open(path, writable=True).close()
    with KnowledgeBase.open(path) as kb:
        assert kb.verify() == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MB tmpfs (needs root and mount; skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_disk_full_during_ingest(tmp_path, tiny_disk):
    """Ingest into a 3 MB file system until it is full: a clear error, whole documents only, and room made by
    removing files lets the next ingest finish."""
    corpus = Corpus(tmp_path / "docs", 1300, seed=11, max_words=150)
    kb = tiny_disk / "kb"
    r = docqa("ingest", corpus.root, "--index", kb)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "disk is full" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    n = corpus.check(kb)
    assert 0 < n < 1300
    assert docqa("verify", "--index", kb, real=True).returncode == 0
    print(f"disk full after {n} documents: {r.stderr.strip().splitlines()[-1]}")
