"""docqa.retrieve over small real knowledge bases (real embedder): fusion, hygiene, relevance, snapshots."""

from pathlib import Path

import pytest

from docqa.config import Settings
from docqa.documents import SearchResult
from docqa.ingest import ingest
from docqa.retrieve import Retriever, join_at_offsets, open_retriever
from docqa.store import KnowledgeBase

# A second folder, richer than conftest's docs_dir: more Chinese passages to rank, a paragraph repeated in two
# files (near-duplicate across formats), and a long document for neighbour expansion.
ZH_DOCS = {
    "grep.txt": "grep 命令\n\ngrep 在文件中搜索匹配给定模式的行。\n\n-i 选项：忽略大小写的区别，搜索时不区分大小写。\n\n"
    "-v 选项：反转匹配，只显示不匹配的行。\n\n-w 选项：只选择整个单词都匹配的行。\n",
    "apt.txt": "软件包管理\n\n要把整个系统升级到最新，请执行 apt-get update 然后执行 apt-get dist-upgrade。\n\n"
    "要阻止一个软件包被升级，可以使用 apt-mark hold 命令把它标记为保持。\n",
    "kernel.txt": "内核模块\n\n开机时要加载的内核模块列在 /etc/modules 文件里，每行一个模块名。\n\n"
    "旧内核不再需要时，可以用 apt-get remove 删除对应的 linux-image 软件包。\n",
}
EN_DUP = (
    "Sorting HOW TO. Python lists have a built-in list.sort() method that modifies the list in-place. There is "
    "also a sorted() built-in function that builds a new sorted list from an iterable. Both accept a key "
    "function and a reverse flag; reverse=True sorts from largest to smallest while keeping the sort stable."
)
LONG = "\n\n".join(
    f"Paragraph {i}. "
    + " ".join(f"filler{i}x{j}" for j in range(30))
    + (" The secret word is zebracorn." if i == 6 else "")
    for i in range(12)
)


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("retrieve")
    docs = root / "docs"
    docs.mkdir()
    for name, text in ZH_DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    (docs / "sorting.md").write_text("# Sorting\n\n" + EN_DUP + "\n", encoding="utf-8")
    (docs / "sorting-copy.html").write_text(
        f"<html><body><h1>Sorting</h1><p>{EN_DUP}</p></body></html>", encoding="utf-8"
    )
    (docs / "long.txt").write_text(LONG, encoding="utf-8")
    s = Settings(index=root / "kb", chunk_tokens=64, chunk_overlap=16, file_timeout=30)
    report = ingest([docs], s, embedder=embedder)
    assert not report.failed
    return s


@pytest.fixture
def retriever(kb_dir, embedder):
    kb = KnowledgeBase.open(kb_dir.index)
    yield Retriever(kb, embedder, kb_dir)
    kb.close()


def test_chinese_query_finds_chinese_passage(retriever):
    for mode in ("bm25", "hybrid"):
        hits = retriever.search("grep 搜索时怎么不区分大小写？", k=3, mode=mode)
        assert hits and hits[0].location == "grep.txt" and "忽略大小写" in hits[0].text, mode
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert hits.weights[0] < 0.1 * hits.weights[1]  # dense barely counts for Chinese (the hybrid search's weights)


def _rank_of(hits, needle):
    return next((h.rank for h in hits if needle in h.text), 99)


@pytest.mark.parametrize(
    "question, needle",
    [
        ("怎么只显示不匹配的行？", "反转匹配"),
        ("不想让某个软件包被升级怎么办？", "apt-mark hold"),
        ("开机加载的内核模块写在哪个文件？", "/etc/modules"),
        ("怎么把系统升级到最新？", "dist-upgrade"),
    ],
)
def test_hybrid_never_worse_than_bm25_for_chinese(retriever, question, needle):
    bm25 = _rank_of(retriever.search(question, k=5, mode="bm25"), needle)
    hybrid = _rank_of(retriever.search(question, k=5, mode="hybrid"), needle)
    assert bm25 <= 5 and hybrid <= bm25


