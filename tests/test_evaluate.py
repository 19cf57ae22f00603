"""docqa.evaluate: exact metrics on hand-built rankings, both judging rules, bad input lines, the CLI command."""

import json

import pytest

from docqa.documents import Hit
from docqa.errors import ConfigError, DocQAError
from docqa.evaluate import MAX_K, QAItem, evaluate, first_hit_rank, judge, load_qa, markdown_table, metrics, parse_modes


def hit(text="", source="docs/a.pdf", page=None, cid=0):
    return Hit(chunk_id=cid, score=0.0, source=source, text=text, page=page)


def test_metrics_exact():
    ranks = [1, 3, None, 7, 2]
    m = metrics(ranks)
    assert m["n"] == 5
    assert m["hit@1"] == pytest.approx(1 / 5)
    assert m["hit@3"] == pytest.approx(3 / 5)
    assert m["hit@5"] == pytest.approx(3 / 5)
    assert m["hit@10"] == pytest.approx(4 / 5)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 7 + 1 / 2) / 5)


def test_keyword_rule_needs_every_keyword_case_and_space_insensitive():
    it = QAItem("q", keywords=["apt-mark hold", "Holding back"])
    assert judge(it, hit("Use APT-MARK   hold foo.\nThis is holding back packages."))
    assert not judge(it, hit("Use apt-mark hold foo."))  # one keyword missing
    # the held-out rule: the answer's command or option (the first keyword) is enough
    assert judge(it, hit("Use apt-mark hold foo."), judge_by="first")
    assert not judge(it, hit("This is holding back packages."), judge_by="first")


def test_source_rule_basename_and_page():
    it = QAItem("q", source="manual.pdf", page=4)
    assert judge(it, hit(source="/some/where/manual.pdf", page=4))
    assert not judge(it, hit(source="/some/where/manual.pdf", page=5))
    assert not judge(it, hit(source="/x/other.pdf", page=4))
    assert judge(QAItem("q", source="notes.md"), hit(source="/x/notes.md"))


def test_both_rules_keywords_decide_unless_all_asked():
    it = QAItem("q", keywords=["tar -xzf"], source="tar.txt")
    other_file = hit("run tar -xzf x.tar.gz", source="copy/tar.html")
    assert judge(it, other_file)  # keywords pin the answer
    assert not judge(it, other_file, judge_by="all")
    assert judge(it, hit("unrelated", source="tar.txt"), judge_by="source")


def test_first_hit_rank_and_evaluate_per_language():
    items = [
        QAItem("怎么解压？", keywords=["tar -x"], lang="zh"),
        QAItem("how to sort?", keywords=["sorted("]),  # no lang: detected as en
        QAItem("missing", keywords=["never there"], lang="en"),
    ]
    ranking = {
        "怎么解压？": ["a", "b", "use tar -x"],  # rank 3
        "how to sort?": ["sorted(x) returns"],  # rank 1
        "missing": ["a", "b"],
    }

    class FakeRetriever:
        def __init__(self):
            self.calls = []

        def search(self, q, k=None, mode=None, expansions=(), cross_language=None):
            self.calls.append((q, k, mode))
            return [hit(t, cid=i) for i, t in enumerate(ranking[q])]

    r = FakeRetriever()
    assert first_hit_rank(items[0], r.search(items[0].question)) == 3
    r.calls.clear()
    rep = evaluate(items, r, modes=["bm25", "hybrid"])
    assert set(rep.modes) == {"bm25", "hybrid"}
    assert rep.ranks["bm25"] == [3, 1, None]
    zh, en, overall = (rep.modes["bm25"][g] for g in ("zh", "en", "overall"))
    assert zh["n"] == 1 and zh["hit@1"] == 0 and zh["hit@3"] == 1 and zh["mrr@10"] == pytest.approx(1 / 3)
    assert en["n"] == 2 and en["hit@1"] == 0.5 and en["mrr@10"] == 0.5
    assert overall["hit@5"] == pytest.approx(2 / 3)
    assert rep.modes["bm25"]["latency_ms"] >= 0
    assert all(k == MAX_K == 20 for _, k, _ in r.calls) and {m for *_, m in r.calls} == {"bm25", "hybrid"}
    obj = json.loads(json.dumps(rep.to_json()))
    assert obj["questions"][0]["rank"] == {"bm25": 3, "hybrid": 3}
    assert "| bm25 | zh (1) | 0.000 | 1.000 |" in markdown_table(rep)


