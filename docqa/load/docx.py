"""DOCX loader (python-docx): body paragraphs and tables in document order, sections from heading styles.

    >>> doc = load_docx(Path("report.docx"))         # doctest: +SKIP
    >>> doc.sections[0].path                         # doctest: +SKIP
    ('Introduction',)

Headings: paragraphs styled `Title` (level 1, also metadata["title"]) or `Heading N`, or with an outline level
(`w:outlineLvl`, on the paragraph or its style chain). Table rows become lines with cells joined by " | "
(horizontally merged cells once); nested tables are flattened into their cell's text. Each table's span and
header row go into metadata["tables"], so chunks never split a row and repeat the header (docqa/chunk.py).

Safety, checked before python-docx sees the file: the zip's declared sizes (Python's zipfile never inflates a
member past its declared size, so they are binding) must stay under MAX_UNCOMPRESSED in total, no large member may
inflate more than MAX_RATIO times, and no XML part may carry a DOCTYPE (Word never writes one; it is how entity
bombs and external entities get in). python-docx's own parser also has resolve_entities=False.
A document with no text but pictures (a scan pasted into Word) has its pictures OCR'd (docqa/load/image.py).
Limits: headers, footers, footnotes, comments and text boxes are not read; .doc is docqa/load/legacy.py's.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

from docqa.documents import Document, Section
from docqa.errors import LoadError

MAX_UNCOMPRESSED = 200 * 1024 * 1024
MAX_RATIO = 100
RATIO_MIN_SIZE = 10 * 1024 * 1024  # small parts compress very well legitimately; only judge big ones
MAX_MEMBERS = 10_000
_HEADING = re.compile(r"^heading\s*(\d)$", re.I)
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


#: what python-docx / python-pptx raise on a damaged package (besides their own PackageNotFoundError)
OOXML_OPEN_ERRORS = (
    KeyError,
    ValueError,
    zipfile.BadZipFile,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    zlib.error,
)


def check_zip(
    path: Path, label: str = "DOCX", xml_suffixes: tuple[str, ...] = (".xml", ".rels"), allow_doctype: bool = False
) -> None:
    """Reject zip bombs and DTD-carrying XML parts by inspection, before anything is inflated in bulk.
    Shared by every zip-based format (DOCX, XLSX, PPTX, EPUB, ODF); `label` names the format in messages;
    `allow_doctype` lets a bare DOCTYPE through (EPUB's XHTML has one) while entity declarations stay refused."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise LoadError(f"zip bomb? ({len(infos)} members)")
            total = sum(i.file_size for i in infos)
            if total > MAX_UNCOMPRESSED:
                raise LoadError(f"zip bomb? ({total // 2**20} MB uncompressed > {MAX_UNCOMPRESSED // 2**20} MB)")
            for i in infos:
                if i.file_size > RATIO_MIN_SIZE and i.file_size > MAX_RATIO * max(i.compress_size, 1):
                    raise LoadError(f"zip bomb? ({i.filename} inflates {i.file_size // max(i.compress_size, 1)}x)")
            for i in infos:
                if i.filename.lower().endswith(xml_suffixes):
                    with zf.open(i) as f:
                        head = f.read(4096)
                    probe = (
                        head.decode("utf-16")
                        if head.startswith((b"\xff\xfe", b"\xfe\xff"))
                        else head.decode("utf-8", "ignore")
                    )
                    if "<!ENTITY" in probe.upper() or ("<!DOCTYPE" in probe.upper() and not allow_doctype):
                        raise LoadError(f"{label} part {i.filename} has a DTD (XML entity bomb?)")
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError, zlib.error) as e:
        # a damaged directory makes zipfile seek to negative offsets (OSError), read past the end (EOFError), meet
        # unknown compression (NotImplementedError) or encryption (RuntimeError)
        raise LoadError(f"corrupt {label} ({e})") from None
    except UnicodeDecodeError:
        raise LoadError(f"corrupt {label} (undecodable XML part)") from None


def _style_level(style: Any) -> int | None:
    """Heading level from a style's name or its outline level, following `basedOn`."""
    seen = 0
    while style is not None and seen < 10:
        name = (style.name or "").strip()
        if name.lower() == "title":
            return 1
        m = _HEADING.match(name)
        if m and 1 <= int(m.group(1)) <= 9:
            return int(m.group(1))
        lvl = _outline_level(style.element.find(f"{_W}pPr"))
        if lvl is not None:
            return lvl
        style = getattr(style, "base_style", None)
        seen += 1
    return None


