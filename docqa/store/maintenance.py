"""`docqa verify` and `docqa rebuild`: check that everything in a knowledge base agrees, and restore the derived
indexes (vectors, lexical) from what SQLite keeps.

    >>> with KnowledgeBase.open("kb", validate=False) as kb:  # doctest: +SKIP
    ...     verify(kb)
    [('warning', 'manifest.json lags one commit behind (interrupted commit; repaired by the next write)')]
    >>> with KnowledgeBase.open("kb", writable=True, validate=False) as kb:  # doctest: +SKIP
    ...     rebuild(kb)
    {'chunks': 1234, 'generation': 9}

Both work through the knowledge base's public surface (its connection, lexical index, batches), so they hold no
knowledge of how a batch commits or where a backend keeps its vectors.

Limits: rebuild restores from the float16 copies of the vectors, so dense scores afterwards differ from the
originals in about the fourth decimal (rankings essentially never); a chunk whose stored vector is damaged cannot
be restored, only re-ingested. Neither can bring back rows lost from SQLite itself.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import numpy as np

from ..errors import StoreCorruptError
from .files import REBUILD_HINT
from .rows import index_text

if TYPE_CHECKING:
    from .kb import KnowledgeBase


def rebuild(kb: KnowledgeBase) -> dict:
    """Rebuild the vector and lexical indexes from the vectors and text kept in SQLite (no re-embedding), as one
    commit. StoreCorruptError, changing nothing, when stored vectors are damaged (it names their documents)."""
    kb.require_writer()
    bad = kb.conn.execute(
        "SELECT DISTINCT d.path FROM chunks c JOIN documents d ON d.id = c.document_id WHERE length(c.vector) != ?",
        (kb.dim * 2,),
    ).fetchall()
    if bad:  # the stored copies are what rebuild restores from: these cannot be restored, only re-embedded
        paths = ", ".join(r[0] for r in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise StoreCorruptError(
            f"stored vectors are damaged for {len(bad)} documents ({paths}); remove them with `docqa remove` "
            "and ingest them again, then run `docqa rebuild`"
        )
    index = kb.backend.empty(kb.dim)
    for ids, vecs in kb.iter_vectors():
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)  # float16 rounding leaves them a little off unit length
        index.add(ids, np.divide(vecs, norms, out=vecs, where=norms > 0))
    with kb.batch(index=index) as b:  # a fresh index: the old (maybe damaged) file is never read
        kb.lexical.clear()
        last = -1
        while True:
            rows = kb.conn.execute(
                "SELECT id, section, text FROM chunks WHERE id > ? ORDER BY id LIMIT 5000", (last,)
            ).fetchall()
            if not rows:
                break
            kb.lexical.add([r[0] for r in rows], [index_text(r[1], r[2]) for r in rows])
            last = rows[-1][0]
        b.mark_changed()
    return {"chunks": index.count(), "generation": kb.generation}


def verify(kb: KnowledgeBase) -> list[tuple[str, str]]:
    """Check everything that must agree. Returns [(level, message)], level 'error' or 'warning'; no errors
    means healthy. Never raises for damage it can describe."""
    problems: list[tuple[str, str]] = []
    try:
        res = [r[0] for r in kb.conn.execute("PRAGMA integrity_check").fetchall()]
        if res != ["ok"]:
            return [("error", f"SQLite integrity check failed: {'; '.join(res[:5])}")]
    except sqlite3.DatabaseError as e:
        return [("error", f"SQLite integrity check failed: {e}")]
    problems += _verify_manifest(kb)
    ids = {r[0] for r in kb.conn.execute("SELECT id FROM chunks")}
    problems += [("error", m) for m in _verify_vectors(kb, ids)]
    problems += [("error", m) for m in _verify_rows(kb, ids)]
    return problems


def _verify_manifest(kb: KnowledgeBase) -> list[tuple[str, str]]:
    try:
        m = kb.read_manifest()
    except StoreCorruptError as e:
        return [("error", str(e))]
    out = []
    if m.get("embed_model") != kb.embed_model or m.get("dim") != kb.dim:
        out.append(("error", "manifest.json names another embedding model or dimension than the database"))
    lag = kb.generation - int(m.get("generation", -1))
    if lag == 1:
        out.append(("warning", "manifest.json lags one commit behind (interrupted commit; repaired by the next write)"))
    elif lag != 0:
        out.append(("error", f"manifest.json is at generation {m.get('generation')}, the database at {kb.generation}"))
    return out


def _verify_vectors(kb: KnowledgeBase, ids: set[int]) -> list[str]:
    try:
        index = kb.load_index()  # from storage, not the cache: verify judges what is on disk
    except FileNotFoundError:
        return [f"{kb.backend.location(kb.generation)} is missing; {REBUILD_HINT}"]
    except StoreCorruptError as e:
        return [str(e)]
    held = index.ids()
    if index.count() != len(ids) or held != ids:
        # "FAISS" even for another backend: the message is what users and the tests have always read
        return [
            f"FAISS index holds {index.count()} vectors, the database {len(ids)} chunks "
            f"({len(held - ids)} unknown ids, {len(ids - held)} missing)"
        ]
    return []


def _verify_rows(kb: KnowledgeBase, ids: set[int]) -> list[str]:
    out = []
    c = kb.conn
    bad_vec = c.execute("SELECT count(*) FROM chunks WHERE length(vector) != ?", (kb.dim * 2,)).fetchone()[0]
    if bad_vec:
        out.append(f"{bad_vec} chunks have a stored vector of the wrong size")
    lex = kb.lexical.chunk_ids()
    if lex != ids:
        out.append(f"lexical index covers {len(lex)} chunks, the database has {len(ids)}; {REBUILD_HINT}")
    wrong = c.execute(
        "SELECT count(*) FROM documents d WHERE d.chunks != (SELECT count(*) FROM chunks c WHERE c.document_id = d.id)"
    ).fetchone()[0]
    if wrong:
        out.append(f"{wrong} documents have a chunk count that does not match their chunks (a partial document)")
    orphans = c.execute("SELECT count(*) FROM chunks WHERE document_id NOT IN (SELECT id FROM documents)").fetchone()[0]
    if orphans:
        out.append(f"{orphans} chunks belong to no document")
    return out
