"""The Milvus backend of VectorIndex: one vector per chunk in a Milvus collection, through pymilvus' MilvusClient.

The same code path serves a Milvus Lite data folder (a path ending in ".db", by default `<index>/milvus.db`) and
a standalone or distributed Milvus (`http://host:19530`); settings `store = "milvus"` and `milvus_uri`.

    kb/kb.sqlite            documents, chunk text and float16 vectors: the source of truth, as with FAISS
    kb/milvus.db/           the Milvus Lite data folder (when milvus_uri is "")
    kb/vectors.<G>.milvus   a small JSON pointer: collection, live-row count and id hash of generation G
    collection docqa_<h>_g<C>  fields id (INT64, primary = chunk id), vector (FLOAT_VECTOR, IP), born, died

    >>> Index = vector_backend("milvus", uri="kb/milvus.db")  # doctest: +SKIP
    >>> index = Index.empty(384); index.add(np.array([7]), v[None])  # doctest: +SKIP
    >>> record = index.save(Path("kb"), 1)  # doctest: +SKIP
    >>> record  # doctest: +SKIP
    {'milvus_collection': 'docqa_3f2a9c1b7d0e_g1', 'milvus_count': '1', 'milvus_ids_hash': '1234...'}
    >>> Index.load(Path("kb"), 1, record, dim=384).search(v, 3)  # doctest: +SKIP
    [(7, 1.0)]

Generations. A collection is not versioned by files, so every row carries the generation that added it (`born`)
and the one that removed it (`died`, ALIVE until then); generation G sees exactly the rows with
`born <= G < died`. A commit (G -> G+1) inserts its new rows with born = G+1 and marks its removed rows
died = G+1, then writes the pointer file; the SQLite commit follows. Readers of G therefore never see what
G+1 adds or removes (marking a row removed is an upsert, during which a search may miss that one row), and a crash before the SQLite commit leaves rows that no committed generation sees: the next
writer's start-up (`prune`) deletes rows born after the committed generation and revives rows that died after it
-- SQLite's state wins and Milvus is reconciled to it. `prune` also deletes rows dead to every kept generation.
A fresh index (a new knowledge base, `docqa rebuild`) goes into a new collection named after its generation,
so a rebuild repopulates Milvus from the vectors SQLite keeps without touching what readers still use; the old
collection is dropped once no kept generation points to it.

Checks. `load` compares the SQLite record with the pointer file and with the live-row count Milvus reports
(StoreCorruptError: run `docqa rebuild`); `docqa verify` compares every id held with the chunk rows (one vector
per chunk). A pointer file that is gone means a writer moved on (FileNotFoundError, as for FAISS files).

Milvus Lite (3.x, the pure-Python engine) differs from a cluster, and docqa handles it so:
  - one process at a time: Lite flocks its data folder, so a second process (an ingest while `docqa serve` has
    the same Lite folder open) fails to connect; docqa says so and points to a Milvus server. Within a process the
    connection is shared and released when the last knowledge base using it closes (verified).
  - a reopened collection is "released" until `load_collection` (verified on Lite: every query fails until then);
    docqa loads it on every open and before pruning.
  - durability: Lite buffers its write-ahead log in the process, so docqa flushes before the SQLite commit refers
    to the rows; a server holds acknowledged writes in its log and rate-limits flushes, so it is not flushed.
  - after a writer is SIGKILLed between an upsert and its flush, Lite can replay both versions of the upserted
    rows (found by the kill loop in tests/store/test_milvus.py: a reader counted 240 live rows for 210 chunks);
    `load` accepts extra rows that are only repeated ids, search skips the repeats, and the next writer's
    start-up merges them.
  - full-text search: Lite has `standard` and `jieba` tokenizers but no `chinese` analyzer (verified: "unknown
    tokenizer type"), TEXT_MATCH finds nothing for Chinese even with jieba (verified; English matches), and its
    BM25 scores come back negative, with per-segment IDF (the IDF part is from Milvus' documentation, not
    verified), so they are not comparable with a cluster's. docqa therefore keeps its own SQLite BM25 as the
    lexical path with either store (its fusion is order-based, so no score scale would leak into rankings).
  - Lite's AUTOINDEX is HNSW when faiss is installed (read in its source), so a Lite folder gets FLAT (exact, as
    FAISS's default); a server gets AUTOINDEX, its own approximate index.

Limits: chunk ids are never reused (SQLite AUTOINCREMENT), which is what lets the chunk id be the primary key
of in-place generations; adding an id that a collection already holds is not supported. Scores are Milvus' IP
distances (float32, as FAISS). The collection prefix is a hash of the knowledge base's folder, so two knowledge
bases can share one server; a moved folder keeps working (records name their collection) but its old prefix is
no longer pruned. Deleting a knowledge-base folder does not drop its collections on a server.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import StoreCorruptError, StoreError
from . import files
from .vectors import VectorIndex

ALIVE = 2**62  # `died` of a row no generation has removed
_INSERT_BATCH = 2000  # rows per insert call: well under gRPC's 64 MB message limit at 1024 dims
_MAX_TOPK = 16384  # Milvus' limit on `limit` in one search
_POINTER = "vectors.{}.milvus"
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _pointer_name(generation: int) -> str:
    return _POINTER.format(generation)


def _mix(ids: np.ndarray) -> np.ndarray:
    """splitmix64 of each id: the summands of an order-independent hash of an id set."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids, dtype=np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def ids_hash(ids: Iterable[int]) -> int:
    """Sum of splitmix64(id) mod 2**64: equal for equal id sets, whatever their order, and updatable by adding
    and subtracting ids.

    >>> ids_hash([1, 2, 3]) == ids_hash([3, 1, 2]) != ids_hash([1, 2])
    True
    """
    a = np.fromiter(ids, dtype=np.int64)
    with np.errstate(over="ignore"):
        return int(_mix(a).sum(dtype=np.uint64)) if len(a) else 0


