"""manifest.json: a human-readable, checksummed summary of a knowledge base (SQLite stays the truth).

    >>> write_manifest(Path("kb"), {"format_version": 1, "embed_model": "m", "dim": 384, "generation": 3, ...})  # doctest: +SKIP
    >>> read_manifest(Path("kb"))["generation"]  # doctest: +SKIP
    3

The checksum is SHA-256 over the body's canonical JSON (sorted keys), stored under "checksum": any edit, truncation
or flipped bit makes `read_manifest` raise StoreCorruptError. The manifest is written after each SQLite commit,
so after a crash it may be exactly one generation behind; `check_manifest` accepts that, anything else is refused.

Limits: the checksum detects damage, not tampering (anyone can recompute it); the counts in it are informative
only and are not checked against the database.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import StoreCorruptError
from . import files

MANIFEST_NAME = "manifest.json"


def manifest_checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def write_manifest(folder: Path, body: dict) -> None:
    """Atomically replace the manifest with `body` plus its checksum (OSError if the disk refuses)."""
    body = {**body, "checksum": manifest_checksum(body)}
    # looked up on the module at call time, so the crash tests' hook on files.write_atomic sees manifest writes
    files.write_atomic(folder / MANIFEST_NAME, json.dumps(body, indent=2, ensure_ascii=False).encode())


def read_manifest(folder: Path) -> dict:
    """The manifest body, validated against its checksum (StoreCorruptError when missing or damaged)."""
    p = folder / MANIFEST_NAME
    try:
        body = json.loads(p.read_bytes())
        checksum = body.pop("checksum")
        ok = isinstance(body, dict) and checksum == manifest_checksum(body)
    except FileNotFoundError:
        raise StoreCorruptError(f"{p} is missing; {files.REBUILD_HINT}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise StoreCorruptError(f"{p} is damaged (checksum mismatch); {files.REBUILD_HINT}")
    return body


def check_manifest(folder: Path, embed_model: str, dim: int, generation: int) -> dict:
    """Read the manifest and refuse it (StoreCorruptError) unless it describes this database; returns it."""
    m = read_manifest(folder)
    if m.get("embed_model") != embed_model or m.get("dim") != dim:
        raise StoreCorruptError(f"{folder / MANIFEST_NAME} disagrees with the database; {files.REBUILD_HINT}")
    # One commit behind is the crash window between the SQLite commit and the manifest write: harmless.
    if not 0 <= generation - int(m.get("generation", -1)) <= 1:
        raise StoreCorruptError(f"{folder / MANIFEST_NAME} is out of step with the database; {files.REBUILD_HINT}")
    return m
