"""docqa.evaluate_answers: judging answers, the per-language/half summary, and `docqa eval --answers` end to end."""

from __future__ import annotations

import json

import pytest
from conftest import build_kb

from docqa.documents import Answer, Hit
from docqa.evaluate import QAItem, language_groups
from docqa.evaluate_answers import answerer_settings, evaluate_answers, judge_answer, summarise
from docqa.generate.base import Generator


def _answer(text, citations=(), invalid=(), abstained=False, passages=None, total=1.0, retrieval=0.25):
    hits = passages or [Hit(1, 1.0, "/d/faq.txt", "To keep a package at its version run apt-mark hold PKG.")]
    return Answer(
        "q",
        text,
        hits,
        citations=list(citations),
        invalid_citations=list(invalid),
        abstained=abstained,
        timings={"retrieval": retrieval, "first_token": 0.5, "total": total},
    )


def test_judge_answer_checks_the_text_and_the_cited_passage_separately():
    item = QAItem("how to pin a package", ["apt-mark hold", "its version"], lang="en", split="report")
    both = judge_answer(item, _answer("Run apt-mark hold PKG to keep its version [1].", [1]))
    assert (both.answer_acc, both.answer_key, both.cited_acc, both.cited, both.valid) == (True,) * 5
    assert both.timings == {"first_token_s": 0.5, "total_s": 1.0, "after_retrieval_s": 0.75}
    key_only = judge_answer(item, _answer("Use  APT-MARK\nhold.", []))  # case and whitespace do not matter
    assert key_only.answer_key and not key_only.answer_acc and not key_only.cited and not key_only.cited_acc
    wrong = judge_answer(item, _answer("Use dpkg [1] [7].", [1], invalid=[7]))
    assert not wrong.answer_key and wrong.cited_acc and not wrong.valid  # the cited passage was right, the text not
    assert judge_answer(item, _answer("…", abstained=True)).abstained


def test_summary_groups_by_language_and_half():
    items = [
        QAItem("a", ["x"], lang="en", split="tune"),
        QAItem("b", ["x"], lang="en", split="report"),
        QAItem("c", ["x"], lang="zh", split="report"),
    ]
    recs = [judge_answer(it, _answer(t, [1])) for it, t in zip(items, ["x [1]", "y [1]", "x [1]"])]
    assert language_groups((r.lang, r.split) for r in recs) == [
        "en",
        "zh",
        "en/report",
        "en/tune",
        "zh/report",
        "zh/tune",
    ]
    s = summarise(recs[:2])
    assert s["n"] == 2 and s["answer_key"] == 0.5 and s["cited"] == 1.0 and s["chars"] == 5


class Quoting(Generator):
    """Answers with the first passage it is given, cited: a stand-in answerer that reads passages."""

    name = "quoting"

    def stream(self, prompt, options=None):
        yield "nothing"

    def stream_grounded(self, question, passages, prompt, options=None):
        yield passages[0][:40] + " [1]"


class FakeRetriever:
    def __init__(self, texts):
        self.texts = texts

    def search(self, query, k=None, mode=None, expansions=(), cross_language=None):
        return [Hit(i + 1, 1.0, f"/d/{i}.txt", t, rank=i + 1) for i, t in enumerate(self.texts[query])]

    def is_relevant(self, query, hits, expansions=()):
        return True


def test_evaluate_answers_asks_every_question_with_every_answerer():
    from docqa.config import Settings

    r = FakeRetriever({"pin?": ["apt-mark hold keeps a package", "other"], "删除?": ["无关的内容", "dpkg -r 删除"]})
    items = [QAItem("pin?", ["apt-mark hold"], lang="en", line=1), QAItem("删除?", ["dpkg -r"], lang="zh", line=2)]
    rep = evaluate_answers(items, r, {"quoting": Quoting()}, Settings())
    assert rep.groups["quoting"]["en"]["answer_key"] == 1.0 and rep.groups["quoting"]["zh"]["answer_key"] == 0.0
    assert rep.groups["quoting"]["zh"]["cited_acc"] == 0.0 and rep.groups["quoting"]["en"]["valid"] == 1.0
    assert [q["line"] for q in rep.to_json()["questions"]["quoting"]] == [1, 2]


def test_answerer_settings():
    from docqa.config import Settings

    assert answerer_settings(Settings(), "extractive").llm == "extractive"
    s = answerer_settings(Settings(), "https://h:8/v1")
    assert (s.llm, s.llm_url) == ("openai", "https://h:8/v1")


@pytest.fixture(scope="module")
def qa_kb(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("answers")
    s = build_kb(
        root,
        {
            "nginx.md": "# nginx\n\nInstall nginx with `sudo apt install nginx`. The server starts by itself.\n",
            "tar.txt": "tar 命令\n\n解压文件：使用 tar -xzvf archive.tar.gz 可以解压一个用 gzip 压缩的归档。\n",
        },
        embedder,
    )
    qa = root / "qa.jsonl"
    qa.write_text(
        json.dumps(
            {"question": "How do I install nginx?", "keywords": ["apt install nginx"], "lang": "en", "split": "report"}
        )
        + "\n"
        + json.dumps(
            {"question": "怎么解压 tar.gz 文件？", "keywords": ["tar -xzvf"], "lang": "zh", "split": "tune"},
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    return s, qa


def test_cli_eval_answers_with_the_extractive_answerer(qa_kb):
    from typer.testing import CliRunner

    from docqa.cli import app

    s, qa = qa_kb
    args = ["eval", str(qa), "--answers", "--llm", "extractive", "--index", str(s.index)]
    r = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    ext = data["answerers"]["extractive"]
    assert ext["en"]["answer_key"] == 1.0 and ext["zh"]["answer_key"] == 1.0 and ext["zh/tune"]["n"] == 1
    assert ext["en"]["cited_acc"] == 1.0 and ext["en"]["valid"] == 1.0 and ext["en"]["abstained"] == 0.0
    table = CliRunner().invoke(app, args, catch_exceptions=False)
    assert table.exit_code == 0 and "answer_key" in table.stdout and "zh/tune" in table.stdout
