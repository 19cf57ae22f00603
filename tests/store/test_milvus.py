"""The Milvus backend (docqa/store/milvus.py): the VectorIndex contract against a `milvus-lite server` (the
cluster's client path; test_vectors.py runs it against a Lite data folder), and knowledge bases on Milvus:
generations, crash recovery, verify, rebuild, one vector per chunk, the shared connection."""

import fcntl
import json
import os
import time

import numpy as np
import pytest
import test_vectors
from storekit import DIM, chunks, new_kb, put, vecs
from test_vectors import (  # noqa: F401 - collected here again, over the server
    test_a_record_mismatch_is_detected,
    test_an_empty_index_finds_nothing,
    test_another_dimension_is_refused,
    test_damaged_data_is_detected_before_parsing,
    test_discard_and_prune,
    test_reconstruct_returns_the_stored_vector,
    test_remove,
    test_save_load_roundtrip,
    test_search_returns_the_nearest_ids_best_first,
)

from docqa.errors import StoreCorruptError, StoreError
from docqa.store import DocumentInfo, KnowledgeBase, store_options
from docqa.store.milvus import ALIVE, MilvusIndex, _ensure_loaded, ids_hash, resolve_uri

pytest.importorskip("milvus_lite")


@pytest.fixture
def backend(milvus_server, monkeypatch):
    """The contract's `backend`, bound to the session's Milvus server (and its damage function to that server)."""
    cls = MilvusIndex.configured(milvus_server)

    def damage(folder, generation):
        name = json.loads((folder / f"vectors.{generation}.milvus").read_text())["milvus_collection"]
        client = cls._client_for(folder)
        client.delete(name, ids=[int(test_vectors.IDS[0])])
        client.flush(name)

    monkeypatch.setitem(test_vectors.DAMAGE, "milvus", damage)
    return cls


def _collection(kb):
    return kb._meta("milvus_collection")


def _rows(kb, flt="id >= 0"):
    """Every row of the knowledge base's collection as {id: (born, died)}, dead and orphan ones included."""
    client = kb.backend._client_for(kb.path)
    _ensure_loaded(client, _collection(kb))  # a reader that has not searched yet has not loaded it
    rows = client.query(_collection(kb), filter=flt, output_fields=["id", "born", "died"], limit=16384)
    return {int(r["id"]): (int(r["born"]), int(r["died"])) for r in rows}


def _chunk_ids(kb):
    return {r[0] for r in kb.conn.execute("SELECT id FROM chunks")}


def test_knowledge_base_on_milvus_lite_holds_one_vector_per_chunk(tmp_path):
    with new_kb(tmp_path / "kb", backend="milvus") as kb:
        put(kb, "/d/a.txt", ["alpha one", "alpha two"], 1)
        put(kb, "/d/b.txt", ["beta one", "beta two", "beta three"], 2)
        kb.remove_documents(["/d/a.txt"])
        assert kb.generation == 3 and (tmp_path / "kb" / "milvus.db").is_dir()
        live = _rows(kb, "born <= 3 and died > 3")
        assert set(live) == _chunk_ids(kb) and len(live) == 3  # one vector per chunk
        assert {i: d for i, (_, d) in _rows(kb).items() if i not in live} == {1: 3, 2: 3}  # still seen by gen 2
        put(kb, "/d/c.txt", ["gamma"], 3)
        assert set(_rows(kb)) == _chunk_ids(kb)  # gone once no kept generation sees them
        assert sorted(p.name for p in (tmp_path / "kb").glob("vectors.*")) == ["vectors.3.milvus", "vectors.4.milvus"]
    with KnowledgeBase.open(tmp_path / "kb") as kb:  # a reader: backend and uri come from the database
        assert kb.backend.name == "milvus" and kb.read_manifest()["milvus_pointer"] == "vectors.4.milvus"
        with kb.snapshot():
            (best, score), *_ = kb.dense_search(vecs(3, 2)[1], 3)
            assert kb.chunks([best])[best].text == "beta two" and score == pytest.approx(1.0, abs=1e-5)
            assert kb.index.count() == 4
        assert kb.verify() == []


