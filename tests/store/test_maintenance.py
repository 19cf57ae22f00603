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


def test_the_lexical_index_reads_document_names_and_rebuild_gives_them_to_an_older_knowledge_base(tmp_path):
    # a man page's option entry never repeats the command's name: "grep -w" must still find grep's "-w" line
    with new_kb(tmp_path / "kb") as kb:
        assert kb.lexical_text == "names"
        put(kb, "/d/grep.zh-cn.txt", ["-w 只选择含有能组成完整的词的匹配的行"])
        put(kb, "/d/mount.txt", ["-w mount the filesystem read-write"], seed=1)
        ids = {row.source: cid for cid, row in kb.chunks(range(10)).items()}
        assert [c for c, _ in kb.lexical.search("grep -w", 5)][0] == ids["/d/grep.zh-cn.txt"]
    with new_kb(tmp_path / "old") as kb:  # as made before names were indexed: no meta row
        kb.conn.execute("DELETE FROM meta WHERE key = 'lexical_text'")
    with KnowledgeBase.open(tmp_path / "old", writable=True) as kb:
        assert kb.lexical_text == ""
        put(kb, "/d/grep.txt", ["-w select whole words"])
        assert kb.lexical.search("grep", 5) == []  # its postings stay one kind until rebuild
        [(level, message)] = verify(kb)  # healthy, but told how to catch up
        assert level == "warning" and "document names" in message and "`docqa rebuild`" in message
        rebuild(kb)
        assert kb.lexical_text == "names"
        assert len(kb.lexical.search("grep", 5)) == 1
        assert verify(kb) == []
    with KnowledgeBase.open(tmp_path / "old", writable=True) as kb:  # and new documents are indexed alike
        put(kb, "/d/sed.txt", ["-n suppress printing"], seed=2)
        assert len(kb.lexical.search("sed", 5)) == 1
