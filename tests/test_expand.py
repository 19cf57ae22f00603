"""docqa.expand (query expansion by the chat model) and its use by retrieval, ask and eval."""

from __future__ import annotations

import pytest
from conftest import EXTRACT_QUESTION, MIXED_DOCS, build_kb

from docqa.config import Settings
from docqa.errors import ConfigError, ModelError
from docqa.expand import clean_expansion, expand_query, expansion_kinds, expansion_prompt
from docqa.generate.base import Generator

QUESTION = EXTRACT_QUESTION  # shares no word with the English passage that answers it
TRANSLATION = "How do I extract the files from a compressed archive?"


class Scripted(Generator):
    """A chat model that writes `replies[kind]` for expansion prompts and a cited answer otherwise."""

    is_chat_model = True

    def __init__(self, replies: dict[str, str], cheap: bool = True, fail: bool = False):
        self.replies, self.cheap_generation, self.fail = replies, cheap, fail
        self.prompts: list[str] = []

    def stream(self, prompt, options=None):
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        self.prompts.append(text)
        for kind, marker in (("translate", "翻译成英文"), ("keywords", "关键词"), ("hyde", "短文")):
            if marker in text and text.rstrip().endswith(("英文：", "关键词：", "短文：")):
                if self.fail:
                    raise ModelError("the model server went away")
                yield self.replies.get(kind, "")
                return
        yield "运行 tar -xzf backup.tar.gz [1]。"


