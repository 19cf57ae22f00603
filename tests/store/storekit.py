"""Small builders shared by the tests of docqa/store/ (imported as `storekit`: pytest puts this folder on sys.path)."""

from __future__ import annotations

import numpy as np

from docqa.documents import Chunk
from docqa.store import DocumentInfo, KnowledgeBase

DIM = 8


def vecs(n: int, seed: int = 0) -> np.ndarray:
    """`n` random unit vectors of dimension DIM (float32)."""
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def chunks(texts: list[str]) -> list[Chunk]:
    return [
        Chunk(text=t, start=i * 100, end=i * 100 + len(t), ordinal=i, page=i + 1, section="S")
        for i, t in enumerate(texts)
    ]


def new_kb(path, **kw) -> KnowledgeBase:
    """A fresh writable knowledge base (embedding model "m", dimension DIM)."""
    return KnowledgeBase.open(path, create=True, writable=True, embed_model="m", dim=DIM, **kw)


def put(kb: KnowledgeBase, path: str, texts: list[str], seed: int = 0) -> None:
    """One commit adding (or replacing) the document `path` with one chunk per text."""
    with kb.batch() as b:
        b.put_document(DocumentInfo(path=path, sha256="x"), chunks(texts), vecs(len(texts), seed))
