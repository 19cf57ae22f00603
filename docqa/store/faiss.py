"""The FAISS backend of VectorIndex: exact flat search while small, an approximate index chosen by size above.

    kb/vectors.<G>.faiss     faiss.serialize_index bytes; size, CRC32 and the index's kind and parameters
                             recorded in SQLite (meta faiss_size, faiss_crc32, faiss_index) in the commit that
                             made generation G

    >>> import numpy as np
    >>> v = np.eye(4, dtype=np.float32)
    >>> index = FaissIndex.empty(4)
    >>> index.add(np.array([3, 5]), v[:2]); index.search(v[1], 1)
    [(5, 1.0)]
    >>> choose(50_000, "auto", 384)["kind"], choose(1_000_000, "auto", 384)["kind"], choose(9_000_000, "auto", 384)["kind"]
    ('flat', 'ivf', 'ivfpq')

Index kinds (the `ann` setting: auto | flat | hnsw | ivfpq; `auto` picks by the number of vectors):
  flat    IndexIDMap2(IndexFlatIP): exact. auto uses it below FLAT_MAX vectors (flat search on one core
          crosses ~20 ms there: 19 ms at 100K x 384, 2x that at 200K on this 2-core machine).
  ivf     IndexIVFFlat, nlist ~ 2 sqrt(n) (a power of two), nprobe = nlist / 32; auto from FLAT_MAX to PQ_MIN.
          Full vectors, so memory is that of flat (1.5 KB per 384-d vector). At 1M: 7.6 ms per query against
          812 ms for flat on the same busy cores, recall@10 1.00 (benchmarks/scale.py).
  ivfpq   IndexIVFPQ (dim/4 sub-quantisers of 8 bits: 96 bytes per 384-d vector): auto from PQ_MIN, where the
          full vectors no longer fit comfortably in memory. Lossy: lower recall, `reconstruct` is approximate.
  hnsw    IndexIDMap2(IndexHNSWFlat, M=32): never chosen by auto (building it costs ~4x IVF's on this machine and
          FAISS's HNSW cannot delete); removal marks the id -1 in the id map (search skips it) and `prepare`
          rebuilds once a tenth is dead.
ivf and ivfpq need MIN_TRAIN (1,000) vectors to train: below that even a forced one is flat.
The IVF kinds hold the chunk ids themselves (no IDMap, which cannot follow IVF's deletions) with a hash-table
direct map, so `remove`, `reconstruct` and `ids` keep working.

Size classes: `prepare` (called before every commit's save) re-chooses with `choose`; when the class (kind,
nlist, PQ shape) changes, or an IVF's lists have become very unbalanced (drift), it builds a new index, trained
on a sample of the vectors kept in SQLite and filled from them. Otherwise vectors are added to the trained
index as they come: adding a few vectors to a big index never retrains. Hysteresis (FLAT_MIN, nlist within 2^0.75
of the ideal) keeps an index that hovers around a boundary from being rebuilt back and forth.

Every file is checked against the recorded size and CRC32 before FAISS parses it, because FAISS trusts the sizes
in its header: a truncated or bit-flipped file would otherwise crash the process or read garbage.

Limits: `save` writes the whole index, so a commit costs O(index size) (ingest commits in growing batches for
that reason); a class change costs a training pass (at 750K vectors ~2.5 minutes on 2 busy cores). Recall is that
of the data: `docqa verify --recall` measures it on the knowledge base's own vectors.
"""

from __future__ import annotations

import contextlib
import json
import math
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path

import faiss
import numpy as np

from ..errors import StoreCorruptError, StoreError
from . import files
from .vectors import VectorIndex

KINDS = ("flat", "ivf", "ivfpq", "hnsw")
FLAT_MAX = 100_000  # auto: approximate from here (flat p50 ~20 ms on one core)
FLAT_MIN = 80_000  # ... and back to flat only below this (hysteresis)
PQ_MIN = 4_000_000  # auto: product quantisation from here (full vectors would need > 6 GB at 384-d)
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 64
TRAIN_PER_LIST = 40  # k-means sample: 40 vectors per list (FAISS warns below 39)
MAX_TRAIN = 200_000
MIN_TRAIN = 1_000  # ivf / ivfpq (even when forced) only from this many vectors: flat below
DRIFT = 3.0  # retrain an IVF whose list-size imbalance has grown to 3x what it was when trained
HNSW_MAX_DEAD = 0.1  # rebuild an HNSW index once this fraction of its entries is removed


