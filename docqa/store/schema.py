"""The SQLite schema of a knowledge base, as numbered migrations recorded in the database itself.

    >>> db = Path("kb/kb.sqlite"); conn = connect(db)  # doctest: +SKIP
    >>> applied_version(conn, db)      # 0 for an empty file, 1 for a knowledge base made before migrations  # doctest: +SKIP
    1
    >>> migrate(conn, db)              # applies 2, 3, ... in order, each in its own transaction  # doctest: +SKIP
    1

Every schema change is a new `Migration` appended to MIGRATIONS (never an edit of an old one): opening a knowledge
base applies the ones it lacks, in place, and records each as a meta row `migration.<version>` =
{"name", "applied_at"} in the same transaction as its DDL, so a crash leaves every migration applied and recorded,
or neither. Migration 1 is the schema as first released. Knowledge bases made before this record existed have
`meta.format_version = 1` and no `migration.*` rows; they count as at version 1 and get the record on their next
writable open. (Meta rows rather than a table of their own: the record then needs no page of its own, so
recording it leaves the file's layout as it was.)

`meta.format_version` is kept equal to the newest applied migration: docqa releases from before migrations refuse
any format but 1, so they refuse an upgraded knowledge base instead of misreading it.

Limits: migrations only go forward; a knowledge base from a newer docqa (a version beyond MIGRATIONS) is refused
with StoreError, never downgraded. A migration must be plain SQL that SQLite can run inside a transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..bm25 import LexicalIndex
from ..errors import StoreCorruptError, StoreError

_V1_SQL = """
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


@dataclass(frozen=True)
class Migration:
    """One schema step: `apply(conn)` runs inside the transaction that also records it."""

    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


def _script(sql: str) -> Callable[[sqlite3.Connection], None]:
    """A migration from a SQL script of one statement per line end (as SCHEMA strings are written)."""

    # executescript() would COMMIT first; running the statements one by one keeps the DDL inside migrate()'s
    # transaction. complete_statement() knows SQL comments and literals, so a ';' inside one does not split.
    def apply(conn: sqlite3.Connection) -> None:
        buf = ""
        for line in sql.splitlines(keepends=True):
            buf += line
            if sqlite3.complete_statement(buf):
                conn.execute(buf)
                buf = ""
        if buf.strip():
            raise ValueError(f"incomplete SQL statement in a migration: {buf!r}")

    return apply


# IF NOT EXISTS throughout: a crash during the first release's own creation left some of these tables behind
# without any record, and migration 1 must then complete them rather than fail.
MIGRATIONS: list[Migration] = [
    Migration(1, "documents, chunks, meta and the lexical index", _script(_V1_SQL + LexicalIndex.SCHEMA)),
]


def latest_version() -> int:
    """The newest schema this docqa knows (a function, so tests can extend MIGRATIONS)."""
    return MIGRATIONS[-1].version


def connect(db: Path) -> sqlite3.Connection:
    """Open the database in autocommit mode (transactions are explicit), WAL, full fsync, foreign keys on."""
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


def read_meta(conn: sqlite3.Connection, key: str, db: Path) -> str | None:
    """A value of the meta table; None when absent or when there is no meta table yet. `db` names the file in
    the StoreCorruptError raised when SQLite reports damage."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:  # no meta table yet
        return None
    except sqlite3.DatabaseError as e:
        raise StoreCorruptError(f"{db} is damaged ({e})") from None
    return None if row is None else row[0]


_RECORD_PREFIX = "migration."  # meta key of an applied migration: migration.<version> -> {"name", "applied_at"}


def _recorded(conn: sqlite3.Connection, db: Path) -> list[int]:
    try:
        keys = conn.execute("SELECT key FROM meta WHERE key LIKE 'migration.%'").fetchall()
    except sqlite3.OperationalError:  # no meta table: a new file
        return []
    except sqlite3.DatabaseError as e:
        raise StoreCorruptError(f"{db} is damaged ({e})") from None
    try:
        return sorted(int(k[len(_RECORD_PREFIX) :]) for (k,) in keys)
    except ValueError:
        raise StoreCorruptError(f"{db} has an unreadable migration record {keys!r}") from None


def _record(conn: sqlite3.Connection, m: Migration) -> None:
    value = json.dumps({"name": m.name, "applied_at": time.time()}, ensure_ascii=False)
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"{_RECORD_PREFIX}{m.version}", value))


def applied_migrations(conn: sqlite3.Connection, db: Path) -> list[int]:
    """The versions recorded as applied, in order (empty for a new file or one made before the record)."""
    return _recorded(conn, db)


def applied_version(conn: sqlite3.Connection, db: Path) -> int:
    """The newest migration applied to this database (0: none, i.e. a new file)."""
    recorded = _recorded(conn, db)
    if recorded:
        return recorded[-1]
    legacy = read_meta(conn, "format_version", db)  # a knowledge base from before the record: format N = migration N
    try:
        return int(legacy) if legacy is not None else 0
    except ValueError:
        raise StoreCorruptError(f"{db} has an unreadable format_version {legacy!r}") from None


def check_version(conn: sqlite3.Connection, where: Path) -> int:
    """The applied version; StoreError if a newer docqa wrote it (this one would misread it). `where` is the
    database file."""
    v = applied_version(conn, where)
    if v > latest_version():
        raise StoreError(
            f"{where} was written by a newer docqa (knowledge-base schema version {v}; this docqa reads up to "
            f"version {latest_version()}): upgrade docqa to use it"
        )
    return v


def needs_migration(conn: sqlite3.Connection, db: Path) -> bool:
    """True when `migrate` has work to do: missing migrations, or a legacy knowledge base without the record."""
    return check_version(conn, db) < latest_version() or not _recorded(conn, db)


def migrate(conn: sqlite3.Connection, db: Path) -> int:
    """Apply every missing migration in order (the caller holds the writer lock); returns the version reached."""
    current = check_version(conn, db)
    if current and not _recorded(conn, db):  # a legacy knowledge base: record what its format number says
        conn.execute("BEGIN IMMEDIATE")
        try:
            for m in MIGRATIONS:
                if m.version <= current:
                    _record(conn, m)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    for m in MIGRATIONS:
        if m.version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            m.apply(conn)
            _record(conn, m)
            # a no-op on a new database (format_version is written when it is initialised, as the latest version)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(m.version),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current = m.version
    return current
