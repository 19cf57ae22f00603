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


# ---------------------------------------------------------------------------------- pipeline, batching, backends
def _many_files(folder, n, words=30):
    folder.mkdir()
    for i in range(n):
        body = " ".join(f"topic{i} word{j % 7}" for j in range(words))
        (folder / f"f{i:03}.txt").write_text(f"File {i} is about topic{i}. {body}\n", encoding="utf-8")
    return folder


def _kb_state(index):
    with KnowledgeBase.open(index) as kb:
        rows = kb.chunks(range(10_000))
        docs = sorted((os.path.basename(d.path), d.chunks, d.status) for d in kb.documents())
        texts = sorted((r.source.rsplit("/", 1)[-1], r.ordinal, r.text) for r in rows.values())
        assert kb.verify() == []
        return docs, texts, kb.chunk_count()


def test_commits_are_capped_by_chunks_and_characters(tmp_path, monkeypatch):
    from fakeembed import HashEmbedder

    import docqa.ingest as ing
    from docqa.config import Settings

    assert ing.commit_limit(0) == 512 and ing.commit_limit(10**7) == ing.MAX_COMMIT_CHUNKS  # bounded at any size
    docs = _many_files(tmp_path / "docs", 23)
    events = []
    monkeypatch.setattr(ing, "MAX_COMMIT_CHUNKS", 5)
    s = Settings(index=tmp_path / "kb", file_timeout=30)
    r = ingest([docs], s, HashEmbedder(), lambda ev, **kw: events.append((ev, kw)))
    sizes = [kw["chunks"] for ev, kw in events if ev == "commit"]
    assert r.chunks == 23 and sum(sizes) == 23 and max(sizes) <= 5 and r.commits == len(sizes) == 5
    monkeypatch.setattr(ing, "MAX_COMMIT_CHUNKS", 10_000)
    monkeypatch.setattr(ing, "MAX_COMMIT_CHARS", 1_000)  # each file's chunk is ~440 characters: 3 per commit
    events.clear()
    r = ingest(
        [_many_files(tmp_path / "more", 9)],
        s.replace(index=tmp_path / "kb2"),
        HashEmbedder(),
        lambda ev, **kw: events.append((ev, kw)),
    )
    assert [kw["chunks"] for ev, kw in events if ev == "commit"] == [3, 3, 3]


def test_parallel_pipeline_stores_what_the_serial_one_does(tmp_path, monkeypatch):
    from fakeembed import HashEmbedder

    import docqa.ingest as ing
    import docqa.store.batch as batch
    from docqa.config import Settings
    from docqa.retrieve import open_retriever

    docs = _many_files(tmp_path / "docs", 30, words=120)
    (docs / "bad.pdf").write_bytes(b"%PDF-1.4 not a pdf")
    monkeypatch.setattr(ing, "MAX_COMMIT_CHUNKS", 7)
    monkeypatch.setattr(batch, "LEXICAL_BUFFER_CHUNKS", 3)  # postings written early inside a batch
    calls = []
    emb = HashEmbedder()
    real_encode = emb.encode
    monkeypatch.setattr(emb, "encode", lambda texts, **kw: calls.append(len(texts)) or real_encode(texts, **kw))
    a = ingest([docs], Settings(index=tmp_path / "a", file_timeout=30), emb, parallel=True)
    b = ingest([docs], Settings(index=tmp_path / "b", file_timeout=30), emb, parallel=False)
    assert (a.added, a.chunks, len(a.failed)) == (b.added, b.chunks, len(b.failed)) == (30, a.chunks, 1)
    assert a.chunks > 30 and sum(calls) == 2 * a.chunks  # every chunk embedded once per run
    assert _kb_state(tmp_path / "a") == _kb_state(tmp_path / "b")
    with KnowledgeBase.open(tmp_path / "a") as kb:
        assert kb.lexical.count() == kb.chunk_count()
    monkeypatch.setattr("docqa.embed.get_embedder", lambda *a, **k: emb)
    hits = open_retriever(Settings(index=tmp_path / "a", mode="bm25")).search("topic17", k=1)
    assert hits[0].source.endswith("f017.txt")


