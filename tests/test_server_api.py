"""The native API through TestClient: knowledge bases, uploads (streamed, hashed, size limit, duplicates, Chinese
names), ingest jobs (status, progress stream, cancel, retry), documents (list, file, page text, delete) and
conversations stored server-side (create, ask over SSE, read back, export, delete)."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest

pytest.importorskip("fastapi")

from conftest import EN_VENV, ZH_TAR  # noqa: E402
from test_server import ZH_TAR_NAME, make_client  # noqa: E402


@pytest.fixture
def client(tmp_path, docs_dir):
    with make_client(tmp_path, docs_dir, max_upload_mb=0.05) as c:
        yield c


def wait_job(c, job_id: str, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = c.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['status']}")


def sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_knowledge_bases_create_list_delete(client):
    assert [k["name"] for k in client.get("/api/v1/kbs").json()["kbs"]] == ["docs"]
    assert client.post("/api/v1/kbs", json={"name": "手册"}).status_code == 201
    assert client.post("/api/v1/kbs", json={"name": "手册"}).status_code == 409
    assert client.post("/api/v1/kbs", json={"name": "../x"}).status_code == 400
    kbs = {k["name"]: k for k in client.get("/api/v1/kbs").json()["kbs"]}
    assert kbs["手册"]["documents"] == 0 and kbs["docs"]["documents"] == 3
    assert "docqa/手册" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert client.delete("/api/v1/kbs/手册").status_code == 200
    assert client.get("/api/v1/kbs/手册/documents").status_code == 404


def test_upload_ingest_search_page_file_delete(client):
    assert client.post("/api/v1/kbs", json={"name": "new"}).status_code == 201
    name = "压缩 归档 tar.txt"
    r = client.post(
        "/api/v1/kbs/new/documents",
        files=[
            ("files", (name, ZH_TAR.encode(), "text/plain")),
            ("files", ("venv.md", EN_VENV.encode(), "text/markdown")),
        ],
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["job_id"] and [d["name"] for d in body["documents"]] == [name, "venv.md"]
    job = wait_job(client, body["job_id"])
    assert job["status"] == "done" and job["progress"] == 1.0, job
    assert {f["status"] for f in job["files"]} == {"ok"}
    docs = {d["name"]: d for d in client.get("/api/v1/kbs/new/documents").json()["documents"]}
    assert docs[name]["status"] == "ok" and docs[name]["chunks"] >= 1
    hits = client.post("/api/v1/search", json={"query": "怎么解压 tar.gz 文件？", "kb_ids": ["new"], "k": 2}).json()[
        "results"
    ]
    assert hits[0]["source"].endswith(name) and hits[0]["document_id"] == docs[name]["id"]
    # the original, with its Chinese name intact (RFC 5987)
    f = client.get(f"/api/v1/kbs/new/documents/{docs[name]['id']}/file")
    assert f.status_code == 200 and f.content == ZH_TAR.encode()
    assert "filename*=UTF-8''" + urllib.parse.quote(name, safe="") in f.headers["content-disposition"]
    # the page text, with the cited chunk located in it
    p = client.get(
        f"/api/v1/kbs/new/documents/{docs[name]['id']}/pages/1", params={"chunk_id": hits[0]["chunk_id"]}
    ).json()
    s, e = p["highlight"]
    assert "tar -xzvf" in p["text"][s:e]
    assert hits[0]["text"] in p["text"]  # the UI highlights a (merged) hit by finding its text on the page
    # a duplicate (same bytes, other name) is recognised by its hash
    r = client.post("/api/v1/kbs/new/documents", files=[("files", ("copy.txt", ZH_TAR.encode(), "text/plain"))]).json()
    assert r["job_id"] is None and r["documents"][0]["status"] == "duplicate"
    assert r["documents"][0]["duplicate_of"] == docs[name]["id"]
    # delete
    assert client.delete(f"/api/v1/kbs/new/documents/{docs[name]['id']}").json()["removed_from_index"] == 1
    assert name not in {d["name"] for d in client.get("/api/v1/kbs/new/documents").json()["documents"]}
    hits = client.post("/api/v1/search", json={"query": "tar -xzvf", "kb_ids": ["new"]}).json()["results"]
    assert not any(h["source"].endswith(name) for h in hits)


def test_upload_over_the_limit_is_413_and_leaves_nothing(client):
    big = b"x" * (60 * 1024)
    r = client.post("/api/v1/kbs/docs/documents", files=[("files", ("big.txt", big, "text/plain"))])
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    incoming = client.app.state.docqa.kb("docs").files_dir / ".incoming"
    assert not any(incoming.iterdir())
    # a request over the total limit is refused from its Content-Length, before the body is read
    r = client.post(
        "/api/v1/kbs/docs/documents",
        content=b"",
        headers={"Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(10**9)},
    )
    assert r.status_code == 413


def test_rfc5987_filename_and_garbage_names(client):
    from docqa.server.uploads import _filename

    assert _filename({b"filename*": b"UTF-8''%E6%8A%A5%E5%91%8A.txt", b"filename": b"x.txt"}) == "报告.txt"
    assert _filename({b"filename": "说明.md".encode()}) == "说明.md"
    r = client.post(
        "/api/v1/kbs/docs/documents", files=[("files", ("../../说明.md", b"# hi\n\nhello world", "text/markdown"))]
    )
    assert r.json()["documents"][0]["name"] == "说明.md"


def test_failed_file_and_retry(client):
    r = client.post("/api/v1/kbs/docs/documents", files=[("files", ("empty.txt", b"   \n", "text/plain"))]).json()
    job = wait_job(client, r["job_id"])
    assert job["files"][0]["status"] == "failed" and job["errors"]
    assert job["status"] == "failed"  # every file of the job failed
    doc = next(d for d in client.get("/api/v1/kbs/docs/documents").json()["documents"] if d["name"] == "empty.txt")
    assert doc["status"] == "failed" and doc["error"]
    r = client.post(f"/api/v1/kbs/docs/documents/{doc['id']}/retry")
    assert r.status_code == 202
    assert wait_job(client, r.json()["job_id"])["files"][0]["status"] == "failed"  # still empty, but it was retried


def test_job_progress_stream_and_cancel(client):
    r = client.post(
        "/api/v1/kbs/docs/documents", files=[("files", ("n.md", b"# n\n\nnginx config file", "text/markdown"))]
    )
    job_id = r.json()["job_id"]
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as s:
        text = "".join(s.iter_text())
    events = sse_events(text)
    assert events[-1][0] == "done" and events[-1][1]["status"] == "done"
    assert all(e == "progress" for e, _ in events[:-1])
    # cancelling a finished job changes nothing; a queued one is cancelled at once
    assert client.delete(f"/api/v1/jobs/{job_id}").json()["status"] == "done"
    jobs = client.app.state.jobs
    state = client.app.state.docqa
    state.db.insert(
        "jobs", {"id": "j1", "kb": "docs", "status": "queued", "stage": "queued", "created": 0, "updated": 0}
    )
    assert client.delete("/api/v1/jobs/j1").json()["status"] == "cancelled"
    assert jobs.get("j1")["status"] == "cancelled"


def test_conversations_persist_and_export(client):
    conv = client.post("/api/v1/conversations", json={"kb": "docs"}).json()
    r = client.post(
        f"/api/v1/conversations/{conv['id']}/messages", json={"question": "How do I install a package with pip?"}
    )
    events = sse_events(r.text)
    kinds = [e for e, _ in events]
    assert kinds[0] == "start" and kinds[1] == "sources" and kinds[-1] == "done" and "delta" in kinds
    assert kinds.index("sources") < kinds.index("delta")
    done = events[-1][1]
    sources = events[1][1]["sources"]
    assert done["cited"] and all(1 <= n <= len(sources) for n in done["cited"])
    r = client.post(f"/api/v1/conversations/{conv['id']}/messages", json={"question": "And how do I remove it?"})
    assert sse_events(r.text)[-1][1]["rewritten_query"]
    # a "refresh": everything is read back from the server
    got = client.get(f"/api/v1/conversations/{conv['id']}").json()
    assert [m["role"] for m in got["messages"]] == ["user", "assistant", "user", "assistant"]
    assert got["messages"][1]["cited"] == done["cited"] and got["messages"][1]["sources"][0]["text"]
    assert got["title"].startswith("How do I install")
    assert conv["id"] in [c["id"] for c in client.get("/api/v1/conversations").json()["conversations"]]
    md = client.get(f"/api/v1/conversations/{conv['id']}/export").text
    assert "**Q:** How do I install a package with pip?" in md and "Sources:" in md
    assert (
        client.get(f"/api/v1/conversations/{conv['id']}/export", params={"format": "json"}).json()["id"] == conv["id"]
    )
    assert client.delete(f"/api/v1/conversations/{conv['id']}").status_code == 200
    assert client.get(f"/api/v1/conversations/{conv['id']}").status_code == 404


def test_chinese_file_name_survives_everything(client):
    r = client.post(
        "/api/v1/kbs/docs/documents",
        files=[("files", (ZH_TAR_NAME, "文件系统 挂载 /etc/fstab".encode(), "text/plain"))],
    )
    doc = r.json()["documents"][0]
    wait_job(client, r.json()["job_id"])
    listed = {d["id"]: d for d in client.get("/api/v1/kbs/docs/documents").json()["documents"]}
    assert listed[doc["id"]]["name"] == ZH_TAR_NAME
    stored = client.app.state.docqa.db.row("SELECT path FROM uploads WHERE id = ?", (doc["id"],))["path"]
    assert stored.endswith(ZH_TAR_NAME)


def test_uploaded_html_is_never_served_inline(client):
    r = client.post(
        "/api/v1/kbs/docs/documents",
        files=[
            (
                "files",
                (
                    "page.html",
                    b"<html><body><h1>hello</h1><p>nginx config</p><script>alert(1)</script></body></html>",
                    "text/html",
                ),
            )
        ],
    )
    doc = r.json()["documents"][0]
    wait_job(client, r.json()["job_id"])
    f = client.get(f"/api/v1/kbs/docs/documents/{doc['id']}/file", params={"inline": True})
    assert f.headers["content-disposition"].startswith("attachment;")
    assert f.headers["content-security-policy"].startswith("sandbox")
    assert f.headers["x-content-type-options"] == "nosniff"


def test_knowledge_base_made_by_the_cli_later_is_served(client, tmp_path, docs_dir):
    from test_server import make_kb

    from docqa.store import KnowledgeBase

    make_kb(tmp_path / "indexes", "later", docs_dir)
    assert "docqa/later" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    r = client.post("/api/v1/search", json={"query": "tar", "kb_ids": ["later"]})
    assert r.status_code == 200 and r.json()["results"]
    assert {k["name"]: k["notes"] for k in client.get("/api/v1/kbs").json()["kbs"]} == {"docs": [], "later": []}
    with KnowledgeBase.open(tmp_path / "indexes" / "later", writable=True) as kb:  # as an older docqa made it
        kb.conn.execute("DELETE FROM meta WHERE key = 'lexical_text'")
    notes = {k["name"]: k["notes"] for k in client.get("/api/v1/kbs").json()["kbs"]}
    assert notes["docs"] == [] and len(notes["later"]) == 1 and "`docqa rebuild`" in notes["later"][0]
    assert [k["upgrades"] for k in client.get("/api/v1/kbs").json()["kbs"] if k["name"] == "later"] == [["rebuild"]]
    # the web page's button: the rebuild gives it the document names, and search goes on over the new indexes
    r = client.post("/api/v1/kbs/later/rebuild")
    assert r.status_code == 200, r.text
    assert r.json()["upgrades"] == [] and r.json()["notes"] == [] and r.json()["chunks"] > 0
    assert {k["name"]: k["upgrades"] for k in client.get("/api/v1/kbs").json()["kbs"]} == {"docs": [], "later": []}
    with KnowledgeBase.open(tmp_path / "indexes" / "later") as kb:
        assert kb.lexical_text == "names"
    r = client.post("/api/v1/search", json={"query": "tar", "kb_ids": ["later"]})
    assert r.status_code == 200 and r.json()["results"]
    assert client.post("/api/v1/kbs/nosuch/rebuild").status_code == 404


def test_search_lists_the_english_gloss_it_searched(client, tmp_path):
    """A Chinese query over English pages finds them through its dictionary gloss, and says it searched that."""
    from conftest import EXTRACT_QUESTION, MIXED_DOCS
    from test_server import make_kb

    docs = tmp_path / "mixed"
    docs.mkdir()
    for name, text in MIXED_DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    make_kb(tmp_path / "indexes", "mixed", docs)
    body = client.post("/api/v1/search", json={"query": EXTRACT_QUESTION, "kb_ids": ["mixed"], "k": 1}).json()
    assert body["results"][0]["source"].endswith("tar.md")
    assert "extract" in body["expansions"][0].split()
    body = client.post("/api/v1/search", json={"query": "tar archive", "kb_ids": ["mixed", "docs"]}).json()
    assert body["expansions"] == []  # an English query is not glossed


class SlowIngestEmbedder:
    """The test embedder, but every token count (chunking) takes a little while: an ingest that lasts seconds."""

    def __init__(self, inner, delay: float = 0.01):
        self._inner, self._delay = inner, delay

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def count_tokens(self, text: str) -> int:
        time.sleep(self._delay)
        return self._inner.count_tokens(text)


def test_search_and_listing_stay_responsive_during_ingest_and_cancel_stops_it(client):
    from test_server import EMB

    state = client.app.state.docqa
    state._ingest_embedder = SlowIngestEmbedder(EMB, delay=0.01)
    files = [
        (
            "files",
            (f"doc{i}.md", (f"# Doc {i}\n\n" + f"nginx server block number {i}. " * 120).encode(), "text/markdown"),
        )
        for i in range(6)
    ]
    job_id = client.post("/api/v1/kbs/docs/documents", files=files).json()["job_id"]
    deadline = time.time() + 30
    while client.get(f"/api/v1/jobs/{job_id}").json()["status"] != "running":
        assert time.time() < deadline
        time.sleep(0.02)
    t = time.perf_counter()
    assert client.post("/api/v1/search", json={"query": "tar archive", "k": 2}).json()["results"]
    assert client.get("/api/v1/kbs/docs/documents").status_code == 200
    assert time.perf_counter() - t < 1.0  # not queued behind the writer
    job = client.delete(f"/api/v1/jobs/{job_id}").json()
    job = wait_job(client, job_id)
    assert job["status"] == "cancelled", job
    assert any(f["status"] == "cancelled" for f in job["files"])
    # the knowledge base is whole: what was committed is searchable, nothing is half-written
    from docqa.store import KnowledgeBase

    with KnowledgeBase.open(state.kb("docs").path, validate=False) as kb:
        assert [m for lv, m in kb.verify() if lv == "error"] == []
