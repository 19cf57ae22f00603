"""OpenDocument loader (zipfile + lxml): ODT text, ODS spreadsheets, ODP presentations, from content.xml.

    >>> doc = load_odf(Path("report.odt"))                  # doctest: +SKIP
    >>> doc.sections[0].path                                # doctest: +SKIP
    ('Introduction',)

ODT: headings (`text:h`, with their outline level) become sections; paragraphs and list items are lines; tables
are "header: value" rows as in spreadsheets. ODS: one section per sheet (its name), rows as "header: value" lines
(the values as displayed, `text:p`, so formulas give their cached result). ODP: one page per slide (`draw:page`,
numbered from 1), the slide's title frame as its section (else its name, else "Slide N"), speaker notes after
"Notes:". Repeated empty rows/columns (`number-*-repeated`, which LibreOffice writes up to a million) are capped.
Safety: `check_zip` as for DOCX (bombs, DTDs); lxml parses with entities and network access off.
Limits: .odg drawings, embedded objects and headers/footers are not read; flat XML (.fodt) is unsupported.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from docqa.documents import Document, Page, Section
from docqa.errors import LoadError

ODF_SUFFIXES = frozenset({".odt", ".ods", ".odp"})
MAX_REPEAT = 100  # a cell or row repeated more often than this is an empty filler
MAX_CELLS = 2_000_000
NS = {
    "text": "urn:oasis:names:tc:opendocument:xmlns:text:1.0",
    "table": "urn:oasis:names:tc:opendocument:xmlns:table:1.0",
    "draw": "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0",
    "office": "urn:oasis:names:tc:opendocument:xmlns:office:1.0",
    "presentation": "urn:oasis:names:tc:opendocument:xmlns:presentation:1.0",
}


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def _inline(el: Any) -> str:
    """The text of a paragraph-like element: text:s = spaces, tab, line-break; notes and annotations left out."""
    out = [el.text or ""]
    for child in el:
        tag = child.tag
        if tag == _q("text", "s"):
            out.append(" " * min(int(child.get(_q("text", "c"), "1") or 1), 100))
        elif tag in (_q("text", "tab"), _q("text", "line-break")):
            out.append(" ")
        elif tag not in (_q("text", "note"), _q("office", "annotation")):
            out.append(_inline(child))
        out.append(child.tail or "")
    return "".join(out)


def _rows(table: Any) -> list[list[str]]:
    rows: list[list[str]] = []
    budget = MAX_CELLS
    for row in table.iter(_q("table", "table-row")):
        cells: list[str] = []
        for cell in row:
            if cell.tag not in (_q("table", "table-cell"), _q("table", "covered-table-cell")):
                continue
            v = " ".join(" ".join(_inline(p) for p in cell.iter(_q("text", "p"))).split())
            n = int(cell.get(_q("table", "number-columns-repeated"), "1") or 1)
            cells.extend([v] * (min(n, MAX_REPEAT) if v else min(n, 1)))
        n_rows = int(row.get(_q("table", "number-rows-repeated"), "1") or 1)
        for _ in range(min(n_rows, MAX_REPEAT) if any(cells) else 1):
            rows.append(cells)
            budget -= len(cells)
        if budget < 0:
            break
    return rows


class _Out:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.sections: list[Section] = []
        self.pages: list[Page] = []

    def add(self, text: str, gap: bool = True) -> int:
        text = text.strip()
        if not text:
            return -1
        if self.parts:
            sep = "\n\n" if gap else "\n"
            self.parts.append(sep)
            self.pos += len(sep)
        start = self.pos
        self.parts.append(text)
        self.pos += len(text)
        return start


def _text_body(body: Any, out: _Out) -> None:
    from docqa.load.tabular import rows_to_lines

    stack: list[tuple[int, str]] = []

    def walk(el: Any) -> None:
        for child in el:
            tag = child.tag
            if tag == _q("text", "h"):
                title = " ".join(_inline(child).split())
                start = out.add(title)
                if start >= 0:
                    level = int(child.get(_q("text", "outline-level"), "1") or 1)
                    while stack and stack[-1][0] >= level:
                        stack.pop()
                    stack.append((level, title))
                    out.sections.append(Section(start, tuple(t for _, t in stack)))
            elif tag == _q("text", "p"):
                out.add(" ".join(_inline(child).split()), gap=False)
            elif tag == _q("table", "table"):
                out.add("\n".join(rows_to_lines(_rows(child))))
            elif tag in (_q("text", "tracked-changes"), _q("office", "forms")):
                continue
            else:
                walk(child)

    walk(body)


def _sheets(body: Any, out: _Out) -> None:
    from docqa.load.tabular import rows_to_lines

    for table in body.iter(_q("table", "table")):
        start = out.add("\n".join(rows_to_lines(_rows(table))))
        if start >= 0:
            out.sections.append(Section(start, (table.get(_q("table", "name")) or "Sheet",)))


def _slides(body: Any, out: _Out) -> None:
    for n, page in enumerate(body.iter(_q("draw", "page")), 1):
        title, texts, notes = "", [], []
        for frame in page.iter(_q("draw", "frame")):
            if next(frame.iterancestors(_q("presentation", "notes")), None) is not None:
                continue  # the speaker notes' own frame: read below
            lines = [" ".join(_inline(p).split()) for p in frame.iter(_q("text", "p"), _q("text", "h"))]
            text = "\n".join(ln for ln in lines if ln)
            if not text:
                continue
            if not title and frame.get(_q("presentation", "class")) == "title":
                title = " ".join(text.split())
            else:
                texts.append(text)
        for note in page.iter(_q("presentation", "notes")):
            notes += [" ".join(_inline(p).split()) for p in note.iter(_q("text", "p"))]
        notes = [t for t in notes if t]
        body_text = "\n\n".join(([title] if title else []) + texts + (["Notes: " + " ".join(notes)] if notes else []))
        start = out.add(body_text)
        if start >= 0:
            out.pages.append(Page(n, start))
            out.sections.append(Section(start, (title or page.get(_q("draw", "name")) or f"Slide {n}",)))


def load_odf(path: Path) -> Document:
    """An .odt, .ods or .odp file."""
    from lxml import etree

    from docqa.load.docx import check_zip

    kind = path.suffix.lower().lstrip(".")
    check_zip(path, kind.upper())
    try:
        with zipfile.ZipFile(path) as zf:
            data = zf.read("content.xml")
    except KeyError:
        raise LoadError(f"corrupt {kind.upper()} (no content.xml)") from None
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as e:
        raise LoadError(f"corrupt {kind.upper()} ({type(e).__name__}: {e})"[:300]) from None
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, recover=True)
    root = etree.fromstring(data, parser)
    if root is None:
        raise LoadError(f"corrupt {kind.upper()} (unparsable content.xml)")
    body = root.find(_q("office", "body"))
    if body is None:
        raise LoadError(f"corrupt {kind.upper()} (no office:body)")
    out = _Out()
    if body.find(_q("office", "spreadsheet")) is not None:
        _sheets(body, out)
    elif body.find(_q("office", "presentation")) is not None:
        _slides(body, out)
    else:
        _text_body(body, out)
    meta: dict[str, Any] = {"format": kind}
    return Document(source=str(path), text="".join(out.parts), pages=out.pages, sections=out.sections, metadata=meta)
