"""docqa serve through FastAPI's TestClient: health, models, the OpenAI-compatible endpoint (both modes, citation
placement), search, the error mapping, auth and the Host/Origin checks. The hash embedder keeps it fast."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

pytest.importorskip("fastapi")
from fakeembed import HashEmbedder  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from docqa.config import Settings  # noqa: E402
from docqa.generate.base import GenerationOptions, Generator, Prompt  # noqa: E402
from docqa.ingest import ingest  # noqa: E402
from docqa.server.app import create_app  # noqa: E402
from docqa.server.auth import parse_key_option  # noqa: E402
from docqa.server.state import ServerConfig  # noqa: E402


class Embedder(HashEmbedder):
    """The hash embedder, covering no language: relevance is judged by the known-terms rule (its cosines are
    not calibrated for the dense threshold)."""

    languages = frozenset()


EMB = Embedder()
ZH_TAR_NAME = "归档 说明（第2版）.txt"


class SlowGenerator(Generator):
    """Quotes passage 1 word by word, `delay` seconds per piece; stops when cancelled; counts its runs."""

    name = "slow-test"
    context_length = 100_000
    is_chat_model = False

    def __init__(self, delay: float = 0.05, words: int = 20):
        self.delay, self.words = delay, words
        self.running = 0
        self.max_running = 0
        self.cancelled = 0
        self.started = threading.Event()
        self._lock = threading.Lock()

    def stream(self, prompt: Prompt, options: GenerationOptions | None = None) -> Iterator[str]:
        yield from self.stream_grounded("", ["nothing"], prompt, options)

    def stream_grounded(
        self, question: str, passages: Sequence[str], prompt: Prompt, options: GenerationOptions | None = None
    ) -> Iterator[str]:
        cancel = options.cancel if options else None
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.started.set()
        try:
            for i, w in enumerate((passages[0].split() * self.words)[: self.words]):
                if cancel is not None and cancel.is_set():
                    self.cancelled += 1
                    return
                time.sleep(self.delay)
                yield ("" if i == 0 else " ") + w
            yield " [1]"
        finally:
            with self._lock:
                self.running -= 1


class SlowExtractive(SlowGenerator):
    """The extractive answerer's real answer, streamed a few characters at a time (`delay` seconds apart)."""

    name = "extractive-slow"

    def stream_grounded(
        self, question: str, passages: Sequence[str], prompt: Prompt, options: GenerationOptions | None = None
    ) -> Iterator[str]:
        from docqa.generate.extractive import ExtractiveAnswerer

        text = ExtractiveAnswerer(covered_languages=frozenset()).answer_text(question, passages)
        cancel = options.cancel if options else None
        with self._lock:
            self.running += 1
        try:
            for i in range(0, len(text), 6):
                if cancel is not None and cancel.is_set():
                    self.cancelled += 1
                    return
                time.sleep(self.delay)
                yield text[i : i + 6]
        finally:
            with self._lock:
                self.running -= 1


def make_kb(root, name, docs_dir) -> None:
    ingest([docs_dir], Settings(index=root / name, file_timeout=30), embedder=EMB)


def make_client(tmp_path, docs_dir, generator=None, **config) -> TestClient:
    root = tmp_path / "indexes"
    make_kb(root, "docs", docs_dir)
    settings = Settings(index=root / "docs", llm="extractive", file_timeout=30, sessions_dir=tmp_path / "sessions")
    cfg = ServerConfig(settings=settings, root=root, allowed_hosts=["testserver"], **config)
    return TestClient(create_app(cfg, generator=generator, embedder=EMB))


@pytest.fixture
def client(tmp_path, docs_dir):
    with make_client(tmp_path, docs_dir) as c:
        yield c


def sse_lines(text: str) -> list[dict | str]:
    out: list[dict | str] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_health_and_models(client):
    assert client.get("/healthz").json() == {"status": "ok", "knowledge_bases": 1}
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["docqa/docs"]
    assert models["data"][0]["docqa"]["generator"] == "extractive"