def test_generations_are_isolated_and_a_crash_before_the_sqlite_commit_is_undone(tmp_path):
    path = tmp_path / "kb"
    with new_kb(path, backend="milvus") as kb:
        put(kb, "/d/a.txt", ["one", "two"], 1)
        put(kb, "/d/b.txt", ["three"], 2)
        gen, before = kb.generation, _chunk_ids(kb)
        a_ids = sorted(r.id for r in kb.chunks(before).values() if r.source == "/d/a.txt")
        # steps 1 of the commit protocol without step 2, as a crash between them leaves it: Milvus has rows of
        # generation gen+1 (one added, a's two removed); SQLite is still at gen
        index = kb.load_index()
        index.remove(np.array(a_ids))
        index.add(np.array([999]), vecs(1, 9))
        index.save(path, gen + 1)
        assert _rows(kb)[999] == (gen + 1, ALIVE) and all(_rows(kb)[i][1] == gen + 1 for i in a_ids)
    with KnowledgeBase.open(path) as reader:  # a reader sees generation gen exactly
        with reader.snapshot():
            assert reader.index.ids() == before and reader.index.count() == 3
            assert 999 not in [i for i, _ in reader.dense_search(vecs(1, 9)[0], 5)]
    with KnowledgeBase.open(path, writable=True) as kb:  # the writer's start-up: SQLite wins
        assert kb.generation == gen and not (path / f"vectors.{gen + 1}.milvus").exists()
        assert 999 not in _rows(kb) and all(_rows(kb)[i][1] == ALIVE for i in a_ids)
        assert kb.verify() == []
        put(kb, "/d/c.txt", ["four"], 3)  # and commits go on from gen
        assert kb.generation == gen + 1 and set(_rows(kb)) == _chunk_ids(kb)


def test_a_failed_sqlite_commit_discards_the_milvus_rows(tmp_path, monkeypatch):
    with new_kb(tmp_path / "kb", backend="milvus") as kb:
        put(kb, "/d/a.txt", ["one"], 1)
        rows = _rows(kb)
        with pytest.raises(RuntimeError):
            with kb.batch() as b:
                b.put_document(DocumentInfo(path="/d/b.txt"), chunks(["two"]), vecs(1, 2))
                b.remove_document("/d/a.txt")
                raise RuntimeError("interrupted")
        assert _rows(kb) == rows and kb.generation == 1 and kb.verify() == []


def test_verify_finds_a_missing_vector_and_rebuild_repopulates_milvus(tmp_path):
    path = tmp_path / "kb"
    with new_kb(path, backend="milvus") as kb:
        put(kb, "/d/a.txt", ["one", "two", "three"], 1)
        old = _collection(kb)
        client = kb.backend._client_for(path)
        client.delete(old, ids=[min(_chunk_ids(kb))])
        client.flush(old)
    with KnowledgeBase.open(path, validate=False) as kb:
        problems = kb.verify()
        assert problems and "holds 2 vectors" in problems[0][1] and "docqa rebuild" in problems[0][1]
        with pytest.raises(StoreCorruptError):
            with kb.snapshot():
                pass
    with KnowledgeBase.open(path, writable=True, validate=False) as kb:
        assert kb.rebuild() == {"chunks": 3, "generation": 2}
        client = kb.backend._client_for(path)
        assert _collection(kb) != old and old in client.list_collections()  # a fresh one; generation 1 keeps the old
        assert set(_rows(kb)) == _chunk_ids(kb) and kb.verify() == []
        with kb.snapshot():
            assert kb.dense_search(vecs(3, 1)[2], 1)[0][1] == pytest.approx(1.0, abs=1e-3)
        put(kb, "/d/b.txt", ["four"], 2)
        assert old not in client.list_collections()  # no kept generation uses it any more


