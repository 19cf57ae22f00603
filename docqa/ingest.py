"""Sync files and folders into a knowledge base: walk -> load -> chunk -> embed -> store, incrementally.

    >>> report = ingest(["docs/"], load_settings(index="indexes/demo"))  # doctest: +SKIP
    >>> report.added, report.unchanged, report.failed  # doctest: +SKIP
    (12, 0, [])

A re-run skips files whose size and mtime are unchanged (then those whose SHA-256 is unchanged), re-embeds changed
ones, and removes documents that disappeared from a folder that was synced. Files are parsed in a sandboxed worker
process (time and memory limits, docqa/load/sandbox.py) and chunked on a background thread, a few files ahead,
while the main thread embeds a few batches at a time, so parsing and chunking overlap with the model (a Chinese
chunk as its English dictionary gloss when the embedder reads English only: `vector_texts`). Changes are
committed in batches of `commit_limit` chunks (512 while small, an eighth of the index as it grows, at most 20,000
chunks or 32M characters: memory stays bounded at a million chunks); each document lands whole in one commit, so a
crash or Ctrl-C loses at most the batch in progress and the next run picks up where it stopped.

Limits: hidden files/folders and symlinks are skipped unless asked for; a symlink is never followed out of the
folder that was given; identical files at two paths are stored twice; one document is never split across commits,
so a single file larger than the cap (at most max_file_mb) is held whole.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .chunk import chunk_document
from .config import Settings
from .documents import Chunk, Document
from .embed import Embedder, get_embedder, kb_model_name, model_languages, split_model_name
from .errors import DocQAError, LoadError, ModelMismatchError
from .lexicon import GLOSS_VECTORS, gloss_passage, lexicon_available
from .store import MANIFEST_NAME, DocumentInfo, KnowledgeBase, index_text, store_options
from .store.files import sha256_file
from .store.rows import DOCUMENT_NAMES
from .text import has_chinese

Progress = Callable[..., None]

#: files loaded (and, in the pipeline, chunked) ahead of the embedding
PREFETCH_FILES = 4
#: chunks per commit: at least MIN (commits of a small knowledge base), at most MAX (bounded memory at any size)
MIN_COMMIT_CHUNKS = 512
MAX_COMMIT_CHUNKS = 20_000
#: and at most this many characters of chunk text held for one commit (long chunks of a large-token model)
MAX_COMMIT_CHARS = 32_000_000


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
    #: what a knowledge base made by an older docqa lacks, and the command that catches it up (`upgrade_notes`)
    notes: list[str] = field(default_factory=list)

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
            "notes": self.notes,
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


def _fit_header(embedder: Embedder, section: str, n_tokens: int) -> str:
    """The section title to prepend for embedding, shortened so title + chunk stays within the model's limit."""
    if not section:
        return ""
    budget = embedder.max_tokens - 2 - n_tokens  # [CLS] and [SEP]
    for candidate in (section, section.rsplit(" > ", 1)[-1]):
        if embedder.count_tokens(candidate) + 1 <= budget:
            return candidate
    return ""


@dataclass
class _Prepared:
    """One loaded file, chunked: its document row, chunks and the texts the model embeds, or why it failed."""

    cand: _Candidate
    info: DocumentInfo
    chunks: list[Chunk]
    texts: list[str]  # section header + chunk text, one per chunk (what the embedding model reads)
    pages: int = 0
    failure: str = ""


