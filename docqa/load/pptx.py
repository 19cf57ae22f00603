"""PPTX loader (python-pptx): one page per slide (its number), the slide title as its section.

    >>> doc = load_pptx(Path("deck.pptx"))                     # doctest: +SKIP
    >>> doc.page_at(doc.pages[1].start), doc.sections[1].path  # doctest: +SKIP
    (2, ('Quarterly results',))

Per slide: the title first, then the other text frames in reading order (shapes sorted top to bottom, shapes
whose tops are within a line of each other left to right; groups are opened), tables as "header: value" rows (as
spreadsheets are, docqa/load/tabular.py), then the speaker notes after "Notes:". A slide without a title is
section "Slide N". A slide with no text at all but pictures has its pictures OCR'd (docqa/load/image.py), so a
deck of scanned pages is still searchable.
Safety: the same zip and DTD checks as DOCX (docqa/load/docx.py `check_zip`) run before python-pptx opens it.
Limits: charts, SmartArt and embedded OLE objects are not read; text in slide masters/layouts is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from docqa.documents import Document, Page, Section
from docqa.errors import LoadError

_ROW_TOLERANCE = 228600  # EMU (0.25 in): shapes whose tops differ by less read as one row


def _shapes(shapes: Any) -> list[Any]:
    """Shapes flattened out of groups, in reading order."""
    out: list[Any] = []
    for sh in shapes:
        if getattr(sh, "shape_type", None) == 6 and hasattr(sh, "shapes"):  # MSO_SHAPE_TYPE.GROUP
            out.extend(_shapes(sh.shapes))
        else:
            out.append(sh)

    def key(sh: Any) -> tuple[int, int]:
        top, left = sh.top if sh.top is not None else 0, sh.left if sh.left is not None else 0
        return (top // _ROW_TOLERANCE, left)

    return sorted(out, key=key)


def _frame_text(frame: Any) -> str:
    lines = []
    for p in frame.paragraphs:
        t = " ".join("".join(r.text for r in p.runs).split()) if p.runs else " ".join(p.text.split())
        if t:
            lines.append(t)
    return "\n".join(lines)


def _table_lines(table: Any) -> list[str]:
    from docqa.load.tabular import rows_to_lines

    rows = [[" ".join(c.text.split()) for c in row.cells] for row in table.rows]
    return rows_to_lines(rows)


def _slide_parts(slide: Any) -> tuple[str, list[str], list[bytes]]:
    title_shape = slide.shapes.title
    title = (
        " ".join(title_shape.text_frame.text.split()) if title_shape is not None and title_shape.has_text_frame else ""
    )
    parts: list[str] = []
    pictures: list[bytes] = []
    for sh in _shapes(slide.shapes):
        if title_shape is not None and sh.shape_id == title_shape.shape_id:
            continue
        if getattr(sh, "has_table", False) and sh.has_table:
            parts.extend(_table_lines(sh.table))
        elif getattr(sh, "has_text_frame", False) and sh.has_text_frame:
            t = _frame_text(sh.text_frame)
            if t:
                parts.append(t)
        elif hasattr(sh, "image"):
            try:
                pictures.append(sh.image.blob)
            except Exception:  # a picture whose part is missing or linked, not embedded
                pass
    if slide.has_notes_slide:
        notes = slide.notes_slide.notes_text_frame
        t = _frame_text(notes) if notes is not None else ""
        if t:
            parts.append("Notes: " + t)
    return title, parts, pictures


def load_pptx(path: Path) -> Document:
    """A .pptx deck: pages = slide numbers, sections = slide titles."""
    from docqa.load.docx import OOXML_OPEN_ERRORS, check_zip

    check_zip(path, "PPTX")
    import pptx
    from pptx.exc import PackageNotFoundError

    try:
        deck = pptx.Presentation(str(path))
    except (PackageNotFoundError, *OOXML_OPEN_ERRORS) as e:
        raise LoadError(f"corrupt PPTX ({type(e).__name__}: {e})"[:300]) from None
    text_parts: list[str] = []
    pages: list[Page] = []
    sections: list[Section] = []
    pos = 0
    ocr_slides: list[int] = []
    for n, slide in enumerate(deck.slides, 1):
        title, parts, pictures = _slide_parts(slide)
        if not title and not parts and pictures:
            from docqa.load.image import images_to_text

            scanned = images_to_text(pictures)
            if scanned.strip():
                parts = [scanned]
                ocr_slides.append(n)
        body = "\n\n".join(([title] if title else []) + parts)
        if not body:
            continue
        if text_parts:
            text_parts.append("\n\n")
            pos += 2
        pages.append(Page(n, pos))
        sections.append(Section(pos, (title or f"Slide {n}",)))
        text_parts.append(body)
        pos += len(body)
    meta: dict[str, Any] = {"format": "pptx", "slides": len(deck.slides)}
    if ocr_slides:
        meta["ocr_pages"] = ocr_slides
    try:
        if deck.core_properties.title:
            meta["title"] = deck.core_properties.title
    except Exception:
        pass
    return Document(source=str(path), text="".join(text_parts), pages=pages, sections=sections, metadata=meta)