def test_chat_completion_non_streaming_has_sources_and_citations(client):
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "docqa/docs",
            "messages": [{"role": "user", "content": "How do I create a virtual environment with venv?"}],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    text = body["choices"][0]["message"]["content"]
    assert "venv" in text and "[1]" in text
    sources = body["docqa"]["sources"]
    assert sources and {"n", "source", "page", "section", "score", "text"} <= set(sources[0])
    assert body["docqa"]["cited"] and all(1 <= n <= len(sources) for n in body["docqa"]["cited"])
    assert sources[body["docqa"]["cited"][0] - 1]["source"] == "venv.md"
    assert "Sources:" not in text  # only with citation_style footnotes


def test_streaming_sources_once_before_first_token_and_cited_at_the_end(client):
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "docqa/docs",
            "stream": True,
            "messages": [{"role": "user", "content": "怎么解压 tar.gz 文件？"}],
        },
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_lines(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["choices"] for c in chunks)  # never an empty choices list
    with_sources = [i for i, c in enumerate(chunks) if "sources" in c.get("docqa", {})]
    assert with_sources == [0]
    first_text = next(i for i, c in enumerate(chunks) if c["choices"][0]["delta"].get("content"))
    assert first_text > 0
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and "cited" in chunks[-1]["docqa"]
    assert sum("docqa" in c for c in chunks) == 2  # no citation data repeated in every chunk
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert "tar -xzvf" in text
    assert chunks[0]["docqa"]["sources"][chunks[-1]["docqa"]["cited"][0] - 1]["source"] == "tar.txt"


def test_footnotes_style_appends_sources(client):
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "docqa/docs",
            "citation_style": "footnotes",
            "messages": [{"role": "user", "content": "How do I install a package with pip?"}],
        },
    )
    text = r.json()["choices"][0]["message"]["content"]
    assert "\n\nSources:\n[" in text and "venv.md" in text.split("Sources:")[1]
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "docqa/docs",
            "citation_style": "footnotes",
            "stream": True,
            "messages": [{"role": "user", "content": "How do I install a package with pip?"}],
        },
    )
    chunks = sse_lines(r.text)[:-1]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert "Sources:" in streamed and streamed.count("Sources:") == 1


def test_follow_up_uses_history(client):
    msgs = [
        {"role": "user", "content": "How do I install a package with pip?"},
        {"role": "assistant", "content": "Run python -m pip install novas [1]."},
        {"role": "user", "content": "And how do I remove it?"},
    ]
    body = client.post("/v1/chat/completions", json={"model": "docqa/docs", "messages": msgs}).json()
    assert body["docqa"]["rewritten_query"] and "pip" in body["docqa"]["rewritten_query"]


