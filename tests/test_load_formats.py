"""PPTX, XLSX, CSV/TSV, EPUB and EML loaders: what lands in the text, the pages and the sections."""

from __future__ import annotations

from pathlib import Path

import pytest
from formatgen import make_eml, make_epub, make_pptx, make_xlsx

from docqa.chunk import chunk_document
from docqa.errors import LoadError
from docqa.load import is_supported, load_file
from docqa.load.tabular import rows_to_lines


def _put(tmp_path: Path, name: str, data: bytes | str) -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def test_suffixes():
    for name in ("a.pptx", "b.xlsx", "c.csv", "d.tsv", "e.epub", "f.eml", "g.png", "h.JPG", "i.tiff", "j.webp"):
        assert is_supported(Path(name)), name
    assert not is_supported(Path("k.mp3"))


def test_pptx_slides_titles_tables_notes(tmp_path):
    p = _put(
        tmp_path,
        "deck.pptx",
        make_pptx(
            [
                ("Backups", ["Keep two copies.", "One off site."], "Mention the tape."),
                ("恢复步骤", ["运行 restore 命令。"], ""),
                ("Inventory", ["Hosts below."], ""),
            ],
            table=[["host", "port"], ["alpha", "22"], ["beta", "2222"]],
        ),
    )
    doc = load_file(p)
    assert [pg.number for pg in doc.pages] == [1, 2, 3]
    assert [s.path for s in doc.sections] == [("Backups",), ("恢复步骤",), ("Inventory",)]
    assert doc.text.startswith("Backups\n\nKeep two copies.\nOne off site.\n\nNotes: Mention the tape.")
    assert "host: beta; port: 2222" in doc.text
    assert doc.page_at(doc.text.index("restore")) == 2 and doc.section_at(doc.text.index("alpha")) == ("Inventory",)


def test_xlsx_sheets_rows_and_cached_formulas(tmp_path):
    p = _put(
        tmp_path,
        "book.xlsx",
        make_xlsx(
            {
                "Servers": [["host", "ip", "role"], ["alpha", "10.0.0.1", "db"], ["beta", "10.0.0.2", None]],
                "价格": [["item", "price"], ["disk", 120], ["ram", 80.5]],
            },
            formula=("价格", "B4", "=B2+B3", 200.5),
        ),
    )
    doc = load_file(p)
    assert doc.metadata["sheets"] == ["Servers", "价格"]
    assert [s.path for s in doc.sections] == [("Servers",), ("价格",)]
    lines = doc.text.splitlines()
    assert "host: alpha; ip: 10.0.0.1; role: db" in lines and "host: beta; ip: 10.0.0.2" in lines
    assert "price: 200.5" in lines  # the formula's cached value, not "=B2+B3"
    assert doc.section_at(doc.text.index("ram")) == ("价格",)


def test_rows_without_a_header_get_column_letters():
    assert rows_to_lines([["1", "2"], ["3", ""]]) == ["A: 1; B: 2", "A: 3"]
    assert rows_to_lines([["only", "header"]]) == ["only; header"]


def test_csv_tsv_encodings_and_sniffing(tmp_path):
    doc = load_file(_put(tmp_path, "ports.csv", "service;port\nssh;22\nhttp;80\n"))
    assert doc.text == "service: ssh; port: 22\nservice: http; port: 80" and doc.sections[0].path == ("ports.csv",)
    doc = load_file(_put(tmp_path, "gb.tsv", "名称\t说明\n压缩\t使用 tar 命令\n".encode("gb18030")))
    assert doc.text == "名称: 压缩; 说明: 使用 tar 命令" and doc.metadata["encoding"] == "gb18030"
    doc = load_file(_put(tmp_path, "q.csv", 'a,b\n"multi\nline",2\n'))
    assert doc.text == "a: multi line; b: 2"
    with pytest.raises(LoadError, match="binary file"):
        load_file(_put(tmp_path, "bin.csv", b"\x00\x01\x02" * 100))


def test_a_row_is_never_split_across_chunks(tmp_path):
    rows = [["id", "name", "comment"]] + [[str(i), f"host{i}", "some words " * 5] for i in range(60)]
    doc = load_file(_put(tmp_path, "big.csv", "\n".join(",".join(r) for r in rows)))
    chunks = chunk_document(doc, count_tokens=lambda s: len(s.split()), chunk_tokens=60, overlap=0)
    assert len(chunks) > 5
    for c in chunks:
        assert all(line.startswith("id: ") for line in c.text.splitlines()), c.text


def test_epub_chapters_in_spine_order(tmp_path):
    p = _put(
        tmp_path,
        "book.epub",
        make_epub("Atlas", [("Harbour", "Gulls circled.\n\nThe pier creaked."), ("山丘", "羊在山坡上吃草。")]),
    )
    doc = load_file(p)
    assert doc.metadata["title"] == "Atlas" and doc.metadata["chapters"] == 2
    assert doc.text.index("Gulls") < doc.text.index("羊在")
    assert doc.section_at(doc.text.index("pier")) == ("Harbour",) and doc.section_at(doc.text.index("羊")) == ("山丘",)


def test_eml_headers_body_and_attachments(tmp_path):
    csv_bytes = b"host,role\nalpha,db\n"
    p = _put(
        tmp_path,
        "m.eml",
        make_eml(
            "备份计划 Backup plan",
            "Run the backup at 2am.",
            [("hosts.csv", csv_bytes, "text/csv"), ("x.bin", b"\0\1", "application/octet-stream")],
        ),
    )
    doc = load_file(p)
    assert doc.metadata["subject"] == "备份计划 Backup plan" and "ops@example.org" in doc.metadata["from"]
    assert doc.text.startswith("Subject: 备份计划 Backup plan\nFrom: 运维组 <ops@example.org>")
    assert "Run the backup at 2am." in doc.text and "host: alpha; role: db" in doc.text
    assert doc.section_at(doc.text.index("alpha")) == ("备份计划 Backup plan", "hosts.csv")
    assert [a["status"] for a in doc.metadata["attachments"]] == ["ok", "unsupported"]


def test_eml_html_only_and_bad_charset(tmp_path):
    raw = (
        b"Subject: =?utf-8?b?5rWL6K+V?=\nContent-Type: text/html; charset=bogus-8\n\n"
        b"<html><body><p>Hello <b>HTML</b> mail</p><script>x()</script></body></html>"
    )
    doc = load_file(_put(tmp_path, "h.eml", raw))
    assert doc.metadata["subject"] == "测试" and doc.text.endswith("Hello HTML mail")
    with pytest.raises(LoadError):
        load_file(_put(tmp_path, "none.eml", b"\x00\x01 no headers at all"))
