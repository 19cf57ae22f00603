"""docqa.answer: citation parsing, abstention, interruption, and `ask` end to end with the real demo model."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import build_kb

from docqa.answer import ABSTAIN, CANDIDATES, ask, parse_citations, source_line
from docqa.config import Settings
from docqa.documents import Hit
from docqa.generate.base import Generator


@pytest.mark.parametrize(
    "text, n, valid, invalid",
    [
        ("Use apt [1].", 3, [1], []),
        ("See [1,2] and [2, 3].", 3, [1, 2, 3], []),
        ("Both [1][3] say so.", 3, [1, 3], []),
        ("用 tar 解压【1】，也见【2，3】和[4]。", 3, [1, 2, 3], [4]),
        ("Steps [2-4].", 5, [2, 3, 4], []),
        ("Nothing cited here.", 3, [], []),
        ("Wrong [0] and [12], right [2].", 3, [2], [0, 12]),
        ("array[1] is code, not a citation", 3, [], []),
        ("见资料[1]、[1]。", 2, [1], []),
    ],
)
def test_parse_citations(text, n, valid, invalid):
    assert parse_citations(text, n) == (valid, invalid)


def hit(i: int, source: str = "manual.pdf", page: int | None = 4, section: str = "Install") -> Hit:
    return Hit(
        chunk_id=i,
        score=1.0 / i,
        source=f"/docs/{source}",
        text=f"passage {i} about apt",
        page=page,
        section=section,
        rank=i,
        scores={"bm25": 1.0},
    )


class FakeRetriever:
    def __init__(self, hits, relevant=True):
        self.hits, self.relevant, self.queries = hits, relevant, []

    def search(self, query, k=None, mode=None, expansions=(), cross_language=None):
        self.queries.append((query, k, mode))
        return list(self.hits)

    def is_relevant(self, query, hits, expansions=()):
        return self.relevant


class Exploding(Generator):
    name = "exploding"

    def stream(self, prompt, options=None):
        raise AssertionError("the model must not be called")


class Scripted(Generator):
    name = "scripted"
    context_length = 4096

    def __init__(self, pieces, interrupt_after: int | None = None):
        self.pieces, self.interrupt_after, self.prompts, self.options = pieces, interrupt_after, [], []

    def stream(self, prompt, options=None):
        self.prompts.append(prompt)
        self.options.append(options)
        limit = options.max_new_tokens if options is not None else len(self.pieces)
        for i, p in enumerate(self.pieces[:limit]):  # one piece = one token (the Generator contract)
            if self.interrupt_after is not None and i == self.interrupt_after:
                raise KeyboardInterrupt
            if options is not None and options.cancel is not None and options.cancel.is_set():
                return
            yield p


def test_abstains_without_calling_the_model():
    for q, lang in (("How do I frobnicate the quux?", "en"), ("怎么配置量子路由器？", "zh")):
        seen = []
        a = ask(q, FakeRetriever([hit(1)], relevant=False), Exploding(), Settings(), on_text=seen.append)
        assert a.abstained and a.text == ABSTAIN[lang] and seen == [a.text]
        assert a.passages == [] and a.citations == [] and "retrieval" in a.timings


def test_no_abstain_answers_anyway_and_flags_invalid_citations():
    gen = Scripted(["Use apt", " [1] and", " [7]."])
    streamed = []
    a = ask(
        "How?",
        FakeRetriever([hit(1), hit(2, "b.md", None, "")], relevant=False),
        gen,
        Settings(temperature=0.0, max_new_tokens=32),
        on_text=streamed.append,
        abstain=False,
    )
    assert not a.abstained and streamed == ["Use apt", " [1] and", " [7]."]
    assert a.text == "Use apt [1] and [7]." and a.citations == [1] and a.invalid_citations == [7]
    assert [n for n, _ in a.sources] == [1] and source_line(1, a.sources[0][1]) == "[1] manual.pdf:4 — Install"
    assert source_line(2, a.passages[1]) == "[2] b.md"
    assert gen.options[0].temperature == 0.0 and gen.options[0].max_new_tokens == 32
    assert set(a.timings) >= {"retrieval", "prompt", "first_token", "generation", "total"}
    assert a.timings["first_token"] <= a.timings["total"]
    assert a.passage_tokens and len(a.passage_tokens) == len(a.passages) == 2
    j = json.loads(json.dumps(a.to_json()))
    assert j["citations"] == [1] and j["invalid_citations"] == [7] and j["passages"][0]["tokens"] > 0


def test_retrieves_generously_and_searches_the_rewritten_question():
    r = FakeRetriever([hit(i) for i in range(1, 4)])
    a = ask("what about it?", r, Scripted(["ok [2]"]), Settings(), rewritten="what about apt sources?")
    assert r.queries == [("what about apt sources?", CANDIDATES, "hybrid")]
    assert a.rewritten_query == "what about apt sources?" and a.question == "what about it?"
    r = FakeRetriever([hit(1)])
    ask("q", r, Scripted(["x"]), Settings(max_passages=3, mode="bm25"))
    assert r.queries == [("q", 3, "bm25")]


def test_history_reaches_the_model_before_the_question():
    gen = Scripted(["fine"])
    ask("And then?", FakeRetriever([hit(1)]), gen, Settings(), history=[("First?", "First answer [1].")])
    msgs = gen.prompts[0]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[0]["content"] == "First?" and msgs[-1]["content"].endswith("And then?")


def test_ctrl_c_stops_the_answer_when_a_cancel_event_is_given():
    cancel = threading.Event()
    a = ask(
        "q",
        FakeRetriever([hit(1)]),
        Scripted(["Half an", " answer", " never"], interrupt_after=2),
        Settings(),
        cancel=cancel,
    )
    assert cancel.is_set() and a.text == "Half an answer"
    with pytest.raises(KeyboardInterrupt):  # without one, Ctrl-C propagates as usual
        ask("q", FakeRetriever([hit(1)]), Scripted(["a", "b"], interrupt_after=1), Settings())


# -- end to end: real knowledge base, real demo model ---------------------------------------------------------------

DOCS = {
    "nginx.md": "# nginx\n\nInstall nginx with `sudo apt install nginx`. The web server starts automatically.\n\n"
    "The nginx configuration file is /etc/nginx/nginx.conf. After editing it, run `sudo nginx -s reload`.\n",
    "redis.md": "# Redis\n\nInstall Redis with `sudo apt install redis-server`. Redis listens on port 6379.\n\n"
    "The Redis configuration file is /etc/redis/redis.conf. Restart redis-server after editing it.\n",
    "tar.txt": "tar 命令\n\n解压文件：使用 tar -xzvf archive.tar.gz 可以解压一个用 gzip 压缩的归档。\n",
}


@pytest.fixture(scope="module")
def kb_settings(tmp_path_factory, embedder):
    return build_kb(tmp_path_factory.mktemp("answer"), DOCS, embedder, temperature=0.0, max_new_tokens=24)


def test_ask_end_to_end_with_the_extractive_default(kb_settings):
    """The offline default quotes the passage that answers, cited, in the question's language."""
    from docqa.generate import get_generator
    from docqa.retrieve import open_retriever

    r = open_retriever(kb_settings)
    gen = get_generator(kb_settings.replace(llm="auto", chatglm2_path="/nonexistent"))
    assert gen.name == "extractive"
    streamed: list[str] = []
    a = ask("How do I install nginx?", r, gen, kb_settings, on_text=streamed.append)
    assert not a.abstained and "".join(streamed).strip() == a.text
    lines = a.text.splitlines()
    assert lines[1] == "Install nginx with `sudo apt install nginx`. [1]"  # the answering sentence first
    assert "# nginx" not in a.text  # a Markdown heading is a signpost, not a quote
    assert a.citations and a.sources[0][1].source.endswith("nginx.md") and not a.invalid_citations
    assert a.timings["total"] - a.timings["retrieval"] < 5.0  # no model runs: quoting is quick
    json.dumps(a.to_json(), ensure_ascii=False)

    zh = ask("怎么解压 tar.gz 文件？", r, gen, kb_settings)
    assert "tar -xzvf archive.tar.gz" in zh.text and zh.text.startswith("文档")
    assert [h.source.endswith("tar.txt") for _, h in zh.sources] == [True]