def test_load_qa_good_file(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(
        '{"question": "a?", "keywords": ["x"], "lang": "en"}\n\n{"question": "b?", "source": "f.pdf", "page": 2}\n',
        encoding="utf-8",
    )
    items = load_qa(p)
    assert [(i.question, i.line) for i in items] == [("a?", 1), ("b?", 3)]
    assert items[1].source == "f.pdf" and items[1].page == 2 and items[1].keywords == []


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"keywords": ["x"]}', "'question'"),
        ('{"question": "q"}', "keywords' and/or 'source'"),
        ('{"question": "q", "keywords": "x"}', "'keywords' must be a list"),
        ('{"question": "q", "source": "a.pdf", "page": 0}', "'page' must be a positive integer"),
        ('{"question": "q", "keywords": ["x"], "page": 3}', "'page' needs a 'source'"),
        ('{"question": "q", "keywords": ["x"], "lang": "fr"}', "'lang'"),
        ('{"question": "q", "keywords": ["x"], "xlang": "yes"}', "'xlang' must be true or false"),
    ],
)
def test_load_qa_bad_line_names_line_number(tmp_path, line, message):
    p = tmp_path / "qa.jsonl"
    p.write_text('{"question": "ok", "keywords": ["x"]}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DocQAError, match=rf"qa.jsonl:2: .*{message}"):
        load_qa(p)


def test_same_language_leaves_out_the_cross_language_questions(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(
        '{"question": "a?", "keywords": ["x"]}\n{"question": "怎么?", "keywords": ["y"], "xlang": true}\n'
        '{"question": "c?", "keywords": ["z"], "xlang": false}\n',
        encoding="utf-8",
    )
    assert [i.cross_language for i in load_qa(p)] == [False, True, False]
    assert [i.question for i in load_qa(p, same_language=True)] == ["a?", "c?"]
    p.write_text('{"question": "怎么?", "keywords": ["y"], "xlang": true}\n', encoding="utf-8")
    with pytest.raises(DocQAError, match="no questions in the question's own language"):
        load_qa(p, same_language=True)


def test_load_qa_missing_and_empty(tmp_path):
    with pytest.raises(DocQAError, match="no such file"):
        load_qa(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DocQAError, match="no questions"):
        load_qa(tmp_path / "empty.jsonl")


def test_parse_modes():
    assert parse_modes("hybrid, bm25,hybrid") == ["hybrid", "bm25"]
    with pytest.raises(ConfigError):
        parse_modes("dense,vector")


def test_cli_eval_json_and_bad_file(docs_dir, tmp_path):
    from typer.testing import CliRunner

    from docqa.cli import app

    runner = CliRunner()
    kb = tmp_path / "kb"
    assert runner.invoke(app, ["ingest", str(docs_dir), "--index", str(kb)]).exit_code == 0
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        '{"question": "怎么解压 gzip 压缩的归档？", "keywords": ["tar -xzvf"], "lang": "zh"}\n'
        '{"question": "How do I create a virtual environment?", "source": "venv.md"}\n',
        encoding="utf-8",
    )
    r = runner.invoke(app, ["eval", str(qa), "--index", str(kb), "--mode", "bm25,hybrid", "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["n"] == 2 and set(obj["modes"]) == {"bm25", "hybrid"}
    assert obj["modes"]["hybrid"]["overall"]["hit@5"] == 1.0
    r = runner.invoke(app, ["eval", str(qa), "--index", str(kb), "--mode", "bm25"])
    assert r.exit_code == 0 and "hit@5" in r.stdout
    qa.write_text('{"question": "x"}\n', encoding="utf-8")
    r = runner.invoke(app, ["eval", str(qa), "--index", str(kb)])
    assert r.exit_code == 1 and "qa.jsonl:1" in r.output