def test_unknown_model_and_bad_requests_use_one_error_shape(client):
    r = client.post(
        "/v1/chat/completions", json={"model": "docqa/nope", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = client.post("/v1/chat/completions", json={"model": "docqa/docs", "messages": []})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = client.post("/api/v1/search", json={"query": ""})
    assert r.status_code == 400
    assert client.get("/api/v1/jobs/nope").status_code == 404


def test_search_results_are_search_json_hits(client):
    r = client.post("/api/v1/search", json={"query": "怎么解压 tar.gz 文件？", "kb_ids": ["docs"], "k": 3})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert 1 <= len(results) <= 3 and results[0]["source"].endswith("tar.txt")
    assert {"rank", "score", "chunk_id", "source", "page", "section", "text", "scores"} <= set(results[0])
    assert results[0]["kb"] == "docs"


def test_error_mapping_is_one_table():
    from docqa.errors import ConfigError, DocQAError, LoadError, ModelError, StoreCorruptError, StoreLockedError
    from docqa.server.errors import NotFound, TooLarge, Unauthorized, status_for

    assert [
        status_for(e("x"))
        for e in (
            ConfigError,
            StoreLockedError,
            StoreCorruptError,
            ModelError,
            LoadError,
            NotFound,
            TooLarge,
            Unauthorized,
            DocQAError,
        )
    ] == [400, 409, 500, 503, 422, 404, 413, 401, 500]


def test_loopback_ignores_authorization(client):
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 200


def test_keys_required_when_auth_is_on(tmp_path, docs_dir):
    keys = [parse_key_option("reader-key-123:read"), parse_key_option("admin-key-123")]
    with make_client(tmp_path, docs_dir, auth=True, api_keys=keys) as c:
        assert c.get("/healthz").status_code == 200
        for method, path in [
            ("get", "/v1/models"),
            ("post", "/v1/chat/completions"),
            ("get", "/api/v1/kbs"),
            ("post", "/api/v1/search"),
            ("get", "/api/v1/conversations"),
            ("get", "/api/v1/jobs/x"),
        ]:
            r = getattr(c, method)(path)
            assert r.status_code == 401, (path, r.status_code)
            r = getattr(c, method)(path, headers={"Authorization": "Bearer wrong-key-999"})
            assert r.status_code == 401, path
        read = {"Authorization": "Bearer reader-key-123"}
        assert c.get("/v1/models", headers=read).status_code == 200
        assert c.post("/api/v1/search", json={"query": "tar"}, headers=read).status_code == 200
        assert c.post("/api/v1/kbs", json={"name": "new"}, headers=read).status_code == 403
        assert c.post("/api/v1/kbs/docs/rebuild", headers=read).status_code == 403
        admin = {"Authorization": "Bearer admin-key-123"}
        assert c.post("/api/v1/kbs", json={"name": "new"}, headers=admin).status_code == 201
        made = c.post("/api/v1/keys", json={"name": "ci", "scope": "ingest"}, headers=admin).json()
        assert made["key"].startswith("dq-")
        assert c.get("/api/v1/jobs", headers={"Authorization": f"Bearer {made['key']}"}).status_code == 200
        row = c.app.state.docqa.db.row("SELECT * FROM api_keys WHERE name = 'ci'")
        assert made["key"] not in json.dumps(row)  # stored hashed


def test_host_and_origin_checks(client):
    assert client.get("/v1/models", headers={"Host": "evil.example"}).status_code == 403
    r = client.post("/api/v1/search", json={"query": "tar"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]["message"]
    assert (
        client.post("/api/v1/search", json={"query": "tar"}, headers={"Origin": "http://testserver"}).status_code == 200
    )
    r = client.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers  # CORS off by default


def test_cors_allowlist(tmp_path, docs_dir):
    with make_client(tmp_path, docs_dir, cors_origins=["http://app.example"]) as c:
        r = c.options("/v1/models", headers={"Origin": "http://app.example", "Access-Control-Request-Method": "GET"})
        assert r.headers.get("access-control-allow-origin") == "http://app.example"
        r = c.options("/v1/models", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
        assert r.headers.get("access-control-allow-origin") is None


def test_generations_queue_per_model_and_cancel_on_disconnect(tmp_path, docs_dir):
    gen = SlowGenerator(delay=0.05, words=10)
    with make_client(tmp_path, docs_dir, generator=gen) as c:
        body = {
            "model": "docqa/docs",
            "messages": [{"role": "user", "content": "How do I create a virtual environment?"}],
        }
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(c.post("/v1/chat/completions", json=body))) for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200, 200, 200]
        assert gen.max_running == 1  # one slot per model
        # a client that goes away mid-stream stops the generation
        gen2 = SlowGenerator(delay=0.1, words=200)
        c.app.state.docqa._generator = gen2
        with c.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as r:
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break
        deadline = time.time() + 5
        while gen2.running and time.time() < deadline:
            time.sleep(0.05)
        assert gen2.running == 0 and gen2.cancelled == 1


def test_non_streaming_client_that_hangs_up_stops_the_generation(tmp_path, docs_dir):
    import asyncio

    import httpx

    gen = SlowGenerator(delay=0.1, words=300)
    with make_client(tmp_path, docs_dir, generator=gen) as c:
        app = c.app
        body = {
            "model": "docqa/docs",
            "max_tokens": 50,
            "temperature": 0,
            "messages": [{"role": "user", "content": "How do I create a virtual environment?"}],
        }

        async def hang_up() -> None:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as ac:
                with pytest.raises((asyncio.TimeoutError, asyncio.CancelledError)):
                    await asyncio.wait_for(ac.post("/v1/chat/completions", json=body), 1.0)

        asyncio.run(hang_up())
        deadline = time.time() + 5
        while gen.running and time.time() < deadline:
            time.sleep(0.05)
        assert gen.running == 0
