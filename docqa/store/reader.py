"""The read side of a knowledge base: snapshots, dense search, documents and chunk rows (KnowledgeBase adds
opening and writing; callers use KnowledgeBase).

    >>> kb = KnowledgeBase.open("indexes/demo")  # doctest: +SKIP
    >>> with kb.snapshot():                                  # one committed generation for everything below  # doctest: +SKIP
    ...     hits = kb.dense_search(query_vector, 5)          # [(chunk_id, cosine), ...]
    ...     rows = kb.chunks(i for i, _ in hits)             # {chunk_id: ChunkRow}

Limits: one SQLite connection, so one thread at a time; reads outside `snapshot()` may see two generations.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Self

import numpy as np

from ..bm25 import LexicalIndex
from ..errors import StoreCorruptError, StoreError
from . import manifest, schema
from .files import DB_NAME, REBUILD_HINT, WriterLock
from .rows import CHUNK_ROWS, DOCUMENT_COLUMNS, ChunkRow, DocumentInfo
from .vectors import DEFAULT_BACKEND, VectorIndex, vector_backend


class Reader:
    """The state every open knowledge base has: its folder, connection, lock (writers) and cached vector index."""

    def __init__(self, path: Path, conn: sqlite3.Connection, writable: bool, lock: WriterLock | None):
        self.path = path
        self.conn = conn
        self.writable = writable
        self._lock = lock
        self._index: VectorIndex | None = None
        self._index_generation = -1
        self.lexical = LexicalIndex(conn)
        #: "<backend>.<option>" -> value given to open() (e.g. "milvus.uri"); non-empty ones override the meta rows
        #: "option.<backend>.<option>" recorded when the knowledge base was made
        self.backend_options: dict[str, str] = {}
        self._connected: type[VectorIndex] | None = None

    def _meta(self, key: str) -> str | None:
        return schema.read_meta(self.conn, key, self.path / DB_NAME)

    @property
    def embed_model(self) -> str:
        return self._meta("embed_model") or ""

    @property
    def dim(self) -> int:
        return int(self._meta("dim") or 0)

    @property
    def vector_text(self) -> str:
        """What the vectors of chunks the embedder cannot read were made from: "gloss-zh" = a Chinese chunk's
        English dictionary gloss (docqa/lexicon.py `gloss_passage`; docqa/ingest.py); "" = every chunk's own
        text (knowledge bases made before, or with an embedder that reads Chinese)."""
        return self._meta("vector_text") or ""

    @property
    def lexical_text(self) -> str:
        """What the lexical index reads besides each chunk's section and text: "names" = its document's name
        (rows.py `lexical_text`); "" = nothing else (knowledge bases made before, until `docqa rebuild`)."""
        return self._meta("lexical_text") or ""

    @property
    def generation(self) -> int:
        return int(self._meta("generation") or 0)

    @property
    def backend(self) -> type[VectorIndex]:
        """The VectorIndex class of this knowledge base (those made before the choice existed are FAISS),
        configured by its options."""
        name = self._meta("vector_backend") or DEFAULT_BACKEND
        return vector_backend(name, **self._options_for(name))

    def _options_for(self, name: str) -> dict[str, str]:
        out: dict[str, str] = {}
        if name != DEFAULT_BACKEND:  # FAISS has no options: spare every open the query
            with contextlib.suppress(sqlite3.Error):
                for k, v in self.conn.execute("SELECT key, value FROM meta WHERE key LIKE ?", (f"option.{name}.%",)):
                    out[k.split(".", 2)[2]] = v
        for k, v in self.backend_options.items():
            if k.startswith(name + ".") and v:
                out[k.split(".", 1)[1]] = v
        return out

    # ---------------------------------------------------------------- manifest
    def read_manifest(self) -> dict:
        """The manifest, validated against its checksum (StoreCorruptError when damaged)."""
        return manifest.read_manifest(self.path)

    def _check_manifest(self) -> dict:
        return manifest.check_manifest(self.path, self.embed_model, self.dim, self.generation)

    # ---------------------------------------------------------------- vectors
    def load_index(self) -> VectorIndex:
        """The current generation's index read from storage now, bypassing the cache (verify uses it).
        FileNotFoundError if it is gone, StoreCorruptError if it fails its checks."""
        backend = self.backend
        record = {k: self._meta(k) for k in backend.record_keys}
        return backend.load(self.path, self.generation, record, self.dim)

    @property
    def index(self) -> VectorIndex:
        """The VectorIndex of the current generation (loaded once, reloaded when a writer commits)."""
        gen = self.generation
        if self._index is None or self._index_generation != gen:
            self._index = self.load_index()
            self._index_generation = gen
        return self._index

    def _cache_index(self, index: VectorIndex | None, generation: int = -1) -> None:
        """Keep `index` as generation `generation`'s (a writer's just-committed one), or forget it (None)."""
        self._index, self._index_generation = index, generation

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Self]:
        """A consistent read view: vectors, lexical postings and chunk rows all of one committed generation."""
        if self.conn.in_transaction:  # nested, or a writer reading its own state
            yield self
            return
        for attempt in range(5):
            self.conn.execute("BEGIN")
            try:
                self.index  # noqa: B018 - loads the generation seen by this transaction
            except FileNotFoundError:
                # a writer committed two generations since this transaction began and pruned ours: read again
                self.conn.execute("ROLLBACK")
                if attempt == 4:
                    raise StoreCorruptError(
                        f"{self.path / self.backend.location(self.generation)} is missing; {REBUILD_HINT}"
                    ) from None
                time.sleep(0.05)
                continue
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            try:
                yield self
            finally:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            return

    def dense_search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(chunk_id, cosine) of the `k` nearest chunks. Call inside `snapshot()`."""
        return self.index.search(vector, k)

    # ---------------------------------------------------------------- reading
    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Turn SQLite's damage reports into StoreError, so commands print a message instead of a traceback."""
        try:
            yield
        except sqlite3.OperationalError as e:  # locked, I/O error...: not (necessarily) damage
            raise StoreError(f"cannot read {self.path / DB_NAME}: {e}") from None
        except sqlite3.DatabaseError as e:  # SQLITE_CORRUPT / SQLITE_NOTADB, from a page first read now
            raise StoreCorruptError(
                f"{self.path / DB_NAME} is damaged ({e}); the database cannot be repaired by rebuild: delete the "
                "folder and run `docqa ingest` again"
            ) from None

    def documents(self) -> list[DocumentInfo]:
        with self._reading():
            rows = self.conn.execute(f"SELECT {DOCUMENT_COLUMNS} FROM documents ORDER BY path").fetchall()
        return [DocumentInfo(*r) for r in rows]

    def chunks(self, ids: Iterable[int]) -> dict[int, ChunkRow]:
        """Chunk rows by id (ids that no longer exist are absent)."""
        ids = list(dict.fromkeys(int(i) for i in ids))
        out: dict[int, ChunkRow] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            q = f"{CHUNK_ROWS} WHERE c.id IN ({','.join('?' * len(part))})"
            for r in self.conn.execute(q, part):
                out[r[0]] = ChunkRow(*r)
        return out

    def neighbours(self, document_id: int, ordinals: Sequence[int]) -> dict[int, ChunkRow]:
        """Chunks of one document by ordinal (for expanding a hit with its context)."""
        if not ordinals:
            return {}
        q = f"{CHUNK_ROWS} WHERE c.document_id = ? AND c.ordinal IN ({','.join('?' * len(ordinals))})"
        return {r[2]: ChunkRow(*r) for r in self.conn.execute(q, [document_id, *ordinals])}

    def adjacent_chunks(self, rows: Iterable[ChunkRow], step: int) -> dict[int, ChunkRow]:
        """chunk id -> the chunk `step` ordinals away in its document (-1: the one before, 1: after), for each of
        `rows` that has one, in one query (an OR of one indexed term per document: SQLite scans the whole table
        for a row-value IN list)."""
        want = {(r.document_id, r.ordinal + step): r.id for r in rows if r.ordinal + step >= 0}
        by_doc: dict[int, list[int]] = {}
        for d, o in want:
            by_doc.setdefault(d, []).append(o)
        out: dict[int, ChunkRow] = {}
        items = list(by_doc.items())
        for i in range(0, len(items), 200):  # bounded statements: at most 200 terms
            part = items[i : i + 200]
            where = " OR ".join(f"(c.document_id = ? AND c.ordinal IN ({','.join('?' * len(o))}))" for _, o in part)
            for r in self.conn.execute(f"{CHUNK_ROWS} WHERE {where}", [x for d, o in part for x in (d, *o)]):
                row = ChunkRow(*r)
                out[want[row.document_id, row.ordinal]] = row
        return out

    def chunk_count(self) -> int:
        with self._reading():
            return self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def iter_vectors(self, batch: int = 10000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) in batches, from the float16 copies kept in SQLite."""
        last = -1
        while True:
            rows = self.conn.execute(
                "SELECT id, vector FROM chunks WHERE id > ? ORDER BY id LIMIT ?", (last, batch)
            ).fetchall()
            if not rows:
                return
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float16).reshape(len(rows), -1)
            yield ids, vecs.astype(np.float32)
            last = rows[-1][0]

    def close(self) -> None:
        if self._connected is not None:
            with contextlib.suppress(Exception):
                self._connected.disconnect(self.path)
            self._connected = None
        with contextlib.suppress(Exception):
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self.conn.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
