"""The server's own state in one SQLite file: uploads, ingest jobs, conversations and API keys.

    <state dir>/server.sqlite
      uploads        one row per uploaded file: knowledge base, original name, SHA-256, size, stored path, job
      jobs           ingest jobs: status queued|running|done|failed|cancelled, stage, progress, files, errors
      conversations  id, knowledge base, title, times;  messages: role, text, sources, citations
      api_keys       name, SHA-256 of the key, scope (the key itself is never stored)

The knowledge bases themselves stay where docqa keeps them (docqa/store/); this file only says what the server
did with them. Every statement runs under one lock on one connection (WAL, autocommit): the queries are short,
and the server's threads (event loop, ingest workers, generation threads) share it safely.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, kb TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    path TEXT NOT NULL, status TEXT NOT NULL, error TEXT NOT NULL DEFAULT '', job_id TEXT,
    created REAL NOT NULL, updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_kb ON uploads(kb, sha256);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kb TEXT NOT NULL, status TEXT NOT NULL, stage TEXT NOT NULL DEFAULT '',
    progress REAL NOT NULL DEFAULT 0, files TEXT NOT NULL DEFAULT '[]', errors TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 0, report TEXT, created REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, kb TEXT NOT NULL, title TEXT NOT NULL DEFAULT '', created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL, content TEXT NOT NULL, rewritten TEXT, sources TEXT NOT NULL DEFAULT '[]',
    cited TEXT NOT NULL DEFAULT '[]', abstained INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_conv ON messages(conversation_id, id);
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, scope TEXT NOT NULL, created REAL NOT NULL
);
"""

_JSON_COLUMNS = {"files", "errors", "report", "sources", "cited"}


class ServerDB:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(SCHEMA)

    def execute(self, sql: str, params: tuple | list = ()) -> int:
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def rows(self, sql: str, params: tuple | list = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [_decode(dict(r)) for r in self._conn.execute(sql, params).fetchall()]

    def row(self, sql: str, params: tuple | list = ()) -> dict[str, Any] | None:
        got = self.rows(sql, params)
        return got[0] if got else None

    def insert(self, table: str, values: dict[str, Any]) -> int:
        cols = ", ".join(values)
        marks = ", ".join("?" * len(values))
        with self._lock:
            cur = self._conn.execute(
                f"INSERT INTO {table} ({cols}) VALUES ({marks})", [_encode(v) for v in values.values()]
            )
            return int(cur.lastrowid or 0)

    def update(self, table: str, key: str, values: dict[str, Any]) -> None:
        values = {**values, "updated": time.time()} if table in ("jobs", "uploads", "conversations") else values
        sets = ", ".join(f"{c} = ?" for c in values)
        with self._lock:
            self._conn.execute(f"UPDATE {table} SET {sets} WHERE id = ?", [*(_encode(v) for v in values.values()), key])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _encode(v: Any) -> Any:
    return json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for k in _JSON_COLUMNS & row.keys():
        if isinstance(row[k], str):
            row[k] = json.loads(row[k])
    return row
