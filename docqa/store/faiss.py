"""The FAISS backend of VectorIndex: `IndexIDMap2(IndexFlatIP)` in one file per generation.

    kb/vectors.<G>.faiss     faiss.serialize_index bytes; size and CRC32 recorded in SQLite (meta faiss_size,
                             faiss_crc32) in the commit that made generation G

    >>> index = FaissIndex.empty(384)  # doctest: +SKIP
    >>> index.add(np.array([3]), v[None]); index.search(v, 5)  # doctest: +SKIP
    [(3, 1.0)]

The file is checked against the recorded size and CRC32 before FAISS parses it, because FAISS trusts the sizes in
its header: a truncated or bit-flipped file would otherwise crash the process or read garbage.

Limits: flat (exact) search, fast enough to about a million chunks; `save` writes the whole index, so a commit
costs O(index size) (ingest commits in growing batches for that reason). IndexIDMap2 keeps an id -> row map, which
is what makes `reconstruct` possible.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Collection, Mapping
from pathlib import Path

import faiss
import numpy as np

from ..errors import StoreCorruptError
from . import files
from .vectors import VectorIndex


def _file_name(generation: int) -> str:
    return f"vectors.{generation}.faiss"


class FaissIndex(VectorIndex):
    name = "faiss"
    record_keys = ("faiss_size", "faiss_crc32")

    def __init__(self, index):
        self._index = index

    @classmethod
    def empty(cls, dim: int) -> FaissIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        self._index.remove_ids(np.asarray(ids, dtype=np.int64))

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        n = self._index.ntotal
        if n == 0 or k <= 0:
            return []
        q = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        scores, ids = self._index.search(q, min(k, n))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def count(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> set[int]:
        return set(faiss.vector_to_array(self._index.id_map).tolist()) if self._index.ntotal else set()

    def reconstruct(self, id: int) -> np.ndarray:
        try:
            return np.asarray(self._index.reconstruct(int(id)), dtype=np.float32)
        except RuntimeError:  # FAISS's way of saying the id is not in the map
            raise KeyError(id) from None

    def save(self, folder: Path, generation: int) -> dict[str, str]:
        target = folder / _file_name(generation)
        blob = faiss.serialize_index(self._index).tobytes()
        try:
            # looked up on the module at call time, so the crash tests' hook on files.write_atomic sees it
            files.write_atomic(target, blob)
        except OSError:
            with contextlib.suppress(OSError):
                target.with_name(target.name + ".tmp").unlink()
            raise
        return {"faiss_size": str(len(blob)), "faiss_crc32": str(zlib.crc32(blob))}

    @classmethod
    def load(cls, folder: Path, generation: int, record: Mapping[str, str | None], dim: int) -> FaissIndex:
        p = folder / _file_name(generation)
        blob = p.read_bytes()  # FileNotFoundError is the caller's to handle (a writer may have moved on)
        size, crc = int(record.get("faiss_size") or -1), int(record.get("faiss_crc32") or -1)
        if len(blob) != size or zlib.crc32(blob) != crc:
            raise StoreCorruptError(f"{p} is damaged (size or checksum mismatch); {files.REBUILD_HINT}")
        try:
            index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        except RuntimeError as e:
            raise StoreCorruptError(f"{p} cannot be read ({e}); {files.REBUILD_HINT}") from None
        if index.d != dim:
            raise StoreCorruptError(f"{p} has dimension {index.d}, expected {dim}; {files.REBUILD_HINT}")
        return cls(index)

    @classmethod
    def discard(cls, folder: Path, generation: int) -> None:
        with contextlib.suppress(OSError):
            (folder / _file_name(generation)).unlink()

    @classmethod
    def prune(cls, folder: Path, keep: Collection[int]) -> None:
        names = {_file_name(g) for g in keep}
        for p in folder.glob("vectors.*.faiss*"):  # the * after .faiss: .tmp files of an interrupted save
            if p.name not in names:
                with contextlib.suppress(OSError):
                    p.unlink()

    @classmethod
    def location(cls, generation: int) -> str:
        return _file_name(generation)

    @classmethod
    def manifest_fields(cls, generation: int) -> dict[str, str]:
        return {"faiss_file": _file_name(generation)}
