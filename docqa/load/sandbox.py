"""Load untrusted files in a separate, resource-capped worker process.

    >>> with LoaderSandbox(timeout=60, memory_mb=1024) as sb:     # doctest: +SKIP
    ...     doc = sb.load(Path("manual.pdf"))                     # a Document, or LoadError with a reason

The worker is `python -m docqa.load.sandbox` (a fresh interpreter: it does not inherit a parent that has torch
loaded, and it imports only docqa.load). It serves one file at a time over pipes; requests and results are JSON
lines (`Document.to_json`), never pickle. The worker's own stdout is redirected to stderr so stray prints from
parsers cannot corrupt the protocol; its stderr goes to a temp file (`last_stderr` keeps the tail after a crash).

Per file: larger than `max_file_mb` -> LoadError("file too large ..."), nothing parsed; slower than `timeout`
seconds -> worker killed, LoadError("timed out after Ns"). OCR is the exception: before each page or image it
recognises, the worker sends a heartbeat line and from then on each page gets `ocr_page_timeout` seconds (the
`ocr` mode, auto|always|never, travels with each request); MemoryError under the RLIMIT_AS cap of `memory_mb`
(or a worker killed by SIGKILL from elsewhere, e.g. the OOM killer, or a crash whose stderr says it ran out of
memory) -> LoadError("too much memory (> N MB)"); a crash -> LoadError("parser crashed (signal N)"). After a
timeout, crash or memory failure the worker is restarted lazily for the next file (`restarts` counts them).
`LoaderSandbox(inline=True)` loads in-process instead (tests, debugging): size check only, no time/memory caps.
`plugins` are Python files imported in the worker (and inline) before serving, which may call
`docqa.load.register_loader` to add formats.

Limits: POSIX only (select, setrlimit); RLIMIT_AS caps address space, not RSS, so memory_mb must leave room for
the interpreter and pdfium (~150 MB of mappings); one worker per sandbox, `load` calls are serialised by a lock.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from docqa.documents import Document
from docqa.errors import LoadError, WorkerGone

START_TIMEOUT = 30.0
OCR_PAGE_TIMEOUT = 90.0  # seconds one OCR page may take (a dense A4 page: 5-20 s on 2 cores)
_MEMORY_HINTS = ("MemoryError", "out of memory", "Out of memory", "bad_alloc", "Cannot allocate memory")
_loaded_plugins: set[str] = set()


def _import_plugins(plugins: Sequence[str | os.PathLike[str]]) -> None:
    for p in plugins:
        key = str(Path(p).resolve())
        if key in _loaded_plugins:
            continue
        spec = importlib.util.spec_from_file_location(f"docqa_load_plugin_{len(_loaded_plugins)}", key)
        if spec is None or spec.loader is None:
            raise LoadError(f"cannot import loader plugin {p}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded_plugins.add(key)


class LoaderSandbox:
    """A persistent worker process that parses one file at a time under time and memory limits."""

    def __init__(
        self,
        timeout: float = 120.0,
        memory_mb: int = 2048,
        max_file_mb: int = 512,
        *,
        inline: bool = False,
        plugins: Sequence[str | os.PathLike[str]] = (),
        ocr: str = "auto",
        ocr_page_timeout: float = OCR_PAGE_TIMEOUT,
    ) -> None:
        from docqa.load.ocr import OCR_MODES

        if ocr not in OCR_MODES:
            raise ValueError(f"ocr must be one of {', '.join(OCR_MODES)}, got {ocr!r}")
        self.ocr = ocr
        self.ocr_page_timeout = float(ocr_page_timeout)
        self.timeout = float(timeout)
        self.memory_mb = int(memory_mb)
        self.max_file_mb = max_file_mb
        self.inline = inline
        self.plugins = [str(Path(p).resolve()) for p in plugins]
        self.restarts = 0
        self.last_stderr = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._started_once = False
        if inline:
            _import_plugins(self.plugins)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LoaderSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    @property
    def worker_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def close(self) -> None:
        """Stop the worker (EOF on its stdin, then kill if it lingers)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin:
                    proc.stdin.close()
                proc.wait(timeout=2)
            except Exception:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout,):
                if stream:
                    stream.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._buf.clear()

    def _start(self) -> subprocess.Popen[bytes]:
        if self._started_once:
            self.restarts += 1
        self._started_once = True
        self._stderr = tempfile.TemporaryFile(mode="a+b")  # O_APPEND, so truncating it between files works
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the directory holding the docqa package
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "docqa.load.sandbox", "--memory-mb", str(self.memory_mb)]
        for p in self.plugins:
            cmd += ["--plugin", p]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env, close_fds=True
        )
        self._proc = proc
        self._buf.clear()
        try:
            msg = self._read(time.monotonic() + START_TIMEOUT)
        except (TimeoutError, WorkerGone):
            self._kill()
            raise LoadError(f"sandbox worker failed to start: {self._stderr_tail()[-300:]}") from None
        if not msg.get("ready"):
            self._kill()
            raise LoadError(f"sandbox worker failed to start: {msg.get('error', msg)}")
        return proc

    def _kill(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        self.last_stderr = self._stderr_tail()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._buf.clear()
        return rc

    def _stderr_tail(self, n: int = 4000) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - n))
            return self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    # ------------------------------------------------------------------ protocol

    def _read(self, deadline: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while (nl := self._buf.find(b"\n")) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise WorkerGone
            self._buf += chunk
        line = bytes(self._buf[:nl])
        del self._buf[: nl + 1]
        return json.loads(line.decode("utf-8", "surrogatepass"))

    def _check_size(self, path: Path) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise LoadError("file not found") from None
        except OSError as e:
            raise LoadError(f"cannot read file ({e.strerror or e})") from None
        if size > self.max_file_mb * 1024 * 1024:
            raise LoadError(f"file too large ({size / 2**20:.0f} MB > {self.max_file_mb} MB)")

    def load(self, path: Path) -> Document:
        """Parse `path` in the worker; returns its Document or raises LoadError with a short reason."""
        path = Path(path)
        self._check_size(path)
        if self.inline:
            from docqa.load import load_file

            return load_file(path, ocr=self.ocr)
        with self._lock:
            return self._load_in_worker(path)

    def _load_in_worker(self, path: Path) -> Document:
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                self._kill()
            self._start()
        assert self._proc is not None and self._proc.stdin is not None
        if self._stderr is not None:
            self._stderr.truncate(0)
        request = json.dumps({"path": str(path.resolve()), "ocr": self.ocr}).encode("utf-8", "surrogatepass") + b"\n"
        deadline = time.monotonic() + self.timeout
        beats = 0
        try:
            self._proc.stdin.write(request)
            self._proc.stdin.flush()
            while "beat" in (msg := self._read(deadline)):
                # an OCR page starts: it gets its own budget, so a 40-page scan is not judged by a 1-file limit
                beats += 1
                deadline = time.monotonic() + self.ocr_page_timeout
        except TimeoutError:
            self._kill()
            if beats:
                raise LoadError(f"timed out (OCR page/image {beats} took over {self.ocr_page_timeout:g}s)") from None
            raise LoadError(f"timed out after {self.timeout:g}s") from None
        except (WorkerGone, BrokenPipeError, OSError):
            raise self._death() from None
        if msg.get("ok"):
            return Document.from_json(msg["doc"])
        kind = msg.get("kind")
        if kind == "memory":
            self._kill()  # the heap is fragmented and near the cap: start clean
            raise LoadError(f"too much memory (> {self.memory_mb} MB)")
        if kind == "internal":
            self._kill()
        raise LoadError(str(msg.get("error", "unknown error")))

    def _death(self) -> LoadError:
        """The worker died mid-file: say why, in a form the user can act on."""
        assert self._proc is not None
        try:
            rc = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        tail = self._stderr_tail()
        self._kill()
        self.last_stderr = tail
        if rc is not None and rc < 0:
            sig = -rc
            if sig == signal.SIGKILL or any(h in tail for h in _MEMORY_HINTS):
                return LoadError(f"too much memory (> {self.memory_mb} MB)")
            if sig == signal.SIGABRT and self.memory_mb > 0:
                # pdfium aborts without a word when an allocation fails under the address-space cap
                return LoadError(f"parser crashed (signal {sig}), most likely out of memory (cap {self.memory_mb} MB)")
            return LoadError(f"parser crashed (signal {sig})")
        if any(h in tail for h in _MEMORY_HINTS):
            return LoadError(f"too much memory (> {self.memory_mb} MB)")
        return LoadError(f"parser crashed (exit code {rc})")


# ---------------------------------------------------------------------- worker side


def _worker_main(argv: list[str]) -> int:
    # Keep a private copy of stdout for the protocol; anything printed by parsers lands on stderr.
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj: dict[str, Any]) -> None:
        channel.write(json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")

    memory_mb, plugins = 0, []
    i = 0
    while i < len(argv):
        if argv[i] == "--memory-mb":
            memory_mb = int(argv[i + 1])
        elif argv[i] == "--plugin":
            plugins.append(argv[i + 1])
        i += 2
    try:
        import resource

        from docqa.load import load_file, ocr

        ocr.set_heartbeat(lambda what: send({"beat": what}))
        _import_plugins(plugins)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashing parser must not litter core files
        if memory_mb > 0:
            cap = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except Exception as e:
        send({"ready": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    send({"ready": True, "pid": os.getpid()})
    for raw in sys.stdin.buffer:
        try:
            req = json.loads(raw)
            path, ocr_setting = Path(req["path"]), str(req.get("ocr", "auto"))
        except (ValueError, KeyError, TypeError):
            send({"ok": False, "kind": "internal", "error": "bad request"})
            continue
        try:
            doc = load_file(path, ocr=ocr_setting)
            payload = doc.to_json()
            send({"ok": True, "doc": payload})
        except LoadError as e:
            send({"ok": False, "kind": "load", "error": str(e)})
        except MemoryError:
            payload = doc = None  # type: ignore[assignment]
            send({"ok": False, "kind": "memory", "error": "MemoryError"})
        except Exception as e:  # load_file wraps parser errors; this is a bug in docqa or a plugin
            send({"ok": False, "kind": "internal", "error": f"internal error: {type(e).__name__}: {e}"[:300]})
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
