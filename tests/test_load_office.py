"""OpenDocument (ODT/ODS/ODP), RTF and legacy .doc loaders."""

from __future__ import annotations

import io
import shutil
import zipfile

import pytest

from docqa.errors import LoadError
from docqa.load import load_file

_NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0" '
    'xmlns:presentation="urn:oasis:names:tc:opendocument:xmlns:presentation:1.0"'
)


def odf(kind: str, body: str) -> bytes:
    """An OpenDocument zip with `body` inside office:body/office:<kind>."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("mimetype", f"application/vnd.oasis.opendocument.{kind}")
        z.writestr(
            "content.xml",
            f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {_NS}>'
            f"<office:body><office:{kind}>{body}</office:{kind}></office:body></office:document-content>",
        )
    return buf.getvalue()


def test_odt_headings_paragraphs_tables(tmp_path):
    p = tmp_path / "r.odt"
    p.write_bytes(
        odf(
            "text",
            '<text:h text:outline-level="1">安装</text:h><text:p>Run<text:s text:c="2"/>setup'
            '<text:tab/>now.</text:p><text:h text:outline-level="2">Ports</text:h><table:table>'
            "<table:table-row><table:table-cell><text:p>svc</text:p></table:table-cell><table:table-cell>"
            "<text:p>port</text:p></table:table-cell></table:table-row><table:table-row><table:table-cell>"
            "<text:p>ssh</text:p></table:table-cell><table:table-cell><text:p>22</text:p></table:table-cell>"
            "</table:table-row></table:table>",
        )
    )
    doc = load_file(p)
    assert doc.text == "安装\nRun setup now.\n\nPorts\n\nsvc: ssh; port: 22"
    assert doc.section_at(doc.text.index("ssh")) == ("安装", "Ports")


def test_ods_sheets_and_repeated_cells(tmp_path):
    def row(*cells: str) -> str:
        body = "".join(f"<table:table-cell><text:p>{c}</text:p></table:table-cell>" for c in cells)
        return f"<table:table-row>{body}</table:table-row>"

    filler = (
        '<table:table-row table:number-rows-repeated="1048000"><table:table-cell '
        'table:number-columns-repeated="16384"/></table:table-row>'
    )
    p = tmp_path / "b.ods"
    p.write_bytes(
        odf(
            "spreadsheet",
            f'<table:table table:name="Hosts">{row("host", "ip")}{row("alpha", "10.0.0.1")}'
            f'{filler}</table:table><table:table table:name="空表">{row("k", "v")}{row("x", "1")}</table:table>',
        )
    )
    doc = load_file(p)
    assert doc.text == "host: alpha; ip: 10.0.0.1\n\nk: x; v: 1"
    assert [s.path for s in doc.sections] == [("Hosts",), ("空表",)]


def test_odp_slides_titles_notes(tmp_path):
    def slide(name: str, title: str, body: str, notes: str = "") -> str:
        n = (
            (
                f"<presentation:notes><draw:frame><draw:text-box><text:p>{notes}</text:p></draw:text-box></draw:frame>"
                f"</presentation:notes>"
            )
            if notes
            else ""
        )
        return (
            f'<draw:page draw:name="{name}"><draw:frame presentation:class="title"><draw:text-box><text:p>{title}'
            f"</text:p></draw:text-box></draw:frame><draw:frame><draw:text-box><text:p>{body}</text:p>"
            f"</draw:text-box></draw:frame>{n}</draw:page>"
        )

    p = tmp_path / "d.odp"
    p.write_bytes(
        odf("presentation", slide("p1", "Backups", "Two copies.", "Say it twice.") + slide("p2", "恢复", "运行命令。"))
    )
    doc = load_file(p)
    assert doc.text == "Backups\n\nTwo copies.\n\nNotes: Say it twice.\n\n恢复\n\n运行命令。"
    assert [pg.number for pg in doc.pages] == [1, 2] and doc.sections[1].path == ("恢复",)


def test_odf_bombs_and_garbage(tmp_path):
    p = tmp_path / "e.odt"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("content.xml", '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
    p.write_bytes(buf.getvalue())
    with pytest.raises(LoadError, match="ODT part content.xml has a DTD"):
        load_file(p)
    p.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(LoadError, match="corrupt ODT"):
        load_file(p)


def test_rtf_code_pages_and_unicode(tmp_path):
    p = tmp_path / "a.rtf"
    p.write_bytes(
        rb"{\rtf1\ansi\ansicpg936{\fonttbl{\f0 SimSun;}}\f0 \'d6\'d0\'ce\'c4 and \u20013?text\par Second line}"
    )
    assert load_file(p).text == "中文 and 中text\nSecond line"
    p.write_bytes(rb"{\rtf1\ansi caf\'e9 \b bold\b0\par}")
    assert load_file(p).text == "café bold"
    p.write_bytes(b"not rtf at all")
    with pytest.raises(LoadError, match="not an RTF file"):
        load_file(p)


def test_doc_without_converters_says_what_to_install(tmp_path, monkeypatch):
    p = tmp_path / "old.doc"
    p.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 1024)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(LoadError, match=r"install antiword \(apt-get install antiword\)"):
        load_file(p)


def test_doc_that_is_rtf_or_not_word(tmp_path):
    p = tmp_path / "saved-as.doc"
    p.write_bytes(rb"{\rtf1\ansi Word saved RTF under .doc\par}")
    doc = load_file(p)
    assert doc.text == "Word saved RTF under .doc" and doc.metadata["format"] == "doc (rtf)"
    p.write_bytes(b"random words")
    with pytest.raises(LoadError, match="not a Word .doc file"):
        load_file(p)


@pytest.mark.skipif(not (shutil.which("antiword") or shutil.which("catdoc")), reason="apt-get install antiword catdoc")
def test_doc_broken_ole_is_a_load_error(tmp_path):
    p = tmp_path / "broken.doc"
    p.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(range(256)) * 8)
    with pytest.raises(LoadError):
        load_file(p)
