"""Ingest jobs: one worker thread per knowledge base runs docqa.ingest.ingest (the CLI's code) on uploaded files.

    POST /api/v1/kbs/{kb}/documents  ->  202 {job_id, documents}   (a job per upload request)
    GET  /api/v1/jobs/{id}           ->  {status: queued|running|done|failed|cancelled, stage, progress, files, errors}

A knowledge base has one writer at a time: its worker takes jobs (and document removals) in order, and the
store's flock keeps out any other process. Readers are never blocked (docqa/store/ snapshots).

Jobs live in the server's SQLite file, so they survive a restart. On start (`recover`), a job found `running`
was interrupted by a crash: it is queued again (ingest is incremental: what was committed stays, the rest is
redone), or marked failed with the reason when it was already interrupted `MAX_ATTEMPTS` times; `queued` jobs
are queued again. No job stays "running" after its process is gone.

Cancel (DELETE /api/v1/jobs/{id}): a queued job is cancelled at once; a running one stops at the next file
(the batches already committed are kept, as with Ctrl-C on `docqa ingest`).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ..errors import DocQAError, JobCancelled
from .errors import NotFound
from .state import ServerState

MAX_ATTEMPTS = 3
TERMINAL = ("done", "failed", "cancelled")


class JobManager:
    def __init__(self, state: ServerState):
        self.state = state
        self.db = state.db
        self._queues: dict[str, queue.Queue] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def recover(self) -> None:
        """Requeue what a previous process left queued or running; fail what was interrupted too often."""
        for job in self.db.rows("SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY created"):
            if job["status"] == "running" and job["attempts"] >= MAX_ATTEMPTS:
                reason = (
                    f"interrupted {job['attempts']} times (the server stopped during ingest); upload again to retry"
                )
                self._finish(job["id"], "failed", errors=[*job["errors"], {"file": None, "reason": reason}])
                continue
            if job["kb"] not in self.state.kb_names():
                self._finish(job["id"], "failed", errors=[{"file": None, "reason": "its knowledge base is gone"}])
                continue
            note = "resumed after a server restart" if job["status"] == "running" else job["stage"]
            self.db.update("jobs", job["id"], {"status": "queued", "stage": note})
            self._enqueue(job["kb"], ("job", job["id"]))

    def stop(self) -> None:
        self._stopping.set()
        for ev in list(self._cancel.values()):
            ev.set()
        with self._lock:
            for q in self._queues.values():
                q.put(None)
            threads = list(self._threads.values())
        for t in threads:
            t.join(timeout=10)

    # ------------------------------------------------------------------ API
    def submit(self, kb: str, uploads: list[dict[str, Any]]) -> str:
        job_id = uuid.uuid4().hex
        now = time.time()
        files = [{"document_id": u["id"], "name": u["name"], "status": "queued", "error": ""} for u in uploads]
        self.db.insert(
            "jobs",
            {
                "id": job_id,
                "kb": kb,
                "status": "queued",
                "stage": "queued",
                "progress": 0.0,
                "files": files,
                "errors": [],
                "created": now,
                "updated": now,
            },
        )
        for u in uploads:
            self.db.update("uploads", u["id"], {"status": "queued", "job_id": job_id, "error": ""})
        self._enqueue(kb, ("job", job_id))
        return job_id

    def get(self, job_id: str) -> dict[str, Any]:
        job = self.db.row("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return public_job(job)

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] == "queued":
            self._finish(job_id, "cancelled")
            self._set_uploads(job_id, "cancelled")
        elif job["status"] == "running":
            ev = self._cancel.get(job_id)
            if ev is not None:
                ev.set()
        return self.get(job_id)

    def run_exclusive(self, kb: str, fn: Callable[[], Any]) -> Future:
        """Run `fn` in the knowledge base's writer thread, after the jobs queued before it."""
        fut: Future = Future()
        self._enqueue(kb, ("call", fn, fut))
        return fut

    # ------------------------------------------------------------------ the workers
    def _enqueue(self, kb: str, item: tuple) -> None:
        with self._lock:
            q = self._queues.get(kb)
            if q is None:
                q = self._queues[kb] = queue.Queue()
                t = self._threads[kb] = threading.Thread(
                    target=self._work, args=(kb, q), name=f"ingest-{kb}", daemon=True
                )
                t.start()
        q.put(item)

    def _work(self, kb: str, q: queue.Queue) -> None:
        while not self._stopping.is_set():
            item = q.get()
            if item is None:
                return
            if item[0] == "call":
                _, fn, fut = item
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # handed to the waiting request
                        fut.set_exception(e)
                continue
            try:
                self._run(item[1])
            except Exception as e:  # never let a worker die: the job records why
                self._finish(item[1], "failed", errors=[{"file": None, "reason": f"internal error: {e}"}])

    def _run(self, job_id: str) -> None:
        from .. import ingest as ingest_mod

        job = self.db.row("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if job is None or job["status"] != "queued":
            return
        uploads = self.db.rows("SELECT * FROM uploads WHERE job_id = ?", (job_id,))
        by_path = {u["path"]: u for u in uploads}
        files = {f["document_id"]: f for f in job["files"]}
        cancel = self._cancel[job_id] = threading.Event()
        self.db.update("jobs", job_id, {"status": "running", "stage": "starting", "attempts": job["attempts"] + 1})
        self._set_uploads(job_id, "ingesting")
        paths = [u["path"] for u in uploads if Path(u["path"]).exists()]
        for u in uploads:
            if u["path"] not in paths:
                files[u["id"]].update(status="failed", error="the uploaded file is missing")
        progress = self._progress(job_id, files, by_path, cancel, total=max(len(paths), 1))
        try:
            if not paths:
                raise DocQAError("none of the uploaded files is left to ingest")
            s = self.state.settings_for(self.state.kb(job["kb"]))
            report = ingest_mod.ingest(paths, s, embedder=self.state.ingest_embedder, progress=progress)
        except JobCancelled:
            for f in files.values():
                if f["status"] in ("queued", "ingesting", "embedding"):
                    f["status"] = "cancelled"
            self._finish(job_id, "cancelled", files=list(files.values()))
            self._sync_uploads(job_id, files)
            return
        except DocQAError as e:
            for f in files.values():
                if f["status"] != "failed":
                    f.update(status="failed", error=str(e))
            self._finish(job_id, "failed", files=list(files.values()), errors=[{"file": None, "reason": str(e)}])
            self._sync_uploads(job_id, files)
            return
        finally:
            self._cancel.pop(job_id, None)
        self._record(job_id, files, by_path, report)

    def _progress(
        self, job_id: str, files: dict[str, dict], by_path: dict[str, dict], cancel: threading.Event, total: int
    ) -> Callable[..., None]:
        """The ingest progress callback of a job: it updates `files` and the job row, and raises when cancelled."""
        done = 0

        def progress(event: str, **kw: Any) -> None:
            nonlocal done
            if cancel.is_set():
                raise JobCancelled()
            if event == "plan":
                self.db.update("jobs", job_id, {"stage": "parsing and embedding", "files": list(files.values())})
            elif event == "file":
                done += 1
                u = by_path.get(kw.get("path", ""))
                if u is not None:
                    st = "failed" if kw.get("status") == "failed" else "embedding"
                    files[u["id"]].update(status=st, error=kw.get("reason", ""))
                self.db.update(
                    "jobs", job_id, {"progress": round(min(done / total, 1.0) * 0.95, 3), "files": list(files.values())}
                )
            elif event == "commit":
                for f in files.values():
                    if f["status"] == "embedding":
                        f["status"] = "ok"
                self.db.update("jobs", job_id, {"stage": "committed", "files": list(files.values())})

        return progress

    def _record(self, job_id: str, files: dict[str, dict], by_path: dict[str, dict], report: Any) -> None:
        """None; finishes a job that ran to the end with each file's outcome from the ingest report."""
        failed = {p: r for p, r in report.failed}
        errors = []
        for path, u in by_path.items():
            f = files[u["id"]]
            if path in failed:
                f.update(status="failed", error=failed[path])
                errors.append({"file": u["name"], "reason": failed[path]})
            elif f["status"] != "failed":
                f.update(status="ok", error="")
        status = "failed" if errors and len(errors) == len(files) else "done"
        self._finish(job_id, status, files=list(files.values()), errors=errors, report=report.to_json())
        self._sync_uploads(job_id, files)

    def _finish(self, job_id: str, status: str, **values: Any) -> None:
        values = {"status": status, "stage": status, **values}
        if status == "done":
            values["progress"] = 1.0
        self.db.update("jobs", job_id, values)

    def _set_uploads(self, job_id: str, status: str) -> None:
        self.db.execute("UPDATE uploads SET status = ?, updated = ? WHERE job_id = ?", (status, time.time(), job_id))

    def _sync_uploads(self, job_id: str, files: dict[str, dict]) -> None:
        for doc_id, f in files.items():
            self.db.update("uploads", doc_id, {"status": f["status"], "error": f.get("error", "")})


def public_job(job: dict[str, Any]) -> dict[str, Any]:
    return {
        k: job[k]
        for k in ("id", "kb", "status", "stage", "progress", "files", "errors", "attempts", "created", "updated")
    } | {"job_id": job["id"], "report": job.get("report")}


def touch(path: str) -> None:
    """Give a file a new mtime so that ingest looks at it again (a retry of a failed file)."""
    os.utime(path, None)