def test_the_store_settings_choose_the_backend_and_the_uri(tmp_path, milvus_server):
    from docqa.config import Settings

    s = Settings(index=tmp_path / "kb", store="milvus", milvus_uri=milvus_server)
    with KnowledgeBase.open(s.index, create=True, writable=True, embed_model="m", dim=DIM, **store_options(s)) as kb:
        put(kb, "/d/a.txt", ["one", "two"], 1)
        assert not (tmp_path / "kb" / "milvus.db").exists()  # on the server, not in a Lite folder
        assert kb.read_manifest()["milvus_uri"] == milvus_server
    with KnowledgeBase.open(s.index) as kb:  # no settings: the uri recorded at creation
        assert kb.backend.uri == milvus_server and kb.verify() == []
    faiss = Settings(index=tmp_path / "f")
    with KnowledgeBase.open(
        faiss.index, create=True, writable=True, embed_model="m", dim=DIM, **store_options(faiss)
    ) as kb:
        assert kb.backend.name == "faiss"


def test_closing_the_last_knowledge_base_releases_the_lite_folder(tmp_path):
    path = tmp_path / "kb"
    lock = path / "milvus.db" / "LOCK"

    def held() -> bool:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    writer = new_kb(path, backend="milvus")
    reader = KnowledgeBase.open(path)
    writer.close()
    assert held()  # the reader still uses the shared connection
    with reader.snapshot():
        assert reader.index.count() == 0
    reader.close()
    assert not held()  # another process could open it now


def test_lite_paths_and_hashes():
    assert resolve_uri("", tmp := __import__("pathlib").Path("/x")) == "/x/milvus.db"
    assert resolve_uri("http://h:19530", tmp) == "http://h:19530"
    with pytest.raises(StoreError, match="must end in '.db'"):
        resolve_uri("/data/milvus", tmp)
    ids = np.arange(1, 200)
    assert ids_hash(ids) == ids_hash(ids[::-1]) != ids_hash(ids[1:])


# ---------------------------------------------------------------- end to end: the sample corpus on both stores
SAMPLE = __import__("pathlib").Path(__file__).resolve().parents[2] / "corpora" / "sample"
DEV_QA = SAMPLE.parent / "dev_qa.jsonl"
# small files of the sample corpus with dev questions (about 70 chunks: seconds to embed); the slow test takes all
E2E_FILES = ("python-tutorial-venv.html", "python-sorting-howto.txt", "tar.zh-cn.gb18030.txt")


class _CachedEmbedder:
    """The session's embedder, remembering what it encoded: the two ingests below embed the same chunks.
    Everything else (name, dim, kb_name, count_tokens...) is the wrapped embedder's."""

    def __init__(self, inner):
        self._inner, self._memo = inner, {}

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def encode(self, texts, *, batch_size=32):
        todo = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if todo:
            self._memo.update(zip(todo, self._inner.encode(todo, batch_size=batch_size)))
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, self._inner.dim), np.float32)

    def encode_query(self, text):
        return self.encode([text])[0]


def _both_stores(tmp_path, monkeypatch, embedder, paths):
    """Ingest `paths` with store=faiss and with store=milvus (a Lite path given as DOCQA_MILVUS_URI would give
    it); returns both Settings after checking `docqa verify` and one Milvus vector per chunk."""
    from typer.testing import CliRunner

    from docqa.cli import app
    from docqa.config import Settings
    from docqa.ingest import ingest

    lite = tmp_path / "elsewhere" / "vectors.db"
    lite.parent.mkdir()
    faiss = Settings(index=tmp_path / "faiss", sessions_dir=tmp_path / "s")
    milvus = faiss.replace(index=tmp_path / "milvus", store="milvus", milvus_uri=str(lite))
    for s in (faiss, milvus):
        report = ingest(paths, s, embedder=embedder)
        assert report.added == len(paths) and not report.failed, report
    with KnowledgeBase.open(milvus.index, **store_options(milvus)) as kb:
        assert kb.backend.name == "milvus" and lite.is_dir() and not (milvus.index / "milvus.db").exists()
        g = kb.generation
        live = _rows(kb, f"born <= {g} and died > {g}")
        assert set(live) == _chunk_ids(kb) and len(live) == kb.chunk_count() > 0  # one vector per chunk
    runner = CliRunner()
    monkeypatch.setenv("DOCQA_STORE", "milvus")
    monkeypatch.setenv("DOCQA_MILVUS_URI", str(lite))
    for s in (faiss, milvus):
        r = runner.invoke(app, ["verify", "--index", str(s.index), "--json"], catch_exceptions=False)
        assert r.exit_code == 0 and json.loads(r.stdout)["healthy"], r.output
    return faiss, milvus