def test_chinese_hybrid_keeps_the_bm25_order(retriever):
    # the English-only embedder has no say on a Chinese question: hybrid ranks its BM25 matches as BM25 does
    q = "怎么用 apt-get 删除或升级软件包？"
    bm25 = retriever.search(q, k=10, mode="bm25")
    hybrid = retriever.search(q, k=10, mode="hybrid")
    assert len(bm25) >= 2
    assert [h.chunk_id for h in hybrid][: len(bm25)] == [h.chunk_id for h in bm25]
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)


def test_adjacent_fragments_merge_into_one_hit(retriever):
    with retriever.kb.snapshot():
        doc = next(h.document_id for h in retriever.search("zebracorn", k=1, mode="bm25"))
        chunks = retriever.kb.neighbours(doc, list(range(200)))
    at = next(o for o, r in chunks.items() if "zebracorn" in r.text)
    # a word that only the chunk two places on holds: BM25 finds both chunks, each for one of the words
    word = next(
        w
        for w in chunks[at + 2].text.split()
        if w.startswith("filler") and all(w not in chunks[o].text for o in chunks if o != at + 2)
    )
    hits = retriever.search(f"zebracorn {word}", k=10, mode="bm25")
    assert len([h for h in hits if "zebracorn" in h.text or word in h.text]) == 1  # one hit, not two
    best = hits[0]
    assert best.ordinal in (at, at + 2) and "zebracorn" in best.text and word in best.text
    assert chunks[at + 1].text in best.text  # the chunk between them fills the gap
    # joined at offsets: the overlap between consecutive chunks appears once
    words = [w for w in best.text.split() if w.startswith("filler")]
    assert len(words) == len(set(words))
    assert best.scores == {"bm25": best.score}


def test_english_hybrid_uses_both_signals(retriever):
    hits = retriever.search("How do I sort a list from largest to smallest?", k=3, mode="hybrid")
    best = next(h for h in hits if "reverse=True" in h.text)
    assert {"rrf", "dense", "bm25"} <= set(best.scores)
    assert hits.weights[0] > 0 and hits.timings["retrieval"] > 0


def test_search_result_belongs_to_its_search(retriever):
    hybrid = retriever.search("How do I sort a list?", k=3, mode="hybrid")
    bm25 = retriever.search("grep 怎么忽略大小写？", k=2, mode="bm25")
    # a later search does not change an earlier result (the old retriever attributes did)
    assert hybrid.weights is not None
    assert set(hybrid.timings) == {"embed", "dense", "bm25", "evidence", "retrieval"}
    # (the Chinese question's English gloss is searched too: rule 7's gloss vectors)
    assert bm25.weights is None and set(bm25.timings) == {"bm25", "expansions", "retrieval"} and bm25.expansions
    # it reads like the list of its hits
    assert isinstance(hybrid, SearchResult) and len(hybrid) == 3 and bool(hybrid)
    assert list(hybrid) == hybrid.hits and hybrid[0] is hybrid.hits[0] and hybrid[1:] == hybrid.hits[1:]
    empty = retriever.search("   ")
    assert not empty and len(empty) == 0 and empty.hits == [] and empty.weights is None


def test_near_identical_text_from_two_files_counted_once(retriever):
    hits = retriever.search("sorted built-in function reverse flag stable", k=5, mode="hybrid")
    dup = [h for h in hits if "builds a new sorted list" in h.text]
    assert len(dup) == 1
    # without de-duplication both copies are in the candidate pool
    with retriever.kb.snapshot():
        ids = [c for c, _ in retriever.kb.lexical.search("sorted built-in function reverse flag stable", 10)]
        rows = retriever.kb.chunks(ids)
    assert len({r.source for r in rows.values() if "builds a new sorted list" in r.text}) == 2


def test_overlapping_chunks_of_one_document_counted_once(retriever):
    hits = retriever.search("filler6x3 filler6x20 zebracorn", k=10, mode="bm25")
    spans = [(h.document_id, h.ordinal) for h in hits]
    assert len(spans) == len(set(spans))
    rows = {}
    with retriever.kb.snapshot():
        rows = retriever.kb.chunks(h.chunk_id for h in hits)
    taken = [rows[h.chunk_id] for h in hits]  # in rank order
    for i, b in enumerate(taken):
        for a in taken[:i]:
            if a.document_id == b.document_id:  # a later hit may overlap an earlier one by at most half its span
                assert min(a.end, b.end) - max(a.start, b.start) <= (b.end - b.start) / 2