class _Prefetcher:
    """Loads files in the sandbox on a background thread, a few ahead of the embedding in the main thread.

    With `chunk_ahead` the thread also chunks each file (tokenizer counts, section headers), so that work overlaps
    with the model too; the embedder's token counter must then be safe to call beside `encode` (both embedders use
    a tokenizer of their own for counting)."""

    def __init__(
        self, candidates: list[_Candidate], settings: Settings, embedder: Embedder, chunk_ahead: bool, gloss: bool
    ):
        from .load.sandbox import LoaderSandbox

        self._q: queue.Queue = queue.Queue(maxsize=PREFETCH_FILES)
        self._stop = threading.Event()
        self._prepare = lambda cand, item: _chunk_file(cand, item, settings, embedder, gloss)
        self._chunk_ahead = chunk_ahead
        self._sandbox = LoaderSandbox(
            timeout=settings.file_timeout,
            memory_mb=settings.file_memory_mb,
            max_file_mb=settings.max_file_mb,
            ocr=settings.ocr,
        )
        self._thread = threading.Thread(target=self._run, args=(candidates,), daemon=True)
        self._thread.start()

    def _run(self, candidates: list[_Candidate]) -> None:
        try:
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
                    self._q.put((cand, self._prepare(cand, item) if self._chunk_ahead else item))
        except BaseException as e:  # hand it to the main thread rather than end the stream silently
            self._q.put(e)
        self._q.put(None)

    def __iter__(self) -> Iterator[_Prepared]:
        while (got := self._q.get()) is not None:
            if isinstance(got, BaseException):
                raise got
            cand, item = got
            yield item if isinstance(item, _Prepared) else self._prepare(cand, item)

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
    *,
    parallel: bool = True,
    reload: bool = False,
) -> IngestReport:
    """Sync `paths` (files and folders) into the knowledge base at `settings.index`.

    `reload=True` reads, chunks and embeds every file again even when it is unchanged: what a knowledge base needs
    to take new chunk settings, another OCR mode or an upgraded docqa's loaders (a file's chunks are replaced in
    the same commit as always, so an interrupted reload leaves each file old or new, never half).
    `parallel=False` chunks on the main thread and embeds once per commit (the pipeline before it overlapped
    chunking with embedding; kept for the benchmark's comparison)."""
    t0 = time.perf_counter()
    report = IngestReport()
    emit = progress or (lambda *a, **k: None)
    KnowledgeBase.check_unlocked(settings.index)  # fail at once, not after seconds spent loading the model
    files, report.skipped, roots = collect_files(paths, settings.include_hidden, settings.follow_symlinks)

    def load_embedder() -> Embedder:
        return get_embedder(
            settings.embed_model,
            settings.embed_device,
            settings.embed_precision,
            settings.embed_languages,
            settings.embed_backend,
            settings.cache,
        )

    # the knowledge base records model and backend: int8 and fp32 vectors are close, not equal (embed.py); an
    # embedder passed in (the server's, a benchmark's) says itself which backend makes its vectors
    backend = getattr(embedder, "backend", None) or settings.embed_backend
    recorded = kb_model_name(settings.embed_model, backend)

    # An existing knowledge base knows its dimension: the model (and torch) load only when a file needs embedding,
    # so a re-run over unchanged files takes a fraction of a second.
    if embedder is None and not (Path(settings.index) / MANIFEST_NAME).exists():
        embedder = load_embedder()
    with _open_kb(settings, recorded, embedder) as kb:
        todo, touch = _plan(kb, files, report, reload)
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
            _load_embed_commit(kb, todo, settings, embedder, report, emit, parallel)
        languages = (
            embedder.languages
            if embedder is not None
            else model_languages(settings.embed_model, settings.embed_languages)
        )
        report.notes = upgrade_notes(kb, languages)
    report.seconds = time.perf_counter() - t0
    return report


#: what a knowledge base made by an older docqa may lack (`upgrades`), with what catches it up: the server's web page
#: offers the rebuild as a button and translates these by their code
UPGRADE_NOTES = {
    "rebuild": (
        "BM25 here does not read document names (a question naming a command or file ranks better where it "
        "does): run `docqa rebuild` once, no re-embedding"
    ),
    "reingest": (
        "Chinese chunks here are embedded as their own text, which this embedder cannot read; a knowledge base "
        "made now embeds them as their English gloss (better Chinese search): ingest into a new --index folder"
    ),
}


def upgrades(kb: KnowledgeBase, languages: frozenset[str]) -> list[str]:
    """The codes of UPGRADE_NOTES that `kb`, made by an older docqa, needs; [] for a knowledge base made now.
    `languages`: those the embedder reads (`Embedder.languages`)."""
    codes = []
    if kb.lexical_text != DOCUMENT_NAMES:
        codes.append("rebuild")
    if kb.vector_text != GLOSS_VECTORS and _glosses(languages):
        codes.append("reingest")
    return codes


def upgrade_notes(kb: KnowledgeBase, languages: frozenset[str]) -> list[str]:
    """What `kb`, made by an older docqa, misses of what one made now has, each with the command that catches
    it up (UPGRADE_NOTES of `upgrades`); [] for a knowledge base made now."""
    return [UPGRADE_NOTES[c] for c in upgrades(kb, languages)]


def _glosses(languages: frozenset[str]) -> bool:
    """Whether a new knowledge base for an embedder reading `languages` embeds Chinese chunks as their gloss."""
    return "zh" not in languages and "en" in languages and lexicon_available()