def _prefix(folder: Path) -> str:
    return "docqa_" + hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:12]


def _milvus_error(what: str, e: Exception) -> OSError:
    """Milvus' refusal as the OSError the commit protocol turns into "the knowledge base is unchanged"."""
    return OSError(errno.EIO, f"Milvus refused to {what}: {e}")


# ---------------------------------------------------------------- connections
class _Connections:
    """One MilvusClient per resolved URI in this process, counted by the knowledge bases using it.

    Milvus Lite runs its engine in-process and flocks its data folder, so the client must be shared (a second
    one for the same folder would be refused) and released when no knowledge base needs it any more, so that
    another process can open the folder."""

    def __init__(self):
        self._lock = threading.Lock()
        self._clients: dict[str, object] = {}
        self._refs: dict[str, int] = {}

    def get(self, uri: str):
        with self._lock:
            client = self._clients.get(uri)
            if client is None:
                client = self._clients[uri] = _connect(uri)
            return client

    def attach(self, uri: str) -> None:
        self.get(uri)
        with self._lock:
            self._refs[uri] = self._refs.get(uri, 0) + 1

    def detach(self, uri: str) -> None:
        with self._lock:
            n = self._refs.get(uri, 0) - 1
            if n > 0:
                self._refs[uri] = n
                return
            self._refs.pop(uri, None)
            client = self._clients.pop(uri, None)
        if client is not None:
            _LITE_CLIENTS.discard(id(client))
            with contextlib.suppress(Exception):
                client.close()
            if _is_lite(uri):
                with contextlib.suppress(Exception):
                    from milvus_lite.server_manager import server_manager_instance

                    server_manager_instance.release_server(uri)


_connections = _Connections()


def _is_lite(uri: str) -> bool:
    return "://" not in uri


_LITE_CLIENTS: set[int] = set()  # id() of the clients connected to a Lite folder (see _flush)


def _flush(client, name: str) -> None:
    """Make the writes so far durable before the SQLite commit refers to them. Lite buffers its write-ahead log
    in the process until a flush; a server has them in its log once acknowledged, and limits the rate of flushes
    (each seals a segment), so it is not asked to."""
    if id(client) in _LITE_CLIENTS:
        client.flush(name)