def _top5_overlap(faiss, milvus, embedder, names) -> tuple[float, int]:
    from docqa.retrieve import Retriever

    questions = [q for q in map(json.loads, DEV_QA.read_text(encoding="utf-8").splitlines()) if q["source"] in names]
    overlaps = []
    retrievers = [Retriever(KnowledgeBase.open(s.index, **store_options(s)), embedder, s) for s in (faiss, milvus)]
    try:
        for q in questions:
            a, b = ({(h.source, h.text) for h in r.search(q["question"], k=5)} for r in retrievers)
            overlaps.append(len(a & b) / max(len(a), 1))
    finally:
        for r in retrievers:
            r.kb.close()
    return sum(overlaps) / len(overlaps), len(overlaps)


def test_sample_files_give_the_same_top5_on_faiss_and_milvus(tmp_path, monkeypatch):
    # the hashing stand-in for the model (tests/fakeembed.py): seconds instead of half a minute on a busy machine;
    # what is compared is the stores, which see the same vectors either way (the slow test below uses the model)
    from fakeembed import HashEmbedder

    cached = _CachedEmbedder(HashEmbedder())
    faiss, milvus = _both_stores(tmp_path, monkeypatch, cached, [SAMPLE / n for n in E2E_FILES])
    overlap, n = _top5_overlap(faiss, milvus, cached, set(E2E_FILES))
    assert n >= 10 and overlap >= 0.8, (overlap, n)


@pytest.mark.slow
def test_sample_files_give_the_same_top5_with_the_real_model(tmp_path, monkeypatch, embedder):
    cached = _CachedEmbedder(embedder)
    faiss, milvus = _both_stores(tmp_path, monkeypatch, cached, [SAMPLE / n for n in E2E_FILES])
    overlap, n = _top5_overlap(faiss, milvus, cached, set(E2E_FILES))
    assert n >= 10 and overlap >= 0.8, (overlap, n)


@pytest.mark.slow
def test_the_whole_sample_corpus_gives_the_same_top5_on_faiss_and_milvus(tmp_path, monkeypatch, embedder):
    cached = _CachedEmbedder(embedder)
    faiss, milvus = _both_stores(tmp_path, monkeypatch, cached, [SAMPLE])
    overlap, n = _top5_overlap(faiss, milvus, cached, {p.name for p in SAMPLE.iterdir()})
    assert n >= 50 and overlap >= 0.8, (overlap, n)


