"""Schema migrations (docqa/store/schema.py): recorded in meta, applied in place, newer versions refused."""

import json
import sqlite3

import pytest
from storekit import new_kb, put

from docqa.errors import StoreError, StoreLockedError
from docqa.store import KnowledgeBase, schema


def _sql(path, q, *args):
    c = sqlite3.connect(path / "kb.sqlite", isolation_level=None)
    try:
        return c.execute(q, args).fetchall()
    finally:
        c.close()


def _recorded(path) -> list[int]:
    return sorted(int(k.split(".")[1]) for (k,) in _sql(path, "SELECT key FROM meta WHERE key LIKE 'migration.%'"))


def _format(path) -> str:
    return _sql(path, "SELECT value FROM meta WHERE key = 'format_version'")[0][0]


def test_a_new_kb_records_migration_1(tmp_path):
    new_kb(tmp_path / "kb").close()
    assert _recorded(tmp_path / "kb") == [1] and _format(tmp_path / "kb") == "1"
    assert schema.latest_version() == 1
    (value,) = _sql(tmp_path / "kb", "SELECT value FROM meta WHERE key = 'migration.1'")[0]
    record = json.loads(value)
    assert record["name"] == schema.MIGRATIONS[0].name and record["applied_at"] > 0


def test_a_kb_from_before_the_record_opens_and_gets_it(tmp_path):
    """Knowledge bases made before migrations existed: the same tables, meta.format_version = 1 and no record."""
    path = tmp_path / "kb"
    with new_kb(path) as kb:
        put(kb, "/d/a.txt", ["one", "two"])
    _sql(path, "DELETE FROM meta WHERE key LIKE 'migration.%'")
    with KnowledgeBase.open(path) as kb:  # a reader needs nothing applied, so it writes nothing
        assert [d.path for d in kb.documents()] == ["/d/a.txt"]
    assert _recorded(path) == []
    with KnowledgeBase.open(path, writable=True) as kb:
        assert kb.verify() == []
    assert _recorded(path) == [1]


def _add_migration_2(monkeypatch, apply=None):
    def add_column(conn):
        conn.execute("ALTER TABLE documents ADD COLUMN lang TEXT NOT NULL DEFAULT ''")

    m2 = schema.Migration(2, "documents.lang", apply or add_column)
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, m2])


@pytest.mark.parametrize("writable", [True, False])
def test_an_older_kb_is_upgraded_in_place(tmp_path, monkeypatch, writable):
    path = tmp_path / "kb"
    with new_kb(path) as kb:
        put(kb, "/d/a.txt", ["one", "two"])
        gen = kb.generation
    _add_migration_2(monkeypatch)  # "this docqa" now knows a schema version 2
    with KnowledgeBase.open(path, writable=writable) as kb:
        assert [(d.path, d.chunks) for d in kb.documents()] == [("/d/a.txt", 2)] and kb.generation == gen
        assert kb.verify() == []
    assert _recorded(path) == [1, 2] and _format(path) == "2"
    assert _sql(path, "SELECT lang FROM documents") == [("",)]
    with KnowledgeBase.open(path, writable=True) as kb:  # applied once only
        put(kb, "/d/b.txt", ["three"])
    assert _recorded(path) == [1, 2]


def test_a_reader_does_not_upgrade_under_a_writer(tmp_path, monkeypatch):
    path = tmp_path / "kb"
    new_kb(path).close()
    with KnowledgeBase.open(path, writable=True):  # a writer of "the old docqa" is mid-ingest
        _add_migration_2(monkeypatch)
        with pytest.raises(StoreLockedError, match="locked by PID"):
            KnowledgeBase.open(path)
    assert _recorded(path) == [1]


def test_a_failing_migration_changes_nothing(tmp_path, monkeypatch):
    def half_then_fail(conn):
        conn.execute("ALTER TABLE documents ADD COLUMN lang TEXT NOT NULL DEFAULT ''")
        raise sqlite3.OperationalError("database or disk is full")

    path = tmp_path / "kb"
    new_kb(path).close()
    _add_migration_2(monkeypatch, half_then_fail)
    with pytest.raises(sqlite3.OperationalError):
        KnowledgeBase.open(path, writable=True)
    assert _recorded(path) == [1] and _format(path) == "1"
    assert "lang" not in [r[1] for r in _sql(path, "PRAGMA table_info(documents)")]


@pytest.mark.parametrize("how", ["record", "legacy format_version"])
@pytest.mark.parametrize("writable", [True, False])
def test_a_kb_from_a_newer_docqa_is_refused(tmp_path, how, writable):
    path = tmp_path / "kb"
    new_kb(path).close()
    if how == "record":
        _sql(path, "INSERT INTO meta VALUES ('migration.2', '{\"name\": \"from the future\"}')")
    else:
        _sql(path, "DELETE FROM meta WHERE key LIKE 'migration.%'")
        _sql(path, "UPDATE meta SET value = '2' WHERE key = 'format_version'")
    with pytest.raises(StoreError, match="written by a newer docqa .*version 2; this docqa reads up to version 1"):
        KnowledgeBase.open(path, writable=writable)
    assert _format(path) == ("1" if how == "record" else "2")  # left as it was