def test_neighbours_expand_without_repeating_the_overlap(kb_dir, embedder):
    kb = KnowledgeBase.open(kb_dir.index)
    try:
        plain = Retriever(kb, embedder, kb_dir).search("zebracorn", k=1, mode="bm25")[0]
        # (2: one neighbour each side can be no more than the paragraph edges the plain hit already shows)
        wide = Retriever(kb, embedder, kb_dir.replace(neighbours=2)).search("zebracorn", k=1, mode="bm25")[0]
        with kb.snapshot():
            around = kb.neighbours(plain.document_id, [plain.ordinal - 1, plain.ordinal + 1])
    finally:
        kb.close()
    assert wide.chunk_id == plain.chunk_id and plain.text in wide.text and len(wide.text) > len(plain.text)
    assert around  # the document has neighbours on at least one side
    for r in around.values():
        assert r.text[-20:] in wide.text or r.text[:20] in wide.text
    # the overlap between consecutive chunks appears once: every filler word at most once
    words = [w for w in wide.text.split() if w.startswith("filler")]
    assert len(words) == len(set(words))


@pytest.mark.parametrize("question", ["grep 怎么忽略大小写？", "How do I sort a list in reverse order?"])
def test_is_relevant_on_topic(retriever, question):
    for mode in ("hybrid", "bm25"):
        assert retriever.is_relevant(question, retriever.search(question, mode=mode)), mode


@pytest.mark.parametrize(
    "question", ["What is the capital of France?", "how do I bake bread", "今天天气怎么样？", "怎么做红烧肉？"]
)
def test_is_relevant_off_topic(retriever, question):
    for mode in ("hybrid", "bm25"):
        assert not retriever.is_relevant(question, retriever.search(question, mode=mode)), mode
    assert not retriever.is_relevant(question, [])


def test_min_relevance_override(retriever):
    q = "How do I sort a list in reverse order?"
    hits = retriever.search(q)
    best = max(h.scores["dense"] for h in hits)
    r = Retriever(retriever.kb, retriever.embedder, retriever.settings.replace(min_relevance=best + 0.01))
    assert not r.is_relevant(q, hits)
    r = Retriever(retriever.kb, retriever.embedder, retriever.settings.replace(min_relevance=best - 0.01))
    assert r.is_relevant(q, hits)


def test_results_consistent_inside_a_snapshot(docs_dir, tmp_path, embedder):
    s = Settings(index=tmp_path / "kb", file_timeout=30)
    ingest([docs_dir], s, embedder=embedder)
    r = open_retriever(s)
    q = "tar 怎么解压 gzip 压缩的归档？"
    try:
        with r.kb.snapshot():
            before = [(h.chunk_id, h.text) for h in r.search(q, mode="hybrid")]
            extra = tmp_path / "more"
            extra.mkdir()
            (extra / "tar2.txt").write_text(
                "解压 gzip 归档：tar -xzvf 归档.tar.gz 解压 gzip 压缩 归档 tar", encoding="utf-8"
            )
            ingest([docs_dir, extra], s, embedder=embedder)  # another handle commits meanwhile
            during = [(h.chunk_id, h.text) for h in r.search(q, mode="hybrid")]
        after = r.search(q, mode="hybrid")
    finally:
        r.kb.close()
    assert during == before
    assert any(h.location == "tar2.txt" for h in after)
    assert not any("tar2" in t for _, t in before)


def test_modes_and_errors(retriever):
    from docqa.errors import ConfigError

    with pytest.raises(ConfigError):
        retriever.search("x", mode="vector")
    assert not retriever.search("   ")
    dense = retriever.search("How do I sort a list?", k=2, mode="dense")
    assert len(dense) == 2 and set(dense[0].scores) == {"dense"} and dense[0].score >= dense[1].score