@pytest.mark.slow
def test_a_second_process_on_the_same_lite_folder_is_told_why(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "kb"
    kb = new_kb(path, backend="milvus")
    cmd = [sys.executable, "-m", "docqa", "verify", "--index", str(path)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "one process at a time" in r.stderr and "milvus_uri" in r.stderr
    finally:
        kb.close()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_verify_compares_every_id_not_only_the_count(tmp_path):
    with new_kb(tmp_path / "kb", backend="milvus") as kb:
        put(kb, "/d/a.txt", ["one", "two"], 1)
        name, g = _collection(kb), kb.generation
        client = kb.backend._client_for(kb.path)
        gone = min(_chunk_ids(kb))
        client.delete(name, ids=[gone])  # the same count, another id: only the id check can tell
        client.insert(name, [{"id": 777, "vector": vecs(1)[0].tolist(), "born": g, "died": ALIVE}])
        client.flush(name)
        (level, msg), *_ = kb.verify()
        assert level == "error" and msg.startswith("Milvus collection holds 2 vectors, the database 2 chunks")
        assert "(1 unknown ids, 1 missing)" in msg


@pytest.mark.slow
def test_sigkilled_ingests_on_milvus_lite_leave_whole_documents(tmp_path):
    """Real `docqa ingest` processes (tests/fakeembed.py: the hashing embedder) on a Milvus Lite store, SIGKILLed
    at random moments of their run; after each kill every document is whole or absent, `verify` is clean and
    search works (test_reliability's Corpus checks), and the next ingest completes the job."""
    import random
    import signal
    import subprocess

    from test_reliability import ENV, FAKE, PY, Corpus

    corpus = Corpus(tmp_path / "docs", 400, seed=7, max_words=1250)
    kb = tmp_path / "kb"
    cmd = [PY, str(FAKE), "ingest", str(corpus.root), "--index", str(kb)]
    env = {**ENV, "DOCQA_STORE": "milvus"}
    t0 = time.monotonic()
    assert subprocess.run(cmd, capture_output=True, env=env, timeout=600).returncode == 0
    took = time.monotonic() - t0  # a whole run: the kills land within one
    corpus.check(kb, complete=True)
    rng, after_commit = random.Random(7), 0
    for _ in range(int(os.environ.get("DOCQA_CRASH_KILLS", 10))):
        corpus.mutate()
        log = tmp_path / "ingest.log"
        with open(log, "w") as err:
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
            try:
                p.wait(timeout=rng.uniform(0.5, 1.5) * took)  # some runs finish, most die part-way
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
        after_commit += p.returncode == -signal.SIGKILL and "committed " in log.read_text(errors="replace")
        corpus.check(kb)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    corpus.check(kb, complete=True)
    with KnowledgeBase.open(kb) as k:
        assert k.backend.name == "milvus" and k.verify() == []
    assert after_commit >= 2  # kills landed between commits, not only during start-up


def test_docqa_serve_creates_ingests_and_searches_a_milvus_knowledge_base(tmp_path):
    pytest.importorskip("fastapi")
    from conftest import EN_VENV, ZH_TAR
    from fakeembed import HashEmbedder
    from fastapi.testclient import TestClient

    from docqa.config import Settings
    from docqa.server.app import create_app
    from docqa.server.state import ServerConfig

    root = tmp_path / "indexes"
    root.mkdir()
    settings = Settings(index=root / "m", store="milvus", llm="extractive", sessions_dir=tmp_path / "sessions")
    cfg = ServerConfig(settings=settings, root=root, allowed_hosts=["testserver"])
    with TestClient(create_app(cfg, embedder=HashEmbedder())) as c:
        assert c.post("/api/v1/kbs", json={"name": "m"}).status_code == 201
        files = [
            ("files", ("tar.txt", ZH_TAR.encode(), "text/plain")),
            ("files", ("venv.md", EN_VENV.encode(), "text/markdown")),
        ]
        job_id = c.post("/api/v1/kbs/m/documents", files=files).json()["job_id"]
        for _ in range(600):
            job = c.get(f"/api/v1/jobs/{job_id}").json()
            if job["status"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.1)
        assert job["status"] == "done", job
        hits = c.post("/api/v1/search", json={"query": "tar 解压 归档", "kb_ids": ["m"], "k": 2}).json()["results"]
        assert hits and hits[0]["source"].endswith("tar.txt")
    with KnowledgeBase.open(root / "m") as kb:  # the server let go of the Lite folder
        assert kb.backend.name == "milvus" and (root / "m" / "milvus.db").is_dir()
        assert kb.chunk_count() > 0 and kb.verify() == []
