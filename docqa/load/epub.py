"""EPUB loader (zipfile + lxml + the HTML loader): the spine's chapters in reading order, each one a section.

    >>> doc = load_epub(Path("book.epub"))             # doctest: +SKIP
    >>> doc.sections[0].path, doc.metadata["title"]    # doctest: +SKIP
    (('Chapter 1. Loomings',), 'Moby-Dick')

META-INF/container.xml names the package document (OPF); its spine lists the XHTML chapters in order, each read by
docqa/load/html.py (so the same tags are dropped and the same whitespace rules apply). A chapter's headings become
its sections; text before its first heading belongs to the chapter's title (its first heading, else its <title>,
else "Chapter N"). EPUB 2 and 3 both work; the NCX/nav table of contents is not needed and not read as content.
Safety: `check_zip` as for DOCX (bombs; entity declarations refused, a plain DOCTYPE allowed as XHTML has one);
XML is parsed with lxml with entities, DTDs and network access off.
Limits: DRM-encrypted books (META-INF/encryption.xml over the chapters) give garbage or "no text"; fixed-layout
books whose text is in images need OCR, which is not applied here; footnotes stay where the markup puts them.
"""

from __future__ import annotations

import posixpath
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from docqa.documents import Document, Section
from docqa.errors import LoadError

MAX_CHAPTERS = 5000
_XHTML = ("application/xhtml+xml", "text/html", "application/xml")


def _xml(data: bytes) -> Any:
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, recover=True)
    root = etree.fromstring(data, parser)
    if root is None:
        raise LoadError("corrupt EPUB (unparsable XML)")
    return root


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _spine(zf: zipfile.ZipFile) -> tuple[list[str], dict[str, str]]:
    """Zip names of the spine's documents in order, and the book's metadata."""
    try:
        container = _xml(zf.read("META-INF/container.xml"))
    except KeyError:
        raise LoadError("corrupt EPUB (no META-INF/container.xml)") from None
    opf_path = next((el.get("full-path") for el in container.iter() if _local(el.tag) == "rootfile"), None)
    if not opf_path:
        raise LoadError("corrupt EPUB (container.xml names no package document)")
    try:
        opf = _xml(zf.read(opf_path))
    except KeyError:
        raise LoadError(f"corrupt EPUB (package document {opf_path} missing)") from None
    base = posixpath.dirname(opf_path)
    manifest: dict[str, tuple[str, str]] = {}
    meta: dict[str, str] = {}
    order: list[str] = []
    for el in opf.iter():
        name = _local(el.tag)
        if name == "item" and el.get("id") and el.get("href"):
            href = posixpath.normpath(posixpath.join(base, unquote(el.get("href").split("#")[0])))
            manifest[el.get("id")] = (href, el.get("media-type", ""))
        elif name == "itemref" and el.get("idref"):
            order.append(el.get("idref"))
        elif name in ("title", "creator", "language") and el.text and name not in meta:
            meta[name] = " ".join(el.text.split())
    names = []
    for idref in order[:MAX_CHAPTERS]:
        href, media = manifest.get(idref, ("", ""))
        if href and (media in _XHTML or href.lower().endswith((".xhtml", ".html", ".htm"))):
            names.append(href)
    if not names:  # no usable spine: fall back to the XHTML files in name order
        names = sorted(n for n in zf.namelist() if n.lower().endswith((".xhtml", ".html", ".htm")))[:MAX_CHAPTERS]
    return names, meta


def load_epub(path: Path) -> Document:
    """An .epub book: chapters in spine order, headings as sections."""
    from docqa.load.docx import check_zip
    from docqa.load.html import load_html_bytes

    check_zip(path, "EPUB", (".xml", ".opf", ".ncx", ".xhtml", ".html", ".htm"), allow_doctype=True)
    parts: list[str] = []
    sections: list[Section] = []
    pos = 0
    try:
        with zipfile.ZipFile(path) as zf:
            names, book = _spine(zf)
            for n, name in enumerate(names, 1):
                try:
                    data = zf.read(name)
                except KeyError:
                    continue  # a spine entry whose file is missing: skip it, keep the book
                chapter = load_html_bytes(name, data)
                text = chapter.text.strip()
                if not text:
                    continue
                offset = len(chapter.text) - len(chapter.text.lstrip())
                title = (
                    (chapter.sections[0].path[0] if chapter.sections else "")
                    or chapter.metadata.get("title", "")
                    or f"Chapter {n}"
                )
                if parts:
                    parts.append("\n\n")
                    pos += 2
                if not chapter.sections or chapter.sections[0].start - offset > 0:
                    sections.append(Section(pos, (title,)))
                for s in chapter.sections:
                    sections.append(Section(pos + max(0, s.start - offset), s.path))
                parts.append(text)
                pos += len(text)
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as e:
        raise LoadError(f"corrupt EPUB ({type(e).__name__}: {e})"[:300]) from None
    meta: dict[str, Any] = {"format": "epub", "chapters": len(names)}
    if book.get("title"):
        meta["title"] = book["title"]
    if book.get("creator"):
        meta["author"] = book["creator"]
    text = "".join(parts)
    sections = [s for s in sections if s.start <= len(text)]
    return Document(source=str(path), text=text, sections=sections, metadata=meta)
