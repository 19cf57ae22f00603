"""Tests for docqa.load: each format with English and Chinese content, encodings, hostile inputs."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest

from docqa.errors import LoadError
from docqa.load import SUPPORTED_SUFFIXES, is_supported, load_file
from docqa.load.text import decode_bytes, markdown_sections

DATA = Path(__file__).parent / "data" / "load"
FONT = DATA / "wqy-microhei-subset.ttf"
# The subset font in tests/data/load only has glyphs for ASCII and the characters of these lines.
ZH_LINES = [
    "第一章 简介：本手册介绍如何安装和配置文档问答系统。",
    "第二章 安装：请先下载软件包，然后运行安装程序。",
    "第三章 常见问题：如果无法打开文件，请检查密码。",
]
ZH = "\n".join(ZH_LINES)


# ---------------------------------------------------------------- helpers


def make_pdf(path: Path, pages: list[tuple[list[tuple[int, str]], str]], zh: bool = False) -> Path:
    """pages: [(bookmarks [(level, title)], body)]; each bookmark's title is also printed on the page."""
    from fpdf import FPDF

    pdf = FPDF()
    if zh:
        pdf.add_font("wqy", fname=str(FONT))
        pdf.set_font("wqy", size=12)
    else:
        pdf.set_font("helvetica", size=12)
    for bookmarks, body in pages:
        pdf.add_page()
        for level, title in bookmarks:
            pdf.start_section(title, level=level)
            pdf.cell(text=title, new_x="LMARGIN", new_y="NEXT")
        pdf.multi_cell(0, 8, body)
    pdf.output(str(path))
    return path


def encrypt_pdf(src: Path, dst: Path, user_password: str) -> Path:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(str(src)))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="RC4-128")
    with dst.open("wb") as f:
        writer.write(f)
    return dst


def make_docx(path: Path) -> Path:
    import docx

    d = docx.Document()
    d.add_heading("Project Manual", level=0)  # style "Title"
    d.add_heading("Introduction", level=1)
    d.add_paragraph("This manual explains the installation.")
    d.add_heading("Requirements", level=2)
    table = d.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Component", "Version"
    table.cell(1, 0).text, table.cell(1, 1).text = "Python", "3.11"
    d.add_heading("安装", level=1)
    d.add_paragraph(ZH_LINES[1])
    d.save(str(path))
    return path


# ---------------------------------------------------------------- dispatch


def test_supported_suffixes_and_unknown_type(tmp_path: Path) -> None:
    assert {
        ".pdf",
        ".md",
        ".markdown",
        ".txt",
        ".rst",
        ".log",
        ".html",
        ".htm",
        ".xhtml",
        ".docx",
    } <= SUPPORTED_SUFFIXES
    assert is_supported(Path("a/B.PDF")) and is_supported(Path("README")) and not is_supported(Path("x.mp3"))
    f = tmp_path / "photo.xyz"
    f.write_bytes(b"abc")
    with pytest.raises(LoadError, match=r"unsupported file type \.xyz"):
        load_file(f)


def test_empty_missing_and_blank_files(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(LoadError, match="empty file"):
        load_file(tmp_path / "e.txt")
    with pytest.raises(LoadError, match="file not found"):
        load_file(tmp_path / "nope.md")
    (tmp_path / "blank.md").write_text("  \n\n\t\n")
    with pytest.raises(LoadError, match="no text"):
        load_file(tmp_path / "blank.md")


def test_binary_renamed_txt_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "image.txt"
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(LoadError, match="binary file"):
        load_file(f)
    g = tmp_path / "blob.txt"
    g.write_bytes(b"some text header " + bytes(range(256)) * 40)
    with pytest.raises(LoadError, match="binary file"):
        load_file(g)
    h = tmp_path / "noise.log"  # no NULs, not UTF-8, full of control characters
    h.write_bytes(bytes([0x01, 0x02, 0x80, 0x9F, 0x1B, 0x7F, 0x03, 0xFE]) * 200)
    with pytest.raises(LoadError, match="undecodable text|binary file"):
        load_file(h)


def test_pdf_named_txt_is_loaded_as_pdf(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", [([], "Hello from a PDF")])
    renamed = tmp_path / "a.txt"
    renamed.write_bytes(pdf.read_bytes())
    doc = load_file(renamed)
    assert doc.metadata["format"] == "pdf" and "Hello from a PDF" in doc.text


# ---------------------------------------------------------------- plain text + encodings


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        ("utf-8", "utf-8"),
        ("utf-8-sig", "utf-8-sig"),
        ("utf-16", "utf-16-le"),
        ("utf-16-be", None),
        ("gb18030", "gb18030"),
        ("gbk", "gb18030"),
    ],
)
def test_text_encodings_chinese(tmp_path: Path, encoding: str, expected: str | None) -> None:
    text = "Title line\n" + ZH + "\nEnd."
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
        expected = "utf-16-be"
    f = tmp_path / "zh.txt"
    f.write_bytes(data)
    doc = load_file(f)
    assert doc.text == text
    assert doc.metadata["encoding"] == expected


