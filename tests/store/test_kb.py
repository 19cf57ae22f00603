"""KnowledgeBase (docqa/store/kb.py, reader.py, batch.py): commits, generations, rollback, reads, recovery."""

import json

import numpy as np
import pytest
from storekit import DIM, chunks, new_kb, put, vecs

from docqa.errors import ModelMismatchError, StoreError
from docqa.store import DocumentInfo, KnowledgeBase


def test_roundtrip_and_stable_ids(tmp_path):
    with new_kb(tmp_path / "kb") as kb:
        put(kb, "/d/a.txt", ["alpha one", "alpha two"], 1)
        put(kb, "/d/b.txt", ["beta one", "beta two", "beta three"], 2)
        ids_b = sorted(r.id for r in kb.chunks(range(100)).values() if r.source == "/d/b.txt")
        kb.remove_documents(["/d/a.txt"])
        assert kb.generation == 3
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        with kb.snapshot():
            assert kb.index.count() == 3
            rows = kb.chunks(ids_b)
            assert sorted(rows) == ids_b  # removing a never renumbers the others
            v = vecs(3, 2)[1]
            (best, score), *_ = kb.dense_search(v, 3)
            assert rows[best].text == "beta two" and score == pytest.approx(1.0, abs=1e-5)
            assert [r.text for r in kb.neighbours(rows[best].document_id, [0, 2]).values()] == [
                "beta one",
                "beta three",
            ]
        assert [d.path for d in kb.documents()] == ["/d/b.txt"]
        assert kb.verify() == []


def test_replacing_a_document_leaves_no_duplicates(tmp_path):
    with new_kb(tmp_path / "kb") as kb:
        put(kb, "/d/a.txt", ["one", "two"])
        put(kb, "/d/a.txt", ["uno", "dos", "tres"], 5)
        assert kb.chunk_count() == 3 and kb.index.count() == 3
        assert kb.documents()[0].chunks == 3
        assert kb.verify() == []


def test_put_and_replace_in_one_batch_keeps_the_last(tmp_path):
    with new_kb(tmp_path / "kb") as kb:
        with kb.batch() as b:
            b.put_document(DocumentInfo(path="/d/a.txt"), chunks(["first"]), vecs(1))
            b.put_document(DocumentInfo(path="/d/a.txt"), chunks(["second"]), vecs(1, 1))
        assert [r.text for r in kb.chunks(range(10)).values()] == ["second"]
        assert [c for c, _ in kb.lexical.search("first", 5)] == []
        assert kb.verify() == []


def test_failed_batch_rolls_back_everything(tmp_path):
    with new_kb(tmp_path / "kb") as kb:
        put(kb, "/d/a.txt", ["one"])
        with pytest.raises(RuntimeError):
            with kb.batch() as b:
                b.put_document(DocumentInfo(path="/d/b.txt"), chunks(["two"]), vecs(1))
                raise RuntimeError("boom")
        assert [d.path for d in kb.documents()] == ["/d/a.txt"]
        assert kb.index.count() == 1 and kb.generation == 1
        assert kb.verify() == []


def test_a_batch_that_only_touches_mtimes_writes_no_generation(tmp_path):
    with new_kb(tmp_path / "kb") as kb:
        put(kb, "/d/a.txt", ["one"])
        with kb.batch() as b:
            b.touch_document("/d/a.txt", 123)
        assert kb.generation == 1 and kb.documents()[0].mtime_ns == 123


def test_wrong_dimension_and_read_only_writes_are_refused(tmp_path):
    with new_kb(tmp_path / "kb") as kb:
        with pytest.raises(ModelMismatchError, match="dimension 9"):
            with kb.batch() as b:
                b.put_document(DocumentInfo(path="/d/a.txt"), chunks(["x"]), np.ones((1, 9), np.float32))
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        with pytest.raises(StoreError, match="read-only"):
            kb.remove_documents(["/d/a.txt"])
        with pytest.raises(StoreError, match="read-only"):
            kb.rebuild()


def test_model_mismatch_is_refused(tmp_path):
    new_kb(tmp_path / "kb").close()
    with pytest.raises(ModelMismatchError, match="rebuild|new knowledge base"):
        KnowledgeBase.open(tmp_path / "kb", writable=True, embed_model="other", dim=DIM)


def test_missing_kb_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no knowledge base"):
        KnowledgeBase.open(tmp_path / "nothing")


def test_disk_full_during_commit_keeps_previous_state(tmp_path, monkeypatch):
    import errno

    import docqa.store.files as files

    with new_kb(tmp_path / "kb") as kb:
        put(kb, "/d/a.txt", ["one"])
        real = files.write_atomic

        def full(path, data):
            if path.name.endswith(".faiss"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, data)

        monkeypatch.setattr(files, "write_atomic", full)
        with pytest.raises(StoreError, match="disk is full.*unchanged"):
            put(kb, "/d/b.txt", ["two"])
        monkeypatch.setattr(files, "write_atomic", real)
        put(kb, "/d/c.txt", ["three"])  # the same writer carries on once there is room
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        assert [d.path for d in kb.documents()] == ["/d/a.txt", "/d/c.txt"]
        assert kb.verify() == []


def test_orphan_vector_files_from_a_crash_are_removed_by_the_next_writer(tmp_path):
    path = tmp_path / "kb"
    with new_kb(path) as kb:
        put(kb, "/d/a.txt", ["one"])
        put(kb, "/d/b.txt", ["two"], 1)
        gen = kb.generation
    (path / f"vectors.{gen + 1}.faiss.tmp").write_bytes(b"partial")  # killed while writing commit step 1
    (path / f"vectors.{gen + 1}.faiss").write_bytes(b"uncommitted")  # killed between steps 1 and 2
    (path / "vectors.0.faiss").write_bytes(b"stale")  # killed between steps 3 and 4
    with KnowledgeBase.open(path) as kb:  # readers leave files alone
        assert kb.verify() == [] and (path / f"vectors.{gen + 1}.faiss").exists()
    with KnowledgeBase.open(path, writable=True) as kb:
        assert sorted(p.name for p in path.glob("vectors.*")) == [f"vectors.{gen - 1}.faiss", f"vectors.{gen}.faiss"]
        assert kb.verify() == []


def test_manifest_one_commit_behind_is_tolerated_then_repaired(tmp_path):
    """The crash window between the SQLite commit (step 2) and the manifest write (step 3)."""
    path = tmp_path / "kb"
    with new_kb(path) as kb:
        put(kb, "/d/a.txt", ["one"])
        behind = (path / "manifest.json").read_bytes()  # generation 1's manifest
        put(kb, "/d/b.txt", ["two"], 1)
        gen = kb.generation
    (path / "manifest.json").write_bytes(behind)
    assert json.loads(behind)["generation"] == gen - 1
    with KnowledgeBase.open(path) as kb:  # readers accept it, verify only warns
        assert [d.path for d in kb.documents()] == ["/d/a.txt", "/d/b.txt"]
        assert kb.verify() == [
            ("warning", "manifest.json lags one commit behind (interrupted commit; repaired by the next write)")
        ]
    KnowledgeBase.open(path, writable=True).close()  # the writer's start-up brings it up to date
    assert json.loads((path / "manifest.json").read_bytes())["generation"] == gen
    with KnowledgeBase.open(path) as kb:
        assert kb.verify() == []
