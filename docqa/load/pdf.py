"""PDF loader: text page by page with pypdfium2, sections from the bookmarks (outline).

    >>> doc = load_pdf(Path("manual.pdf"))          # doctest: +SKIP
    >>> doc.page_at(doc.pages[1].start), doc.sections[0].path   # doctest: +SKIP
    (2, ('Chapter 1',))

Pages are joined with a blank line; `Page(number, start)` is 1-based. Each bookmark becomes a Section that
starts where its title first appears on its target page (after the previous bookmark on that page), else at the
page start; nested bookmarks give the heading path. The outline is read with pdfium too (`get_toc`): the file is
already open there, and pdfium decrypts AES PDFs that pypdf cannot without the `cryptography` package. pypdf is
the fallback (text + outline) when pdfium cannot open a file.

Encrypted PDFs open when the user password is empty; otherwise LoadError("encrypted PDF (password required)").
Limits: no OCR (a scanned PDF without a text layer gives LoadError "no text"); no layout analysis (columns come
out in pdfium's reading order); line-end hyphenation is only undone where pdfium marks it (U+0002/U+FFFE).
pdfium is not thread-safe: calls are serialised with a module lock (the sandbox also runs one file at a time).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from docqa.documents import Document, Page, Section
from docqa.errors import LoadError

PAGE_SEP = "\n\n"
_PDFIUM_LOCK = threading.Lock()
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_page_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # pdfium marks a hyphen it judged to be line-end hyphenation with U+0002 (or U+FFFE), sometimes with the
    # line break already removed ("se\x02lect"): either way the word is rejoined. Real hyphens are plain "-".
    text = re.sub(r"[\x02\ufffe]\n?", "", text)
    text = _CTRL.sub("", text)
    return text.strip("\n")


def _assemble(source: str, page_texts: list[str], toc: list[tuple[int, int, str]], meta: dict[str, Any]) -> Document:
    """Join pages; turn (level, page_index, title) bookmarks into sections."""
    parts: list[str] = []
    pages: list[Page] = []
    pos = 0
    for i, t in enumerate(page_texts):
        if i:
            parts.append(PAGE_SEP)
            pos += len(PAGE_SEP)
        pages.append(Page(i + 1, pos))
        parts.append(t)
        pos += len(t)
    text = "".join(parts)
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    last_on_page: dict[int, int] = {}
    for level, index, title in toc:
        title = " ".join(title.split())
        if not title:
            continue
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        if not 0 <= index < len(pages):
            continue  # bookmark to nowhere: it still shapes the path of its children
        page_start = pages[index].start
        page_end = pages[index + 1].start if index + 1 < len(pages) else len(text)
        lo = last_on_page.get(index, page_start)
        found = text.find(title, lo, page_end)
        start = found if found >= 0 else lo
        last_on_page[index] = start
        sections.append(Section(start, tuple(t for _, t in stack)))
    sections.sort(key=lambda s: s.start)  # stable: same-offset bookmarks keep outline order
    meta = {"format": "pdf", "pages": len(pages), **meta}
    return Document(source=source, text=text, pages=pages, sections=sections, metadata=meta)


def _load_pdfium(path: Path) -> Document:
    import pypdfium2 as pdfium

    with _PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(str(path))
        except pdfium.PdfiumError as e:
            if "password" in str(e).lower():
                raise LoadError("encrypted PDF (password required)") from None
            raise
        try:
            texts: list[str] = []
            for i in range(len(pdf)):
                page = pdf[i]
                try:
                    tp = page.get_textpage()
                    try:
                        texts.append(clean_page_text(tp.get_text_bounded()))
                    finally:
                        tp.close()
                finally:
                    page.close()
            toc: list[tuple[int, int, str]] = []
            try:
                for bm in pdf.get_toc():
                    dest = bm.get_dest()
                    idx = dest.get_index() if dest is not None else None
                    toc.append((bm.level, -1 if idx is None else idx, bm.get_title() or ""))
            except Exception:  # a broken outline must not cost us the text
                toc = []
            meta: dict[str, Any] = {"pdf_backend": "pdfium"}
            try:
                info = pdf.get_metadata_dict(skip_empty=True)
                if info.get("Title"):
                    meta["title"] = info["Title"].strip()
            except Exception:
                pass
        finally:
            pdf.close()
    return _assemble(str(path), texts, toc, meta)


def _load_pypdf(path: Path) -> Document:
    import pypdf
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    try:
        reader = pypdf.PdfReader(str(path), strict=False)
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):
                    raise LoadError("encrypted PDF (password required)")
            except (FileNotDecryptedError, NotImplementedError, DependencyErrorType) as e:
                raise LoadError(f"encrypted PDF ({e})") from None
        texts = [clean_page_text(p.extract_text() or "") for p in reader.pages]
    except LoadError:
        raise
    except RecursionError:
        raise LoadError("corrupt PDF (objects nested too deeply or in a loop)") from None
    except Exception as e:  # pypdf meets hostile structure with whatever exception it hits (AttributeError...)
        raise LoadError(f"corrupt PDF ({type(e).__name__}: {e})"[:300]) from None
    toc: list[tuple[int, int, str]] = []

    def walk(items: list[Any], level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            try:
                idx = reader.get_destination_page_number(item)
            except Exception:
                idx = -1
            toc.append((level, -1 if idx is None else idx, str(getattr(item, "title", "") or "")))

    try:
        walk(reader.outline, 0)
    except Exception:
        toc = []
    meta: dict[str, Any] = {"pdf_backend": "pypdf"}
    try:
        title = reader.metadata.title if reader.metadata else None
        if title:
            meta["title"] = str(title).strip()
    except Exception:
        pass
    return _assemble(str(path), texts, toc, meta)


try:  # pypdf raises DependencyError for AES without `cryptography`; keep the name importable either way
    from pypdf.errors import DependencyError as DependencyErrorType
except Exception:  # pragma: no cover
    DependencyErrorType = RuntimeError  # type: ignore[misc,assignment]


def load_pdf(path: Path) -> Document:
    """Load a PDF; pdfium first, pypdf when pdfium cannot open the file (both read the file themselves)."""
    import pypdfium2 as pdfium

    try:
        return _load_pdfium(path)
    except LoadError:
        raise
    except pdfium.PdfiumError as e:
        pdfium_error = str(e)
    try:
        doc = _load_pypdf(path)
    except LoadError as e:
        if "encrypted" in str(e):
            raise
        raise LoadError(f"corrupt PDF ({pdfium_error})") from None
    doc.metadata["pdfium_error"] = pdfium_error
    return doc
