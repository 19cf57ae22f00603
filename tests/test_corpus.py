"""Checks on the bundled sample corpus and the bilingual dev set (no models, a few seconds).

The corpus in corpora/sample/ is what `docqa ingest` is demonstrated and evaluated on, and
corpora/dev_qa.jsonl is the question set `docqa eval` scores against. These tests prove that
every format the loaders must handle is present (a multi-page English PDF, a Chinese PDF,
Markdown, UTF-8 and GB18030 text, HTML, DOCX) and that every dev question is answerable: all of
its keywords occur together, within 1500 characters, in the text that an ordinary extractor
(pypdfium2 / BeautifulSoup / python-docx / decoded bytes) gets from the named file — on the named
page for PDFs. Extraction here is deliberately independent of docqa.load so that a loader bug
cannot make the dev set look valid.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from pathlib import Path

import pytest

from docqa.text import HAN

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "corpora" / "sample"
DEV = ROOT / "corpora" / "dev"
DEV_QA = ROOT / "corpora" / "dev_qa.jsonl"
WINDOW = 1500
CJK = re.compile(f"[{HAN}]")
GB18030_FILE = SAMPLE / "tar.zh-cn.gb18030.txt"


def _cjk_count(text: str) -> int:
    return len(CJK.findall(text))


@functools.cache
def pdf_pages(path: Path) -> tuple[str, ...]:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path))
    try:
        pages = []
        for i in range(len(pdf)):
            page = pdf[i]
            textpage = page.get_textpage()
            # \ufffe marks a word hyphenated across lines; the PDF loader rejoins it, so the check does too
            pages.append(re.sub("\ufffe\\s*", "", textpage.get_text_range()))
            textpage.close()
            page.close()
        return tuple(pages)
    finally:
        pdf.close()


@functools.cache
def html_texts(path: Path) -> tuple[str, ...]:
    """The page text with inline elements joined by "" (get_text(" ") would split `<span>-</span><span>m</span>`)."""
    from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning

    with warnings.catch_warnings():
        # The Debian FAQ pages are XHTML with an XML declaration; lxml's HTML parser reads them fine.
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(path.read_bytes(), "lxml")
    for tag in soup(["script", "style"]):
        tag.decompose()
    return (soup.get_text(""),)


@functools.cache
def docx_text(path: Path) -> str:
    import docx

    return "\n".join(p.text for p in docx.Document(str(path)).paragraphs)


def decode_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("gb18030")


def extracted_texts(path: Path, page: int | None = None) -> tuple[str, ...]:
    """Every rendering of `path` (or of one 1-based PDF page) that a keyword set must be found in."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        pages = pdf_pages(path)
        return (pages[page - 1],) if page else ("\n".join(pages),)
    if suffix in (".html", ".htm"):
        return html_texts(path)
    if suffix == ".docx":
        return (docx_text(path),)
    return (decode_text(path),)


def keywords_within(text: str, keywords: list[str], window: int = WINDOW) -> bool:
    """True when one span of <= `window` characters holds an occurrence of every keyword (case-insensitive)."""
    # judged as docqa eval judges: case-insensitive, a run of whitespace (a line break in a PDF) counts as one space
    low = re.sub(r"\s+", " ", text).lower()
    spans: list[list[tuple[int, int]]] = []
    for kw in keywords:
        k = re.sub(r"\s+", " ", kw).lower()
        found = [(m.start(), m.start() + len(k)) for m in re.finditer(re.escape(k), low)]
        if not found:
            return False
        spans.append(found)
    starts = sorted({s for found in spans for s, _ in found})
    for left in starts:
        if all(any(s >= left and e <= left + window for s, e in found) for found in spans):
            return True
    return False


