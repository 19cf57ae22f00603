"""The changes of one commit, collected inside `KnowledgeBase.batch()`.

    >>> with kb.batch() as b:                       # BEGIN IMMEDIATE ... commit protocol on exit  # doctest: +SKIP
    ...     b.put_document(DocumentInfo("/d/a.txt", sha256="..."), chunks, vectors)
    ...     b.remove_document("/d/old.txt")

Rows go to SQLite inside the batch's transaction as they come; vectors go to the in-memory VectorIndex; lexical
postings are buffered and written once, just before the commit (one add per commit writes far fewer posting rows
than one per document; the buffer is written early past LEXICAL_BUFFER_CHUNKS, so a huge batch stays bounded in
memory). The knowledge base then saves the index and commits (see docqa/store/__init__.py). What one ingest commit
holds is capped by ingest.commit_limit.

Limits: not thread-safe; one batch at a time per knowledge base; a document put twice in one batch keeps the last.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..documents import Chunk
from ..errors import ModelMismatchError
from .rows import DOCUMENT_NAMES, DocumentInfo, document_name, lexical_text
from .vectors import VectorIndex

if TYPE_CHECKING:
    from .kb import KnowledgeBase

#: postings are buffered for at most this many chunks, then written (still inside the batch's transaction)
LEXICAL_BUFFER_CHUNKS = 20_000


class Batch:
    """Changes collected for one commit (see KnowledgeBase.batch)."""

    def __init__(self, kb: KnowledgeBase, index: VectorIndex):
        self.kb = kb
        self.index = index
        self._changed = False
        self._lexical_ids: list[int] = []
        self._lexical_texts: list[str] = []
        self._names = kb.lexical_text == DOCUMENT_NAMES  # read once: a batch never changes it

    @property
    def changed(self) -> bool:
        """Whether the commit must write a new vector-index generation (not so for mtime touches alone)."""
        return self._changed

    def mark_changed(self) -> None:
        """Force a new generation even though nothing was put or removed (rebuild replaces the whole index)."""
        self._changed = True

    def remove_document(self, path: str) -> bool:
        c = self.kb.conn
        row = c.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
        if row is None:
            return False
        self._drop_chunks(row[0])
        c.execute("DELETE FROM documents WHERE id = ?", (row[0],))
        self._changed = True
        return True

    def _drop_chunks(self, document_id: int) -> None:
        c = self.kb.conn
        ids = [r[0] for r in c.execute("SELECT id FROM chunks WHERE document_id = ?", (document_id,))]
        if ids:
            self.index.remove(np.array(ids, dtype=np.int64))
            self.kb.lexical.remove(ids)
            gone = set(ids)
            if gone.intersection(self._lexical_ids):  # the document was put earlier in this same batch
                kept = [(i, t) for i, t in zip(self._lexical_ids, self._lexical_texts) if i not in gone]
                self._lexical_ids = [i for i, _ in kept]
                self._lexical_texts = [t for _, t in kept]
            c.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
            self._changed = True

    def put_document(self, info: DocumentInfo, chunks: Sequence[Chunk], vectors: np.ndarray | None) -> int:
        """Insert or replace the document at `info.path` with `chunks` (status 'ok') or as a failure (no chunks)."""
        c = self.kb.conn
        if vectors is not None and len(chunks) != len(vectors):
            raise ValueError("one vector per chunk expected")
        if vectors is not None and len(vectors) and vectors.shape[1] != self.kb.dim:
            raise ModelMismatchError(f"vectors have dimension {vectors.shape[1]}, the knowledge base {self.kb.dim}")
        row = c.execute("SELECT id FROM documents WHERE path = ?", (info.path,)).fetchone()
        values = (
            info.root,
            info.sha256,
            info.size,
            info.mtime_ns,
            info.status,
            info.error,
            len(chunks),
            info.pages,
            info.title,
            time.time(),
        )
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
                        (
                            doc_id,
                            ch.ordinal,
                            ch.text,
                            ch.page,
                            ch.section,
                            ch.start,
                            ch.end,
                            ch.n_tokens,
                            np.asarray(vec, dtype=np.float16).tobytes(),
                        ),
                    ).lastrowid
                )
            self.index.add(np.array(ids, dtype=np.int64), vectors)
            self._lexical_ids.extend(ids)
            name = document_name(info.path) if self._names else ""
            self._lexical_texts.extend(lexical_text(name, ch.section, ch.text) for ch in chunks)
            if len(self._lexical_ids) >= LEXICAL_BUFFER_CHUNKS:  # a huge batch (rebuild, a big file): stay bounded
                self.flush_lexical()
        self._changed = True
        return doc_id

    def touch_document(self, path: str, mtime_ns: int) -> None:
        """Record a new mtime for an unchanged file (same content), so the next sync skips hashing it."""
        self.kb.conn.execute("UPDATE documents SET mtime_ns=? WHERE path=?", (mtime_ns, path))

    def flush_lexical(self) -> None:
        """Write the buffered lexical postings (inside the batch's transaction, just before its commit)."""
        if self._lexical_ids:
            self.kb.lexical.add(self._lexical_ids, self._lexical_texts)
            self._lexical_ids, self._lexical_texts = [], []