def test_ask_end_to_end_with_the_demo_model(demo, kb_settings):
    """The demo model's answer is one line, never a prompt marker, within its context; citations are real."""
    from docqa.retrieve import open_retriever

    r = open_retriever(kb_settings)
    streamed: list[str] = []
    a = ask("How do I install nginx?", r, demo, kb_settings, on_text=streamed.append)
    assert not a.abstained and a.text and "".join(streamed).strip() == a.text
    assert a.passages[0].source.endswith("nginx.md") and len(a.passages) <= demo.passage_limit
    assert a.model.startswith("demo")
    assert 0 < a.timings["first_token"] <= a.timings["total"]
    assert "\n" not in a.text and "=====" not in a.text and "PASSAGES" not in a.text
    assert a.timings["prompt_tokens"] > 50 and 1 <= a.timings["new_tokens"] <= kb_settings.max_new_tokens
    assert a.timings["prefill_s"] > 0 and a.timings["cached_tokens"] == 0
    assert not a.invalid_citations
    json.dumps(a.to_json(), ensure_ascii=False)

    zh = ask("怎么解压 tar.gz 文件？", r, demo, kb_settings)
    assert zh.passages[0].source.endswith("tar.txt")
    assert "资料" not in zh.text and "=====" not in zh.text

    none = ask("What is the airspeed velocity of an unladen swallow?", r, Exploding(), kb_settings)
    assert none.abstained


