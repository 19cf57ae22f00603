"""The knowledge-base folder's file-level guarantees: atomic replacement and the single-writer lock.

    >>> write_atomic(Path("kb/manifest.json"), b"{}")      # a crash leaves the old bytes or the new, never a mix  # doctest: +SKIP
    >>> lock = WriterLock.acquire(Path("kb"))              # StoreLockedError("... locked by PID 4242 ...") if held  # doctest: +SKIP
    >>> lock.release()  # doctest: +SKIP

The lock is `flock` on `kb/lock`, which holds the writer's PID for the error message. flock is released by the
kernel when the process dies, so a killed ingest never leaves a stale lock behind.

Limits: flock is advisory and per open file description; it does not work across machines on most network file
systems (NFS before v4, SMB), so a knowledge base must not be written from two machines at once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from pathlib import Path

from ..errors import StoreError, StoreLockedError

DB_NAME = "kb.sqlite"
LOCK_NAME = "lock"
REBUILD_HINT = "run `docqa rebuild` to restore the indexes from the database (or `docqa verify` for details)"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks (ingest's change detection, the ONNX export check, a
    fine-tuning data file's identity)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (the directory entry is data too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, never a mix.

    On an OSError the `.tmp` file may be left behind; callers that care remove it (a writer's start-up removes
    every stray one anyway)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def io_message(e: OSError) -> str:
    """An OSError in words a user acts on ("the disk is full" rather than "[Errno 28]")."""
    if e.errno == errno.ENOSPC:
        return "the disk is full"
    if e.errno == errno.EDQUOT:
        return "the disk quota is exceeded"
    return e.strerror or str(e)


def _locked_error(fd: int, path: Path) -> StoreLockedError:
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    return StoreLockedError(f"knowledge base is locked by PID {pid} (another ingest/remove is running on {path})")


class WriterLock:
    """The one writer's hold on a knowledge-base folder (see the module docstring)."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, folder: Path) -> WriterLock:
        """Take the lock without waiting: StoreLockedError naming the holder's PID if another process has it."""
        lock_path = folder / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot open lock file {lock_path}: {io_message(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                raise _locked_error(fd, folder) from None
            finally:
                os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return cls(fd)

    def release(self, *, clear: bool = True) -> None:
        """Let go (idempotent). `clear` empties the PID first; a failed open skips that, as it always has."""
        if self._fd is None:
            return
        if clear:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
        os.close(self._fd)
        self._fd = None


def check_unlocked(folder: Path) -> None:
    """Raise StoreLockedError now if another writer holds the knowledge base in `folder`.

    A cheap probe (nothing is kept locked) so a second ingest fails at once instead of after loading its model;
    `WriterLock.acquire` still takes the lock for real."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR)
    except OSError:
        return  # no lock file yet (a new knowledge base), or unreadable: opening will say so
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the close below
    except BlockingIOError:
        raise _locked_error(fd, folder) from None
    finally:
        os.close(fd)
