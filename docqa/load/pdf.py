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
OCR (docqa/load/ocr.py, the `ocr` setting): under "auto" a page whose text layer is empty or garbage and that
holds an image is rendered and recognised instead; metadata["ocr_pages"] lists those pages. With OCR off (or the
pypdf fallback) a scanned PDF gives LoadError "no text".
Limits: no layout analysis (columns come
out in pdfium's reading order); line-end hyphenation is only undone where pdfium marks it (U+0002/U+FFFE).
pdfium is not thread-safe: calls are serialised with a module lock (the sandbox also runs one file at a time).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from docqa.documents import Document, Page, Section
from docqa.errors import LoadError
from docqa.load.text import join_wraps

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


# a line that is only a page number: 12, - 12 -, Page 3 of 9, 3 / 9, vii (a roman numeral up to 399, not "civil"),
# 第 3 页 (digits are masked as #)
_PAGE_NUMBER = re.compile(
    r"(?:page )?#(?: ?(?:/|of) ?#)?|[-\u2013\u2014] ?# ?[-\u2013\u2014]|(?=[ivxlc])c{0,3}(?:xc|xl|l?x{0,3})(?:ix|iv|v?i{0,3})"
    r"|第 ?# ?页(?: ?共 ?# ?页)?"
)
_RUNNING_WINDOW = 3  # pages either side in which a running header or footer repeats
_RUNNING_MIN = 12  # a shorter line ("Chapter 3", "Index") is never taken for a running header: too common a text
_RUNNING_PREFIX = 20  # a start this long shared by two lines makes them one running line with a varying tail


def _line_key(line: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\d+", "#", line.strip().lower()))


def _alike(a: str, b: str) -> bool:
    """One running line on two pages: the same once digits are masked, or sharing a long start (a header that
    names the current section: "CHAPTER 6. THE DEBIAN ARCHIVES 6.5. WHAT DOES ..." / "... 6.7. WHAT ARE ...")."""
    if a == b:
        return True
    n = len(os.path.commonprefix([a, b]))
    return n >= _RUNNING_PREFIX or (n >= _RUNNING_MIN and n >= 0.6 * min(len(a), len(b)))


def _edge(lines: list[str], top: bool) -> int | None:
    """Index of the first (top) or last non-blank line, None for a blank page."""
    order = range(len(lines)) if top else range(len(lines) - 1, -1, -1)
    return next((i for i in order if lines[i].strip()), None)


def strip_running_lines(pages: list[str]) -> tuple[list[str], int]:
    """Remove running headers and footers: the first or last line of a page (twice, for two-line ones) of at
    least 12 characters that repeats on a page at most 3 away (the same once digits are masked, or sharing its
    first 20 characters: the header names the current section), and bare page numbers where at least half the
    pages end (or begin) with one. The first page keeps its top lines (a title page has no running header), and
    no page loses its last line. Returns (pages, lines removed). They are noise to both searches,
    and the header a page break puts inside a paragraph split its sentences.

        >>> body = ["Install it with apt.", "Then edit the file", "and restart."]
        >>> pages = ["SETUP GUIDE\\n1"] + [f"CHAPTER 2. SETUP 2.{i}. STEP {i}\\n{t}\\n{i + 2}" for i, t in enumerate(body)]
        >>> strip_running_lines(pages)
        (['SETUP GUIDE', 'Install it with apt.', 'Then edit the file', 'and restart.'], 7)

    Limits: only whole lines at a page's edges; a header that varies within its first 20 characters stays, as
    does one under 12 characters; documents under 3 pages are left alone; a table whose header row begins each
    page loses that row there.
    """
    if len(pages) < 3:
        return pages, 0
    lines = [p.split("\n") for p in pages]
    removed = 0
    for top in (True, False):
        for _ in range(2):
            at = [_edge(ls, top) for ls in lines]
            keys = [None if i is None else _line_key(ls[i]) for ls, i in zip(lines, at)]
            numbers = {p for p, k in enumerate(keys) if k is not None and _PAGE_NUMBER.fullmatch(k)}
            drop = numbers if 2 * len(numbers) >= len(pages) else set()
            for p, k in enumerate(keys):
                if k is None or p in drop or len(k) < _RUNNING_MIN or (top and p == 0):
                    continue
                near = range(max(0, p - _RUNNING_WINDOW), min(len(keys), p + _RUNNING_WINDOW + 1))
                if any(q != p and keys[q] is not None and _alike(k, keys[q]) for q in near):
                    drop.add(p)
            drop = {p for p in drop if sum(1 for ln in lines[p] if ln.strip()) > 1}  # never empty a page
            if not drop:
                break
            for p in drop:
                i = at[p]
                lines[p] = lines[p][i + 1 :] if top else lines[p][:i]
            removed += len(drop)
    return ["\n".join(ls).strip("\n") for ls in lines], removed


def _assemble(source: str, page_texts: list[str], toc: list[tuple[int, int, str]], meta: dict[str, Any]) -> Document:
    """Join pages (running headers and footers removed, lines wrapped mid-word joined); turn (level, page_index, title) bookmarks into sections."""
    page_texts, running = strip_running_lines(page_texts)
    if running:
        meta["running_lines_removed"] = running
    unwrapped = [join_wraps(t) for t in page_texts]
    page_texts = [t for t, _ in unwrapped]
    if wraps := sum(n for _, n in unwrapped):
        meta["wrapped_lines_joined"] = wraps
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
            ocr_pages: list[int] = []
            for i in range(len(pdf)):
                page = pdf[i]
                try:
                    tp = page.get_textpage()
                    try:
                        text = clean_page_text(tp.get_text_bounded())
                    finally:
                        tp.close()
                    if _wants_ocr(page, text):
                        ocr_text = _ocr_page(page, i + 1)
                        if ocr_text.strip():
                            text = ocr_text
                            ocr_pages.append(i + 1)
                    texts.append(text)
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
            if ocr_pages:
                meta["ocr_pages"] = ocr_pages
            try:
                info = pdf.get_metadata_dict(skip_empty=True)
                if info.get("Title"):
                    meta["title"] = info["Title"].strip()
            except Exception:
                pass
        finally:
            pdf.close()
    return _assemble(str(path), texts, toc, meta)


def _wants_ocr(page: Any, text: str) -> bool:
    from docqa.load import ocr

    mode = ocr.current_mode()
    if mode == "never":
        return False
    if mode == "always":
        return True
    if len("".join(text.split())) >= ocr.MIN_TEXT_CHARS and not ocr.needs_ocr(text, True):
        return False  # the common case: a real text layer; skip the image walk
    try:
        import pypdfium2.raw as pdfium_c

        has_images = next(iter(page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=3)), None) is not None
    except Exception:
        has_images = True
    return ocr.needs_ocr(text, has_images)


def _ocr_page(page: Any, number: int) -> str:
    """Render one page at RENDER_DPI (less when that would pass MAX_SIDE) and recognise it."""
    from docqa.load import ocr

    if not ocr.available():
        return ""  # auto/always without the package: keep the text layer (an empty page says "no text")
    ocr.beat(f"page {number}")
    w, h = page.get_size()
    scale = min(ocr.RENDER_DPI / 72, ocr.MAX_SIDE / max(w, h, 1.0))
    ocr.check_pixels(int(w * scale), int(h * scale), f"page {number}")
    bitmap = page.render(scale=scale)
    try:
        import numpy as np

        image = np.asarray(bitmap.to_pil().convert("RGB"))  # pdfium renders BGR; PIL sorts the channels out
    finally:
        bitmap.close()
    return ocr.recognise(image)


def _load_pypdf(path: Path) -> Document:
    import pypdf
    from pypdf.errors import FileNotDecryptedError

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
