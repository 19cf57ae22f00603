"""The knowledge-base folder: commits, generations, lock, validation, verify and rebuild."""

import json
import multiprocessing as mp
import os

import numpy as np
import pytest

from docqa.documents import Chunk
from docqa.errors import ModelMismatchError, StoreCorruptError, StoreError, StoreLockedError
from docqa.store import DocumentInfo, KnowledgeBase

DIM = 8


def _vecs(n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _chunks(texts):
    return [Chunk(text=t, start=i * 100, end=i * 100 + len(t), ordinal=i, page=i + 1, section="S") for i, t in enumerate(texts)]


def _new(path, **kw):
    return KnowledgeBase.open(path, create=True, writable=True, embed_model="m", dim=DIM, **kw)


def _put(kb, path, texts, seed=0):
    with kb.batch() as b:
        b.put_document(DocumentInfo(path=path, sha256="x"), _chunks(texts), _vecs(len(texts), seed))


def test_roundtrip_and_stable_ids(tmp_path):
    with _new(tmp_path / "kb") as kb:
        _put(kb, "/d/a.txt", ["alpha one", "alpha two"], 1)
        _put(kb, "/d/b.txt", ["beta one", "beta two", "beta three"], 2)
        ids_b = sorted(r.id for r in kb.chunks(range(100)).values() if r.source == "/d/b.txt")
        kb.remove_documents(["/d/a.txt"])
        assert kb.generation == 3
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        with kb.snapshot():
            assert kb.index.ntotal == 3
            rows = kb.chunks(ids_b)
            assert sorted(rows) == ids_b  # removing a never renumbers the others
            v = _vecs(3, 2)[1]
            (best, score), *_ = kb.dense_search(v, 3)
            assert rows[best].text == "beta two" and score == pytest.approx(1.0, abs=1e-5)
        assert [d.path for d in kb.documents()] == ["/d/b.txt"]
        assert kb.verify() == []


def test_replacing_a_document_leaves_no_duplicates(tmp_path):
    with _new(tmp_path / "kb") as kb:
        _put(kb, "/d/a.txt", ["one", "two"])
        _put(kb, "/d/a.txt", ["uno", "dos", "tres"], 5)
        assert kb.chunk_count() == 3 and kb.index.ntotal == 3
        assert kb.documents()[0].chunks == 3
        assert kb.verify() == []


def test_failed_batch_rolls_back_everything(tmp_path):
    with _new(tmp_path / "kb") as kb:
        _put(kb, "/d/a.txt", ["one"])
        with pytest.raises(RuntimeError):
            with kb.batch() as b:
                b.put_document(DocumentInfo(path="/d/b.txt"), _chunks(["two"]), _vecs(1))
                raise RuntimeError("boom")
        assert [d.path for d in kb.documents()] == ["/d/a.txt"]
        assert kb.index.ntotal == 1 and kb.generation == 1
        assert kb.verify() == []


def test_model_mismatch_is_refused(tmp_path):
    _new(tmp_path / "kb").close()
    with pytest.raises(ModelMismatchError, match="rebuild|new knowledge base"):
        KnowledgeBase.open(tmp_path / "kb", writable=True, embed_model="other", dim=DIM)


def test_missing_kb_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no knowledge base"):
        KnowledgeBase.open(tmp_path / "nothing")


def _hold_lock(path, ready, release):
    kb = KnowledgeBase.open(path, writable=True)
    ready.set()
    release.wait(10)
    kb.close()


def test_second_writer_fails_fast_with_pid(tmp_path):
    _new(tmp_path / "kb").close()
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(tmp_path / "kb", ready, release))
    p.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StoreLockedError, match=f"locked by PID {p.pid}"):
            KnowledgeBase.open(tmp_path / "kb", writable=True)
        # readers are not blocked by the writer
        with KnowledgeBase.open(tmp_path / "kb") as kb:
            assert kb.documents() == []
    finally:
        release.set()
        p.join(10)
    KnowledgeBase.open(tmp_path / "kb", writable=True).close()  # released on exit


