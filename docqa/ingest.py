"""Sync files and folders into a knowledge base: walk -> load -> chunk -> embed -> store, incrementally.

    >>> report = ingest(["docs/"], load_settings(index="indexes/demo"))  # doctest: +SKIP
    >>> report.added, report.unchanged, report.failed  # doctest: +SKIP
    (12, 0, [])

A re-run skips files whose size and mtime are unchanged (then those whose SHA-256 is unchanged), re-embeds changed
ones, and removes documents that disappeared from a folder that was synced. Files are parsed in a sandboxed worker
process (time and memory limits, docqa/load/sandbox.py) on a background thread while the main thread embeds, so
parsing overlaps with the model. Changes are committed in batches; each document lands whole in one commit, so a
crash or Ctrl-C loses at most the batch in progress and the next run picks up where it stopped.

Limits: hidden files/folders and symlinks are skipped unless asked for; a symlink is never followed out of the
folder that was given; identical files at two paths are stored twice.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .chunk import chunk_document
from .config import Settings
from .documents import Chunk, Document
from .embed import Embedder, get_embedder
from .errors import DocQAError, LoadError, ModelMismatchError
from .store import MANIFEST_NAME, DocumentInfo, KnowledgeBase, index_text

Progress = Callable[..., None]


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # not ingested by design: unsupported, symlink...
    chunks: int = 0
    pages: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    commits: int = 0

    def to_json(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "chunks": self.chunks,
            "pages": self.pages,
            "seconds": round(self.seconds, 3),
            "embed_seconds": round(self.embed_seconds, 3),
            "commits": self.commits,
        }


@dataclass
class _Candidate:
    path: Path
    root: str
    size: int
    mtime_ns: int
    sha256: str = ""
    existed: bool = False


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_folder(
    folder: Path,
    include_hidden: bool,
    follow_symlinks: bool,
    files: list[tuple[Path, str]],
    skipped: list[tuple[str, str]],
) -> None:
    """Append the supported regular files under `folder` to `files` and what was passed over to `skipped`."""
    root = str(folder)
    real_root = os.path.realpath(folder)
    seen_dirs = {real_root}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=follow_symlinks):
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if not include_hidden and _is_hidden(d):
                continue
            if os.path.islink(full):
                real = os.path.realpath(full)
                if not follow_symlinks:
                    skipped.append((full, "symlink to a folder (not followed; use --follow-symlinks)"))
                    continue
                if not (real + os.sep).startswith(real_root + os.sep) or real in seen_dirs:
                    skipped.append((full, "symlink loop or link outside the folder (not followed)"))
                    continue
                seen_dirs.add(real)
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if not include_hidden and _is_hidden(name):
                continue
            reason = _skip_reason(full, real_root, follow_symlinks)
            if reason:
                skipped.append((full, reason))
            else:
                files.append((Path(full), root))


def _skip_reason(full: str, real_root: str, follow_symlinks: bool) -> str | None:
    """Why the file `full` found under `real_root` is not ingested, or None to take it."""
    from .load import is_supported

    try:
        st = os.lstat(full)
    except OSError as e:
        return f"cannot stat: {e.strerror}"
    if stat.S_ISLNK(st.st_mode):
        if not follow_symlinks:
            return "symlink (not followed; use --follow-symlinks)"
        if not os.path.realpath(full).startswith(real_root + os.sep):
            return "symlink pointing outside the folder (not followed)"
        try:
            st = os.stat(full)
        except OSError:
            return "broken symlink or symlink loop"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (FIFO, socket or device)"
    if not is_supported(Path(full)):
        return f"unsupported file type {Path(full).suffix or '(no extension)'}"
    return None


def collect_files(
    paths: Iterable[str | Path], include_hidden: bool = False, follow_symlinks: bool = False
) -> tuple[list[tuple[Path, str]], list[tuple[str, str]], list[str]]:
    """Expand `paths` into (file, root) pairs. Returns (files, skipped with reasons, folder roots synced).

    Files named explicitly are always taken. In folders, hidden entries are skipped unless `include_hidden`;
    symlinks are skipped unless `follow_symlinks`, and even then never followed outside the folder or in a loop.
    """
    files: list[tuple[Path, str]] = []
    skipped: list[tuple[str, str]] = []
    roots: list[str] = []
    for given in paths:
        p = Path(os.path.abspath(given))
        if not os.path.lexists(p):
            raise DocQAError(f"no such file or folder: {given}")
        if not p.is_dir():
            files.append((p, str(p.parent)))
            continue
        roots.append(str(p))
        _walk_folder(p, include_hidden, follow_symlinks, files, skipped)
    # the same file named twice (a folder and a file in it) is taken once
    unique = {str(f): (f, r) for f, r in files}
    return list(unique.values()), skipped, roots


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fit_header(embedder: Embedder, section: str, n_tokens: int) -> str:
    """The section title to prepend for embedding, shortened so title + chunk stays within the model's limit."""
    if not section:
        return ""
    budget = embedder.max_tokens - 2 - n_tokens  # [CLS] and [SEP]
    for candidate in (section, section.rsplit(" > ", 1)[-1]):
        if embedder.count_tokens(candidate) + 1 <= budget:
            return candidate
    return ""


