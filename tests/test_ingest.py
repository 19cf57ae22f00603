"""ingest(): incremental sync, failures that do not stop it, removal of vanished files."""

import os
import time

import pytest

from docqa.ingest import collect_files, ingest
from docqa.store import KnowledgeBase


def _docs(kb):
    return {os.path.basename(d.path): d for d in kb.documents()}


def test_first_ingest_then_noop_then_changes(docs_dir, settings, embedder):
    r = ingest([docs_dir], settings, embedder)
    assert (r.added, r.updated, r.unchanged, r.removed, r.failed) == (3, 0, 0, 0, [])
    assert r.chunks >= 3
    with KnowledgeBase.open(settings.index) as kb:
        docs = _docs(kb)
        assert set(docs) == {"venv.md", "tar.txt", "fstab.txt"}
        assert all(d.status == "ok" and d.chunks > 0 for d in docs.values())
        first_gen, n_chunks = kb.generation, kb.chunk_count()
        assert kb.verify() == []

    r2 = ingest([docs_dir], settings, embedder)
    assert (r2.added, r2.updated, r2.unchanged, r2.removed, r2.chunks) == (0, 0, 3, 0, 0)
    with KnowledgeBase.open(settings.index) as kb:
        assert kb.generation == first_gen and kb.chunk_count() == n_chunks  # nothing written

    # same content, new mtime: hashed, not re-embedded
    os.utime(docs_dir / "tar.txt", ns=(time.time_ns(), time.time_ns() + 10**9))
    r3 = ingest([docs_dir], settings, embedder)
    assert (r3.updated, r3.unchanged, r3.chunks) == (0, 3, 0)

    # changed, added, deleted
    (docs_dir / "venv.md").write_text("# Venv\n\nEntirely new text about pyvenv.cfg files.\n")
    (docs_dir / "new.txt").write_text("A new file about apt-get install.\n")
    (docs_dir / "tar.txt").unlink()
    r4 = ingest([docs_dir], settings, embedder)
    assert (r4.added, r4.updated, r4.removed, r4.unchanged) == (1, 1, 1, 1)
    with KnowledgeBase.open(settings.index) as kb:
        docs = _docs(kb)
        assert set(docs) == {"venv.md", "new.txt", "fstab.txt"}
        texts = [r.text for r in kb.chunks(range(1000)).values()]
        assert not any("tar -xzvf" in t for t in texts)  # a deleted file never answers again
        assert sum("pyvenv.cfg" in t for t in texts) == 1  # no duplicate chunk
        assert kb.verify() == []


def test_broken_file_does_not_stop_ingest(docs_dir, settings, embedder):
    (docs_dir / "broken.pdf").write_bytes(b"%PDF-1.4\n this is not really a pdf")
    (docs_dir / "binary.txt").write_bytes(bytes(range(256)) * 40)
    r = ingest([docs_dir], settings, embedder)
    failed = dict((os.path.basename(p), why) for p, why in r.failed)
    assert set(failed) == {"broken.pdf", "binary.txt"}
    assert all(why for why in failed.values())
    assert r.added == 3
    with KnowledgeBase.open(settings.index) as kb:
        docs = _docs(kb)
        assert docs["broken.pdf"].status == "failed" and docs["broken.pdf"].error
        assert docs["venv.md"].status == "ok"
    # failed and unchanged: not retried
    assert ingest([docs_dir], settings, embedder).failed == []


def test_hidden_symlinks_and_fifos_are_skipped(tmp_path, docs_dir, settings, embedder):
    (docs_dir / ".hidden.txt").write_text("secret")
    os.mkdir(docs_dir / ".git")
    (docs_dir / ".git" / "x.txt").write_text("git stuff")
    outside = tmp_path / "outside.txt"
    outside.write_text("outside the folder")
    os.symlink(outside, docs_dir / "link.txt")
    os.symlink(docs_dir, docs_dir / "loop")
    os.mkfifo(docs_dir / "pipe.txt")
    (docs_dir / "song.mp3").write_bytes(b"ID3....")
    files, skipped, roots = collect_files([docs_dir])
    names = sorted(p.name for p, _ in files)
    assert names == ["fstab.txt", "tar.txt", "venv.md"]
    reasons = {os.path.basename(p): why for p, why in skipped}
    assert "symlink" in reasons["link.txt"] and "symlink" in reasons["loop"]
    assert "regular" in reasons["pipe.txt"] and "unsupported" in reasons["song.mp3"]
    # following symlinks still never leaves the folder nor loops
    files, skipped, _ = collect_files([docs_dir], follow_symlinks=True)
    assert sorted(p.name for p, _ in files) == ["fstab.txt", "tar.txt", "venv.md"]
    r = ingest([docs_dir], settings, embedder)
    assert r.added == 3 and not r.failed


def test_missing_path_is_an_error(tmp_path, settings, embedder):
    from docqa.errors import DocQAError

    with pytest.raises(DocQAError, match="no such file"):
        ingest([tmp_path / "nope"], settings, embedder)


def test_gb18030_text_is_indexed_correctly(docs_dir, settings, embedder):
    ingest([docs_dir], settings, embedder)
    with KnowledgeBase.open(settings.index) as kb:
        texts = "".join(r.text for r in kb.chunks(range(1000)).values())
    assert "文件系统表" in texts and "挂载" in texts


def test_rerun_over_unchanged_files_loads_no_model(docs_dir, settings, embedder):
    import subprocess
    import sys

    ingest([docs_dir], settings, embedder)
    code = (
        "import sys; from docqa.config import Settings; from docqa.ingest import ingest; "
        f"r = ingest([{str(docs_dir)!r}], Settings(index={str(settings.index)!r})); "
        "assert (r.unchanged, r.added, r.updated) == (3, 0, 0), r; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
