import pytest

from docqa.chunk import chunk_document
from docqa.documents import Document, Page, Section


def test_chinese_split_at_sentence_ends():
    doc = Document("a.txt", "第一句话在这里。第二句话也在这里！第三句呢？" * 30)
    chunks = chunk_document(doc, count_tokens=len, chunk_tokens=40, overlap=0)
    assert len(chunks) > 5
    assert all(c.text[-1] in "。！？" for c in chunks)
    assert all(c.n_tokens <= 40 for c in chunks)


def test_offsets_point_into_the_text_and_cover_it():
    text = "\n\n".join(f"Paragraph {i}. " + "word " * (i * 7 % 60 + 5) for i in range(40))
    doc = Document("a.md", text)
    chunks = chunk_document(doc, count_tokens=lambda t: len(t.split()), chunk_tokens=50, overlap=10)
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_chunks_never_cross_pages_or_sections():
    pages = ["Page one text. " * 20, "Page two text. " * 20, "Page three text. " * 20]
    text = "".join(pages)
    starts = [0, len(pages[0]), len(pages[0]) + len(pages[1])]
    doc = Document(
        "m.pdf",
        text,
        pages=[Page(i + 1, s) for i, s in enumerate(starts)],
        sections=[Section(0, ("Intro",)), Section(starts[2], ("Intro", "Details"))],
    )
    chunks = chunk_document(doc, count_tokens=lambda t: len(t.split()), chunk_tokens=30, overlap=5)
    for c in chunks:
        assert doc.page_at(c.start) == doc.page_at(c.end - 1) == c.page
    assert {c.page for c in chunks} == {1, 2, 3}
    assert chunks[-1].section == "Intro > Details"
    assert chunks[0].section == "Intro"


def test_real_tokenizer_never_exceeds_model_limit(embedder):
    # long runs without separators (a URL-ish blob, a Chinese run without punctuation) must still fit
    text = "x" * 3000 + "\n\n" + "中文没有标点的很长的一段话" * 200 + "\n\n" + "normal words here. " * 300
    doc = Document("a.txt", text)
    chunks = chunk_document(
        doc, embedder.count_tokens, chunk_tokens=200, overlap=40, max_tokens=embedder.max_tokens - 2
    )
    assert max(embedder.count_tokens(c.text) for c in chunks) <= 200
    assert all(c.n_tokens == embedder.count_tokens(c.text) for c in chunks)


def test_short_heading_segment_joins_next():
    text = "Title\n" + "Body sentence here. " * 30
    doc = Document("a.md", text, sections=[Section(0, ("Title",)), Section(6, ("Title",))])
    chunks = chunk_document(doc, count_tokens=lambda t: len(t.split()), chunk_tokens=500, overlap=0)
    assert len(chunks) == 1 and chunks[0].text.startswith("Title")


def test_empty_document_has_no_chunks():
    assert chunk_document(Document("e.txt", "  \n\n "), count_tokens=len) == []


@pytest.mark.parametrize("size,overlap", [(60, 0), (60, 20)])
def test_overlap_bounded(size, overlap):
    doc = Document("a.txt", " ".join(f"s{i}." for i in range(600)))
    chunks = chunk_document(doc, count_tokens=lambda t: len(t.split()), chunk_tokens=size, overlap=overlap)
    for a, b in zip(chunks, chunks[1:]):
        shared = max(0, a.end - b.start)
        assert len(doc.text[b.start : b.start + shared].split()) <= overlap


def test_table_of_contents_pages_are_not_indexed():
    from docqa.chunk import is_table_of_contents

    toc = "Contents\n" + "\n".join(f"1.{i} What is item {i}? . . . . . . . . . . . {i + 2}" for i in range(12))
    body = "The package manager installs software. " * 30
    assert is_table_of_contents(toc)
    assert not is_table_of_contents(body)
    assert not is_table_of_contents(
        "Prices\napples 3\npears 4\nplums 5\nfigs 6\nkiwis 7\nlimes 8"
    )  # no title, no leaders
    doc = Document("m.pdf", toc + "\n" + body, pages=[Page(1, 0), Page(2, len(toc) + 1)])
    chunks = chunk_document(doc, count_tokens=lambda t: len(t.split()), chunk_tokens=100, overlap=0)
    assert {c.page for c in chunks} == {2}
