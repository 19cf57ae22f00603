"""docqa serve as a real process (uvicorn on a free loopback port): the official `openai` client in both modes,
a search answered while a generation runs, an upload over the limit, a crash in the middle of an ingest followed
by a restart, and the refusal to bind a public address without a key.

Run as a script, this file is the server those tests start: `python tests/test_server_live.py serve ...` is the
real `docqa` command line with the hash embedder (and, with DOCQA_TEST_SLOW_GEN=SECONDS, the extractive answer streamed slowly;
with DOCQA_TEST_CRASH=POINT:N, a SIGKILL at a commit step, see tests/fakeembed.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root.parent / f"server-{self.port}.log"
        cmd = [
            sys.executable,
            str(HERE / "test_server_live.py"),
            "serve",
            "--root",
            str(root),
            "--port",
            str(self.port),
            "--model",
            "extractive",
            *args,
        ]
        e = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self._fh = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=e, stdout=self._fh, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> Server:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.2)
        raise AssertionError(f"server not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._fh.close()


@pytest.fixture
def kb_root(tmp_path, docs_dir) -> Path:
    from test_server import make_kb

    root = tmp_path / "indexes"
    make_kb(root, "docs", docs_dir)
    return root


@pytest.fixture
def server(kb_root):
    s = Server(kb_root)
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def test_openai_client_both_modes(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed-on-loopback", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["docqa/docs"]
    r = client.chat.completions.create(
        model="docqa/docs", messages=[{"role": "user", "content": "How do I create a virtual environment?"}]
    )
    assert "venv" in r.choices[0].message.content
    extra = r.model_extra["docqa"]
    assert extra["cited"] and extra["sources"][extra["cited"][0] - 1]["source"] == "venv.md"
    chunks = list(
        client.chat.completions.create(
            model="docqa/docs", stream=True, messages=[{"role": "user", "content": "怎么解压 tar.gz 文件？"}]
        )
    )
    assert chunks and all(c.choices for c in chunks)
    assert "sources" in chunks[0].model_extra["docqa"] and chunks[-1].choices[0].finish_reason == "stop"
    assert "cited" in chunks[-1].model_extra["docqa"]
    assert sum(1 for c in chunks if (c.model_extra or {}).get("docqa")) == 2
    assert "tar -xzvf" in "".join(c.choices[0].delta.content or "" for c in chunks)
    # footnotes: citations for a client that ignores the extra fields
    r = client.chat.completions.create(
        model="docqa/docs",
        extra_body={"citation_style": "footnotes"},
        messages=[{"role": "user", "content": "How do I create a virtual environment?"}],
    )
    assert "Sources:\n[" in r.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="docqa/missing", messages=[{"role": "user", "content": "x"}])


def test_search_answered_while_a_generation_runs(kb_root):
    import httpx

    s = Server(kb_root, env={"DOCQA_TEST_SLOW_GEN": "0.05"})  # a few seconds of generation
    try:
        s.wait_ready()
        body = {
            "model": "docqa/docs",
            "stream": True,
            "messages": [{"role": "user", "content": "How do I create a virtual environment?"}],
        }
        first_token = threading.Event()
        finished: list[float] = []

        def generate() -> None:
            with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if '"content": "' in line and '"content": ""' not in line:
                        first_token.set()
                finished.append(time.time())

        t = threading.Thread(target=generate)
        t.start()
        assert first_token.wait(30)
        t0 = time.time()
        r = httpx.post(s.url + "/api/v1/search", json={"query": "tar archive", "kb_ids": ["docs"], "k": 3}, timeout=30)
        search_done = time.time()
        assert r.status_code == 200 and r.json()["results"]
        assert httpx.get(s.url + "/api/v1/kbs", timeout=30).status_code == 200
        t.join(60)
        assert finished and search_done < finished[0], "the search waited for the generation"
        assert search_done - t0 < 2.0
    finally:
        s.stop()


def test_upload_over_the_limit_real_server(kb_root):
    import httpx

    s = Server(kb_root, "--max-upload-mb", "1")
    try:
        s.wait_ready()
        big = b"0123456789abcdef\n" * (3 * 1024 * 1024 // 17)
        try:
            r = httpx.post(
                s.url + "/api/v1/kbs/docs/documents", files=[("files", ("big.txt", big, "text/plain"))], timeout=30
            )
            assert r.status_code == 413
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the server may answer 413 and close while the client is still sending
        # the server is fine and kept nothing
        assert httpx.get(s.url + "/healthz", timeout=5).status_code == 200
        incoming = kb_root / "docs" / "files" / ".incoming"
        assert not incoming.exists() or not any(incoming.iterdir())
        r = httpx.post(
            s.url + "/api/v1/kbs/docs/documents",
            files=[("files", ("small.txt", b"tiny file words", "text/plain"))],
            timeout=30,
        )
        assert r.status_code == 202
    finally:
        s.stop()


def test_crash_mid_ingest_then_restart_resumes(kb_root):
    import httpx

    # the first FAISS commit of this process is the upload's ingest: SIGKILL once the file is written
    s = Server(kb_root, env={"DOCQA_TEST_CRASH": "faiss_written:1"})
    try:
        s.wait_ready()
        r = httpx.post(
            s.url + "/api/v1/kbs/docs/documents",
            timeout=30,
            files=[("files", ("nginx.md", b"# nginx\n\nThe nginx configuration file is nginx.conf.", "text/markdown"))],
        )
        assert r.status_code == 202
        job_id = r.json()["job_id"]
        s.proc.wait(30)
        assert s.proc.returncode == -signal.SIGKILL
    finally:
        s.stop()
    import sqlite3

    with contextlib.closing(sqlite3.connect(kb_root / ".docqa-server" / "server.sqlite")) as c:
        assert c.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()[0] == "running"
    s = Server(kb_root)
    try:
        s.wait_ready()
        deadline = time.time() + 60
        while (job := httpx.get(f"{s.url}/api/v1/jobs/{job_id}", timeout=5).json())["status"] not in ("done", "failed"):
            assert time.time() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "done" and job["attempts"] == 2, job
        hits = httpx.post(s.url + "/api/v1/search", json={"query": "nginx configuration file"}, timeout=10).json()[
            "results"
        ]
        assert hits[0]["source"].endswith("nginx.md")
        from docqa.store import KnowledgeBase

        with KnowledgeBase.open(kb_root / "docs", validate=False) as kb:
            assert [lv for lv, _ in kb.verify() if lv == "error"] == []
    finally:
        s.stop()


def test_job_interrupted_too_often_is_failed_with_a_reason(kb_root):
    import httpx

    from docqa.server.db import ServerDB

    db = ServerDB(kb_root / ".docqa-server" / "server.sqlite")
    db.insert(
        "jobs",
        {
            "id": "stuck",
            "kb": "docs",
            "status": "running",
            "stage": "parsing",
            "attempts": 3,
            "created": 0,
            "updated": 0,
        },
    )
    db.close()
    s = Server(kb_root)
    try:
        s.wait_ready()
        job = httpx.get(s.url + "/api/v1/jobs/stuck", timeout=5).json()
        assert job["status"] == "failed" and "interrupted" in job["errors"][-1]["reason"]
    finally:
        s.stop()


@pytest.mark.parametrize("extra, ok", [((), False), (("--insecure",), True), (("--api-key", "k3y-long-enough"), True)])
def test_public_address_needs_a_key(kb_root, extra, ok):
    import httpx

    port = free_port()
    cmd = [
        sys.executable,
        str(HERE / "test_server_live.py"),
        "serve",
        "--root",
        str(kb_root),
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        *extra,
    ]
    log = kb_root.parent / f"public-{port}.log"
    with open(log, "wb") as fh:
        p = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        try:
            if not ok:
                p.wait(20)  # refused before anything loads
                out = log.read_bytes()
                assert p.returncode != 0
                assert b"--api-key" in out and b"--insecure" in out
                return
            deadline = time.time() + 30
            r = None
            while time.time() < deadline and r is None:
                with contextlib.suppress(httpx.HTTPError):
                    r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                time.sleep(0.2)
            assert r is not None and r.status_code == (401 if "--api-key" in extra else 200)
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            if "--api-key" in extra:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer k3y-long-enough"})
                assert r.status_code == 200
        finally:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                p.wait(15)
    assert b"k3y-long-enough" not in log.read_bytes()  # no secret is ever logged


# ---------------------------------------------------------------------- the server these tests start
def main() -> None:
    sys.path.insert(0, str(HERE))
    import fakeembed
    from test_server import EMB, SlowExtractive

    import docqa.embed
    import docqa.generate
    import docqa.ingest

    docqa.embed.get_embedder = lambda *a, **k: EMB  # type: ignore[assignment]
    docqa.ingest.get_embedder = lambda *a, **k: EMB  # type: ignore[assignment]
    crash = os.environ.get("DOCQA_TEST_CRASH")
    if crash:
        point, n = crash.split(":")
        fakeembed._install_crash(point, int(n))
    slow = os.environ.get("DOCQA_TEST_SLOW_GEN")
    if slow:
        gen = SlowExtractive(delay=float(slow))
        docqa.generate.get_generator = lambda *a, **k: gen  # type: ignore[assignment]
    from docqa.cli import app

    app(prog_name="docqa")


if __name__ == "__main__":
    sys.exit(main())
