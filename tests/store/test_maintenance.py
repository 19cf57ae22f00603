"""verify and rebuild (docqa/store/maintenance.py) on damaged files; test_reliability.py covers more damage."""

import pytest
from storekit import new_kb, put, vecs

from docqa.errors import StoreCorruptError
from docqa.store import KnowledgeBase, rebuild, verify


@pytest.mark.parametrize("damage", ["truncate", "zero", "flip"])
def test_damaged_faiss_is_detected_and_rebuilt(tmp_path, damage):
    with new_kb(tmp_path / "kb") as kb:
        put(kb, "/d/a.txt", ["one", "two", "three"])
        faiss_file = tmp_path / "kb" / f"vectors.{kb.generation}.faiss"
    data = bytearray(faiss_file.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "zero":
        data[: min(64, len(data))] = bytes(min(64, len(data)))
    else:
        data[len(data) // 2] ^= 0x10
    faiss_file.write_bytes(bytes(data))
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        with pytest.raises(StoreCorruptError, match="docqa rebuild"):
            with kb.snapshot():
                pass
        assert any(level == "error" for level, _ in verify(kb))
    with KnowledgeBase.open(tmp_path / "kb", writable=True, validate=False) as kb:
        assert rebuild(kb) == {"chunks": 3, "generation": 2}
        assert verify(kb) == []
        with kb.snapshot():
            assert kb.dense_search(vecs(3)[2], 1)[0][0] in kb.chunks(range(10))
            assert kb.lexical.search("three", 3)


def test_missing_faiss_file_is_reported(tmp_path):
    with new_kb(tmp_path / "kb") as kb:
        put(kb, "/d/a.txt", ["one"])
        gen = kb.generation
    (tmp_path / "kb" / f"vectors.{gen}.faiss").unlink()
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        assert verify(kb) == [
            (
                "error",
                f"vectors.{gen}.faiss is missing; run `docqa rebuild` to restore the "
                "indexes from the database (or `docqa verify` for details)",
            )
        ]
        with pytest.raises(StoreCorruptError, match="is missing"):
            with kb.snapshot():
                pass


def test_damaged_sqlite_is_a_clear_error(tmp_path):
    new_kb(tmp_path / "kb").close()
    db = tmp_path / "kb" / "kb.sqlite"
    db.write_bytes(b"\x00" * 4096)
    with pytest.raises(StoreCorruptError, match="damaged"):
        KnowledgeBase.open(tmp_path / "kb")