def new_vector_text(embedder: Embedder) -> str:
    """The `vector_text` of a new knowledge base for `embedder`: GLOSS_VECTORS (Chinese chunks embedded as their
    English gloss, `vector_texts`) when it reads English but not Chinese and the dictionary is installed, else
    "" (every chunk embedded as its own text)."""
    return GLOSS_VECTORS if _glosses(embedder.languages) else ""


def _open_kb(settings: Settings, recorded: str, embedder: Embedder | None) -> KnowledgeBase:
    """Open (or create) the knowledge base for writing, refusing one whose vectors another backend made."""
    try:
        return KnowledgeBase.open(
            settings.index,
            create=True,
            writable=True,
            embed_model=recorded,
            dim=embedder.dim if embedder is not None else None,
            # a new knowledge base: Chinese chunks are embedded as their English gloss when the embedder reads no
            # Chinese (vector_texts); one made before keeps embedding their text, so its vectors stay one kind
            vector_text=new_vector_text(embedder) if embedder is not None else "",
            **store_options(settings),
        )
    except ModelMismatchError:
        with KnowledgeBase.open(settings.index, validate=False) as kb:
            have_model, have_backend = split_model_name(kb.embed_model)
        want_model, want_backend = split_model_name(recorded)
        if have_model != want_model or have_backend == want_backend:
            raise
        raise ModelMismatchError(
            f"the knowledge base at {settings.index} holds {have_model!r} vectors made by embed_backend "
            f"{have_backend!r}; ingesting with {want_backend!r} would mix two kinds of vectors in one "
            f"index. Set embed_backend = {have_backend!r} (DOCQA_EMBED_BACKEND) for this knowledge base, or build a "
            "new one (another --index)."
        ) from None


def _plan(kb: KnowledgeBase, files: list[tuple[Path, str]], report: IngestReport, reload: bool = False):
    """Decide per file: unchanged (skip), unchanged content with a new mtime (touch), or load (every known file
    too, with `reload`)."""
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
            if old.size == st.st_size and old.mtime_ns == st.st_mtime_ns and not reload:
                report.unchanged += 1
                continue
            try:
                cand.sha256 = sha256_file(path)
            except OSError as e:
                report.failed.append((str(path), f"cannot read: {e.strerror}"))
                continue
            if old.sha256 == cand.sha256 and old.status == "ok" and not reload:
                touch.append((str(path), st.st_mtime_ns))
                report.unchanged += 1
                continue
        todo.append(cand)
    return todo, touch


def _chunk_file(
    cand: _Candidate, item: Document | str, settings: Settings, embedder: Embedder, gloss: bool = False
) -> _Prepared:
    """Chunk one loaded file (`item`: its Document, or the reason it failed). A file that yields no chunk is a
    failure with a reason, so a re-run tries it again. With `gloss`, Chinese chunks are embedded as their English
    gloss (`vector_texts`). Touches no shared state (it runs on the prefetch thread)."""
    info = DocumentInfo(path=str(cand.path), root=cand.root, size=cand.size, mtime_ns=cand.mtime_ns, sha256=cand.sha256)
    if not info.sha256:
        try:
            info.sha256 = sha256_file(cand.path)
        except OSError as e:
            item = f"cannot read: {e.strerror}"
    out = _Prepared(cand, info, [], [])
    if isinstance(item, Document):
        try:
            out.chunks = chunk_document(
                item, embedder.count_tokens, settings.chunk_tokens, settings.chunk_overlap, embedder.max_tokens - 2
            )
            out.texts = [index_text(_fit_header(embedder, ch.section, ch.n_tokens), ch.text) for ch in out.chunks]
            if gloss:
                out.texts = vector_texts(out.texts, [ch.text for ch in out.chunks])
        except Exception as e:  # a chunker bug fails this file, not the ingest
            out.chunks, out.texts, item = [], [], f"cannot chunk: {type(e).__name__}: {e}"
        if isinstance(item, Document) and not out.chunks:
            item = "no text (scanned PDF or empty document?)"
        elif isinstance(item, Document):
            info.pages = len(item.pages) or None
            info.title = str(item.metadata.get("title", ""))[:300]
            info.chunks = len(out.chunks)
            out.pages = len(item.pages)
    if isinstance(item, str):
        info.status, info.error = "failed", item
        out.failure = item
    return out


