"""manifest.json (docqa/store/manifest.py): checksum, damage detection, agreement with the database."""

import pytest
from storekit import DIM, new_kb

from docqa.errors import StoreCorruptError
from docqa.store import KnowledgeBase
from docqa.store.manifest import check_manifest, read_manifest, write_manifest


def test_roundtrip_and_agreement(tmp_path):
    body = {"format_version": 1, "embed_model": "m", "dim": DIM, "generation": 5}
    write_manifest(tmp_path, body)
    assert read_manifest(tmp_path) == body
    assert check_manifest(tmp_path, "m", DIM, 5) == body
    assert check_manifest(tmp_path, "m", DIM, 6) == body  # one commit behind: the crash window, accepted
    with pytest.raises(StoreCorruptError, match="out of step"):
        check_manifest(tmp_path, "m", DIM, 7)
    with pytest.raises(StoreCorruptError, match="disagrees"):
        check_manifest(tmp_path, "other", DIM, 5)


def test_missing_manifest(tmp_path):
    with pytest.raises(StoreCorruptError, match="missing; run `docqa rebuild`"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_manifest_is_detected(tmp_path, damage):
    new_kb(tmp_path / "kb").close()
    m = tmp_path / "kb" / "manifest.json"
    raw = m.read_bytes()
    m.write_bytes({"truncate": raw[:20], "flip": raw.replace(b'"dim": 8', b'"dim": 9'), "garbage": b"\x00\xff"}[damage])
    with pytest.raises(StoreCorruptError, match="docqa rebuild"):
        KnowledgeBase.open(tmp_path / "kb")
    with KnowledgeBase.open(tmp_path / "kb", writable=True, validate=False) as kb:
        kb.rebuild()
    KnowledgeBase.open(tmp_path / "kb").close()