def test_short_gb_text_not_mistaken_for_big5_or_cp1252() -> None:
    for line in ZH_LINES + ["你好", "密码"]:
        text, enc = decode_bytes(line.encode("gb18030"))
        assert (text, enc) == (line, "gb18030")


def test_latin1_text_is_not_read_as_chinese() -> None:
    text = "Résumé of the café meeting: naïve façade, déjà vu, über straße.\n" * 3
    decoded, enc = decode_bytes(text.encode("cp1252"))
    assert (decoded, enc) == (text, "cp1252")


def test_crlf_normalised(tmp_path: Path) -> None:
    f = tmp_path / "w.txt"
    f.write_bytes(b"one\r\ntwo\rthree\n")
    assert load_file(f).text == "one\ntwo\nthree\n"


def test_rst_sections(tmp_path: Path) -> None:
    f = tmp_path / "doc.rst"
    f.write_text("=====\nGuide\n=====\n\nIntro\n-----\nHello.\n\nUsage\n-----\nRun it.\n")
    doc = load_file(f)
    assert [s.path for s in doc.sections] == [("Guide",), ("Guide", "Intro"), ("Guide", "Usage")]
    assert doc.text[doc.sections[2].start :].startswith("Usage")


# ---------------------------------------------------------------- markdown


def test_markdown_headings_setext_and_fences(tmp_path: Path) -> None:
    md = (
        "---\ntitle: Front\n---\n"
        "Intro text\n\n"
        "# Guide\n\nSome *text*.\n\n"
        "```bash\n# not a heading\necho hi\n```\n\n"
        "## Install `pkg` [now](http://x)\n\nsteps\n\n"
        "Setext Two\n----------\n\nbody\n\n"
        "第二章\n=====\n\n" + ZH_LINES[1] + "\n\n"
        "### 深入 ###\n\ndeep\n"
    )
    f = tmp_path / "g.md"
    f.write_text(md, encoding="utf-8")
    doc = load_file(f)
    assert doc.text == md  # kept as written: it is displayed too
    paths = [s.path for s in doc.sections]
    assert paths == [
        ("Guide",),
        ("Guide", "Install pkg now"),
        ("Guide", "Setext Two"),
        ("第二章",),
        ("第二章", "深入"),
    ]
    assert doc.metadata["title"] == "Front"
    assert doc.section_at(md.index("echo hi")) == ("Guide",)
    assert doc.section_at(md.index("Intro text")) == ()
    assert doc.section_at(md.index(ZH_LINES[1])) == ("第二章",)
    for s in doc.sections:
        assert md[s.start :].lstrip("# ").startswith(s.path[-1][:2])


def test_markdown_thematic_break_is_not_a_heading() -> None:
    sections, _ = markdown_sections("para one\n\n---\n\n- item\n---\ntext\n")
    assert sections == []


# ---------------------------------------------------------------- PDF


def test_pdf_pages_and_outline(tmp_path: Path) -> None:
    f = make_pdf(
        tmp_path / "m.pdf",
        [
            ([(0, "Chapter One"), (1, "Background")], "Alpha paragraph about the first topic."),
            ([(1, "Details")], "Beta paragraph with details."),
            ([(0, "Chapter Two")], "Gamma paragraph closes the manual."),
        ],
    )
    doc = load_file(f)
    assert [p.number for p in doc.pages] == [1, 2, 3]
    assert doc.page_at(doc.text.index("Alpha")) == 1
    assert doc.page_at(doc.text.index("Beta")) == 2
    assert doc.page_at(doc.text.index("Gamma")) == 3
    assert "first topic" in doc.text  # pdfium keeps inter-word spaces
    assert "\r" not in doc.text
    assert [s.path for s in doc.sections] == [
        ("Chapter One",),
        ("Chapter One", "Background"),
        ("Chapter One", "Details"),
        ("Chapter Two",),
    ]
    assert doc.section_at(doc.text.index("Alpha")) == ("Chapter One", "Background")
    assert doc.section_at(doc.text.index("Beta")) == ("Chapter One", "Details")
    assert doc.section_at(doc.text.index("Gamma")) == ("Chapter Two",)
    assert doc.metadata["pages"] == 3