def _connect(uri: str):
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise StoreError("store = 'milvus' needs the pymilvus package (pip install pymilvus milvus-lite)") from None
    try:
        client = MilvusClient(uri=uri)
        if _is_lite(uri):
            _LITE_CLIENTS.add(id(client))
        return client
    except Exception as e:
        if _is_lite(uri):
            raise StoreError(
                f"cannot open the Milvus Lite data at {uri} ({e}); Milvus Lite lets one process at a time use a data "
                "folder: stop the other docqa using it, or run a Milvus server and set milvus_uri = "
                "'http://host:19530'"
            ) from None
        raise StoreError(f"cannot connect to Milvus at {uri}: {e}") from None


def resolve_uri(uri: str, folder: Path) -> str:
    """The URI MilvusClient gets: "" = the knowledge base's own Lite folder; a Lite path made absolute.

    >>> resolve_uri("", Path("/kb"))
    '/kb/milvus.db'
    >>> resolve_uri("http://db:19530", Path("/kb"))
    'http://db:19530'
    """
    if not uri:
        return str(Path(folder).absolute() / "milvus.db")
    if _is_lite(uri):
        if not uri.endswith(".db"):
            raise StoreError(f"milvus_uri {uri!r}: a Milvus Lite path must end in '.db' (or give http://host:port)")
        return str(Path(uri).absolute())
    return uri


