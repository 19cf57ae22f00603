"""The VectorIndex contract (docqa/store/vectors.py), run over every backend `backend_names()` lists.

A new backend (Milvus, ...) joins by being listed there; if it keeps its data outside the knowledge-base folder,
it adds a way to damage that data to DAMAGE below, and the file-damage test covers it too.
"""

import numpy as np
import pytest
from storekit import DIM

from docqa.errors import StoreCorruptError, StoreError
from docqa.store.vectors import VectorIndex, backend_names, vector_backend


@pytest.fixture(params=backend_names())
def backend(request) -> type[VectorIndex]:
    return vector_backend(request.param)


def _unit(n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


IDS = np.array([10, 20, 30, 40, 50], dtype=np.int64)


def _filled(backend) -> tuple[VectorIndex, np.ndarray]:
    v = _unit(len(IDS))
    index = backend.empty(DIM)
    index.add(IDS, v)
    return index, v


def _query(v):
    q = 0.8 * v[2] + 0.2 * v[4]
    return q / np.linalg.norm(q)


def test_search_returns_the_nearest_ids_best_first(backend):
    index, v = _filled(backend)
    assert index.dim == DIM and index.count() == 5 and index.ids() == set(IDS.tolist())
    q = _query(v)
    expected = sorted(zip(IDS.tolist(), (v @ q).tolist()), key=lambda p: -p[1])
    got = index.search(q, 5)
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-5)
    assert got[0][0] == 30
    assert [i for i, _ in index.search(q, 2)] == [i for i, _ in expected[:2]]
    assert len(index.search(q, 99)) == 5 and index.search(q, 0) == []


def test_an_empty_index_finds_nothing(backend):
    index = backend.empty(DIM)
    assert index.count() == 0 and index.ids() == set() and index.search(_unit(1)[0], 3) == []


def test_reconstruct_returns_the_stored_vector(backend):
    index, v = _filled(backend)
    assert np.allclose(index.reconstruct(40), v[3], atol=1e-6)
    with pytest.raises(KeyError):
        index.reconstruct(41)


def test_remove(backend):
    index, v = _filled(backend)
    index.remove(np.array([30, 99], dtype=np.int64))  # 99 was never there: ignored
    assert index.count() == 4 and index.ids() == {10, 20, 40, 50}
    assert 30 not in [i for i, _ in index.search(_query(v), 5)]
    with pytest.raises(KeyError):
        index.reconstruct(30)
    index.add(np.array([60], dtype=np.int64), v[2:3])  # ids are the caller's: a new one finds the old vector
    assert index.search(v[2], 1)[0][0] == 60


def test_save_load_roundtrip(backend, tmp_path):
    index, v = _filled(backend)
    record = index.save(tmp_path, 3)
    assert set(record) == set(backend.record_keys) and all(isinstance(x, str) for x in record.values())
    loaded = backend.load(tmp_path, 3, record, DIM)
    assert loaded.count() == 5 and loaded.ids() == index.ids()
    want, got = index.search(_query(v), 5), loaded.search(_query(v), 5)
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)
    assert np.allclose(loaded.reconstruct(20), v[1], atol=1e-6)
    assert backend.location(3) and backend.location(3) != backend.location(4)


def test_a_record_mismatch_is_detected(backend, tmp_path):
    index, _ = _filled(backend)
    record = index.save(tmp_path, 1)
    for key in record:  # each recorded check on its own must catch it
        bad = {**record, key: str(record[key]) + "7"}
        with pytest.raises(StoreCorruptError, match="docqa rebuild"):
            backend.load(tmp_path, 1, bad, DIM)


def _flip_a_byte_in_new_files(folder, before: set[str]) -> int:
    n = 0
    for p in sorted(folder.iterdir()):
        if p.name not in before:
            data = bytearray(p.read_bytes())
            data[len(data) // 2] ^= 0x10  # same size: only the checksum can tell
            p.write_bytes(bytes(data))
            n += 1
    return n


def _delete_a_milvus_row(folder, generation):
    import json

    from docqa.store.milvus import MilvusIndex

    name = json.loads((folder / f"vectors.{generation}.milvus").read_text())["milvus_collection"]
    client = MilvusIndex._client_for(folder)
    client.delete(name, ids=[int(IDS[0])])
    client.flush(name)


# backend name -> fn(folder, generation) for backends whose data is not files in the folder
DAMAGE = {"milvus": _delete_a_milvus_row}


def test_damaged_data_is_detected_before_parsing(backend, tmp_path):
    index, _ = _filled(backend)
    before = {p.name for p in tmp_path.iterdir()}
    record = index.save(tmp_path, 2)
    if backend.name in DAMAGE:
        DAMAGE[backend.name](tmp_path, 2)
    else:
        assert _flip_a_byte_in_new_files(tmp_path, before) >= 1, "save wrote nothing in the folder: add to DAMAGE"
    with pytest.raises(StoreCorruptError, match="docqa rebuild"):
        backend.load(tmp_path, 2, record, DIM)


def test_another_dimension_is_refused(backend, tmp_path):
    index, _ = _filled(backend)
    record = index.save(tmp_path, 1)
    with pytest.raises(StoreCorruptError, match=f"dimension {DIM}, expected {DIM + 1}"):
        backend.load(tmp_path, 1, record, DIM + 1)


def test_discard_and_prune(backend, tmp_path):
    index, _ = _filled(backend)
    records = {g: index.save(tmp_path, g) for g in (1, 2, 3, 4)}
    backend.discard(tmp_path, 4)
    backend.discard(tmp_path, 4)  # nothing left to discard: no error
    backend.prune(tmp_path, {2, 3})
    for g in (1, 4):
        with pytest.raises(FileNotFoundError):
            backend.load(tmp_path, g, records[g], DIM)
    for g in (2, 3):
        assert backend.load(tmp_path, g, records[g], DIM).count() == 5


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(StoreError, match="unknown vector index backend 'nope'"):
        vector_backend("nope")