def _account(p: _Prepared, report: IngestReport, emit: Progress) -> None:
    """Count one prepared file into the report and tell the progress display (main thread only)."""
    path = p.info.path
    if p.failure:
        report.failed.append((path, p.failure))
        emit("file", path=path, status="failed", reason=p.failure)
        return
    report.pages += p.pages
    report.chunks += len(p.chunks)
    if p.cand.existed:
        report.updated += 1
    else:
        report.added += 1
    emit("file", path=path, status="updated" if p.cand.existed else "added", chunks=len(p.chunks))


def vector_texts(texts: list[str], chunk_texts: list[str]) -> list[str]:
    """What the embedder embeds for each chunk of a knowledge base with Chinese gloss vectors (`GLOSS_VECTORS`):
    a Chinese chunk's English dictionary gloss (docqa/lexicon.py `gloss_passage`, section header included), any
    other its own text. The embedded all-MiniLM reads English only: the vector of Chinese text is noise, that of
    its gloss is near the vector of a Chinese question's gloss (which docqa/retrieve.py searches) and of an
    English question about it. `texts` are the chunks' index texts (header + text), `chunk_texts` their texts.

        >>> vector_texts(["Upgrades\\n请执行 apt-get upgrade。", "Run apt-get upgrade."],
        ...              ["请执行 apt-get upgrade。", "Run apt-get upgrade."])
        ['Upgrades implement apt-get upgrade', 'Run apt-get upgrade.']
    """
    return [gloss_passage(t) or t if has_chinese(c) else t for t, c in zip(texts, chunk_texts)]


def commit_limit(indexed: int) -> int:
    """Chunks per commit for a knowledge base holding `indexed` chunks. A commit rewrites the whole vector file,
    so batches grow with the index to keep that cost a small share; the cap keeps the chunks, texts, vectors and
    buffered postings held for one commit bounded (a few KB per chunk: ~100 MB at 20,000) however large the
    knowledge base grows (the vector index itself is the store's: 1.5 GB for a flat index of 1M x 384).

        >>> commit_limit(0), commit_limit(80_000), commit_limit(1_000_000)
        (512, 10000, 20000)
    """
    return min(max(MIN_COMMIT_CHUNKS, indexed // 8), MAX_COMMIT_CHUNKS)


def _load_embed_commit(
    kb, todo, settings: Settings, embedder: Embedder, report: IngestReport, emit, parallel: bool = True
) -> None:
    staged: list[_Prepared] = []
    texts: list[str] = []  # the staged chunks' texts, in order
    vectors: list = []  # their vectors, embedded so far, in groups
    done = 0  # texts[:done] are embedded
    chars = 0
    last_commit = time.monotonic()
    # in the pipeline, embed as soon as a few batches are ready: the prefetch thread loads and chunks the next files
    # meanwhile (onnxruntime and torch release the GIL while they compute)
    group = max(4 * settings.embed_batch, 128) if parallel else None

    def embed_pending() -> None:
        nonlocal done
        if done < len(texts):
            t = time.perf_counter()
            vectors.append(embedder.encode(texts[done:], batch_size=settings.embed_batch))
            report.embed_seconds += time.perf_counter() - t
            done = len(texts)

    def commit() -> None:
        nonlocal staged, texts, vectors, done, chars, last_commit
        if not staged:
            return
        embed_pending()
        matrix = np.concatenate(vectors) if vectors else None
        with kb.batch() as b:
            pos = 0
            for p in staged:
                b.put_document(p.info, p.chunks, matrix[pos : pos + len(p.chunks)] if p.chunks else None)
                pos += len(p.chunks)
        report.commits += 1
        emit("commit", chunks=len(texts), documents=len(staged))
        staged, texts, vectors, done, chars, last_commit = [], [], [], 0, 0, time.monotonic()

    limit = commit_limit(kb.index.count())
    prefetch = _Prefetcher(todo, settings, embedder, chunk_ahead=parallel, gloss=kb.vector_text == GLOSS_VECTORS)
    try:
        for p in prefetch:
            _account(p, report, emit)
            staged.append(p)
            texts.extend(p.texts)
            chars += sum(len(t) for t in p.texts)
            if len(texts) >= limit or chars >= MAX_COMMIT_CHARS or time.monotonic() - last_commit > 30:
                commit()
            elif group and len(texts) - done >= group:
                embed_pending()
        commit()
    finally:
        prefetch.close()