@pytest.fixture(scope="module")
def kb_settings(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("expand")
    settings = build_kb(root, MIXED_DOCS, embedder)
    # the model's expansions alone: the dictionary gloss finds the tar passage too (tests/test_lexicon.py)
    return settings.replace(cross_language=False)


@pytest.fixture
def retriever(kb_settings, embedder):
    from docqa.retrieve import Retriever
    from docqa.store import KnowledgeBase

    kb = KnowledgeBase.open(kb_settings.index)
    yield Retriever(kb, embedder, kb_settings)
    kb.close()


def test_clean_expansion_drops_labels_and_rejects_unusable_output():
    q = "How do I keep a backup when editing with sed -i?"
    assert clean_expansion("Keywords: sed, --in-place=SUFFIX, backup suffix", q, "keywords") == (
        "sed, --in-place=SUFFIX, backup suffix"
    )
    assert clean_expansion("译文：“如何用 sed -i 保留备份？”", q, "translate") == "如何用 sed -i 保留备份？"
    assert clean_expansion("", q, "keywords") is None
    assert clean_expansion("  how do I keep a backup when editing with sed -i?  ", q, "translate") is None  # echo
    assert clean_expansion("x" * 1000, q, "keywords") is None
    assert clean_expansion("1. sed\n2. -i\n3. backup\n4. suffix", q, "keywords") is None  # a list, not a line
    hyde = clean_expansion("Passage: Use sed -i.bak.\nThe original is kept as file.bak.", q, "hyde")
    assert hyde == "Use sed -i.bak. The original is kept as file.bak."


def test_kinds_follow_the_setting_and_the_model():
    from docqa.generate.extractive import ExtractiveAnswerer

    cheap, cpu = Scripted({}, cheap=True), Scripted({}, cheap=False)
    auto = Settings(query_expansion="auto")
    assert expansion_kinds(Settings(), cheap) == ()  # off by default: not measured
    assert expansion_kinds(auto, ExtractiveAnswerer()) == ()  # cannot follow an instruction
    assert expansion_kinds(auto, cheap) == ("keywords", "translate")
    assert expansion_kinds(auto, cpu) == ()  # a local CPU model would spend tens of seconds
    assert expansion_kinds(Settings(query_expansion="hyde"), cpu) == ("hyde",)  # named: on anyway
    assert expansion_kinds(Settings(query_expansion="off"), cheap) == ()
    with pytest.raises(ConfigError, match="query_expansion"):
        Settings().replace(query_expansion="keywords,synonyms")


def test_the_openai_generator_counts_as_cheap_and_local_cpu_models_do_not():
    from docqa.generate.base import runs_on_accelerator
    from docqa.generate.openai import OpenAIGenerator

    assert OpenAIGenerator("http://127.0.0.1:9/v1").cheap_generation
    torch = pytest.importorskip("torch")
    assert not runs_on_accelerator(torch.nn.Linear(2, 2))
    assert not runs_on_accelerator(object())


def test_prompts_are_in_the_question_language_and_ask_for_one_line():
    zh = expansion_prompt(QUESTION, "translate")[0]["content"]
    assert QUESTION in zh and "翻译成英文" in zh and zh.endswith("英文：")
    en = expansion_prompt("Why does my cron job not run?", "keywords")[0]["content"]
    assert en.endswith("Keywords:") and "separated by commas" in en


def test_expand_query_keeps_usable_answers_and_survives_errors():
    gen = Scripted({"translate": TRANSLATION, "keywords": "关键词：tar, 解压, 归档"})
    assert expand_query(QUESTION, gen, ("keywords", "translate")) == ["tar, 解压, 归档", TRANSLATION]
    assert expand_query(QUESTION, Scripted({}, fail=True), ("translate",)) == []  # the question alone searches


def test_a_translation_finds_the_english_passage_for_a_chinese_question(retriever):
    plain = retriever.search(QUESTION, k=3)
    # the question's own lists give it nothing: BM25 shares no term, the English-only embedder's cosine of a
    # Chinese question counts for nothing in the fusion (whatever order the ties come in)
    assert all(h.scores["rrf"] == 0 for h in plain)
    assert not retriever.is_relevant(QUESTION, plain)  # ask would abstain
    expanded = retriever.search(QUESTION, k=3, expansions=[TRANSLATION])
    assert "tar -xzf" in expanded[0].text and expanded[0].scores["rrf"] > expanded[1].scores["rrf"]
    assert "expansions" in expanded.timings
    assert retriever.is_relevant(QUESTION, expanded, [TRANSLATION])
    # an expansion that repeats the question, or an empty one, changes nothing
    again = retriever.search(QUESTION, k=3, expansions=[QUESTION, " "])
    assert [h.chunk_id for h in again] == [h.chunk_id for h in plain]


@pytest.mark.parametrize("mode", ["bm25", "dense"])
def test_single_signal_modes_fuse_expansions_too(retriever, mode):
    hits = retriever.search(QUESTION, k=1, mode=mode, expansions=[TRANSLATION])
    assert "tar -xzf" in hits[0].text


def test_ask_expands_records_and_cites(retriever, kb_settings):
    from docqa.answer import ask

    gen = Scripted({"translate": TRANSLATION})
    a = ask(QUESTION, retriever, gen, kb_settings.replace(query_expansion="translate"))
    assert a.query_expansions == [TRANSLATION]
    assert a.to_json()["query_expansions"] == [TRANSLATION]
    assert "tar -xzf" in a.passages[0].text and a.citations == [1]
    assert 0 <= a.timings["expansion"] <= a.timings["retrieval"]
    off = ask(QUESTION, retriever, Scripted({"translate": TRANSLATION}), kb_settings.replace(query_expansion="off"))
    assert off.abstained and off.query_expansions == [] and "expansion" not in off.timings


def test_eval_reports_each_mode_with_and_without_expansion(retriever):
    from docqa.evaluate import QAItem, evaluate

    items = [QAItem(QUESTION, keywords=["tar -xzf"], lang="zh")]
    report = evaluate(items, retriever, ["bm25", "hybrid"], expander=lambda q: [TRANSLATION])
    assert set(report.modes) == {"bm25", "bm25+expand", "hybrid", "hybrid+expand"}
    assert report.ranks["hybrid+expand"] == [1]
    assert report.ranks["bm25"] == [None]
