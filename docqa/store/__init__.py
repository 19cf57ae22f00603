"""The knowledge base: one folder holding a SQLite database, a vector index and a manifest.

    indexes/default/
      kb.sqlite          documents, chunks (text, page, section, offsets, float16 vector), lexical postings, meta
                         (settings, commit record, applied schema migrations)
      vectors.<G>.faiss  the FAISS index over the chunk vectors, chunk ids as FAISS ids (never renumbered): exact
                         flat while small, IVF (IVF-PQ from 4M) above 100K chunks (faiss.py, the `ann` setting)
      vectors.<G>.milvus with store = "milvus" instead: a pointer to the Milvus collection (milvus.py)
      manifest.json      format version, embedding model, dimension, counts, generation (human-readable summary)
      lock               the writer's PID; held with flock while a writer is open

Commit protocol (crash-safe; SQLite is the single source of truth):
  1. save the new vector index as generation G+1 (FAISS: `vectors.<G+1>.faiss.tmp`, fsync, rename);
  2. in ONE SQLite transaction: chunk rows, lexical postings and `meta.generation = G+1` with the record the
     index's save returned (FAISS: the file's size and CRC32);
  3. rewrite manifest.json (temp file + rename); 4. delete vector generations older than G.
A crash before 2 leaves generation G (the orphan G+1 file is removed by the next writer); a crash after 2 leaves
G+1 complete. Readers read the generation and the chunk rows inside one SQLite read transaction (WAL mode), so a
search during an ingest sees the old or the new state, never a mix. The previous generation is kept so a reader
that has just read G can still open it.

    >>> kb = KnowledgeBase.open("indexes/demo", create=True, writable=True, embed_model="m", dim=384)  # doctest: +SKIP
    >>> with kb.batch() as b:  # doctest: +SKIP
    ...     b.put_document(DocumentInfo("a.txt", ...), chunks, vectors)
    >>> kb.close()  # doctest: +SKIP

One job per module:
  files.py        atomic writes, directory fsync, the flock writer lock ("locked by PID n")
  manifest.py     manifest.json: write, read, checksum, agreement with the database
  schema.py       the SQLite schema as numbered migrations, applied in place and recorded in meta
  vectors.py      the VectorIndex interface and the backend factory; faiss.py and milvus.py implement it
  rows.py         DocumentInfo, ChunkRow, index_text, lexical_text (what the embedder and BM25 read)
  reader.py       the read side: snapshot, dense search, rows
  kb.py           KnowledgeBase: open (create / migrate / recover), batch and the commit
  batch.py        Batch: the changes of one commit
  maintenance.py  verify, rebuild

Limits: every commit rewrites the whole FAISS file, so ingest commits in batches (ingest.py); a commit that moves
the index to another size class re-trains it from the stored vectors (minutes at a million chunks).
"""

from .batch import Batch
from .files import DB_NAME, LOCK_NAME, write_atomic
from .kb import KnowledgeBase, store_options
from .maintenance import rebuild, verify
from .manifest import MANIFEST_NAME
from .rows import ChunkRow, DocumentInfo, index_text
from .schema import latest_version
from .vectors import VectorIndex, vector_backend

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "Batch",
    "ChunkRow",
    "DocumentInfo",
    "KnowledgeBase",
    "VectorIndex",
    "index_text",
    "latest_version",
    "rebuild",
    "store_options",
    "vector_backend",
    "verify",
    "write_atomic",
]