def _file_name(generation: int) -> str:
    return f"vectors.{generation}.faiss"


def _nlist(n: int) -> int:
    return int(2 ** round(math.log2(max(16.0, 2 * math.sqrt(max(n, 1))))))


def _nprobe(nlist: int, kind: str) -> int:
    # a fixed share of the lists: 1/32 gave recall@10 1.00 at 100K and 1M on benchmarks/scale.py's clustered data
    return max(8, nlist // (16 if kind == "ivfpq" else 32))


def choose(n: int, ann: str, dim: int, current: Mapping | None = None) -> dict:
    """The index kind and parameters for `n` vectors under the `ann` setting. `current` (the present index's
    parameters) adds hysteresis: a class is kept while `n` stays near its range."""
    if ann not in ("auto", *KINDS):
        raise StoreError(f"unknown ann {ann!r} (one of auto, flat, hnsw, ivfpq)")
    kind = ann
    cur_kind = (current or {}).get("kind")
    if ann == "auto":
        if n >= PQ_MIN:
            kind = "ivfpq"
        elif n >= FLAT_MAX or (cur_kind == "ivf" and n >= FLAT_MIN):
            kind = "ivf"
        else:
            kind = "flat"
    if kind == "flat" or (kind in ("ivf", "ivfpq") and n < MIN_TRAIN):
        return {"kind": "flat"}
    if kind == "hnsw":
        return {"kind": "hnsw", "M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    nlist = _nlist(n)
    if cur_kind == kind and current.get("nlist"):
        # keep the trained lists while n is within a factor 2^0.75 of their ideal size
        if abs(math.log2(2 * math.sqrt(max(n, 1)) / current["nlist"])) <= 0.75:
            nlist = int(current["nlist"])
    nlist = max(1, min(nlist, n // 8 or 1))  # a few thousand vectors (tests) still train
    spec = {"kind": kind, "nlist": nlist, "nprobe": min(nlist, _nprobe(nlist, kind))}
    if kind == "ivfpq":
        m = next(m for m in (dim // 4, dim // 2, dim, 1) if m and dim % m == 0)
        spec.update(m=m, nbits=8)
    return spec


def _shape(spec: Mapping) -> tuple:
    """What training fixes: a change means a new index (nprobe / efSearch are only search settings)."""
    return tuple(spec.get(k) for k in ("kind", "nlist", "m", "nbits", "M"))


def _kind_of(index) -> str:
    if isinstance(index, faiss.IndexIVFPQ):
        return "ivfpq"
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf"
    if isinstance(index, faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSW):
            return "hnsw"
        if isinstance(inner, faiss.IndexFlat):
            return "flat"
    raise ValueError(type(index).__name__)


def _unit(vecs: np.ndarray) -> np.ndarray:
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)  # float16 copies are a little off unit length
    return np.divide(vecs, norms, out=vecs, where=norms > 0)


VectorSource = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


class FaissIndex(VectorIndex):
    name = "faiss"
    record_keys = ("faiss_size", "faiss_crc32", "faiss_index")

    def __init__(self, index, info: Mapping | None = None):
        self._index = index
        self._kind = _kind_of(index)
        self._info = {"kind": self._kind, **self._params(), **{k: v for k, v in (info or {}).items() if k != "kind"}}
        self._dead = 0  # hnsw: entries whose id is -1 (removed)
        self._stale_rev = False
        if self._kind == "hnsw":
            self._dead = int((self._id_view() == -1).sum())
            self._ivf_or_hnsw().hnsw.efSearch = int(self._info.get("efSearch", HNSW_EF_SEARCH))
        elif self._kind != "flat" and self._info.get("nprobe"):
            self._index.nprobe = int(self._info["nprobe"])

    def _params(self) -> dict:
        ix = self._index
        if self._kind in ("ivf", "ivfpq"):
            p = {"nlist": int(ix.nlist), "nprobe": int(ix.nprobe)}
            if self._kind == "ivfpq":
                p.update(m=int(ix.pq.M), nbits=int(ix.pq.nbits))
            return p
        if self._kind == "hnsw":
            h = self._ivf_or_hnsw()
            return {"M": int(h.hnsw.nb_neighbors(1)), "efConstruction": int(h.hnsw.efConstruction),
                    "efSearch": int(h.hnsw.efSearch)}  # fmt: skip
        return {}

    def _ivf_or_hnsw(self):
        return faiss.downcast_index(self._index.index) if self._kind == "hnsw" else self._index

    def _id_view(self) -> np.ndarray:
        """The IDMap2's id map as a writable numpy view (hnsw removal writes -1 into it in place)."""
        m = self._index.id_map
        return faiss.rev_swig_ptr(m.data(), m.size()) if m.size() else np.zeros(0, dtype=np.int64)

    @classmethod
    def empty(cls, dim: int) -> FaissIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def params(self) -> dict:
        """The kind and parameters of this index (what the commit record and manifest.json say about it)."""
        return dict(self._info)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if self._kind != "hnsw":
            self._index.remove_ids(ids)
            return
        idm = self._id_view()  # FAISS's HNSW cannot delete: the entry stays in the graph, its id becomes -1
        hit = np.isin(idm, ids[ids >= 0])
        if hit.any():
            idm[hit] = -1
            self._dead += int(hit.sum())
            self._stale_rev = True

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        n = self.count()
        if n == 0 or k <= 0:
            return []
        q = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        # One query gains nothing from OpenMP, and on busy cores its thread team costs more than the search
        # (flat over 100K: 19 ms on one thread, 100 ms on two while other processes use the cores). The setting
        # is the calling thread's own, restored after.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            if self._dead:
                p = faiss.SearchParametersHNSW(sel=faiss.IDSelectorRange(0, 1 << 62))  # skip removed (-1) ids
                p.efSearch = self._ivf_or_hnsw().hnsw.efSearch
                scores, ids = self._index.search(q, min(k, n), params=p)
            else:
                scores, ids = self._index.search(q, min(k, n))
        finally:
            faiss.omp_set_num_threads(threads)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def count(self) -> int:
        return int(self._index.ntotal) - self._dead

    def ids(self) -> set[int]:
        if not self._index.ntotal:
            return set()
        if self._kind in ("flat", "hnsw"):
            out = set(self._id_view().tolist())
            out.discard(-1)
            return out
        il = self._index.invlists
        parts = [faiss.rev_swig_ptr(il.get_ids(i), il.list_size(i)).copy() for i in range(il.nlist) if il.list_size(i)]
        return set(np.concatenate(parts).tolist())

    def reconstruct(self, id: int) -> np.ndarray:
        if int(id) < 0:
            raise KeyError(id)
        if self._stale_rev:
            self._index.construct_rev_map()  # forget removed ids (their id map entries are -1 now)
            self._stale_rev = False
        try:
            return np.asarray(self._index.reconstruct(int(id)), dtype=np.float32)
        except RuntimeError:  # FAISS's way of saying the id is not in the map
            raise KeyError(id) from None

    # ---------------------------------------------------------------- size classes
    def prepare(self, ann: str, vectors: VectorSource) -> FaissIndex:
        """The index to save for this commit: self, or (class change, drift, too many dead entries) a new one of
        the kind `choose` names, trained on and filled from `vectors` (the knowledge base's stored vectors,
        including this commit's)."""
        n = self.count()
        want = choose(n, ann, self.dim, self._info)
        rebuild = _shape(want) != _shape(self._info)
        if not rebuild and self._kind in ("ivf", "ivfpq") and n:
            trained = float(self._info.get("imbalance") or 0)
            rebuild = trained > 0 and self._index.invlists.imbalance_factor() > DRIFT * trained
        if not rebuild and self._kind == "hnsw":
            rebuild = self._dead > HNSW_MAX_DEAD * max(1, self._index.ntotal)
        if rebuild:
            return self.build(want, self.dim, vectors, n)
        if want.get("nprobe") and want["nprobe"] != self._info.get("nprobe"):
            self._index.nprobe = want["nprobe"]
            self._info["nprobe"] = want["nprobe"]
        return self

    @classmethod
    def build(cls, spec: Mapping, dim: int, vectors: VectorSource, n: int | None = None) -> FaissIndex:
        """A new index of `spec` (from `choose`) over every vector `vectors()` yields; `n` is how many it yields
        (it sizes the training sample; counted with a first pass when not given)."""
        kind = spec["kind"]
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif kind == "hnsw":
            h = faiss.IndexHNSWFlat(dim, int(spec["M"]), faiss.METRIC_INNER_PRODUCT)
            h.hnsw.efConstruction = int(spec["efConstruction"])
            h.hnsw.efSearch = int(spec["efSearch"])
            index = faiss.IndexIDMap2(h)
        else:
            quantizer = faiss.IndexFlatIP(dim)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, dim, int(spec["nlist"]), faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFPQ(
                    quantizer, dim, int(spec["nlist"]), int(spec["m"]), int(spec["nbits"]), faiss.METRIC_INNER_PRODUCT
                )
                index.pq.cp.min_points_per_centroid = 1  # small test indexes: no "please provide" warnings
            index.cp.min_points_per_centroid = 1
            if n is None:
                n = sum(len(ids) for ids, _ in vectors())
            index.train(_sample(vectors, n, min(MAX_TRAIN, TRAIN_PER_LIST * int(spec["nlist"]))))
            index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct(id) and remove_ids by chunk id
            index.nprobe = int(spec["nprobe"])
        for ids, vecs in vectors():
            if len(ids):
                index.add_with_ids(_unit(vecs), np.asarray(ids, dtype=np.int64))
        info = dict(spec)
        if kind in ("ivf", "ivfpq"):
            info.update(trained=int(index.ntotal), imbalance=round(float(index.invlists.imbalance_factor()), 3))
        return cls(index, info)

    # ---------------------------------------------------------------- persistence
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
        return {
            "faiss_size": str(len(blob)),
            "faiss_crc32": str(zlib.crc32(blob)),
            "faiss_index": json.dumps(self._info, sort_keys=True),
        }

    @classmethod
    def load(cls, folder: Path, generation: int, record: Mapping[str, str | None], dim: int) -> FaissIndex:
        p = folder / _file_name(generation)
        blob = p.read_bytes()  # FileNotFoundError is the caller's to handle (a writer may have moved on)
        size, crc = int(record.get("faiss_size") or -1), int(record.get("faiss_crc32") or -1)
        if len(blob) != size or zlib.crc32(blob) != crc:
            raise StoreCorruptError(f"{p} is damaged (size or checksum mismatch); {files.REBUILD_HINT}")
        try:
            index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
            _kind_of(index)
        except (RuntimeError, ValueError) as e:
            raise StoreCorruptError(f"{p} cannot be read ({e}); {files.REBUILD_HINT}") from None
        if index.d != dim:
            raise StoreCorruptError(f"{p} has dimension {index.d}, expected {dim}; {files.REBUILD_HINT}")
        info = None
        if record.get("faiss_index") is not None:  # absent in knowledge bases from before index kinds (flat)
            try:
                info = json.loads(record["faiss_index"])
                ok = isinstance(info, dict) and info.get("kind") == _kind_of(index)
            except ValueError:
                ok = False
            if not ok:
                raise StoreCorruptError(f"{p} is not the index its commit record describes; {files.REBUILD_HINT}")
        return cls(index, info)

    @classmethod
    def describe(cls, record: Mapping[str, str | None]) -> dict:
        try:
            info = json.loads(record.get("faiss_index") or "{}")
        except ValueError:
            info = {}
        return {"faiss_index": info if isinstance(info, dict) and info else {"kind": "flat"}}

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


def _sample(vectors: VectorSource, n: int, size: int, seed: int = 0) -> np.ndarray:
    """About `size` of the `n` vectors `vectors()` yields, chosen uniformly (one pass, bounded memory)."""
    rng = np.random.default_rng(seed)
    p = min(1.0, size / max(n, 1))
    parts = []
    for _, vecs in vectors():
        if len(vecs):
            parts.append(_unit(vecs if p >= 1.0 else vecs[rng.random(len(vecs)) < p]))
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