# An API page whose chunks (56 tokens, overlap 10) end with a function's signature and begin with its description
API_FUNCS = [
    (
        "shutil.copy(src, dst)",
        "Copies the file src to the file or directory dst, with its permission bits but not its "
        "other metadata such as the creation and modification times.",
    ),
    (
        "shutil.move(src, dst)",
        "Recursively moves a file or directory to another location and returns the destination; "
        "when the destination is on another file system the source is copied there and then removed.",
    ),
    (
        "shutil.which(cmd, mode, path)",
        "Returns the path to an executable which would be run if the given command name "
        "were called, or None when no such program is found on the search path.",
    ),
    (
        "shutil.rmtree(path)",
        "Deletes an entire directory tree, with every file and folder below it; the path must "
        "point to a directory and not to a symbolic link.",
    ),
]


def test_a_hit_keeps_the_line_that_introduces_it(tmp_path, embedder):
    from conftest import build_kb

    text = "# shutil\n\n" + "\n\n".join(f"{a}\n\n{b}" for a, b in API_FUNCS) + "\n"
    s = build_kb(tmp_path, {"shutil.md": text}, embedder, chunk_tokens=56, chunk_overlap=10)
    kb = KnowledgeBase.open(s.index)
    try:
        with kb.snapshot():
            chunks = list(kb.neighbours(1, list(range(20))).values())
        # the set-up: the description of which() starts a chunk, its signature is only in the chunk before
        desc = next(c for c in chunks if c.text.startswith("Returns the path"))
        assert "shutil.which" not in desc.text.split("\n\n")[0]
        page = join_at_offsets(sorted(chunks, key=lambda c: c.ordinal))  # what the page view shows
        # (BM25, one word only that chunk has: nothing merges into the hit)
        hit = Retriever(kb, embedder, s).search("executable", k=1, mode="bm25")[0]
        assert hit.chunk_id == desc.id
        assert hit.text.startswith("shutil.which(cmd, mode, path)\nReturns the path"), hit.text
        assert hit.text in page  # the web UI finds a hit on its page by its text
        # the short paragraph after it comes along too: the next function's signature, then its description
        assert hit.text.endswith(
            "shutil.rmtree(path)\n\nDeletes an entire directory tree, with every file and "
            "folder below it; the path must point to a directory and not to a symbolic link."
        )
        # a neighbour shown before the hit makes the lead needless: the text is not repeated
        wide = Retriever(kb, embedder, s.replace(neighbours=1)).search("executable", k=1, mode="bm25")[0]
        assert wide.text.count("shutil.which(cmd, mode, path)") == 1 and wide.text in page
    finally:
        kb.close()


# Man pages' option lists, as their chunks read: an entry never repeats the command's name.
OPTION_PAGES = {
    "grep.zh-cn.txt": "-v, --invert-match  改变匹配的意义，只选择不匹配的行。\n\n"
    "-w, --word-regexp  只选择含有能组成完整的词的匹配的行。\n",
    "mount.zh-cn.txt": "-r, --read-only  以只读方式挂载文件系统。\n\n-w, --rw  以读写方式挂载文件系统，这是默认选项。\n",
    "ps.zh-cn.txt": "-w  宽输出。这个选项用两次可以不限制宽度。\n\n-x  显示没有控制终端的进程。\n",
    "grep.txt": "-v, --invert-match  Invert the sense of matching, to select non-matching lines.\n\n"
    "-w, --word-regexp  Select only those lines containing matches that form whole words.\n",
    "mount.txt": "-r, --read-only  Mount the filesystem read-only.\n\n-w, --rw  Mount the filesystem read-write. "
    "This is the default option.\n",
    "ps.txt": "-w  Wide output. Use this option twice for unlimited width.\n\n-x  Show processes without a "
    "controlling terminal.\n",
}


def test_a_question_naming_a_document_finds_its_entry(tmp_path, embedder):
    from conftest import build_kb

    s = build_kb(tmp_path, OPTION_PAGES, embedder)
    kb = KnowledgeBase.open(s.index)
    try:
        hits = Retriever(kb, embedder, s).search("grep 的 -w 选项是什么意思？", k=3)
        # either language's grep page answers (an English passage serves a Chinese question as well)
        assert Path(hits[0].source).name.startswith("grep."), [(h.source, h.text[:30]) for h in hits]
        assert "--word-regexp" in hits[0].text
    finally:
        kb.close()