def test_cli_ask_streams_the_answer_then_sources(kb_settings, monkeypatch):
    from typer.testing import CliRunner

    import docqa.generate
    from docqa.cli import app

    gen = Scripted(["Install it with", " `sudo apt install nginx` [1].", " Also [9]."])
    monkeypatch.setattr(docqa.generate, "get_generator", lambda settings, progress=None, **kw: gen)
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "ask",
            "How do I install nginx?",
            "--index",
            str(kb_settings.index),
            "--model",
            "demo",
            "-k",
            "2",
            "--temperature",
            "0.5",
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "Install it with `sudo apt install nginx` [1]. Also [9]."
    assert "Sources" in lines[1] and lines[2].strip() == "[1] nginx.md — nginx"
    assert "do not exist: [9]" in r.stdout
    assert "demo model" in r.stderr and gen.options[0].temperature == 0.5
    assert gen.prompts[0][-1]["content"].count("] (") == 2  # -k 2: at most two passages

    r = runner.invoke(app, ["ask", "How do I install nginx?", "--index", str(kb_settings.index), "--json"])
    obj = json.loads(r.stdout)
    assert obj["citations"] == [1] and obj["invalid_citations"] == [9]
    assert obj["sources"][0]["source"].endswith("nginx.md") and obj["passages"][0]["tokens"] > 0
    assert set(obj["timings"]) >= {"retrieval", "prompt", "first_token", "total"}

    r = runner.invoke(
        app, ["ask", "What is the airspeed velocity of an unladen swallow?", "--index", str(kb_settings.index)]
    )
    assert r.exit_code == 0 and "Nothing in the knowledge base looks relevant" in r.stdout
    r = runner.invoke(app, ["ask", "anything", "--index", str(kb_settings.index.parent / "missing")])
    assert r.exit_code == 1 and "error" in r.stderr
