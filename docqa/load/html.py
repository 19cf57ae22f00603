"""HTML loader: visible text with block structure kept as line breaks, sections from h1-h6.

    >>> doc = load_html_bytes("p.html", b"<title>T</title><nav>menu</nav><h1>A</h1><p>x<b>y</b></p><p>z</p>")
    >>> doc.text, doc.sections[0].path, doc.metadata["title"]
    ('A\\n\\nxy\\n\\nz', ('A',), 'T')

Encoding: BOM, then the declared charset (`<meta charset>`, `http-equiv`, XML declaration; GB2312/GBK are read as
their superset GB18030, latin-1/ascii as cp1252 as browsers do), then the shared text detector.
Dropped: script, style, noscript, template, nav, aside, svg, canvas, iframe, object, embed, elements marked
`hidden`/`aria-hidden="true"`/`display:none`, DocBook navheader/navfooter bars (Publican's docnav and banner), and header/footer that are page chrome (outside article/main —
an article's own <header> often holds its h1). Whitespace inside inline content collapses to one space; <pre>
keeps it; table cells are joined with " | ", one row per line, and each outermost table's span and header row go
into metadata["tables"] (docqa/chunk.py keeps rows whole and repeats the header in each chunk of the table).
Limits: no CSS rendering (text hidden by stylesheets stays), no JavaScript (client-rendered pages come out empty).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from docqa.documents import Document, Section
from docqa.errors import LoadError
from docqa.load.text import decode_bytes

DROP_TAGS = [
    "script",
    "style",
    "noscript",
    "template",
    "nav",
    "aside",
    "svg",
    "canvas",
    "iframe",
    "object",
    "embed",
    "head",
]
CHROME_TAGS = ("header", "footer")
BLOCK_TAGS = {
    "address",
    "article",
    "blockquote",
    "body",
    "center",
    "dd",
    "details",
    "dialog",
    "dir",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "form",
    "hr",
    "html",
    "li",
    "main",
    "menu",
    "ol",
    "p",
    "section",
    "summary",
    "table",
    "tbody",
    "thead",
    "tfoot",
    "tr",
    "ul",
    "caption",
    "legend",
    "option",
    "header",
    "footer",
}
PARAGRAPH_TAGS = {"p", "blockquote", "table", "ul", "ol", "dl", "pre", "figure", "section", "article", "hr"}
HEADINGS = {f"h{i}": i for i in range(1, 7)}

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)
_XML_DECL = re.compile(rb"""^\s*<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9._:-]+)""", re.I)
_ALIASES = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "big5": "cp950",
    "x-sjis": "shift_jis",
    "unicode": "utf-16",
}
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)


def declared_charset(data: bytes) -> str | None:
    head = data[:4096]
    m = _XML_DECL.match(head) or _META_CHARSET.search(head)
    if not m:
        return None
    name = m.group(1).decode("ascii", "ignore").lower()
    return _ALIASES.get(name, name)


def decode_html(data: bytes) -> tuple[str, str]:
    """(text, encoding): BOM first, then the declared charset if it decodes strictly, then detection."""
    if data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return decode_bytes(data)
    enc = declared_charset(data)
    if enc and not enc.startswith("utf-16"):  # a UTF-16 declaration in ASCII bytes is a lie
        try:
            return data.decode(enc).replace("\r\n", "\n").replace("\r", "\n"), enc
        except (UnicodeDecodeError, LookupError):
            pass
    return decode_bytes(data)


class _Builder:
    """Appends text while collapsing whitespace and block breaks, so offsets stay exact as we go."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.tail = ""  # last few chars written, to decide on spaces and breaks
        self._pending_space = False  # whitespace seen at a text node's end, owed before the next word

    def _write(self, s: str) -> None:
        self.parts.append(s)
        self.length += len(s)
        self.tail = (self.tail + s)[-2:]

    def text(self, s: str, pre: bool = False) -> None:
        if pre:
            if s:
                self._write(s)
            return
        words = s.split()
        if not words:
            if s:
                self._pending_space = True
            return
        lead = s[:1].isspace() or self._pending_space
        self._pending_space = s[-1:].isspace()
        if lead and self.tail and not self.tail[-1].isspace():
            self._write(" ")
        self._write(" ".join(words))

    def sep(self, s: str) -> None:
        self._pending_space = False
        if self.tail.endswith(" "):
            self._trim_space()
        self._write(s)

    def _trim_space(self) -> None:
        old = self.parts[-1]
        self.parts[-1] = old.rstrip(" ")
        self.length -= len(old) - len(self.parts[-1])
        self.tail = "".join(self.parts[-2:])[-2:]

    def brk(self, n: int = 1) -> None:
        """Ensure the text ends with `n` newlines (1 = new line, 2 = blank line); nothing at the very start."""
        self._pending_space = False
        if not self.length:
            return
        if self.tail.endswith(" "):  # a trailing space before a break is noise
            self._trim_space()
        have = len(self.tail) - len(self.tail.rstrip("\n"))
        if have < n:
            self._write("\n" * (n - have))

    def result(self) -> str:
        return "".join(self.parts).rstrip()


_CHROME_ROLES = frozenset({"navigation", "banner", "contentinfo", "search", "complementary"})
# DocBook's (Debian's manuals, many GNU ones) previous/next bars are plain divs with these classes; Publican's
# (The Debian Administrator's Handbook, Fedora's guides) a list of class "docnav"
_CHROME_CLASSES = frozenset({"navheader", "navfooter", "docnav"})
# ... and Publican's download banner a div of this id
_CHROME_IDS = frozenset({"banner"})