def load_dev() -> list[dict]:
    items = []
    for n, line in enumerate(DEV_QA.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            item = json.loads(line)
            item["_line"] = n
            items.append(item)
    return items


# ---------------------------------------------------------------- corpus


def test_corpus_has_every_required_format() -> None:
    files = [p for p in SAMPLE.iterdir() if p.is_file()]
    by_suffix: dict[str, list[Path]] = {}
    for p in files:
        by_suffix.setdefault(p.suffix.lower(), []).append(p)
    for suffix in (".pdf", ".md", ".txt", ".html", ".docx"):
        assert by_suffix.get(suffix), f"no {suffix} file in {SAMPLE}"
    # Both languages in the formats where the loaders differ most.
    for suffix in (".pdf", ".md", ".txt", ".html", ".docx"):
        texts = ["".join(extracted_texts(p)) for p in by_suffix[suffix]]
        assert any(_cjk_count(t) > 500 for t in texts), f"no Chinese {suffix} file"
        if suffix != ".txt":
            assert any(_cjk_count(t) < 50 and len(t) > 5000 for t in texts), f"no English {suffix} file"


def test_pdfs_are_multi_page_with_extractable_text() -> None:
    en = pdf_pages(SAMPLE / "debian-faq.en.pdf")
    zh = pdf_pages(SAMPLE / "debian-faq-ch9-11.zh-cn.pdf")
    assert len(en) > 50 and len(zh) > 5
    assert "How do I put a package on hold?" in en[39]
    assert "make deb-pkg" in zh[3] and "内核" in zh[3]
    # The Chinese PDF must carry real text (not glyph-only or mojibake): most pages are mostly CJK.
    assert sum(_cjk_count(p) > 300 for p in zh) >= len(zh) - 1


def test_gb18030_file_is_not_utf8_but_decodes_as_gb18030() -> None:
    raw = GB18030_FILE.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    text = raw.decode("gb18030")
    assert _cjk_count(text) > 1000
    assert "提取用 gzip 压缩的文件 foo.tar.gz" in text


def test_utf8_chinese_text() -> None:
    text = (SAMPLE / "grep.zh-cn.txt").read_bytes().decode("utf-8")
    assert _cjk_count(text) > 1000 and "--ignore-case" in text


def test_docx_files_use_real_heading_styles() -> None:
    import docx

    for name in ("python-argparse-howto.docx", "linux-commands.zh-cn.docx"):
        styles = [p.style.name for p in docx.Document(str(SAMPLE / name)).paragraphs]
        assert styles.count("Heading 1") >= 1 and styles.count("Heading 2") >= 5, name


def source_path(name: str) -> Path:
    """A dev-set source lives in corpora/sample (the demo corpus) or corpora/dev (the rest of the dev corpus)."""
    return SAMPLE / name if (SAMPLE / name).is_file() else DEV / name


def test_corpus_size_and_no_reserved_documents() -> None:
    files = [p for d in (SAMPLE, DEV) for p in d.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 10 * 1024 * 1024
    # The Debian Reference manual is kept out of the repo for held-out evaluation.
    assert not [p for p in files if "debian-reference" in p.name.lower()]


def test_readme_describes_every_file() -> None:
    readme = (ROOT / "corpora" / "README.md").read_text(encoding="utf-8")
    for p in SAMPLE.iterdir():
        assert f"`{p.name}`" in readme, f"{p.name} is not described in corpora/README.md"


# ---------------------------------------------------------------- dev set


def test_dev_set_shape() -> None:
    items = load_dev()
    langs = [it["lang"] for it in items]
    assert set(langs) <= {"zh", "en"}
    # enough questions that one question moves a figure by under a point, in each half
    assert langs.count("zh") >= 150 and langs.count("en") >= 150
    for lang in ("zh", "en"):
        splits = [it["split"] for it in items if it["lang"] == lang]
        assert set(splits) == {"tune", "report"} and abs(splits.count("tune") - splits.count("report")) <= 8
        assert len({it["corpus"] for it in items if it["lang"] == lang}) >= 3
    questions = [it["question"] for it in items]
    assert len(set(questions)) == len(questions), "duplicate questions"
    for it in items:
        where = f"dev_qa.jsonl line {it['_line']}"
        assert set(it) - {"_line"} <= {"question", "keywords", "lang", "source", "page", "corpus", "split", "xlang"}, (
            where
        )
        assert it["split"] in ("tune", "report"), where
        assert isinstance(it["question"], str) and it["question"].strip(), where
        kws = it["keywords"]
        assert isinstance(kws, list) and 1 <= len(kws) <= 3, where
        assert all(isinstance(k, str) and k.strip() == k and k for k in kws), where
        # Loaders may collapse whitespace runs; a keyword with a newline or double space could then never match.
        assert not any("\n" in k or "  " in k for k in kws), where
        assert (_cjk_count(it["question"]) > 0) == (it["lang"] == "zh"), where
        src = source_path(it["source"])
        # a cross-language question is asked in the other language than its answer's document
        doc_is_zh = ".zh-cn." in src.name or src.name in ("linux-commands.zh-cn.docx", "manpages-zh-README.md")
        assert it.get("xlang", False) == (doc_is_zh != (it["lang"] == "zh")), where
        assert src.is_file(), where
        if src.suffix.lower() == ".pdf" and "page" in it:
            assert isinstance(it["page"], int) and 1 <= it["page"] <= len(pdf_pages(src)), where
        else:
            assert "page" not in it, where


@pytest.mark.parametrize("item", load_dev(), ids=lambda it: f"line{it['_line']}")
def test_dev_item_is_answerable_from_its_source(item: dict) -> None:
    src = source_path(item["source"])
    for text in extracted_texts(src, item.get("page")):
        assert keywords_within(text, item["keywords"]), (item["question"], item["keywords"], item["source"])


def test_keywords_within_is_strict() -> None:
    text = "alpha " + "x" * 2000 + " beta gamma alpha"
    assert keywords_within(text, ["Alpha", "BETA"])
    assert not keywords_within("alpha " + "x" * 2000 + " beta", ["alpha", "beta"])
    assert not keywords_within("alpha only", ["alpha", "missing"])