def _outline_level(ppr: Any) -> int | None:
    if ppr is None:
        return None
    ol = ppr.find(f"{_W}outlineLvl")
    if ol is None:
        return None
    try:
        v = int(ol.get(f"{_W}val"))
    except (TypeError, ValueError):
        return None
    return v + 1 if 0 <= v <= 8 else None  # 9 means "body text"


def _paragraph_level(p: Any) -> int | None:
    lvl = _outline_level(p._p.pPr)
    if lvl is not None:
        return lvl
    try:
        return _style_level(p.style)
    except Exception:
        return None


def _table_lines(table: Any) -> list[str]:
    lines: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        seen: set[int] = set()
        for cell in row.cells:
            if id(cell._tc) in seen:
                continue
            seen.add(id(cell._tc))
            parts: list[str] = []
            for item in cell.iter_inner_content():
                if hasattr(item, "rows"):
                    parts.extend(_table_lines(item))
                else:
                    parts.append(item.text)
            cells.append(" ".join(" ".join(parts).split()))
        if any(cells):
            lines.append(" | ".join(cells))
    return lines


def load_docx(path: Path) -> Document:
    """A .docx file (Office Open XML); python-docx reads the zip itself after check_zip."""
    d = _open_docx(path)
    meta: dict[str, Any] = {"format": "docx"}
    text, sections, tables, title = _docx_body(d)
    if title is not None:
        meta["title"] = title
    try:
        if d.core_properties.title and "title" not in meta:
            meta["title"] = d.core_properties.title
    except Exception:
        pass
    if tables:
        meta["tables"] = tables
    if not text.strip():  # a scan pasted into Word: its pictures are the content
        text = _ocr_media(path)
        if text:
            meta["ocr_pages"] = [1]
    return Document(source=str(path), text=text, sections=sections, metadata=meta)


def _open_docx(path: Path) -> Any:
    """The python-docx document of `path`; LoadError when it is not a readable WordprocessingML document."""
    check_zip(path)
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        d = docx.Document(str(path))
    except (PackageNotFoundError, *OOXML_OPEN_ERRORS) as e:
        raise LoadError(f"corrupt DOCX ({type(e).__name__}: {e})") from None
    if d.element.tag != f"{_W}document" or d.element.find(f"{_W}body") is None:
        # python-docx takes any XML as the main part and fails later with AttributeError
        raise LoadError("corrupt DOCX (the main part is not a WordprocessingML document with a body)")
    return d


def _docx_body(d: Any) -> tuple[str, list[Section], list[list[int]], str | None]:
    """The body's text, its sections (from headings), its tables ([start, end, header end]) and the first
    Title-styled heading (or None)."""
    parts: list[str] = []
    pos = 0
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    doc_title: str | None = None

    def emit(line: str, gap: bool = False) -> None:
        nonlocal pos
        if parts:
            sep = "\n\n" if gap else "\n"
            parts.append(sep)
            pos += len(sep)
        parts.append(line)
        pos += len(line)

    tables: list[list[int]] = []
    for item in d.iter_inner_content():
        if hasattr(item, "rows"):
            lines = _table_lines(item)
            for k, line in enumerate(lines):
                emit(line)
                if k == 0:
                    t_start, t_header = pos - len(line), pos
            if len(lines) > 1:  # the chunker keeps rows whole and repeats the header row (docqa/chunk.py)
                tables.append([t_start, pos, t_header])
            continue
        text = item.text.replace("\r", "")
        if not text.strip():
            continue
        level = _paragraph_level(item)
        if level is not None:
            title = " ".join(text.split())
            emit(title, gap=True)
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            sections.append(Section(pos - len(title), tuple(t for _, t in stack)))
            if (item.style is not None and (item.style.name or "").lower() == "title") and doc_title is None:
                doc_title = title
            continue
        emit(text)
    return "".join(parts), sections, tables, doc_title


def _ocr_media(path: Path) -> str:
    """OCR the pictures in word/media/ in their numeric order (image1, image2, ... image10)."""
    from docqa.load.image import images_to_text

    def order(name: str) -> tuple[int, str]:
        digits = "".join(c for c in name if c.isdigit())
        return (int(digits) if digits else 0, name)

    with zipfile.ZipFile(path) as zf:
        names = sorted((n for n in zf.namelist() if n.startswith("word/media/")), key=order)
        return images_to_text([zf.read(n) for n in names[:200]])
