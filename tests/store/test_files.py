"""Atomic files and the writer lock (docqa/store/files.py), and what a knowledge-base folder may contain."""

import json
import multiprocessing as mp
import os

import pytest
from storekit import new_kb, put

from docqa.errors import StoreLockedError
from docqa.store import KnowledgeBase
from docqa.store.files import write_atomic


def _hold_lock(path, ready, release):
    kb = KnowledgeBase.open(path, writable=True)
    ready.set()
    release.wait(10)
    kb.close()


def test_second_writer_fails_fast_with_pid(tmp_path):
    new_kb(tmp_path / "kb").close()
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(tmp_path / "kb", ready, release))
    p.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StoreLockedError, match=f"locked by PID {p.pid}"):
            KnowledgeBase.open(tmp_path / "kb", writable=True)
        with pytest.raises(StoreLockedError, match=f"locked by PID {p.pid}"):
            KnowledgeBase.check_unlocked(tmp_path / "kb")
        # readers are not blocked by the writer
        with KnowledgeBase.open(tmp_path / "kb") as kb:
            assert kb.documents() == []
    finally:
        release.set()
        p.join(10)
    KnowledgeBase.check_unlocked(tmp_path / "kb")
    KnowledgeBase.open(tmp_path / "kb", writable=True).close()  # released on exit
    assert (tmp_path / "kb" / "lock").read_bytes() == b""  # and the PID is cleared


def test_write_atomic_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    p = tmp_path / "f"
    write_atomic(p, b"old")

    def failing(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        write_atomic(p, b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    write_atomic(p, b"new")
    assert p.read_bytes() == b"new" and not (tmp_path / "f.tmp").exists()


def _kind(p) -> str | None:
    """The format of a knowledge-base file from its first bytes, or None when unknown."""
    head = p.read_bytes()[:16]
    if p.name == "kb.sqlite":
        return "sqlite" if head == b"SQLite format 3\x00" else None
    if p.name == "kb.sqlite-wal":
        return "sqlite-wal" if head[:4] in (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83") else None
    if p.name == "kb.sqlite-shm":
        return "sqlite-shm"  # the WAL index: no magic, rebuilt by SQLite from the WAL
    if p.name.startswith("vectors.") and p.name.endswith(".faiss"):
        return "faiss" if head[:4] == b"IxM2" else None  # IndexIDMap2's fourcc: faiss.serialize_index, not pickle
    if p.name == "manifest.json":
        return "json" if "checksum" in json.loads(p.read_bytes()) else None
    if p.name == "lock":
        return "pid" if p.read_bytes().decode().isdigit() or not p.read_bytes() else None
    return None


def test_a_kb_folder_holds_only_known_formats_and_no_pickle(tmp_path):
    """Every file is one of the formats the store writes, identified by its magic bytes: a pickle (which runs code
    when loaded), or any file nobody declared, fails this test."""
    path = tmp_path / "kb"
    with new_kb(path) as kb:
        put(kb, "/d/a.txt", ["one"])
        put(kb, "/d/b.txt", ["two"], 1)
        kb.rebuild()
        kinds = {p.name: _kind(p) for p in path.iterdir()}  # while the writer is open: lock and WAL present
    assert None not in kinds.values(), kinds
    assert {"sqlite", "faiss", "json", "pid"} <= set(kinds.values())
    for p in path.iterdir():
        assert not p.read_bytes().startswith(b"\x80"), p  # pickle protocol 2+ header, in case a kind above widens


def test_sha256_file_reads_the_whole_file_in_blocks(tmp_path):
    import hashlib

    from docqa.store.files import sha256_file

    data = bytes(range(256)) * 9000  # 2.3 MB: more than one read block
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