def test_pdf_chinese(tmp_path: Path) -> None:
    f = make_pdf(
        tmp_path / "zh.pdf", [([(0, "第一章 简介")], ZH_LINES[0]), ([(0, "第二章 安装")], ZH_LINES[1])], zh=True
    )
    doc = load_file(f)
    flat = "".join(doc.text.split())
    assert "".join(ZH_LINES[0].split()) in flat and "".join(ZH_LINES[1].split()) in flat
    assert doc.page_at(doc.text.index("请先下载")) == 2
    assert [s.path for s in doc.sections] == [("第一章 简介",), ("第二章 安装",)]


def test_pdf_encrypted_empty_password_opens(tmp_path: Path) -> None:
    plain = make_pdf(tmp_path / "p.pdf", [([(0, "Secret Chapter")], "Open sesame text.")])
    enc = encrypt_pdf(plain, tmp_path / "e.pdf", user_password="")
    assert b"/Encrypt" in enc.read_bytes()
    doc = load_file(enc)
    assert "Open sesame text." in doc.text
    assert doc.sections[0].path == ("Secret Chapter",)


def test_pdf_encrypted_with_password_is_rejected(tmp_path: Path) -> None:
    plain = make_pdf(tmp_path / "p.pdf", [([], "Hidden text.")])
    enc = encrypt_pdf(plain, tmp_path / "e.pdf", user_password="hunter2")
    with pytest.raises(LoadError, match=r"encrypted PDF \(password required\)"):
        load_file(enc)