def _is_hidden(tag: Any) -> bool:
    """Invisible elements, and page chrome marked by ARIA role (Sphinx's navigation bars are plain divs), by
    DocBook's navheader/navfooter class or Publican's docnav class and banner id."""
    attrs = tag.attrs or {}
    return (
        str(attrs.get("role", "")).lower() in _CHROME_ROLES
        or not _CHROME_CLASSES.isdisjoint(attrs.get("class") or ())
        or str(attrs.get("id", "")).lower() in _CHROME_IDS
        or "hidden" in attrs
        or str(attrs.get("aria-hidden", "")).lower() == "true"
        or bool(_HIDDEN_STYLE.search(str(attrs.get("style", ""))))
    )


class _Walker:
    """One walk over a parsed page: the visible text into `out`, the sections (h1-h6) and the spans of the outermost
    tables found on the way."""

    def __init__(self) -> None:
        from bs4 import NavigableString, Tag
        from bs4.element import CData

        self._string, self._tag, self._text_types = NavigableString, Tag, (NavigableString, CData)
        self._drop = frozenset(DROP_TAGS)
        self.out = _Builder()
        self.sections: list[Section] = []
        self.spans: list[tuple[int, int]] = []
        self._stack: list[tuple[int, str]] = []
        self._in_table = False  # only outermost tables are marked; nested ones are rows of their cell

    # Dropping happens during the one walk: separate find_all passes cost more than the walk itself.
    def walk(self, node: Any, pre: bool, in_content: bool = False) -> None:
        out = self.out
        for child in node.children:
            if isinstance(child, self._string):
                if type(child) in self._text_types:
                    out.text(str(child), pre)
                continue
            if not isinstance(child, self._tag):
                continue
            name = child.name
            if name in self._drop or (name in CHROME_TAGS and not in_content) or (child.attrs and _is_hidden(child)):
                continue
            if name == "a" and "headerlink" in (child.get("class") or ()):  # Sphinx's "¶" permalinks
                continue
            if name in ("article", "main"):  # inside these, header/footer belong to the content
                out.brk(2)
                self.walk(child, pre, True)
                out.brk(2)
                continue
            if name in HEADINGS:
                self._heading(child, HEADINGS[name], pre, in_content)
            elif name == "br":
                out.brk(1)
            elif name in ("td", "th"):
                if out.tail and not out.tail.endswith("\n"):
                    out.sep(" | ")
                self.walk(child, pre, in_content)
            elif name == "pre":
                out.brk(2)
                self.walk(child, True, in_content)
                out.brk(2)
            elif name == "img":
                alt = child.get("alt")
                if alt and isinstance(alt, str):
                    out.text(f" {alt} ")
            elif name == "table" and not self._in_table:
                out.brk(2)
                start = out.length
                self._in_table = True
                self.walk(child, pre, in_content)
                self._in_table = False
                self.spans.append((start, out.length))
                out.brk(2)
            elif name in BLOCK_TAGS or name in PARAGRAPH_TAGS:
                n = 2 if name in PARAGRAPH_TAGS else 1
                out.brk(n)
                self.walk(child, pre, in_content)
                out.brk(n)
            else:
                self.walk(child, pre, in_content)

    def _heading(self, child: Any, level: int, pre: bool, in_content: bool) -> None:
        """None; a heading opens a section at its level (closing the deeper ones) and is walked as a block."""
        out = self.out
        title = " ".join(child.get_text(" ").split()).rstrip("¶").strip()
        out.brk(2)
        if title:
            stack = self._stack
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            self.sections.append(Section(out.length, tuple(t for _, t in stack)))
        self.walk(child, pre, in_content)
        out.brk(2)


def _tables(text: str, spans: list[tuple[int, int]]) -> list[list[int]]:
    """[start, end, header end] of each table span with a header row and at least one more, trailing blanks cut."""
    tables = []
    for start, end in spans:
        end = min(end, len(text))
        while end > start and text[end - 1] in "\n ":
            end -= 1
        header_end = text.find("\n", start, end)
        if header_end > start:  # a header row and at least one more: rows kept whole, header repeated (chunk.py)
            tables.append([start, end, header_end])
    return tables


def html_to_document(source: str, html: str, encoding: str) -> Document:
    from bs4 import BeautifulSoup

    with warnings.catch_warnings():  # XHTML pages with an XML declaration parse fine as HTML
        warnings.simplefilter("ignore")
        soup = BeautifulSoup(html, "lxml")
    meta: dict[str, Any] = {"format": "html", "encoding": encoding}
    if soup.title and soup.title.get_text(strip=True):
        meta["title"] = " ".join(soup.title.get_text().split())
    walker = _Walker()
    walker.walk(soup, False)
    text = walker.out.result()
    sections = [s for s in walker.sections if s.start < len(text)]
    tables = _tables(text, walker.spans)
    if tables:
        meta["tables"] = tables
    return Document(source=source, text=text, sections=sections, metadata=meta)


def load_html_bytes(source: str, data: bytes) -> Document:
    text, enc = decode_html(data)
    try:
        return html_to_document(source, text, enc)
    except RecursionError:
        raise LoadError("HTML nested too deeply") from None


def load_html(path: Path, data: bytes | None = None) -> Document:
    """An .html/.htm/.xhtml file."""
    return load_html_bytes(str(path), path.read_bytes() if data is None else data)
