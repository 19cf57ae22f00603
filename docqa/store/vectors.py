"""The vector index behind a knowledge base, as an interface a second backend (Milvus, later) can implement.

    >>> cls = vector_backend("faiss")  # doctest: +SKIP
    >>> index = cls.empty(dim=384)  # doctest: +SKIP
    >>> index.add(np.array([7, 9]), vectors)              # ids are the chunk ids; vectors unit length, float32  # doctest: +SKIP
    >>> index.search(vectors[1], k=1)  # doctest: +SKIP
    [(9, 1.0)]
    >>> record = index.save(Path("kb"), generation=4)     # -> {"faiss_size": "...", "faiss_crc32": "..."}  # doctest: +SKIP
    >>> cls.load(Path("kb"), 4, record, dim=384).count()  # doctest: +SKIP
    2

Persistence is by generation: every commit saves the whole index as generation G+1, and the knowledge base stores
the `record` that `save` returns in SQLite, in the same transaction as the chunk rows. `load` checks the saved data
against that record before parsing it, so damage is a StoreCorruptError, never a crash or a silently wrong
result. The knowledge base keeps the current and the previous generation (a reader that has just read G may still
be opening it) and asks the backend to `prune` the rest.

Scores are inner products; with unit vectors that is the cosine. Ids are int64 and are never renumbered.

Backends: "faiss" (faiss.py, files in the folder) and "milvus" (milvus.py, a Milvus collection whose rows carry
the generations that added and removed them, plus a small pointer file per generation in the folder).

Limits: the interface is the one the knowledge base needs (whole-generation save per commit); a server-side
backend keeps a connection, which `connect`/`disconnect` bracket for each open knowledge base.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np

DEFAULT_BACKEND = "faiss"


class VectorIndex(ABC):
    """Chunk id -> vector, with nearest-neighbour search and generation-wise persistence."""

    name: ClassVar[str]
    #: the meta-table keys `save` returns and `load` expects (stored in SQLite with each commit)
    record_keys: ClassVar[tuple[str, ...]]

    # ------------------------------------------------------------ in memory
    @classmethod
    @abstractmethod
    def empty(cls, dim: int) -> VectorIndex:
        """A new index holding nothing."""

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add `vectors` (n x dim) under `ids` (n int64 ids not already present)."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Remove `ids`; ids not present are ignored."""

    @abstractmethod
    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(id, score) of the `k` nearest, best first; fewer when the index holds fewer."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def ids(self) -> set[int]:
        """Every id held (for `verify`, which compares them with the chunk rows)."""

    @abstractmethod
    def reconstruct(self, id: int) -> np.ndarray:
        """The stored vector of `id` (float32); KeyError if it is not held."""

    # ------------------------------------------------------------ persistence
    @abstractmethod
    def save(self, folder: Path, generation: int) -> dict[str, str]:
        """Persist as `generation`; returns the record `load` checks. OSError if storage refuses; then nothing
        of that generation is left behind."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, generation: int, record: Mapping[str, str | None], dim: int) -> VectorIndex:
        """Load `generation`: FileNotFoundError if it is gone (a writer moved on), StoreCorruptError if it does
        not match `record` or `dim`."""

    @classmethod
    @abstractmethod
    def discard(cls, folder: Path, generation: int) -> None:
        """Remove a saved generation whose commit failed (no error if there is nothing)."""

    @classmethod
    @abstractmethod
    def prune(cls, folder: Path, keep: Collection[int]) -> None:
        """Remove every saved generation not in `keep`, and anything a crash left half-written."""

    @classmethod
    @abstractmethod
    def location(cls, generation: int) -> str:
        """Where `generation` is kept, in words for messages (e.g. "vectors.3.faiss")."""

    @classmethod
    def manifest_fields(cls, generation: int) -> dict[str, str]:
        """What manifest.json says about the stored vectors."""
        return {f"{cls.name}_location": cls.location(generation)}

    # ------------------------------------------------------------ index kind (FAISS: flat / approximate by size)
    def prepare(self, ann: str, vectors: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]) -> VectorIndex:
        """The index to save in this commit, under the `ann` setting: self, or a re-trained one built from
        `vectors()` (the knowledge base's stored (ids, vectors) batches). Default: self, unchanged."""
        return self

    @classmethod
    def describe(cls, record: Mapping[str, str | None]) -> dict:
        """Extra manifest.json fields about the index a commit `record` describes (kind, parameters)."""
        return {}

    # ------------------------------------------------------------ connection (server-side backends)
    @classmethod  # noqa: B027 - an optional hook, a no-op for file backends
    def connect(cls, folder: Path) -> None:
        """A knowledge base in `folder` starts using this backend (Milvus shares one client per URI)."""

    @classmethod  # noqa: B027 - an optional hook, a no-op for file backends
    def disconnect(cls, folder: Path) -> None:
        """The knowledge base that `connect`ed closes."""


def vector_backend(name: str, **options: str) -> type[VectorIndex]:
    """The VectorIndex class called `name` (StoreError for an unknown one), configured by `options`
    (milvus: `uri`; FAISS takes none and ignores them, so callers can always pass the settings').

    Backends are imported here, on demand, so that choosing one never imports another's client library."""
    from ..errors import StoreError

    if name == "faiss":
        from .faiss import FaissIndex

        return FaissIndex
    if name == "milvus":
        from .milvus import MilvusIndex

        return MilvusIndex.configured(options.get("uri") or "")
    raise StoreError(f"unknown vector index backend {name!r} (this docqa has: {', '.join(backend_names())})")


def backend_names() -> list[str]:
    """Every backend `vector_backend` knows (the contract tests run over all of them); milvus only where
    pymilvus and milvus-lite are installed."""
    import importlib.util

    names = ["faiss"]
    if importlib.util.find_spec("pymilvus") and importlib.util.find_spec("milvus_lite"):
        names.append("milvus")
    return names
