"""Tables in DOCX and HTML: marked by the loaders, kept whole row by row by the chunker, header repeated."""

from __future__ import annotations

import io

from docqa.chunk import chunk_document
from docqa.documents import Document
from docqa.load import load_file
from docqa.load.html import load_html_bytes


def _words(s: str) -> int:
    return len(s.split())


def test_table_chunks_repeat_the_header_and_never_split_a_row():
    rows = ["host | ip | role"] + [f"node{i} | 10.0.0.{i} | worker number {i}" for i in range(40)]
    intro = "Intro paragraph about the cluster. " * 3
    text = intro + "\n\n" + "\n".join(rows) + "\n\nClosing words after the table."
    start = len(intro) + 2
    table = [start, start + len("\n".join(rows)), start + len(rows[0])]
    doc = Document("t.docx", text, metadata={"tables": [table]})
    chunks = chunk_document(doc, count_tokens=_words, chunk_tokens=40, overlap=5)
    in_table = [c for c in chunks if table[0] <= c.start < table[1]]
    assert len(in_table) >= 4
    for c in in_table:
        lines = c.text.split("\n")
        assert lines[0] == rows[0], c.text  # the header, given or repeated
        assert all(ln in rows for ln in lines), c.text  # whole rows only
        assert c.n_tokens <= 40
    covered = [ln for c in in_table for ln in c.text.split("\n")[1:]]
    assert covered == rows[1:]  # every row once, in order
    assert any("Intro paragraph" in c.text for c in chunks) and any("Closing words" in c.text for c in chunks)
    assert not any("Intro" in c.text for c in in_table)


def test_a_document_without_tables_chunks_as_before():
    doc = Document("a.txt", "第一句。第二句。" * 50)
    assert chunk_document(doc, len, 40, 8) == chunk_document(
        Document("a.txt", doc.text, metadata={"tables": []}), len, 40, 8
    )


def test_html_and_docx_mark_their_tables(tmp_path):
    html = (
        b"<h1>Ports</h1><p>Before.</p><table><tr><th>svc</th><th>port</th></tr><tr><td>ssh</td><td>22</td></tr>"
        b"<tr><td>http</td><td>80<table><tr><td>inner</td></tr></table></td></tr></table><p>After.</p>"
    )
    doc = load_html_bytes("p.html", html)
    ((start, end, header_end),) = doc.metadata["tables"]
    assert doc.text[start:header_end] == "svc | port" and doc.text[start:end].endswith("inner")
    import docx

    d = docx.Document()
    d.add_paragraph("Before the table.")
    t = d.add_table(rows=3, cols=2)
    for r, (a, b) in enumerate([("Component", "Version"), ("Python", "3.11"), ("pip", "23")]):
        t.cell(r, 0).text, t.cell(r, 1).text = a, b
    buf = io.BytesIO()
    d.save(buf)
    (tmp_path / "t.docx").write_bytes(buf.getvalue())
    doc = load_file(tmp_path / "t.docx")
    ((start, end, header_end),) = doc.metadata["tables"]
    assert (
        doc.text[start:header_end] == "Component | Version"
        and doc.text[start:end] == "Component | Version\nPython | 3.11\npip | 23"
    )
