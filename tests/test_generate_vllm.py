"""docqa against a vLLM-like OpenAI-compatible server (a stub on loopback, tests/test_generate_openai.py's
FakeServer): `docqa ask --llm-url` end to end, streamed, with citations; and many questions at once, which is
what a vLLM deployment is for. test_generate_openai.py covers the client's protocol details."""

from __future__ import annotations

import json
import threading

import pytest
from fakeembed import HashEmbedder
from test_generate_openai import FakeServer
from typer.testing import CliRunner

from docqa.cli import app
from docqa.config import Settings
from docqa.generate.openai import OpenAIGenerator
from docqa.ingest import ingest

VLLM_MODEL = "THUDM/chatglm3-6b"  # what `vllm serve THUDM/chatglm3-6b` lists under /v1/models


@pytest.fixture
def vllm():
    s = FakeServer()
    s.models = [VLLM_MODEL]
    s.pieces = ["Create one with", " `python3 -m venv tutorial-env`", " [1].", " Not [7]."]
    yield s
    s.close()


@pytest.fixture
def kb(docs_dir, tmp_path, monkeypatch):
    """docs_dir ingested with the hashing embedder, which `docqa ask` then also uses (no model load)."""
    import docqa.embed

    monkeypatch.setattr(docqa.embed, "get_embedder", lambda *a, **k: HashEmbedder())
    s = Settings(index=tmp_path / "kb", sessions_dir=tmp_path / "sessions")
    assert ingest([docs_dir], s, embedder=HashEmbedder()).added == 3
    return s.index


def test_ask_expand_sends_the_expansion_prompts_first_and_reports_what_it_searched(vllm, kb):
    vllm.pieces = ["how to make a virtual environment"]  # every request gets this one line back
    q = "怎么创建虚拟环境？"
    args = ["ask", q, "--index", str(kb), "--llm-url", vllm.url, "--no-abstain", "--expand", "translate", "--json"]
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    obj = json.loads(r.stdout)
    assert obj["query_expansions"][0] == "how to make a virtual environment"
    assert all(e.isascii() for e in obj["query_expansions"][1:])  # and the dictionary gloss (docqa/lexicon.py)
    posts = [x["body"]["messages"][-1]["content"] for x in vllm.requests if x["method"] == "POST"]
    assert len(posts) == 2 and "翻译成英文" in posts[0] and q in posts[0]  # the expansion, then the answer
    assert q in posts[1] and "tutorial-env" in posts[1]  # the answer prompt: the question and its passages
    assert obj["timings"]["expansion"] <= obj["timings"]["retrieval"]


def test_ask_with_llm_url_streams_a_cited_answer_from_the_server(vllm, kb, monkeypatch):
    monkeypatch.setenv("DOCQA_MAX_NEW_TOKENS", "64")
    runner = CliRunner()
    q = "How do I create a virtual environment?"
    args = ["ask", q, "--index", str(kb), "--llm-url", vllm.url, "--no-abstain", "-k", "2"]
    r = runner.invoke(app, [*args, "--temperature", "0.3"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "Create one with `python3 -m venv tutorial-env` [1]. Not [7]."
    assert "Sources" in lines[1] and lines[2].strip().startswith("[1] venv.md")
    assert "do not exist: [7]" in r.stdout

    get, post = vllm.requests  # the model is discovered once, as vLLM requires it named in every request
    assert get["path"] == "/v1/models" and post["path"] == "/v1/chat/completions"
    body = post["body"]
    assert body["model"] == VLLM_MODEL and body["stream"] is True and body["max_tokens"] == 64
    assert body["temperature"] == 0.3
    assert body["messages"][-1]["role"] == "user"
    prompt = "\n".join(m["content"] for m in body["messages"])
    assert q in prompt and "tutorial-env" in prompt  # the retrieved passage went to the model, numbered
    assert "[1]" in prompt

    r = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
    obj = json.loads(r.stdout)
    assert obj["citations"] == [1] and obj["invalid_citations"] == [7]
    assert obj["sources"][0]["source"].endswith("venv.md") and obj["answer"].startswith("Create one with")
    assert obj["timings"]["first_token"] <= obj["timings"]["total"]


def test_concurrent_questions_reach_the_server_at_the_same_time(vllm):
    # vLLM's throughput comes from batching requests that are in flight together: nothing on docqa's side may
    # serialise them. The stub holds every stream until all eight are open (a barrier; a timeout would fail it).
    n = 8
    barrier = threading.Barrier(n, timeout=20)
    original = vllm.pieces
    vllm.pieces = _WaitingPieces(barrier, original)
    gen = OpenAIGenerator(vllm.url, model=VLLM_MODEL)
    results: list[str | BaseException] = [""] * n

    def one(i: int) -> None:
        try:
            results[i] = gen.generate(f"question {i}")
        except BaseException as e:  # reported below
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == ["".join(original)] * n
    assert sorted(r["body"]["messages"][0]["content"] for r in vllm.requests) == sorted(
        f"question {i}" for i in range(n)
    )


class _WaitingPieces(list):
    """The stub's pieces, but iterating waits at a barrier first (each request iterates once)."""

    def __init__(self, barrier: threading.Barrier, pieces: list[str]):
        super().__init__(pieces)
        self._barrier = barrier

    def __iter__(self):
        self._barrier.wait()
        return super().__iter__()