# ---------------------------------------------------------------- the index
class MilvusIndex(VectorIndex):
    """Generation `generation` of a collection (or nothing yet, for `empty`), plus the changes of the batch in
    progress, which `save` applies as the next generation."""

    name = "milvus"
    record_keys = ("milvus_collection", "milvus_count", "milvus_ids_hash")
    #: the configured milvus_uri ("" = <folder>/milvus.db); set on the classes `configured` makes
    uri: ClassVar[str] = ""
    _configured: ClassVar[dict[str, type[MilvusIndex]]] = {}

    def __init__(self, dim: int, client=None, collection: str | None = None, generation: int = -1,
                 count: int = 0, hash_: int = 0):  # fmt: skip
        self._dim = dim
        self._client = client
        self._collection = collection
        self._generation = generation
        self._base_count = count
        self._base_hash = hash_
        self._added: dict[int, np.ndarray] = {}
        self._removed: set[int] = set()
        self._dups = 0  # repeated rows a crash left (see load): searched past and merged

    @classmethod
    def configured(cls, uri: str = "") -> type[MilvusIndex]:
        """The class bound to `uri` (one per URI, so that `type(index)` names the same backend each time)."""
        base = MilvusIndex
        bound = base._configured.get(uri)
        if bound is None:
            bound = base._configured[uri] = type("MilvusIndex", (base,), {"uri": uri})
        return bound

    @classmethod
    def _uri(cls, folder: Path) -> str:
        return resolve_uri(cls.uri, folder)

    @classmethod
    def _client_for(cls, folder: Path):
        return _connections.get(cls._uri(folder))

    @classmethod
    def connect(cls, folder: Path) -> None:
        _connections.attach(cls._uri(folder))

    @classmethod
    def disconnect(cls, folder: Path) -> None:
        _connections.detach(cls._uri(folder))

    # ------------------------------------------------------------ in memory
    @classmethod
    def empty(cls, dim: int) -> MilvusIndex:
        return cls(dim)

    @property
    def dim(self) -> int:
        return self._dim

    def _visible(self) -> str:
        return _visible_at(self._generation)

    def _held(self, ids: list[int]) -> set[int]:
        """Which of `ids` the base generation holds."""
        if self._collection is None or not ids:
            return set()
        out: set[int] = set()
        for i in range(0, len(ids), 1000):
            part = ids[i : i + 1000]
            rows = self._client.query(
                self._collection, filter=f"id in {part} and {self._visible()}", output_fields=["id"]
            )
            out.update(int(r["id"]) for r in rows)
        return out

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        for i, v in zip(np.asarray(ids, dtype=np.int64).tolist(), vectors):
            self._added[int(i)] = v.copy()
            self._removed.discard(int(i))

    def remove(self, ids: np.ndarray) -> None:
        rest = []
        for i in np.asarray(ids, dtype=np.int64).tolist():
            if self._added.pop(int(i), None) is None and int(i) not in self._removed:
                rest.append(int(i))
        self._removed.update(self._held(rest))

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        if k <= 0:
            return []
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        hits: list[tuple[int, float]] = []
        if self._collection is not None and self._base_count:
            limit = min(k + len(self._removed) + self._dups, _MAX_TOPK, self._base_count + self._dups)
            res = self._client.search(
                self._collection, data=[q.tolist()], limit=limit, filter=self._visible(), output_fields=["id"]
            )
            seen: set[int] = set()
            for h in res[0]:
                i = int(h["id"])
                if i not in self._removed and i not in seen:
                    seen.add(i)
                    hits.append((i, float(h["distance"])))
        if self._added:
            ids = np.fromiter(self._added, dtype=np.int64)
            scores = np.stack(list(self._added.values())) @ q
            hits += list(zip(ids.tolist(), scores.astype(float).tolist()))
        hits.sort(key=lambda p: -p[1])
        return hits[:k]

    def count(self) -> int:
        return self._base_count - len(self._removed) + len(self._added)

    def _base_ids(self) -> set[int]:
        if self._collection is None or not self._base_count:
            return set()
        return {int(r["id"]) for r in _query_all(self._client, self._collection, self._visible(), ["id"])}

    def ids(self) -> set[int]:
        return (self._base_ids() - self._removed) | set(self._added)

    def reconstruct(self, id: int) -> np.ndarray:
        id = int(id)
        if id in self._added:
            return self._added[id].copy()
        if id in self._removed or self._collection is None:
            raise KeyError(id)
        rows = self._client.query(
            self._collection, filter=f"id == {id} and {self._visible()}", output_fields=["vector"]
        )
        if not rows:
            raise KeyError(id)
        return np.asarray(rows[0]["vector"], dtype=np.float32)

    # ------------------------------------------------------------ persistence
    def _create(self, client, name: str) -> None:
        from pymilvus import DataType

        if client.has_collection(name):  # left by a crash before its commit
            client.drop_collection(name)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self._dim)
        schema.add_field("born", DataType.INT64)
        schema.add_field("died", DataType.INT64)
        client.create_collection(name, schema=schema, consistency_level="Strong")
        params = client.prepare_index_params()
        # FLAT on Lite: exact, as FAISS's default (Lite's AUTOINDEX is HNSW when faiss is installed); AUTOINDEX on
        # a server: its own choice for its size. sync=False: pymilvus would poll the build every 0.5 s (with a call
        # Lite lacks); an empty collection's index is built at once, and load_collection waits for it on a cluster.
        kind = "FLAT" if id(client) in _LITE_CLIENTS else "AUTOINDEX"
        params.add_index(field_name="vector", index_type=kind, metric_type="IP")
        client.create_index(name, params, sync=False)
        client.load_collection(name)

    def _apply(self, client, name: str, generation: int) -> None:
        """Write this batch's changes as rows of `generation` (born / died = generation)."""
        ids = list(self._added)
        for i in range(0, len(ids), _INSERT_BATCH):
            part = ids[i : i + _INSERT_BATCH]
            rows = [{"id": j, "vector": self._added[j].tolist(), "born": generation, "died": ALIVE} for j in part]
            client.insert(name, rows)
        gone = sorted(self._removed)
        for i in range(0, len(gone), _INSERT_BATCH):
            part = gone[i : i + _INSERT_BATCH]
            old = client.query(name, filter=f"id in {part} and died == {ALIVE}", output_fields=["id", "vector", "born"])
            client.upsert(name, [{**r, "died": generation} for r in old])
        _flush(client, name)

    def save(self, folder: Path, generation: int) -> dict[str, str]:
        cls = type(self)
        client = cls._client_for(folder)
        fresh = self._collection is None
        name = f"{_prefix(folder)}_g{generation}" if fresh else self._collection
        if not fresh and generation <= self._generation:
            raise ValueError(f"generation {generation} is not after {self._generation}")
        count, hash_ = self.count(), self._next_hash()
        try:
            if fresh:
                self._create(client, name)
            self._apply(client, name, generation)
            live = _live_count(client, name, generation)
        except Exception as e:
            with contextlib.suppress(Exception):
                _rollback(client, name, generation, drop=fresh)
            raise _milvus_error(f"save generation {generation}", e) from None
        if live != count:
            with contextlib.suppress(Exception):
                _rollback(client, name, generation, drop=fresh)
            raise OSError(errno.EIO, f"Milvus holds {live} rows for generation {generation}, expected {count}")
        record = {"milvus_collection": name, "milvus_count": str(count), "milvus_ids_hash": str(hash_)}
        try:
            files.write_atomic(folder / _pointer_name(generation), json.dumps(record, sort_keys=True).encode())
        except OSError:
            with contextlib.suppress(OSError):
                (folder / (_pointer_name(generation) + ".tmp")).unlink()
            with contextlib.suppress(Exception):
                _rollback(client, name, generation, drop=fresh)
            raise
        # from now on this object is generation `generation` (the knowledge base caches it as such)
        self._client, self._collection, self._generation = client, name, generation
        self._base_count, self._base_hash = count, hash_
        self._added, self._removed = {}, set()
        return record

    def _next_hash(self) -> int:
        with np.errstate(over="ignore"):
            h = np.uint64(self._base_hash)
            if self._added:
                h = h + _mix(np.fromiter(self._added, dtype=np.int64)).sum(dtype=np.uint64)
            if self._removed:
                h = h - _mix(np.fromiter(self._removed, dtype=np.int64)).sum(dtype=np.uint64)
            return int(h & _MASK)

    @classmethod
    def load(cls, folder: Path, generation: int, record: Mapping[str, str | None], dim: int) -> MilvusIndex:
        p = folder / _pointer_name(generation)
        blob = p.read_bytes()  # FileNotFoundError: a writer moved on (or pruned a crashed generation)
        hint = files.REBUILD_HINT
        try:
            pointer = json.loads(blob)
            name, count, hash_ = pointer["milvus_collection"], int(pointer["milvus_count"]), pointer["milvus_ids_hash"]
        except (ValueError, KeyError, TypeError):
            raise StoreCorruptError(f"{p} is damaged; {hint}") from None
        if {k: record.get(k) for k in cls.record_keys} != pointer:
            raise StoreCorruptError(f"{p} does not match the database's record of generation {generation}; {hint}")
        client = cls._client_for(folder)
        where = f"Milvus collection {name} at {cls._uri(folder)}"
        try:
            if not client.has_collection(name):
                raise StoreCorruptError(f"{where} is missing; {hint}")
            fields = client.describe_collection(name)["fields"]
            vec = next((f for f in fields if f["name"] == "vector"), None)
            have = int(vec["params"]["dim"]) if vec else -1
            if have != dim:
                raise StoreCorruptError(f"{where} has dimension {have}, expected {dim}; {hint}")
            _ensure_loaded(client, name)
            live = _live_count(client, name, generation)
            for _ in range(3):  # an upsert in flight in another thread can hide a row for a moment
                if live == count:
                    break
                time.sleep(0.05)
                live = _live_count(client, name, generation)
            dups = 0
            if live > count:
                # Lite, after a writer was killed between an upsert (marking rows removed by a commit that never
                # happened) and its flush, can replay both versions of those rows: the same ids twice, which the
                # next writer's start-up merges again. Extra rows that are only repeats are tolerated.
                distinct = len({int(r["id"]) for r in _query_all(client, name, _visible_at(generation), ["id"])})
                if distinct == count:
                    dups = live - count
        except StoreCorruptError:
            raise
        except Exception as e:
            raise StoreError(f"cannot read {where}: {e}") from None
        if live != count and not dups:
            raise StoreCorruptError(
                f"{where} holds {live} vectors for generation {generation}, the database recorded {count}; {hint}"
            )
        index = cls(dim, client, name, generation, count, int(hash_))
        index._dups = dups
        return index

    @classmethod
    def discard(cls, folder: Path, generation: int) -> None:
        p = folder / _pointer_name(generation)
        try:
            name = json.loads(p.read_bytes())["milvus_collection"]
        except (OSError, ValueError, KeyError, TypeError):
            name = None
        with contextlib.suppress(OSError):
            p.unlink()
        if name is not None:
            with contextlib.suppress(Exception):
                client = cls._client_for(folder)
                if not name.endswith(f"_g{generation}"):
                    _ensure_loaded(client, name)
                _rollback(client, name, generation, drop=name.endswith(f"_g{generation}"))

    @classmethod
    def prune(cls, folder: Path, keep: Collection[int]) -> None:
        pointers: dict[int, str] = {}
        for p in folder.glob("vectors.*.milvus*"):
            try:
                g = int(p.name.split(".")[1])
                if p.name != _pointer_name(g) or g not in keep:
                    raise ValueError
                pointers[g] = json.loads(p.read_bytes())["milvus_collection"]
            except (ValueError, KeyError, TypeError, IndexError, OSError):
                with contextlib.suppress(OSError):
                    p.unlink()
        if not pointers:
            return  # nothing committed points anywhere yet: leave Milvus alone rather than guess
        client = cls._client_for(folder)
        top = max(pointers)
        used = {n: min(g for g, m in pointers.items() if m == n) for n in set(pointers.values())}
        prefix = _prefix(folder) + "_g"
        for name in client.list_collections():
            if name.startswith(prefix) and name not in used:
                client.drop_collection(name)
        for name, oldest in used.items():
            _ensure_loaded(client, name)  # a reopened Lite (or restarted server) has released it
            _rollback(client, name, top, drop=False, above=True)
            client.delete(name, filter=f"died <= {oldest}")  # dead to every kept generation
            _flush(client, name)

    @classmethod
    def location(cls, generation: int) -> str:
        return _pointer_name(generation)

    @classmethod
    def manifest_fields(cls, generation: int) -> dict[str, str]:
        where = cls.uri or "milvus.db (in this folder)"
        return {"milvus_pointer": _pointer_name(generation), "milvus_uri": where}


