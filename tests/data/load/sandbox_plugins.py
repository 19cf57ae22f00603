"""Test-only loaders for tests/test_load_sandbox.py, registered by suffix inside the sandbox worker.

The file's content is a number: .sleep sleeps that many seconds, .alloc allocates that many MB,
.abort kills the worker with SIGABRT, .exit exits with that code. Never imported by docqa itself.
"""

import os
import time
from pathlib import Path

from docqa.documents import Document
from docqa.load import register_loader


def _sleep(path: Path) -> Document:
    time.sleep(float(path.read_text()))
    return Document(source=str(path), text="slept")


def _alloc(path: Path) -> Document:
    blob = bytearray(int(path.read_text()) * 1024 * 1024)  # zero pages, but address space counts under RLIMIT_AS
    return Document(source=str(path), text=f"allocated {len(blob)}")


def _abort(path: Path) -> Document:
    os.abort()


def _exit(path: Path) -> Document:
    os._exit(int(path.read_text()))


register_loader(".sleep", _sleep)
register_loader(".alloc", _alloc)
register_loader(".abort", _abort)
register_loader(".exit", _exit)