class _Prefetcher:
    """Loads files in the sandbox on a background thread, a few ahead of the embedding in the main thread."""

    def __init__(self, candidates: list[_Candidate], settings: Settings, depth: int = 4):
        from .load.sandbox import LoaderSandbox

        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._sandbox = LoaderSandbox(
            timeout=settings.file_timeout,
            memory_mb=settings.file_memory_mb,
            max_file_mb=settings.max_file_mb,
            ocr=settings.ocr,
        )
        self._thread = threading.Thread(target=self._run, args=(candidates,), daemon=True)
        self._thread.start()

    def _run(self, candidates: list[_Candidate]) -> None:
        with self._sandbox as sandbox:
            for cand in candidates:
                if self._stop.is_set():
                    break
                try:
                    item: Document | str = sandbox.load(cand.path)
                except LoadError as e:
                    item = str(e)
                except Exception as e:  # a loader bug must not stop the ingest
                    item = f"{type(e).__name__}: {e}"
                self._q.put((cand, item))
        self._q.put(None)

    def __iter__(self):
        while (got := self._q.get()) is not None:
            yield got

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # drain so the thread can finish its put()
            try:
                self._q.get(timeout=0.1)
            except queue.Empty:
                pass


def ingest(
    paths: Iterable[str | Path],
    settings: Settings,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Sync `paths` (files and folders) into the knowledge base at `settings.index`."""
    t0 = time.perf_counter()
    report = IngestReport()
    emit = progress or (lambda *a, **k: None)
    KnowledgeBase.check_unlocked(settings.index)  # fail at once, not after seconds spent loading the model
    files, report.skipped, roots = collect_files(paths, settings.include_hidden, settings.follow_symlinks)

    def load_embedder() -> Embedder:
        return get_embedder(
            settings.embed_model, settings.embed_device, settings.embed_precision, settings.embed_languages
        )

    # An existing knowledge base knows its dimension: the model (and torch) load only when a file needs embedding,
    # so a re-run over unchanged files takes a fraction of a second.
    if embedder is None and not (Path(settings.index) / MANIFEST_NAME).exists():
        embedder = load_embedder()
    with KnowledgeBase.open(
        settings.index,
        create=True,
        writable=True,
        embed_model=settings.embed_model,
        dim=embedder.dim if embedder is not None else None,
    ) as kb:
        todo, touch = _plan(kb, files, report)
        seen = {str(f) for f, _ in files}
        gone = [
            d.path for d in kb.documents() if d.path not in seen and any(d.path.startswith(r + os.sep) for r in roots)
        ]
        emit("plan", files=len(files), to_load=len(todo), unchanged=report.unchanged, removed=len(gone))
        if touch or gone:
            with kb.batch() as b:
                for path, mtime in touch:
                    b.touch_document(path, mtime)
                for path in gone:
                    b.remove_document(path)
            report.removed = len(gone)
        if todo:
            embedder = embedder or load_embedder()
            if embedder.dim != kb.dim:
                raise ModelMismatchError(
                    f"{settings.embed_model!r} makes {embedder.dim}-dimensional vectors, the knowledge base holds {kb.dim}"
                )
            _load_embed_commit(kb, todo, settings, embedder, report, emit)
    report.seconds = time.perf_counter() - t0
    return report


def _plan(kb: KnowledgeBase, files: list[tuple[Path, str]], report: IngestReport):
    """Decide per file: unchanged (skip), unchanged content with a new mtime (touch), or load."""
    todo: list[_Candidate] = []
    touch: list[tuple[str, int]] = []
    known = {d.path: d for d in kb.documents()}
    for path, root in files:
        try:
            st = os.stat(path)
        except OSError as e:
            report.failed.append((str(path), f"cannot stat: {e.strerror}"))
            continue
        cand = _Candidate(path, root, st.st_size, st.st_mtime_ns)
        old = known.get(str(path))
        if old is not None:
            cand.existed = True
            if old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
                report.unchanged += 1
                continue
            try:
                cand.sha256 = sha256_file(path)
            except OSError as e:
                report.failed.append((str(path), f"cannot read: {e.strerror}"))
                continue
            if old.sha256 == cand.sha256 and old.status == "ok":
                touch.append((str(path), st.st_mtime_ns))
                report.unchanged += 1
                continue
        todo.append(cand)
    return todo, touch


def _prepare(cand, item, settings: Settings, embedder: Embedder, report: IngestReport, emit):
    """(document row, chunks) for one loaded file (`item`: its Document, or the reason it failed), counted into
    `report`; a file that yields no chunk is recorded as failed with a reason, so a re-run tries it again."""
    info = DocumentInfo(path=str(cand.path), root=cand.root, size=cand.size, mtime_ns=cand.mtime_ns, sha256=cand.sha256)
    if not info.sha256:
        try:
            info.sha256 = sha256_file(cand.path)
        except OSError as e:
            item = f"cannot read: {e.strerror}"
    chunks: list[Chunk] = []
    if isinstance(item, Document):
        chunks = chunk_document(
            item, embedder.count_tokens, settings.chunk_tokens, settings.chunk_overlap, embedder.max_tokens - 2
        )
        if not chunks:
            item = "no text (scanned PDF or empty document?)"
        else:
            info.pages = len(item.pages) or None
            info.title = str(item.metadata.get("title", ""))[:300]
            info.chunks = len(chunks)
            report.pages += len(item.pages)
    if isinstance(item, str):
        info.status, info.error = "failed", item
        report.failed.append((info.path, item))
        emit("file", path=info.path, status="failed", reason=item)
    else:
        report.chunks += len(chunks)
        if cand.existed:
            report.updated += 1
        else:
            report.added += 1
        emit("file", path=info.path, status="updated" if cand.existed else "added", chunks=len(chunks))
    return info, chunks


def _load_embed_commit(kb, todo, settings: Settings, embedder: Embedder, report: IngestReport, emit) -> None:
    staged: list[tuple[DocumentInfo, list[Chunk]]] = []
    staged_chunks = 0
    last_commit = time.monotonic()

    def commit() -> None:
        nonlocal staged, staged_chunks, last_commit
        if not staged:
            return
        texts, owners = [], []
        for i, (_, chunks) in enumerate(staged):
            for ch in chunks:
                texts.append(index_text(_fit_header(embedder, ch.section, ch.n_tokens), ch.text))
                owners.append(i)
        t = time.perf_counter()
        vectors = embedder.encode(texts, batch_size=settings.embed_batch)
        report.embed_seconds += time.perf_counter() - t
        with kb.batch() as b:
            pos = 0
            for info, chunks in staged:
                b.put_document(info, chunks, vectors[pos : pos + len(chunks)] if chunks else None)
                pos += len(chunks)
        report.commits += 1
        emit("commit", chunks=len(texts), documents=len(staged))
        staged, staged_chunks, last_commit = [], 0, time.monotonic()

    # A commit rewrites the FAISS file: grow batches with the index so that cost stays a small share.
    batch_chunks = max(512, kb.index.count() // 8)
    prefetch = _Prefetcher(todo, settings)
    try:
        for cand, item in prefetch:
            info, chunks = _prepare(cand, item, settings, embedder, report, emit)
            staged.append((info, chunks))
            staged_chunks += len(chunks)
            if staged_chunks >= batch_chunks or time.monotonic() - last_commit > 30:
                commit()
        commit()
    finally:
        prefetch.close()
