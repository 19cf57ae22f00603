"""FAISS index kinds by size (docqa/store/faiss.py): approximate recall against exact search, the size-class
switch inside the knowledge base's commits, crash safety of the new kinds, `measure_recall` / `verify --recall`.

Small sizes (a few thousand 32-d vectors) with the kind forced (`ann=`) or the class thresholds lowered, so each
index trains in well under a second.
"""

import errno
import json

import numpy as np
import pytest

import docqa.store.faiss as F
from docqa.documents import Chunk
from docqa.errors import StoreError
from docqa.store import DocumentInfo, KnowledgeBase
from docqa.store.faiss import FaissIndex, choose
from docqa.store.maintenance import RecallReport, measure_recall

D = 32


@pytest.fixture(autouse=True)
def one_thread():
    """FAISS's OpenMP teams crawl on shared, busy cores (HNSW build 10x slower on two threads than one here)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n, seed=0, centres=40):
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).normal(size=(centres, D))
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.normal(size=(n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def source(ids, vecs, step=500):
    return lambda: ((ids[i : i + step], vecs[i : i + step]) for i in range(0, len(ids), step))


def exact_top(vecs, ids, q, k=10):
    return [set(ids[np.argsort(-(vecs @ row))[:k]].tolist()) for row in q]


def recall(index, vecs, ids, q, k=10):
    truth = exact_top(vecs, ids, q, k)
    return np.mean([len(t & {i for i, _ in index.search(row, k)}) / k for row, t in zip(q, truth)])


@pytest.mark.parametrize(("ann", "floor"), [("ivf", 0.9), ("hnsw", 0.9), ("ivfpq", 0.5)])
def test_approximate_index_recall_against_exact(ann, floor):
    n = 3000
    ids = np.arange(1, n + 1, dtype=np.int64) * 7  # ids are chunk ids, not positions
    vecs = clustered(n)
    spec = choose(n, ann, D)
    if ann == "ivfpq":
        spec["nbits"] = 6  # 64 codes per sub-quantiser instead of 256: a fifth of the training time
    index = FaissIndex.build(spec, D, source(ids, vecs), n)
    assert index.params["kind"] == ann and index.count() == n and index.ids() == set(ids.tolist())
    q = clustered(50, seed=5)
    r = recall(index, vecs, ids, q)
    assert r >= floor, r
    flat = FaissIndex.build({"kind": "flat"}, D, source(ids, vecs), n)
    assert recall(flat, vecs, ids, q) == pytest.approx(1.0)
    # removal and reconstruction by chunk id work for every kind
    index.remove(ids[:100])
    assert index.count() == n - 100 and not index.ids() & set(ids[:100].tolist())
    assert not {i for row in q for i, _ in index.search(row, 10)} & set(ids[:100].tolist())
    with pytest.raises(KeyError):
        index.reconstruct(int(ids[0]))
    assert np.dot(index.reconstruct(int(ids[500])), vecs[500]) > (0.99 if ann != "ivfpq" else 0.8)


def test_choose_by_size_with_hysteresis():
    assert choose(50_000, "auto", 384) == {"kind": "flat"}
    ivf = choose(1_000_000, "auto", 384)
    assert ivf["kind"] == "ivf" and ivf["nlist"] == 2048 and ivf["nprobe"] >= 32
    assert choose(9_000_000, "auto", 384)["kind"] == "ivfpq"
    assert choose(1_000_000, "flat", 384) == {"kind": "flat"}
    assert choose(F.FLAT_MAX - 1, "auto", 384, current=ivf)["kind"] == "ivf"  # no flip-flop at the boundary
    assert choose(F.FLAT_MIN - 1, "auto", 384, current=ivf) == {"kind": "flat"}
    assert choose(1_400_000, "auto", 384, current=ivf)["nlist"] == 2048  # within 2^0.75: keep the trained lists
    assert choose(4_000_000 - 1, "auto", 384, current=ivf)["nlist"] == 4096
    with pytest.raises(StoreError, match="unknown ann"):
        choose(10, "annoy", 384)


def _kb(path, **kw):
    return KnowledgeBase.open(path, create=True, writable=True, embed_model="m", dim=D, **kw)


def _put(kb, name, vecs):
    chunks = [Chunk(text=f"chunk {i} of {name}", start=i, end=i + 1, ordinal=i) for i in range(len(vecs))]
    with kb.batch() as b:
        b.put_document(DocumentInfo(path=name, sha256="x"), chunks, vecs)


def _record(kb):
    return json.loads(kb._meta("faiss_index"))


@pytest.fixture
def small_classes(monkeypatch):
    monkeypatch.setattr(F, "FLAT_MAX", 1200)
    monkeypatch.setattr(F, "FLAT_MIN", 900)


def test_size_class_switch_trains_once_and_adds_incrementally(tmp_path, small_classes):
    path = tmp_path / "kb"
    vecs = clustered(2600)
    with _kb(path) as kb:
        _put(kb, "/d/0", vecs[:800])
        _put(kb, "/d/00", vecs[800:1000])
        assert kb.index.params == {"kind": "flat"} and _record(kb) == {"kind": "flat"}
        _put(kb, "/d/1", vecs[1000:1300])  # crosses FLAT_MAX: trained from the vectors kept in SQLite
        p = kb.index.params
        assert p["kind"] == "ivf" and p["trained"] == 1300 and _record(kb) == p
        assert kb.read_manifest()["faiss_index"] == p
        for i in range(3):  # small commits add to the trained lists: no retraining
            _put(kb, f"/d/more{i}", vecs[1300 + 20 * i : 1320 + 20 * i])
        assert kb.index.params["trained"] == 1300 and kb.index.count() == 1360
        assert kb.verify() == []
        q = clustered(30, seed=3)
        all_ids = np.array(sorted(kb.index.ids()))
        stored = np.concatenate([v for _, v in kb.iter_vectors()])
        with kb.snapshot():
            assert recall(kb.index, stored / np.linalg.norm(stored, axis=1, keepdims=True), all_ids, q) >= 0.9
        kb.remove_documents(["/d/1", "/d/more0", "/d/more1", "/d/more2"])  # 1000: above FLAT_MIN, still ivf
        assert kb.index.params["kind"] == "ivf" and kb.index.count() == 1000
        kb.remove_documents(["/d/00"])  # below FLAT_MIN: flat again
        assert kb.index.params == {"kind": "flat"} and kb.index.count() == 800
    with KnowledgeBase.open(path) as kb:  # a reader loads what the last commit recorded
        assert kb.index.params == {"kind": "flat"} and kb.verify() == [] and kb.ann == "auto"
        assert kb.read_manifest()["faiss_index"] == {"kind": "flat"}


def test_the_ann_setting_forces_a_kind_and_is_recorded(tmp_path):
    path = tmp_path / "kb"
    with _kb(path, ann="hnsw") as kb:
        _put(kb, "/d/a", clustered(300))
        assert kb.index.params["kind"] == "hnsw"
    with KnowledgeBase.open(path, writable=True) as kb:  # a writer given no ann keeps the recorded one
        _put(kb, "/d/b", clustered(50, seed=1))
        assert kb.ann == "hnsw" and kb.index.params["kind"] == "hnsw"
        kb.remove_documents(["/d/b"])
        assert kb.index.count() == 300 and kb.verify() == []
    with KnowledgeBase.open(path, writable=True, ann="flat") as kb:
        _put(kb, "/d/c", clustered(10, seed=2))
        assert kb.index.params == {"kind": "flat"} and kb.index.count() == 310 and kb.verify() == []


def test_hnsw_removal_survives_reload_and_many_removals_rebuild(tmp_path):
    path = tmp_path / "kb"
    with _kb(path, ann="hnsw") as kb:
        for i in range(10):
            _put(kb, f"/d/{i}", clustered(40, seed=i))
        kb.remove_documents(["/d/3"])  # 40 of 400 dead: kept as -1 entries
        assert kb.index.count() == 360 and kb.index._index.ntotal == 400
    with KnowledgeBase.open(path, writable=True) as kb:
        gone = {r[0] for r in kb.conn.execute("SELECT id FROM chunks")} ^ kb.index.ids()
        assert not gone and kb.index.count() == 360 and kb.verify() == []
        kb.remove_documents(["/d/4"])  # now 80 of 400 dead (> 10%): rebuilt from the stored vectors
        assert kb.index.count() == kb.index._index.ntotal == 320 and kb.verify() == []


def test_a_failed_save_after_a_class_switch_leaves_the_previous_generation(tmp_path, small_classes, monkeypatch):
    import docqa.store.files as files

    path = tmp_path / "kb"
    vecs = clustered(1500)
    with _kb(path) as kb:
        _put(kb, "/d/0", vecs[:1000])
        gen = kb.generation
        real = files.write_atomic

        def full(p, data):
            if p.name.endswith(".faiss"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(p, data)

        monkeypatch.setattr(files, "write_atomic", full)
        with pytest.raises(StoreError, match="disk is full.*unchanged"):
            _put(kb, "/d/1", vecs[1000:])  # would switch to ivf
        monkeypatch.setattr(files, "write_atomic", real)
        assert kb.generation == gen and kb.index.params == {"kind": "flat"} and kb.index.count() == 1000
        _put(kb, "/d/1", vecs[1000:])  # the same writer carries on
        assert kb.index.params["kind"] == "ivf" and kb.generation == gen + 1
    with KnowledgeBase.open(path) as kb:
        assert kb.verify() == [] and kb.index.count() == 1500


def test_a_crash_between_save_and_commit_of_a_new_kind_is_recovered(tmp_path, small_classes, monkeypatch):
    """Killed after step 1 (the ivf file is written) and before step 2 (the SQLite commit)."""
    path = tmp_path / "kb"
    vecs = clustered(1500)
    with _kb(path) as kb:
        _put(kb, "/d/0", vecs[:1000])
        gen = kb.generation
        real = FaissIndex.save

        def save_then_die(self, folder, generation):
            real(self, folder, generation)
            raise KeyboardInterrupt  # as far as SQLite is concerned, the process died here

        monkeypatch.setattr(FaissIndex, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            _put(kb, "/d/1", vecs[1000:])
        monkeypatch.setattr(FaissIndex, "save", real)
    assert (path / f"vectors.{gen + 1}.faiss").exists()  # the orphan of the interrupted commit
    with KnowledgeBase.open(path, writable=True) as kb:  # the next writer drops it; the old state is intact
        assert not (path / f"vectors.{gen + 1}.faiss").exists()
        assert kb.generation == gen and kb.index.params == {"kind": "flat"} and kb.verify() == []
        _put(kb, "/d/1", vecs[1000:])
        assert kb.index.params["kind"] == "ivf" and kb.verify() == []


def test_measure_recall_and_verify_recall_output(tmp_path, small_classes):
    from typer.testing import CliRunner

    from docqa.cli import app

    path = tmp_path / "kb"
    with _kb(path) as kb:
        _put(kb, "/d/0", clustered(1500))
    with KnowledgeBase.open(path) as kb:
        r = measure_recall(kb, queries=60)
    assert isinstance(r, RecallReport) and r.kind == "ivf" and r.queries == 60 and r.chunks == 1500
    assert 0.9 <= r.recall <= 1.0 and r.params["nlist"] > 1 and r.index_ms > 0
    res = CliRunner().invoke(app, ["verify", "--index", str(path), "--recall"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("recall@10"))
    assert float(line.split()[1].rstrip(":")) >= 0.9 and "ivf index" in line
    res = CliRunner().invoke(app, ["verify", "--index", str(path), "--recall", "--json"], catch_exceptions=False)
    body = json.loads(res.stdout)
    assert body["healthy"] and body["recall"]["kind"] == "ivf" and body["recall"]["recall"] >= 0.9
    res = CliRunner().invoke(app, ["verify", "--index", str(path), "--json"], catch_exceptions=False)
    assert "recall" not in json.loads(res.stdout)  # only when asked: it reads every stored vector
