"""The knowledge base: one folder holding a SQLite database, a FAISS index and a manifest.

    indexes/default/
      kb.sqlite          documents, chunks (text, page, section, offsets, float16 vector), lexical postings, meta
      vectors.<G>.faiss  IndexIDMap2(IndexFlatIP) over the chunk vectors, chunk ids as FAISS ids (never renumbered)
      manifest.json      format version, embedding model, dimension, counts, generation (human-readable summary)
      lock               the writer's PID; held with flock while a writer is open

Commit protocol (crash-safe; SQLite is the single source of truth):
  1. write the new FAISS index to `vectors.<G+1>.faiss.tmp`, fsync, rename to `vectors.<G+1>.faiss`;
  2. in ONE SQLite transaction: chunk rows, lexical postings and `meta.generation = G+1` with the FAISS file's
     size and CRC32;
  3. rewrite manifest.json (temp file + rename); 4. delete FAISS files older than G.
A crash before 2 leaves generation G (the orphan G+1 file is removed by the next writer); a crash after 2 leaves
G+1 complete. Readers read the generation and the chunk rows inside one SQLite read transaction (WAL mode), so a
search during an ingest sees the old or the new state, never a mix. The previous generation's FAISS file is kept so
a reader that has just read G can still open it.

    >>> kb = KnowledgeBase.open("indexes/demo", create=True, writable=True, embed_model="m", dim=384)
    >>> with kb.batch() as b:
    ...     b.put_document(DocumentInfo("a.txt", ...), chunks, vectors)
    >>> kb.close()

Limits: the FAISS index is exact (flat), which is fast enough to about a million chunks; every commit rewrites the
whole FAISS file, so ingest commits in batches (ingest.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sqlite3
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .documents import Chunk
from .errors import ModelMismatchError, StoreCorruptError, StoreError, StoreLockedError
from .lexical import LexicalIndex

FORMAT_VERSION = 1
DB_NAME = "kb.sqlite"
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "lock"
_REBUILD_HINT = "run `docqa rebuild` to restore the indexes from the database (or `docqa verify` for details)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    root TEXT NOT NULL DEFAULT '',
    sha256 TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,           -- 'ok' | 'failed'
    error TEXT NOT NULL DEFAULT '',
    chunks INTEGER NOT NULL DEFAULT 0,
    pages INTEGER,
    title TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused, so FAISS ids stay unambiguous
    document_id INTEGER NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    section TEXT NOT NULL DEFAULT '',
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL,
    vector BLOB NOT NULL            -- float16, so FAISS can be rebuilt without re-embedding
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id, ordinal);
"""


@dataclass
class DocumentInfo:
    """A row of the documents table (what `docqa list` shows)."""

    path: str
    status: str = "ok"
    chunks: int = 0
    root: str = ""
    sha256: str = ""
    size: int = 0
    mtime_ns: int = 0
    error: str = ""
    pages: int | None = None
    title: str = ""
    updated_at: float = 0.0
    id: int = 0

    def to_json(self) -> dict:
        return asdict(self)


# the columns of ChunkRow, in order
_CHUNK_ROWS = (
    "SELECT c.id, c.document_id, c.ordinal, c.text, c.page, c.section, c.start, c.end, c.n_tokens, d.path "
    "FROM chunks c JOIN documents d ON d.id = c.document_id"
)


@dataclass
class ChunkRow:
    id: int
    document_id: int
    ordinal: int
    text: str
    page: int | None
    section: str
    start: int
    end: int
    n_tokens: int
    source: str


def index_text(section: str, text: str) -> str:
    """What the lexical index and the embedder see for a chunk: its section title helps both find it."""
    return f"{section}\n{text}" if section else text


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _faiss_name(generation: int) -> str:
    return f"vectors.{generation}.faiss"