@pytest.mark.parametrize("damage", ["truncate", "zero", "flip"])
def test_damaged_faiss_is_detected_and_rebuilt(tmp_path, damage):
    with _new(tmp_path / "kb") as kb:
        _put(kb, "/d/a.txt", ["one", "two", "three"])
        faiss_file = tmp_path / "kb" / f"vectors.{kb.generation}.faiss"
    data = bytearray(faiss_file.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "zero":
        data[: min(64, len(data))] = bytes(min(64, len(data)))
    else:
        data[len(data) // 2] ^= 0x10
    faiss_file.write_bytes(bytes(data))
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        with pytest.raises(StoreCorruptError, match="docqa rebuild"):
            with kb.snapshot():
                pass
        assert any(level == "error" for level, _ in kb.verify())
    with KnowledgeBase.open(tmp_path / "kb", writable=True, validate=False) as kb:
        assert kb.rebuild()["chunks"] == 3
        assert kb.verify() == []
        with kb.snapshot():
            assert kb.dense_search(_vecs(3)[2], 1)[0][0] in kb.chunks(range(10))
            assert kb.lexical.search("three", 3)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_manifest_is_detected(tmp_path, damage):
    _new(tmp_path / "kb").close()
    m = tmp_path / "kb" / "manifest.json"
    raw = m.read_bytes()
    m.write_bytes({"truncate": raw[:20], "flip": raw.replace(b'"dim": 8', b'"dim": 9'), "garbage": b"\x00\xff"}[damage])
    with pytest.raises(StoreCorruptError, match="docqa rebuild"):
        KnowledgeBase.open(tmp_path / "kb")
    with KnowledgeBase.open(tmp_path / "kb", writable=True, validate=False) as kb:
        kb.rebuild()
    KnowledgeBase.open(tmp_path / "kb").close()


def test_damaged_sqlite_is_a_clear_error(tmp_path):
    _new(tmp_path / "kb").close()
    db = tmp_path / "kb" / "kb.sqlite"
    db.write_bytes(b"\x00" * 4096)
    with pytest.raises(StoreCorruptError, match="damaged"):
        KnowledgeBase.open(tmp_path / "kb")


def test_disk_full_during_commit_keeps_previous_state(tmp_path, monkeypatch):
    import errno

    import docqa.store as store

    with _new(tmp_path / "kb") as kb:
        _put(kb, "/d/a.txt", ["one"])
        real = store.write_atomic

        def full(path, data):
            if path.name.endswith(".faiss"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, data)

        monkeypatch.setattr(store, "write_atomic", full)
        with pytest.raises(StoreError, match="disk is full.*unchanged"):
            _put(kb, "/d/b.txt", ["two"])
        monkeypatch.setattr(store, "write_atomic", real)
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        assert [d.path for d in kb.documents()] == ["/d/a.txt"]
        assert kb.verify() == []


def test_orphan_faiss_from_a_crash_is_removed_and_manifest_lag_tolerated(tmp_path):
    with _new(tmp_path / "kb") as kb:
        _put(kb, "/d/a.txt", ["one"])
        gen = kb.generation
    (tmp_path / "kb" / f"vectors.{gen + 1}.faiss.tmp").write_bytes(b"partial")
    (tmp_path / "kb" / f"vectors.{gen + 1}.faiss").write_bytes(b"uncommitted")
    m = tmp_path / "kb" / "manifest.json"
    body = json.loads(m.read_text())
    with KnowledgeBase.open(tmp_path / "kb", writable=True) as kb:
        assert not (tmp_path / "kb" / f"vectors.{gen + 1}.faiss").exists()
        assert kb.verify() == []
    assert body["generation"] == gen


def test_no_pickle_files(tmp_path):
    with _new(tmp_path / "kb") as kb:
        _put(kb, "/d/a.txt", ["one"])
    for f in (tmp_path / "kb").iterdir():
        assert not f.read_bytes().startswith(b"\x80"), f  # pickle protocol header
    assert os.listdir(tmp_path / "kb")