def test_a_chunker_failure_fails_the_file_not_the_ingest(docs_dir, settings, monkeypatch):
    from fakeembed import HashEmbedder

    import docqa.ingest as ing

    real = ing.chunk_document

    def chunk(doc, *a, **k):
        if doc.source.endswith("tar.txt"):
            raise RuntimeError("boom")
        return real(doc, *a, **k)

    monkeypatch.setattr(ing, "chunk_document", chunk)
    r = ingest([docs_dir], settings, HashEmbedder())
    assert r.added == 2 and [(os.path.basename(p), why) for p, why in r.failed] == [
        ("tar.txt", "cannot chunk: RuntimeError: boom")
    ]


def test_backend_is_recorded_searched_with_and_never_mixed(docs_dir, settings, onnx_cache, monkeypatch):
    from docqa.embed_onnx import OnnxInt8Embedder
    from docqa.errors import ModelMismatchError
    from docqa.retrieve import open_retriever
    from docqa.store import MANIFEST_NAME

    monkeypatch.setenv("DOCQA_CACHE", str(onnx_cache))  # where open_retriever's get_embedder finds the export
    s = settings.replace(embed_backend="onnx-int8", cache=onnx_cache)
    r = ingest([docs_dir], s)  # the settings choose the embedder
    assert r.added == 3 and not r.failed
    manifest = (settings.index / MANIFEST_NAME).read_text()
    assert '"embed_model": "all-MiniLM-L6-v2@onnx-int8"' in manifest
    retriever = open_retriever(settings)  # the knowledge base decides the backend, not the (torch) settings
    try:
        assert isinstance(retriever.embedder, OnnxInt8Embedder)
        hits = retriever.search("How do I create a virtual environment?", k=1, mode="dense")
        assert hits[0].source.endswith("venv.md")
    finally:
        retriever.kb.close()
    (docs_dir / "new.txt").write_text("apt-get install installs a package.\n")
    with pytest.raises(ModelMismatchError, match="embed_backend 'onnx-int8'"):
        ingest([docs_dir], settings)  # torch vectors into an int8 knowledge base: refused
    assert ingest([docs_dir], s).added == 1  # with its own backend it goes on incrementally


def test_a_knowledge_base_made_by_an_older_docqa_is_told_what_it_misses(docs_dir, settings, embedder):
    with KnowledgeBase.open(
        settings.index, create=True, writable=True, embed_model=embedder.name, dim=embedder.dim
    ) as kb:
        # as one made before document names and gloss vectors: neither meta row
        kb.conn.execute("DELETE FROM meta WHERE key IN ('lexical_text', 'vector_text')")
    names, gloss = ingest([docs_dir], settings, embedder).notes
    assert "document names" in names and "`docqa rebuild`" in names
    assert "English gloss" in gloss and "new --index" in gloss
    with KnowledgeBase.open(settings.index, writable=True) as kb:
        kb.rebuild()
    assert ingest([docs_dir], settings, embedder).notes == [gloss]  # the lexical index caught up, the vectors not
    assert ingest([docs_dir], settings.replace(index=settings.index.parent / "new"), embedder).notes == []
    # a re-run over unchanged files loads no model: the notes come from the settings' model name
    assert ingest([docs_dir], settings).notes == [gloss]


def test_reload_reads_unchanged_files_again(docs_dir, settings, embedder):
    """New chunk settings (or an upgraded loader) reach files that did not change only through a reload."""
    ingest([docs_dir], settings, embedder)
    with KnowledgeBase.open(settings.index) as kb:
        before = kb.chunk_count()
    small = settings.replace(chunk_tokens=24, chunk_overlap=4)
    r = ingest([docs_dir], small, embedder)
    assert (r.unchanged, r.updated, r.chunks) == (3, 0, 0)  # a plain re-run keeps the old chunks
    r = ingest([docs_dir], small, embedder, reload=True)
    assert (r.added, r.updated, r.unchanged, r.failed) == (0, 3, 0, [])
    with KnowledgeBase.open(settings.index) as kb:
        assert kb.chunk_count() == r.chunks > before  # every file chunked again, smaller; nothing left twice
        assert all(row.n_tokens <= 24 for row in kb.chunks(range(1000)).values())
        assert kb.verify() == []