def _manifest_checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _io_message(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "the disk is full"
    if e.errno == errno.EDQUOT:
        return "the disk quota is exceeded"
    return e.strerror or str(e)


class KnowledgeBase:
    """An open knowledge base. Readers may be many; `writable=True` takes the single writer lock."""

    def __init__(self, path: Path, conn: sqlite3.Connection, writable: bool, lock_fd: int | None):
        self.path = path
        self.conn = conn
        self.writable = writable
        self._lock_fd = lock_fd
        self._index = None
        self._index_generation = -1
        self.lexical = LexicalIndex(conn)

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
    ) -> KnowledgeBase:
        """Open (or with `create=True` make) the knowledge base at `path`.

        Raises StoreError if it does not exist, StoreLockedError if another writer holds it, StoreCorruptError if a
        file fails validation, ModelMismatchError if `embed_model` differs from the one it was built with.
        `validate=False` skips the manifest check (for `verify` and `rebuild`, which report or repair it).
        """
        path = Path(path)
        db = path / DB_NAME
        if not db.exists():
            if not create:
                raise StoreError(f"no knowledge base at {path} (run `docqa ingest DIR --index {path}` first)")
            if path.exists() and not path.is_dir():
                raise StoreError(f"{path} exists and is not a folder")
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create {path}: {_io_message(e)}") from None
            writable = True
        lock_fd = cls._acquire_lock(path) if writable else None
        try:
            conn = cls._connect(db)
            kb = cls(path, conn, writable, lock_fd)
            if kb._meta("format_version") is None:
                if not writable:
                    raise StoreCorruptError(f"{db} is not an initialised knowledge base")
                if embed_model is None or dim is None:
                    raise StoreError(f"no knowledge base at {path}")
                kb._initialise(embed_model, dim)
            kb._check_format()
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
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    @staticmethod
    def _acquire_lock(path: Path) -> int:
        lock_path = path / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot open lock file {lock_path}: {_io_message(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                raise KnowledgeBase._locked_error(fd, path) from None
            finally:
                os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    @staticmethod
    def _locked_error(fd: int, path: Path) -> StoreLockedError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        return StoreLockedError(f"knowledge base is locked by PID {pid} (another ingest/remove is running on {path})")

    @staticmethod
    def check_unlocked(path: str | Path) -> None:
        """Raise StoreLockedError now if another writer holds the knowledge base at `path`.

        A cheap probe (nothing is kept locked) so a second ingest fails at once instead of after loading its
        model; `open(writable=True)` still takes the lock for real."""
        path = Path(path)
        try:
            fd = os.open(path / LOCK_NAME, os.O_RDWR)
        except OSError:
            return  # no lock file yet (a new knowledge base), or unreadable: open() will say so
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the close below
        except BlockingIOError:
            raise KnowledgeBase._locked_error(fd, path) from None
        finally:
            os.close(fd)

    @staticmethod
    def _connect(db: Path) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(db, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as e:
            raise StoreCorruptError(
                f"{db} is damaged ({e}); the database cannot be repaired by rebuild: delete the folder and run "
                "`docqa ingest` again"
            ) from None
        return conn

    def _initialise(self, embed_model: str, dim: int) -> None:
        import faiss

        c = self.conn
        # executescript commits first; the statements are idempotent, so a crash here is re-run harmlessly.
        c.executescript(_SCHEMA + LexicalIndex.SCHEMA)
        c.execute("BEGIN IMMEDIATE")
        try:
            blob = faiss.serialize_index(faiss.IndexIDMap2(faiss.IndexFlatIP(dim))).tobytes()
            write_atomic(self.path / _faiss_name(0), blob)
            for k, v in {
                "format_version": FORMAT_VERSION,
                "embed_model": embed_model,
                "dim": dim,
                "generation": 0,
                "faiss_size": len(blob),
                "faiss_crc32": zlib.crc32(blob),
                "created_at": time.time(),
            }.items():
                c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, str(v)))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self._write_manifest()

    def _meta(self, key: str) -> str | None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:  # no meta table yet
            return None
        except sqlite3.DatabaseError as e:
            raise StoreCorruptError(f"{self.path / DB_NAME} is damaged ({e})") from None
        return None if row is None else row[0]

    def _check_format(self) -> None:
        v = self._meta("format_version")
        if v != str(FORMAT_VERSION):
            raise StoreError(f"{self.path} has knowledge-base format {v}; this docqa reads format {FORMAT_VERSION}")

    @property
    def embed_model(self) -> str:
        return self._meta("embed_model") or ""

    @property
    def dim(self) -> int:
        return int(self._meta("dim") or 0)

    @property
    def generation(self) -> int:
        return int(self._meta("generation") or 0)

    # ---------------------------------------------------------------- manifest
    def _manifest_body(self) -> dict:
        docs, chunks = self.conn.execute(
            "SELECT (SELECT count(*) FROM documents WHERE status='ok'), (SELECT count(*) FROM chunks)"
        ).fetchone()
        return {
            "format_version": FORMAT_VERSION,
            "embed_model": self.embed_model,
            "dim": self.dim,
            "generation": self.generation,
            "documents": docs,
            "chunks": chunks,
            "faiss_file": _faiss_name(self.generation),
        }

    def _write_manifest(self) -> None:
        body = self._manifest_body()
        body["checksum"] = _manifest_checksum(body)
        write_atomic(self.path / MANIFEST_NAME, json.dumps(body, indent=2, ensure_ascii=False).encode())

    def read_manifest(self) -> dict:
        """The manifest, validated against its checksum (StoreCorruptError when damaged)."""
        p = self.path / MANIFEST_NAME
        try:
            body = json.loads(p.read_bytes())
            checksum = body.pop("checksum")
            ok = isinstance(body, dict) and checksum == _manifest_checksum(body)
        except FileNotFoundError:
            raise StoreCorruptError(f"{p} is missing; {_REBUILD_HINT}") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise StoreCorruptError(f"{p} is damaged (checksum mismatch); {_REBUILD_HINT}")
        return body

    def _check_manifest(self) -> None:
        m = self.read_manifest()
        if m.get("embed_model") != self.embed_model or m.get("dim") != self.dim:
            raise StoreCorruptError(f"{self.path / MANIFEST_NAME} disagrees with the database; {_REBUILD_HINT}")
        # One commit behind is the crash window between the SQLite commit and the manifest write: harmless.
        if not 0 <= self.generation - int(m.get("generation", -1)) <= 1:
            raise StoreCorruptError(f"{self.path / MANIFEST_NAME} is out of step with the database; {_REBUILD_HINT}")

    # ---------------------------------------------------------------- FAISS
    def _load_faiss(self, generation: int):
        import faiss

        p = self.path / _faiss_name(generation)
        blob = p.read_bytes()  # FileNotFoundError is handled by the caller (a writer may have moved on)
        size, crc = int(self._meta("faiss_size") or -1), int(self._meta("faiss_crc32") or -1)
        # FAISS trusts the sizes in its file header; check the bytes against the commit record before parsing.
        if len(blob) != size or zlib.crc32(blob) != crc:
            raise StoreCorruptError(f"{p} is damaged (size or checksum mismatch); {_REBUILD_HINT}")
        try:
            index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        except RuntimeError as e:
            raise StoreCorruptError(f"{p} cannot be read ({e}); {_REBUILD_HINT}") from None
        if index.d != self.dim:
            raise StoreCorruptError(f"{p} has dimension {index.d}, expected {self.dim}; {_REBUILD_HINT}")
        return index

    @property
    def index(self):
        """The FAISS index of the current generation (loaded once, reloaded when a writer commits)."""
        gen = self.generation
        if self._index is None or self._index_generation != gen:
            self._index = self._load_faiss(gen)
            self._index_generation = gen
        return self._index

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[KnowledgeBase]:
        """A consistent read view: FAISS, lexical postings and chunk rows all of one committed generation."""
        if self.conn.in_transaction:  # nested, or a writer reading its own state
            yield self
            return
        for attempt in range(5):
            self.conn.execute("BEGIN")
            try:
                self.index  # noqa: B018 - loads the generation seen by this transaction
            except FileNotFoundError:
                self.conn.execute("ROLLBACK")
                if attempt == 4:
                    raise StoreCorruptError(
                        f"{self.path / _faiss_name(self.generation)} is missing; {_REBUILD_HINT}"
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
        index = self.index
        if index.ntotal == 0 or k <= 0:
            return []
        q = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        scores, ids = index.search(q, min(k, index.ntotal))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

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
            rows = self.conn.execute(
                "SELECT path, status, chunks, root, sha256, size, mtime_ns, error, pages, title, updated_at, id "
                "FROM documents ORDER BY path"
            ).fetchall()
        return [DocumentInfo(*r) for r in rows]

    def document(self, path: str) -> DocumentInfo | None:
        r = self.conn.execute(
            "SELECT path, status, chunks, root, sha256, size, mtime_ns, error, pages, title, updated_at, id "
            "FROM documents WHERE path = ?",
            (path,),
        ).fetchone()
        return DocumentInfo(*r) if r else None

    def chunks(self, ids: Iterable[int]) -> dict[int, ChunkRow]:
        """Chunk rows by id (ids that no longer exist are absent)."""
        ids = list(dict.fromkeys(int(i) for i in ids))
        out: dict[int, ChunkRow] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            q = f"{_CHUNK_ROWS} WHERE c.id IN ({','.join('?' * len(part))})"
            for r in self.conn.execute(q, part):
                out[r[0]] = ChunkRow(*r)
        return out

    def neighbours(self, document_id: int, ordinals: Sequence[int]) -> dict[int, ChunkRow]:
        """Chunks of one document by ordinal (for expanding a hit with its context)."""
        if not ordinals:
            return {}
        q = f"{_CHUNK_ROWS} WHERE c.document_id = ? AND c.ordinal IN ({','.join('?' * len(ordinals))})"
        return {r[2]: ChunkRow(*r) for r in self.conn.execute(q, [document_id, *ordinals])}

    def chunk_count(self) -> int:
        with self._reading():
            return self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def iter_vectors(self, batch: int = 10000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) in batches, from the copies kept in SQLite."""
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

    # ---------------------------------------------------------------- writing
    def _require_writer(self) -> None:
        if not self.writable:
            raise StoreError("the knowledge base was opened read-only")

    def _recover(self) -> None:
        """Writer start-up: drop FAISS files that no commit refers to (left by a crash before commit)."""
        keep = {_faiss_name(self.generation), _faiss_name(self.generation - 1)}
        for p in self.path.glob("vectors.*.faiss*"):
            if p.name not in keep:
                with contextlib.suppress(OSError):
                    p.unlink()
        with contextlib.suppress(OSError):
            (self.path / (MANIFEST_NAME + ".tmp")).unlink()
        if not (self.path / MANIFEST_NAME).exists():
            # a crash while creating the knowledge base, between its first commit and the first manifest write;
            # the manifest is only a summary of the database, so it is written afresh
            with contextlib.suppress(OSError):  # no room: open() then reports the missing manifest
                self._write_manifest()
            return
        # The manifest may lag one commit behind after a crash; bring it up to date.
        try:
            self._check_manifest()
            if self.read_manifest().get("generation") != self.generation:
                self._write_manifest()
        except StoreCorruptError:
            pass  # reported to the user by _check_manifest in open(); `docqa rebuild` rewrites it

    @contextlib.contextmanager
    def batch(self) -> Iterator[Batch]:
        """Group changes into one commit: all of them become visible together, or none (on error or crash)."""
        self._require_writer()
        index = self.index  # current generation, loaded before the write transaction
        b = Batch(self, index)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield b
            b._commit()
        except BaseException as e:
            with contextlib.suppress(sqlite3.Error):
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            self._index = None  # the in-memory index may hold uncommitted changes: reload from disk
            self._index_generation = -1
            if isinstance(e, sqlite3.Error):  # e.g. SQLITE_FULL while the transaction spills to the WAL
                raise StoreError(
                    f"could not write the database: {e}; the knowledge base is unchanged (generation "
                    f"{self.generation})"
                ) from None
            raise

    def remove_documents(self, paths: Iterable[str]) -> int:
        """Remove documents (and their chunks) in one commit. Returns how many existed."""
        with self.batch() as b:
            return sum(b.remove_document(p) for p in paths)

    def rebuild(self) -> dict:
        """Rebuild the FAISS and lexical indexes from the vectors and text kept in SQLite (no re-embedding)."""
        import faiss

        self._require_writer()
        bad = self.conn.execute(
            "SELECT DISTINCT d.path FROM chunks c JOIN documents d ON d.id = c.document_id WHERE length(c.vector) != ?",
            (self.dim * 2,),
        ).fetchall()
        if bad:  # the stored copies are what rebuild restores from: these cannot be restored, only re-embedded
            paths = ", ".join(r[0] for r in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise StoreCorruptError(
                f"stored vectors are damaged for {len(bad)} documents ({paths}); remove them with `docqa remove` "
                "and ingest them again, then run `docqa rebuild`"
            )
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        for ids, vecs in self.iter_vectors():
            faiss.normalize_L2(vecs)
            index.add_with_ids(vecs, ids)
        self._index, self._index_generation = index, self.generation  # never read the (maybe damaged) old file
        with self.batch() as b:
            b.index = index
            self.lexical.clear()
            last = -1
            while True:
                rows = self.conn.execute(
                    "SELECT id, section, text FROM chunks WHERE id > ? ORDER BY id LIMIT 5000", (last,)
                ).fetchall()
                if not rows:
                    break
                self.lexical.add([r[0] for r in rows], [index_text(r[1], r[2]) for r in rows])
                last = rows[-1][0]
            b._dirty = True
        return {"chunks": int(index.ntotal), "generation": self.generation}

    def verify(self) -> list[tuple[str, str]]:
        """Check everything that must agree. Returns [(level, message)], level 'error' or 'warning'; no errors
        means healthy. Never raises for damage it can describe."""
        problems: list[tuple[str, str]] = []
        err = lambda m: problems.append(("error", m))  # noqa: E731
        try:
            res = [r[0] for r in self.conn.execute("PRAGMA integrity_check").fetchall()]
            if res != ["ok"]:
                err(f"SQLite integrity check failed: {'; '.join(res[:5])}")
                return problems
        except sqlite3.DatabaseError as e:
            err(f"SQLite integrity check failed: {e}")
            return problems
        try:
            m = self.read_manifest()
            if m.get("embed_model") != self.embed_model or m.get("dim") != self.dim:
                err("manifest.json names another embedding model or dimension than the database")
            lag = self.generation - int(m.get("generation", -1))
            if lag == 1:
                problems.append(("warning", "manifest.json lags one commit behind (interrupted commit; repaired by the next write)"))
            elif lag != 0:
                err(f"manifest.json is at generation {m.get('generation')}, the database at {self.generation}")
        except StoreCorruptError as e:
            err(str(e))
        ids = {r[0] for r in self.conn.execute("SELECT id FROM chunks")}
        try:
            index = self._load_faiss(self.generation)
            import faiss

            faiss_ids = set(faiss.vector_to_array(index.id_map).tolist()) if index.ntotal else set()
            if index.ntotal != len(ids) or faiss_ids != ids:
                err(f"FAISS index holds {index.ntotal} vectors, the database {len(ids)} chunks "
                    f"({len(faiss_ids - ids)} unknown ids, {len(ids - faiss_ids)} missing)")
        except FileNotFoundError:
            err(f"{_faiss_name(self.generation)} is missing; {_REBUILD_HINT}")
        except StoreCorruptError as e:
            err(str(e))
        bad_vec = self.conn.execute(
            "SELECT count(*) FROM chunks WHERE length(vector) != ?", (self.dim * 2,)
        ).fetchone()[0]
        if bad_vec:
            err(f"{bad_vec} chunks have a stored vector of the wrong size")
        lex = self.lexical.chunk_ids()
        if lex != ids:
            err(f"lexical index covers {len(lex)} chunks, the database has {len(ids)}; {_REBUILD_HINT}")
        wrong = self.conn.execute(
            "SELECT count(*) FROM documents d WHERE d.chunks != (SELECT count(*) FROM chunks c WHERE c.document_id = d.id)"
        ).fetchone()[0]
        if wrong:
            err(f"{wrong} documents have a chunk count that does not match their chunks (a partial document)")
        orphans = self.conn.execute(
            "SELECT count(*) FROM chunks WHERE document_id NOT IN (SELECT id FROM documents)"
        ).fetchone()[0]
        if orphans:
            err(f"{orphans} chunks belong to no document")
        return problems

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self.conn.close()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Batch:
    """Changes collected for one commit (see KnowledgeBase.batch)."""

    def __init__(self, kb: KnowledgeBase, index):
        self.kb = kb
        self.index = index
        self._dirty = False
        self._lexical_ids: list[int] = []
        self._lexical_texts: list[str] = []

    def remove_document(self, path: str) -> bool:
        c = self.kb.conn
        row = c.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
        if row is None:
            return False
        self._drop_chunks(row[0])
        c.execute("DELETE FROM documents WHERE id = ?", (row[0],))
        self._dirty = True
        return True

    def _drop_chunks(self, document_id: int) -> None:
        c = self.kb.conn
        ids = [r[0] for r in c.execute("SELECT id FROM chunks WHERE document_id = ?", (document_id,))]
        if ids:
            self.index.remove_ids(np.array(ids, dtype=np.int64))
            self.kb.lexical.remove(ids)
            gone = set(ids)
            if gone.intersection(self._lexical_ids):  # the document was put earlier in this same batch
                kept = [(i, t) for i, t in zip(self._lexical_ids, self._lexical_texts) if i not in gone]
                self._lexical_ids = [i for i, _ in kept]
                self._lexical_texts = [t for _, t in kept]
            c.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
            self._dirty = True

    def put_document(self, info: DocumentInfo, chunks: Sequence[Chunk], vectors: np.ndarray | None) -> int:
        """Insert or replace the document at `info.path` with `chunks` (status 'ok') or as a failure (no chunks)."""
        c = self.kb.conn
        if vectors is not None and len(chunks) != len(vectors):
            raise ValueError("one vector per chunk expected")
        if vectors is not None and len(vectors) and vectors.shape[1] != self.kb.dim:
            raise ModelMismatchError(f"vectors have dimension {vectors.shape[1]}, the knowledge base {self.kb.dim}")
        row = c.execute("SELECT id FROM documents WHERE path = ?", (info.path,)).fetchone()
        values = (
            info.root, info.sha256, info.size, info.mtime_ns, info.status, info.error, len(chunks), info.pages,
            info.title, time.time(),
        )  # fmt: skip
        if row is not None:
            doc_id = row[0]
            self._drop_chunks(doc_id)
            c.execute(
                "UPDATE documents SET root=?, sha256=?, size=?, mtime_ns=?, status=?, error=?, chunks=?, pages=?, "
                "title=?, updated_at=? WHERE id=?",
                (*values, doc_id),
            )
        else:
            doc_id = c.execute(
                "INSERT INTO documents (root, sha256, size, mtime_ns, status, error, chunks, pages, title, updated_at,"
                " path) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (*values, info.path),
            ).lastrowid
        if chunks:
            ids = []
            for ch, vec in zip(chunks, vectors):
                ids.append(
                    c.execute(
                        "INSERT INTO chunks (document_id, ordinal, text, page, section, start, end, n_tokens, vector) "
                        "VALUES (?,?,?,?,?,?,?,?,?)",
                        (doc_id, ch.ordinal, ch.text, ch.page, ch.section, ch.start, ch.end, ch.n_tokens,
                         np.asarray(vec, dtype=np.float16).tobytes()),
                    ).lastrowid
                )  # fmt: skip
            id_arr = np.array(ids, dtype=np.int64)
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), id_arr)
            # buffered: one lexical add per commit writes far fewer posting rows than one per document
            self._lexical_ids.extend(ids)
            self._lexical_texts.extend(index_text(ch.section, ch.text) for ch in chunks)
        self._dirty = True
        return doc_id

    def touch_document(self, path: str, mtime_ns: int) -> None:
        """Record a new mtime for an unchanged file (same content), so the next sync skips hashing it."""
        self.kb.conn.execute("UPDATE documents SET mtime_ns=? WHERE path=?", (mtime_ns, path))

    def _commit(self) -> None:
        import faiss

        kb, c = self.kb, self.kb.conn
        if self._lexical_ids:
            kb.lexical.add(self._lexical_ids, self._lexical_texts)
            self._lexical_ids, self._lexical_texts = [], []
        if not self._dirty:
            c.execute("COMMIT")
            return
        old = kb.generation
        new = old + 1
        target = kb.path / _faiss_name(new)
        try:
            blob = faiss.serialize_index(self.index).tobytes()
            write_atomic(target, blob)
        except OSError as e:
            with contextlib.suppress(OSError):
                target.with_name(target.name + ".tmp").unlink()
            raise StoreError(
                f"could not write {target.name}: {_io_message(e)}; the knowledge base is unchanged (generation {old})"
            ) from None
        for k, v in (("generation", new), ("faiss_size", len(blob)), ("faiss_crc32", zlib.crc32(blob))):
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, str(v)))
        try:
            c.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(OSError):
                target.unlink()
            raise StoreError(f"could not commit the database: {e}; the knowledge base is unchanged") from None
        kb._index, kb._index_generation = self.index, new
        try:
            kb._write_manifest()
        except OSError:
            pass  # the manifest lagging one commit is tolerated and repaired by the next writer
        for p in kb.path.glob("vectors.*.faiss"):
            with contextlib.suppress(ValueError, OSError):
                if int(p.name.split(".")[1]) < old:
                    p.unlink()