def test_pdf_corrupt_and_truncated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.7\n" + b"garbage " * 100)
    with pytest.raises(LoadError):
        load_file(bad)
    notpdf = tmp_path / "text.pdf"
    notpdf.write_text("just text")
    with pytest.raises(LoadError, match="not a PDF"):
        load_file(notpdf)
    good = make_pdf(tmp_path / "g.pdf", [([], "Some words " * 50)] * 3).read_bytes()
    trunc = tmp_path / "trunc.pdf"
    trunc.write_bytes(good[: len(good) // 3])
    try:  # pdfium may recover part of a truncated file; either outcome is fine, but never a non-LoadError
        doc = load_file(trunc)
        assert doc.text.strip()
    except LoadError:
        pass


def test_pdf_without_text_layer(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(10, 10, 50, 50)
    pdf.output(str(tmp_path / "scan.pdf"))
    with pytest.raises(LoadError, match="no text"):
        load_file(tmp_path / "scan.pdf")


# ---------------------------------------------------------------- HTML

HTML = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>Doc Page</title>
<style>body{color:red}</style><script>var secret = "SCRIPTTEXT";</script></head>
<body><header><a href="/">SITE HEADER</a></header><nav><ul><li>Home</li><li>NAVLINK</li></ul></nav>
<main><article><header><h1>Getting Started</h1></header>
<p>First<b>bold</b> paragraph
   with   spaces.</p><p>Second paragraph.</p>
<h2>Install</h2><div>Run the <code>installer</code>.</div><div>Then reboot.</div>
<table><tr><th>Name</th><th>Value</th></tr><tr><td>a</td><td>1</td></tr></table>
<h2>中文部分</h2><p>{zh}</p><span hidden>HIDDEN</span><span style="display: none">ALSOHIDDEN</span>
</article></main><aside>SIDEBAR</aside><footer>FOOTER TEXT</footer><noscript>NOSCRIPT</noscript></body></html>
"""


def test_html_text_blocks_and_sections(tmp_path: Path) -> None:
    f = tmp_path / "p.html"
    f.write_text(HTML.replace("{zh}", ZH_LINES[0]), encoding="utf-8")
    doc = load_file(f)
    for junk in (
        "SCRIPTTEXT",
        "color:red",
        "SITE HEADER",
        "NAVLINK",
        "SIDEBAR",
        "FOOTER TEXT",
        "NOSCRIPT",
        "HIDDEN",
        "Doc Page",
    ):
        assert junk not in doc.text, junk
    assert doc.metadata["title"] == "Doc Page"
    assert "Firstbold paragraph with spaces.\n\nSecond paragraph." in doc.text
    assert "Run the installer.\nThen reboot." in doc.text  # blocks are separate lines, not glued
    assert "Name | Value\na | 1" in doc.text
    assert [s.path for s in doc.sections] == [
        ("Getting Started",),
        ("Getting Started", "Install"),
        ("Getting Started", "中文部分"),
    ]
    assert doc.section_at(doc.text.index("Then reboot")) == ("Getting Started", "Install")
    assert doc.section_at(doc.text.index(ZH_LINES[0])) == ("Getting Started", "中文部分")
    for s in doc.sections:
        assert doc.text[s.start :].startswith(s.path[-1])


def test_html_docbook_navigation_bars_dropped() -> None:
    # DocBook pages (Debian's manuals) carry previous/next bars as plain divs: they must not become answer text
    from docqa.load.html import load_html_bytes

    page = (
        '<div class="navheader"><table><tr><td>Prev</td><td>Next</td></tr></table></div>'
        '<h1>A</h1><p>body text</p><div class="navfooter">上一页 | 下一页 | 起始页</div>'
    )
    doc = load_html_bytes("p.html", page.encode())
    assert doc.text == "A\n\nbody text"
    # Publican's (The Debian Administrator's Handbook): a download banner and docnav lists above and below
    page = (
        '<div id="banner"><a href="x"><span>Download the ebook</span></a></div>'
        '<ul class="docnav top"><li class="previous"><a href="a.html"><strong>上一页</strong>第 6 章</a></li>'
        '<li class="next"><a href="b.html"><strong>下一页</strong>6.3.</a></li></ul>'
        '<h1>6.2. apt</h1><p>body text</p><ul class="docnav"><li class="home"><a href="i.html">起始页</a></li></ul>'
    )
    assert load_html_bytes("p.html", page.encode()).text == "6.2. apt\n\nbody text"


@pytest.mark.parametrize("declared", ["gb2312", "gbk", "GB18030"])
def test_html_gb_encoded_page(tmp_path: Path, declared: str) -> None:
    # 镕 is GBK-only: a page that says gb2312 but uses GBK characters must still decode.
    body = (
        f"<html><head><meta http-equiv=Content-Type content='text/html; charset={declared}'>"
        f"<title>中文页面</title></head><body><h1>简介</h1><p>{ZH_LINES[0]}朱镕基</p></body></html>"
    )
    f = tmp_path / "gb.htm"
    f.write_bytes(body.encode("gb18030"))
    doc = load_file(f)
    assert ZH_LINES[0] + "朱镕基" in doc.text
    assert doc.metadata["title"] == "中文页面" and doc.sections[0].path == ("简介",)
    assert doc.metadata["encoding"] == "gb18030"


def test_html_undeclared_gb_page(tmp_path: Path) -> None:
    f = tmp_path / "nodecl.html"
    f.write_bytes(f"<html><body><p>{ZH_LINES[2]}</p></body></html>".encode("gb18030"))
    assert ZH_LINES[2] in load_file(f).text


# ---------------------------------------------------------------- DOCX


def test_docx_headings_and_tables(tmp_path: Path) -> None:
    doc = load_file(make_docx(tmp_path / "m.docx"))
    assert doc.metadata["title"] == "Project Manual"
    assert "Component | Version\nPython | 3.11" in doc.text
    assert doc.text.index("This manual") < doc.text.index("Component") < doc.text.index(ZH_LINES[1])
    assert [s.path for s in doc.sections] == [
        ("Project Manual",),
        ("Introduction",),
        ("Introduction", "Requirements"),
        ("安装",),
    ]
    assert doc.section_at(doc.text.index("Python | 3.11")) == ("Introduction", "Requirements")
    assert doc.section_at(doc.text.index(ZH_LINES[1])) == ("安装",)
    for s in doc.sections:
        assert doc.text[s.start :].startswith(s.path[-1])


def test_docx_outline_level_paragraph(tmp_path: Path) -> None:
    import docx
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    d = docx.Document()
    p = d.add_paragraph("Custom Heading")
    lvl = OxmlElement("w:outlineLvl")
    lvl.set(qn("w:val"), "0")
    p._p.get_or_add_pPr().append(lvl)
    d.add_paragraph("body text")
    d.save(str(tmp_path / "o.docx"))
    doc = load_file(tmp_path / "o.docx")
    assert doc.sections[0].path == ("Custom Heading",)
    assert doc.section_at(doc.text.index("body")) == ("Custom Heading",)


def _rewrite_docx(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = replace.get(info.filename, zin.read(info.filename))
            zout.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return dst


def test_docx_zip_bomb_rejected(tmp_path: Path) -> None:
    src = make_docx(tmp_path / "m.docx")
    # 300 MB of zeros as an extra member: declared size alone exceeds the cap; written streaming to keep RAM low.
    bomb = tmp_path / "bomb.docx"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        with zout.open("word/media/pad.bin", "w", force_zip64=True) as w:
            chunk = bytes(1 << 20)
            for _ in range(300):
                w.write(chunk)
    assert bomb.stat().st_size < 2_000_000
    t = time.perf_counter()
    with pytest.raises(LoadError, match="zip bomb"):
        load_file(bomb)
    assert time.perf_counter() - t < 2


def test_docx_high_ratio_member_rejected(tmp_path: Path) -> None:
    src = make_docx(tmp_path / "m.docx")
    pad = b"a" * (30 * 1024 * 1024)  # 30 MB that deflates ~1000x: under the total cap, over the ratio cap
    bomb = _rewrite_docx(src, tmp_path / "ratio.docx", {})
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/pad2.bin", pad, compresslevel=9)
    with pytest.raises(LoadError, match="zip bomb"):
        load_file(bomb)


def test_docx_entity_bomb_rejected(tmp_path: Path) -> None:
    src = make_docx(tmp_path / "m.docx")
    with zipfile.ZipFile(src) as z:
        xml = z.read("word/document.xml").decode("utf-8")
    lol = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    root = xml.index("<w:document")
    evil = xml[:root] + "<!DOCTYPE w:document [" + "".join(lol) + "]>" + xml[root:]
    evil = evil.replace("This manual explains the installation.", "&lol9;")
    bomb = _rewrite_docx(src, tmp_path / "lol.docx", {"word/document.xml": evil.encode("utf-8")})
    with pytest.raises(LoadError, match="DTD"):
        load_file(bomb)


def test_python_docx_parser_does_not_expand_entities() -> None:
    """Defence in depth: even past our DTD check, python-docx's parser must not resolve entities."""
    from docx.oxml.parser import oxml_parser
    from lxml import etree

    xml = b'<!DOCTYPE r [<!ENTITY a "AAAAAAAAAA"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><r>&b;</r>'
    root = etree.fromstring(xml, oxml_parser)
    assert "AAAAAAAAAA" not in etree.tostring(root).decode()


def test_docx_corrupt(tmp_path: Path) -> None:
    f = tmp_path / "c.docx"
    f.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(LoadError, match="corrupt DOCX"):
        load_file(f)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "not a docx")
    (tmp_path / "z.docx").write_bytes(buf.getvalue())
    with pytest.raises(LoadError):
        load_file(tmp_path / "z.docx")


def test_pdf_running_headers_and_page_numbers_are_removed(tmp_path: Path) -> None:
    from fpdf import FPDF

    from docqa.load.pdf import _load_pdfium, _load_pypdf

    sections = ["2.1. INSTALLING", "2.1. INSTALLING", "2.2. CONFIGURING", "2.3. UPGRADING", "2.3. UPGRADING"]

    class Manual(FPDF):  # the running header names the chapter and the current section, the footer the page
        def header(self):
            if self.page_no() > 1:
                self.set_font("helvetica", size=8)
                self.cell(text=f"CHAPTER 2. SETTING UP THE SYSTEM {sections[self.page_no() - 1]}")
                self.ln(12)

        def footer(self):
            self.set_y(-15)
            self.set_font("helvetica", size=8)
            self.cell(text=str(self.page_no()))

    body = [
        "Setting up the system takes a few steps.",
        "Install the base packages with apt install.",
        "Edit /etc/default/grub to change the timeout.",
        "Upgrades keep your configuration files",
        "unless you answer yes when dpkg asks.",
    ]
    pdf = Manual()
    for text in body:
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.multi_cell(0, 8, text)
    f = tmp_path / "manual.pdf"
    pdf.output(str(f))
    for doc in (load_file(f), _load_pdfium(f), _load_pypdf(f)):
        assert "CHAPTER 2" not in doc.text and doc.metadata["running_lines_removed"] == 9
        assert [ln for ln in doc.text.split("\n") if ln.strip()] == body  # the page numbers went too
        assert [doc.page_at(doc.text.index(t)) for t in body] == [1, 2, 3, 4, 5]


def test_chinese_running_headers_and_page_numbers_go_and_body_lines_stay() -> None:
    from docqa.load.pdf import strip_running_lines

    body = ["用 apt-mark hold 保留软件包。", "修改 /etc/apt/sources.list 后运行 apt update。", "第 9 章介绍系统技巧。"]
    pages = ["Debian 参考手册\n" + body[0] + "\n第 1 页"]
    pages += [f"第 9 章 系统技巧 9.{i}. 小节\n{t}\n第 {i + 2} 页" for i, t in enumerate(body[1:])]
    pages += ["第 9 章 系统技巧 9.3. 小节\n第 9 章 系统技巧 9.3. 小节的正文很短。\n第 4 页"]
    out, n = strip_running_lines(pages)
    assert out == ["Debian 参考手册\n" + body[0], body[1], body[2], "第 9 章 系统技巧 9.3. 小节的正文很短。"]
    assert n == 7  # three headers and four page numbers; a body line that starts like the header stays


def test_pypdf_fallback_matches_pdfium(tmp_path: Path) -> None:
    from docqa.load.pdf import _load_pdfium, _load_pypdf

    f = make_pdf(tmp_path / "m.pdf", [([(0, "One"), (1, "Sub")], "First page words."), ([(0, "Two")], "Second.")])
    a, b = _load_pdfium(f), _load_pypdf(f)
    assert b.metadata["pdf_backend"] == "pypdf"
    assert [p.number for p in b.pages] == [1, 2] and b.page_at(b.text.index("Second")) == 2
    assert [s.path for s in a.sections] == [s.path for s in b.sections] == [("One",), ("One", "Sub"), ("Two",)]


def test_utf16_without_bom(tmp_path: Path) -> None:
    f = tmp_path / "u.txt"
    f.write_bytes("Plain ASCII-ish text in UTF-16, no BOM.\n".encode("utf-16-le"))
    doc = load_file(f)
    assert doc.text.startswith("Plain ASCII-ish") and doc.metadata["encoding"] == "utf-16-le"


def test_html_br_and_pre(tmp_path: Path) -> None:
    f = tmp_path / "b.html"
    f.write_text("<p>line one<br>line two</p><pre>  keep\n    indent</pre><p>after</p>")
    doc = load_file(f)
    assert doc.text == "line one\nline two\n\n  keep\n    indent\n\nafter"


def test_pdfium_hyphenation_marks_rejoin_words():
    from docqa.load.pdf import clean_page_text

    assert (
        clean_page_text("Users can se\x02lect which pack\x02\r\nages to install")
        == "Users can select which packages to install"
    )
    assert clean_page_text("a well-known\r\nfact") == "a well-known\nfact"


# ---------------------------------------------------------------- Chinese line wraps


def test_chinese_pdf_paragraph_wrapped_at_the_margin_is_one_line(tmp_path: Path) -> None:
    body = "请先下载软件包，然后运行安装程序" * 8 + "。"
    f = make_pdf(tmp_path / "zh.pdf", [([(0, "第一章 简介")], body + "\n" + ZH_LINES[2])], zh=True)
    from docqa.load.pdf import _load_pypdf

    for doc in (load_file(f), _load_pypdf(f)):
        lines = [ln.strip() for ln in doc.text.split("\n") if ln.strip()]
        # fpdf2 broke the paragraph at the margin twice, mid-word; the title and the next paragraph (after a full
        # stop) keep their own lines
        assert lines == ["第一章 简介", body, ZH_LINES[2]]
        assert doc.metadata["wrapped_lines_joined"] == 2


def test_man_page_chinese_wrap_is_joined_for_search(tmp_path: Path) -> None:
    from docqa.tokenize import tokenize

    page = (
        "名称\n       apt - 命令行软件包管理器\n\n描述\n"
        "       apt 为管理系统中的软件包提供了一个高层命令行接口，它用于交互使用，默认启用了一些更适合终端用户的选项。安装软\n"
        "       件包之前请先更新软件包列表。\n\n"
        "       -y, --yes\n              对所有提示回答是\n"
        "       --no-upgrade\n              不升级已安装的软件包；与 install 一起使用时，它的效果如同 apt-get 的 --only-\n"
        "              upgrade 的反面。\n"
    )
    f = tmp_path / "apt.zh-cn.txt"
    f.write_text(page, encoding="utf-8")
    doc = load_file(f)
    assert "选项。安装软件包之前请先更新软件包列表。" in doc.text and doc.metadata["wrapped_lines_joined"] == 2
    assert "--only-upgrade" in tokenize(doc.text)  # the option broken after its hyphen is whole again
    assert "描述\n" in doc.text and "--yes\n              对所有" in doc.text  # headings and option lines stay
    joined = doc.text[doc.text.index("选项。") :]
    assert tokenize(joined, bigrams=False)[:3] == ["选项", "安装", "软件"]  # 软件 then 软件包: one word again
    assert "软件包" in tokenize(joined, bigrams=False)[:4]


@pytest.mark.parametrize(
    ("text", "expected", "n"),
    [
        # a full line ending in a Han character, then Han: joined (indentation of the next line dropped)
        ("一" * 20 + "\n    二三。", "一" * 20 + "二三。", 1),
        # after non-final punctuation too
        ("一" * 19 + "，\n二三。", "一" * 19 + "，二三。", 1),
        # a paragraph ends in a full stop; a line shorter than the measure is a heading or a list item
        ("一" * 19 + "。\n二三。", None, 0),
        ("一" * 20 + "\n四\n" + "五" * 6 + "\n六六", "一" * 20 + "四\n" + "五" * 6 + "\n六六", 1),
        # Latin on either side: the line break already separates the words
        ("一" * 20 + "\napt install", None, 0),
        ("一" * 19 + "apt\n二三", None, 0),
        # a translation that spaces its words keeps a space where it broke
        ("从 标准 输入 读入 参数 " + "一" * 15 + "\n二三", "从 标准 输入 读入 参数 " + "一" * 15 + " 二三", 1),
        # a compound broken after its hyphen: joined, the hyphen kept; not a dash, a short line or a capital after
        ("x" * 28 + " --keep-\n      newer-files", "x" * 28 + " --keep-newer-files", 1),
        ("x" * 28 + " a -\n      dash", None, 0),
        ("see --keep-\nnewer-files", None, 0),
        ("x" * 28 + " see-\nAlso", None, 0),
        # English prose and short lines: untouched
        ("a wrapped\nEnglish line", None, 0),
        ("软件包\n版本\n说明", None, 0),
    ],
)
def test_join_wraps(text: str, expected: str | None, n: int) -> None:
    from docqa.load.text import join_wraps

    assert join_wraps(text) == (text if expected is None else expected, n)


def test_roman_page_numbers_go_a_last_word_that_only_looks_roman_stays() -> None:
    from docqa.load.pdf import strip_running_lines

    pages = ["Preface text.\ni", "Contents.\nii", "The law is\ncivil", "More.\niv", "Last.\nxlix"]
    out, n = strip_running_lines(pages)
    assert out == ["Preface text.", "Contents.", "The law is\ncivil", "More.", "Last."] and n == 4


_WRAP_ALPHABET = "软件包安装，。；a-Z9 \t"


@pytest.mark.parametrize("seed", range(3))
def test_join_wraps_only_removes_line_breaks_and_their_indentation(seed: int) -> None:
    """Whatever the text, joining wrapped lines only drops a line break with the blanks around it (putting back a
    single space for a spaced translation): nothing else changes, and it says how many it dropped."""
    import random
    import re

    from docqa.load.text import join_wraps

    rng = random.Random(seed)
    total = 0
    for _ in range(300):
        lines = ["".join(rng.choice(_WRAP_ALPHABET) for _ in range(rng.choice((3, 16, 40, 45)))) for _ in range(8)]
        text = "\n".join(lines)
        out, n = join_wraps(text)
        assert re.sub(r"\s", "", out) == re.sub(r"\s", "", text)
        assert out.count("\n") == text.count("\n") - n
        assert join_wraps(out)[0].count("\n") <= out.count("\n")
        total += n
    assert total > 50  # the texts do hold wraps to join
