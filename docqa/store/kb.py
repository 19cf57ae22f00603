"""KnowledgeBase: the facade over one knowledge-base folder (open, snapshot reads, batched writes).

    >>> kb = KnowledgeBase.open("indexes/demo", create=True, writable=True, embed_model="m", dim=384)  # doctest: +SKIP
    >>> with kb.batch() as b:  # doctest: +SKIP
    ...     b.put_document(DocumentInfo("a.txt", sha256="..."), chunks, vectors)
    >>> with kb.snapshot():  # doctest: +SKIP
    ...     hits = kb.dense_search(query_vector, 5)            # [(chunk_id, cosine), ...]
    ...     rows = kb.chunks(i for i, _ in hits)
    >>> kb.close()  # doctest: +SKIP

The folder layout and the commit protocol are described in docqa/store/__init__.py. The reads (snapshot, search,
rows) are inherited from reader.py; this class adds what needs the folder rather than the connection: opening
(creating, migrating, recovering), the writer lock, batches and their commit. `verify` and `rebuild` live in
docqa/store/maintenance.py and stay reachable as methods for the callers that have always used them.

Limits: one connection, so one thread at a time; a writer and any number of readers may share a folder (WAL).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ..errors import ModelMismatchError, StoreCorruptError, StoreError
from . import files, maintenance, manifest, schema
from .batch import Batch
from .files import DB_NAME, WriterLock
from .manifest import MANIFEST_NAME
from .reader import Reader
from .rows import DOCUMENT_NAMES
from .vectors import DEFAULT_BACKEND, VectorIndex, vector_backend


def store_options(settings) -> dict:
    """The keyword arguments of `KnowledgeBase.open` that carry the store settings (`store`, `milvus_uri`, `ann`).

    >>> from types import SimpleNamespace as S
    >>> store_options(S(store="milvus", milvus_uri="http://db:19530", ann="auto"))
    {'backend': 'milvus', 'backend_options': {'milvus.uri': 'http://db:19530'}, 'ann': 'auto'}
    """
    return {
        "backend": settings.store,
        "backend_options": {"milvus.uri": settings.milvus_uri},
        "ann": getattr(settings, "ann", None),
    }


class KnowledgeBase(Reader):
    """An open knowledge base. Readers may be many; `writable=True` takes the single writer lock."""

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        create: bool = False,
        writable: bool = False,
        embed_model: str | None = None,
        dim: int | None = None,
        validate: bool = True,
        backend: str = DEFAULT_BACKEND,
        backend_options: Mapping[str, str] | None = None,
        ann: str | None = None,
        vector_text: str = "",
    ) -> KnowledgeBase:
        """Open (or with `create=True` make) the knowledge base at `path`, upgrading its schema if it is older.

        Raises StoreError if it does not exist or a newer docqa wrote it, StoreLockedError if another writer holds
        it, StoreCorruptError if a file fails validation, ModelMismatchError if `embed_model` differs from the one
        it was built with. `validate=False` skips the manifest check (for `verify` and `rebuild`, which report or
        repair it). `backend` names the VectorIndex backend (vectors.py) for a new knowledge base; an existing one
        keeps the backend it was made with. `backend_options` ("milvus.uri": ...) configure it; a new knowledge base
        records the non-empty ones, and later opens use those unless given others (`store_options` builds both
        from Settings). `ann` (auto|flat|hnsw|ivfpq) is the FAISS index choice for this writer's commits; None
        keeps the one the last commit recorded (auto for a new knowledge base). `vector_text` says what a new
        knowledge base's vectors embed besides the chunks' own text (`Reader.vector_text`); an existing one keeps
        what it was made with.
        """
        path = Path(path)
        if not (path / DB_NAME).exists():
            if not create:
                raise StoreError(f"no knowledge base at {path} (run `docqa ingest DIR --index {path}` first)")
            cls._make_folder(path)
            writable = True
        lock = WriterLock.acquire(path) if writable else None
        kb = None
        try:
            kb = cls(path, schema.connect(path / DB_NAME), writable, lock)
            kb.backend_options = dict(backend_options or {})
            kb._ann = ann
            kb._prepare(embed_model, dim, backend, vector_text)
            kb._connected = kb.backend
            kb._connected.connect(path)
            if embed_model is not None and kb.embed_model != embed_model:
                raise ModelMismatchError(
                    f"the knowledge base at {path} was built with embedding model {kb.embed_model!r} "
                    f"(dimension {kb.dim}), but {embed_model!r} is configured. Vectors of different models cannot be "
                    f"mixed: use --embed-model {kb.embed_model!r}, or build a new knowledge base (another --index, or "
                    "delete this folder and ingest again)."
                )
            if writable:
                kb._recover()
            if validate:
                kb._check_manifest()
            return kb
        except BaseException:
            if kb is not None and kb._connected is not None:
                with contextlib.suppress(Exception):
                    kb._connected.disconnect(path)
            if lock is not None:
                lock.release(clear=False)
            raise

    @staticmethod
    def _make_folder(path: Path) -> None:
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} exists and is not a folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {path}: {files.io_message(e)}") from None

    def _prepare(self, embed_model: str | None, dim: int | None, backend: str, vector_text: str = "") -> None:
        """Bring the database to the current schema, creating the knowledge base first where there is none."""
        db = self.path / DB_NAME
        if self._meta("format_version") is None:
            if not self.writable:
                raise StoreCorruptError(f"{db} is not an initialised knowledge base")
            if embed_model is None or dim is None:
                raise StoreError(f"no knowledge base at {self.path}")
            schema.migrate(self.conn, db)
            self._initialise(embed_model, dim, vector_backend(backend, **self._options_for(backend)), vector_text)
        elif self.writable:
            if schema.needs_migration(self.conn, db):
                schema.migrate(self.conn, db)
        elif schema.check_version(self.conn, db) < schema.latest_version():
            # this docqa reads only the current schema, so a reader upgrades an older knowledge base too; it takes
            # the writer lock for that, so that no writer is half-way through a batch in the old schema
            lock = WriterLock.acquire(self.path)
            try:
                schema.migrate(self.conn, db)
            finally:
                lock.release()

    @staticmethod
    def check_unlocked(path: str | Path) -> None:
        """Raise StoreLockedError now if another writer holds the knowledge base at `path` (see files.py)."""
        files.check_unlocked(Path(path))

    def _initialise(self, embed_model: str, dim: int, backend: type[VectorIndex], vector_text: str = "") -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            record = backend.empty(dim).save(self.path, 0)
            for k, v in {
                "format_version": schema.latest_version(),
                "embed_model": embed_model,
                "dim": dim,
                "generation": 0,
                **record,
                "vector_backend": backend.name,
                **({"vector_text": vector_text} if vector_text else {}),
                "lexical_text": DOCUMENT_NAMES,
                **{f"option.{k}": v for k, v in self.backend_options.items() if v and k.startswith(backend.name + ".")},
                "created_at": time.time(),
            }.items():
                c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, str(v)))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self.write_manifest()

    # ---------------------------------------------------------------- manifest
    def write_manifest(self) -> None:
        """Rewrite manifest.json from the database (OSError if the disk refuses; the manifest then lags)."""
        docs, chunks = self.conn.execute(
            "SELECT (SELECT count(*) FROM documents WHERE status='ok'), (SELECT count(*) FROM chunks)"
        ).fetchone()
        gen = self.generation
        manifest.write_manifest(
            self.path,
            {
                "format_version": schema.latest_version(),
                "embed_model": self.embed_model,
                "dim": self.dim,
                "generation": gen,
                "documents": docs,
                "chunks": chunks,
                **self.backend.manifest_fields(gen),
                **self.backend.describe({k: self._meta(k) for k in self.backend.record_keys}),
            },
        )

    # ---------------------------------------------------------------- writing
    @property
    def ann(self) -> str:
        """The FAISS index choice commits use: as opened with, else as the last commit recorded, else auto."""
        return getattr(self, "_ann", None) or self._meta("ann") or "auto"

    def require_writer(self) -> None:
        """StoreError unless this knowledge base was opened writable (checked before work that would be lost)."""
        if not self.writable:
            raise StoreError("the knowledge base was opened read-only")

    def _recover(self) -> None:
        """Writer start-up: drop vector data no commit refers to (left by a crash before a commit), and bring a
        manifest that lags one commit behind up to date."""
        gen = self.generation
        self.backend.prune(self.path, {gen, gen - 1})
        with contextlib.suppress(OSError):
            (self.path / (MANIFEST_NAME + ".tmp")).unlink()
        if not (self.path / MANIFEST_NAME).exists():
            # a crash while creating the knowledge base, between its first commit and the first manifest write;
            # the manifest is only a summary of the database, so it is written afresh
            with contextlib.suppress(OSError):  # no room: open() then reports the missing manifest
                self.write_manifest()
            return
        try:
            if self._check_manifest().get("generation") != gen:
                self.write_manifest()
        except StoreCorruptError:
            pass  # reported to the user by _check_manifest in open(); `docqa rebuild` rewrites it

    @contextlib.contextmanager
    def batch(self, *, index: VectorIndex | None = None) -> Iterator[Batch]:
        """Group changes into one commit: all of them become visible together, or none (on error or crash).

        `index` starts the batch from that vector index instead of the current generation's (rebuild passes a
        fresh one, so that a damaged file is never read)."""
        self.require_writer()
        b = Batch(self, self.index if index is None else index)  # loaded before the write transaction
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield b
            self._commit(b)
        except BaseException as e:
            with contextlib.suppress(sqlite3.Error):
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            self._cache_index(None)  # it may hold uncommitted changes: reload from disk
            if isinstance(e, sqlite3.Error):  # e.g. SQLITE_FULL while the transaction spills to the WAL
                raise StoreError(
                    f"could not write the database: {e}; the knowledge base is unchanged (generation {self.generation})"
                ) from None
            raise

    def _commit(self, b: Batch) -> None:
        """Steps 1-4 of the commit protocol (docqa/store/__init__.py)."""
        c = self.conn
        b.flush_lexical()
        if not b.changed:
            c.execute("COMMIT")
            return
        b.index = b.index.prepare(self.ann, self.iter_vectors)  # FAISS: may re-train when the size class changes
        backend, old = type(b.index), self.generation
        new = old + 1
        try:
            record = b.index.save(self.path, new)
        except OSError as e:
            raise StoreError(
                f"could not write {backend.location(new)}: {files.io_message(e)}; the knowledge base is unchanged "
                f"(generation {old})"
            ) from None
        for k, v in (("generation", new), ("ann", self.ann), *record.items()):
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, str(v)))
        try:
            c.execute("COMMIT")
        except sqlite3.Error as e:
            backend.discard(self.path, new)
            raise StoreError(f"could not commit the database: {e}; the knowledge base is unchanged") from None
        self._cache_index(b.index, new)
        try:
            self.write_manifest()
        except OSError:
            pass  # the manifest lagging one commit is tolerated and repaired by the next writer
        backend.prune(self.path, {old, new})

    def remove_documents(self, paths: Iterable[str]) -> int:
        """Remove documents (and their chunks) in one commit. Returns how many existed."""
        with self.batch() as b:
            return sum(b.remove_document(p) for p in paths)

    # ---------------------------------------------------------------- maintenance (docqa/store/maintenance.py)
    def verify(self) -> list[tuple[str, str]]:
        """maintenance.verify(self): [(level, message)]; no 'error' level means healthy."""
        return maintenance.verify(self)

    def rebuild(self) -> dict:
        """maintenance.rebuild(self): restore the vector and lexical indexes from SQLite."""
        return maintenance.rebuild(self)