def _visible_at(generation: int) -> str:
    """The filter that selects generation `generation`'s rows."""
    return f"born <= {generation} and died > {generation}"


def _ensure_loaded(client, name: str) -> None:
    state = str(client.get_load_state(name).get("state", ""))
    if "Loaded" not in state or "NotLoad" in state:
        client.load_collection(name)


def _live_count(client, name: str, generation: int) -> int:
    rows = client.query(name, filter=f"born <= {generation} and died > {generation}", output_fields=["count(*)"])
    return int(rows[0]["count(*)"])


def _query_all(client, name: str, filter: str, fields: list[str]) -> list[dict]:
    """Every row matching `filter` (a plain query stops at Milvus' 16384-row window: beyond it, an iterator)."""
    rows = client.query(name, filter=filter, output_fields=fields, limit=_MAX_TOPK)
    if len(rows) < _MAX_TOPK:
        return [dict(r) for r in rows]
    it = client.query_iterator(name, batch_size=5000, filter=filter, output_fields=fields)
    out: list[dict] = []
    try:
        while rows := it.next():
            out.extend(dict(r) for r in rows)
    finally:
        it.close()
    return out


def _rollback(client, name: str, generation: int, *, drop: bool, above: bool = False) -> None:
    """Undo the rows of `generation` (with `above`: of every generation after it): delete those it added, revive
    those it removed; `drop` removes the collection instead (it was created for that generation)."""
    if drop:
        with contextlib.suppress(Exception):
            client.drop_collection(name)
        return
    op = ">" if above else "=="
    client.delete(name, filter=f"born {op} {generation}")
    dead = _query_all(client, name, f"died {op} {generation} and died < {ALIVE}", ["id", "vector", "born"])
    for i in range(0, len(dead), _INSERT_BATCH):
        client.upsert(name, [{**r, "died": ALIVE} for r in dead[i : i + _INSERT_BATCH]])
    _flush(client, name)
