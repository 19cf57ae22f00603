"""DOCX loader (python-docx): body paragraphs and tables in document order, sections from heading styles.

    >>> doc = load_docx(Path("report.docx"))         # doctest: +SKIP
    >>> doc.sections[0].path                         # doctest: +SKIP
    ('Introduction',)

Headings: paragraphs styled `Title` (level 1, also metadata["title"]) or `Heading N`, or with an outline level
(`w:outlineLvl`, on the paragraph or its style chain). Table rows become lines with cells joined by " | "
(horizontally merged cells once); nested tables are flattened into their cell's text.

Safety, checked before python-docx sees the file: the zip's declared sizes (Python's zipfile never inflates a
member past its declared size, so they are binding) must stay under MAX_UNCOMPRESSED in total, no large member may
inflate more than MAX_RATIO times, and no XML part may carry a DOCTYPE (Word never writes one; it is how entity
bombs and external entities get in). python-docx's own parser also has resolve_entities=False.
Limits: headers, footers, footnotes, comments and text boxes are not read; .doc (binary Word) is unsupported.
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


def check_zip(path: Path) -> None:
    """Reject zip bombs and DTD-carrying XML parts by inspection, before anything is inflated in bulk."""
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
                if i.filename.endswith((".xml", ".rels")):
                    with zf.open(i) as f:
                        head = f.read(4096)
                    probe = head.decode("utf-16") if head.startswith((b"\xff\xfe", b"\xfe\xff")) else head.decode(
                        "utf-8", "ignore")
                    if "<!DOCTYPE" in probe.upper() or "<!ENTITY" in probe.upper():
                        raise LoadError(f"DOCX part {i.filename} has a DTD (XML entity bomb?)")
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError, zlib.error) as e:
        # a damaged directory makes zipfile seek to negative offsets (OSError), read past the end (EOFError), meet
        # unknown compression (NotImplementedError) or encryption (RuntimeError)
        raise LoadError(f"corrupt DOCX ({e})") from None
    except UnicodeDecodeError:
        raise LoadError("corrupt DOCX (undecodable XML part)") from None


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
    check_zip(path)
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        d = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile, EOFError, OSError, NotImplementedError,
            RuntimeError, zlib.error) as e:
        raise LoadError(f"corrupt DOCX ({type(e).__name__}: {e})") from None
    if d.element.tag != f"{_W}document" or d.element.find(f"{_W}body") is None:
        # python-docx takes any XML as the main part and fails later with AttributeError
        raise LoadError("corrupt DOCX (the main part is not a WordprocessingML document with a body)")
    parts: list[str] = []
    pos = 0
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    meta: dict[str, Any] = {"format": "docx"}

    def emit(line: str, gap: bool = False) -> None:
        nonlocal pos
        if parts:
            sep = "\n\n" if gap else "\n"
            parts.append(sep)
            pos += len(sep)
        parts.append(line)
        pos += len(line)

    for item in d.iter_inner_content():
        if hasattr(item, "rows"):
            for line in _table_lines(item):
                emit(line)
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
            if (item.style is not None and (item.style.name or "").lower() == "title") and "title" not in meta:
                meta["title"] = title
            continue
        emit(text)
    try:
        if d.core_properties.title and "title" not in meta:
            meta["title"] = d.core_properties.title
    except Exception:
        pass
    return Document(source=str(path), text="".join(parts), sections=sections, metadata=meta)
