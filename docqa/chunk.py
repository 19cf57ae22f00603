"""Document -> [Chunk]: pieces small enough for the embedding model to read whole.

Sizes are counted in the embedding model's own tokens (`count_tokens`), and no chunk ever exceeds
`max_tokens` (all-MiniLM-L6-v2 silently truncates past 256 word pieces, so a longer chunk would be embedded
without its tail). The text is first cut at page and section boundaries, so every chunk has exactly one page
and one section; each piece is then split recursively with langchain-text-splitters at paragraph, line,
sentence (English and Chinese: 。！？；), clause (：，) and word boundaries, in that order of preference.

    >>> from docqa.documents import Document
    >>> doc = Document("a.txt", "第一句。第二句。" * 50)
    >>> chunks = chunk_document(doc, count_tokens=len, chunk_tokens=40, overlap=8)
    >>> all(c.text.endswith("。") for c in chunks[:-1]) and max(c.n_tokens for c in chunks) <= 40
    True

Table-of-contents pages of PDFs are left out (see `is_table_of_contents`).

Tables a loader marks (metadata["tables"] = [[start, end, header_end], ...], offsets into the text; DOCX and HTML
do) are cut between rows only, never inside one, and every chunk of a table after the first starts with the
table's header row (its text is then header + rows; `start`/`end` cover the rows). Spreadsheets, CSV and slide
tables need none of this: each of their rows is one "header: value" line already.

Limits: code blocks are split like prose; a single table row longer than the limit is split like prose (header
first); overlap is approximate (whole sentences, at most `overlap` tokens) and not applied between table chunks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from .documents import SECTION_SEP, Chunk, Document

SEPARATORS = [
    "\n\n",
    "\n",
    "。",
    "！",
    "？",
    "；",
    ". ",
    "! ",
    "? ",
    "; ",
    "：",
    "，",
    "、",
    ": ",
    ", ",
    " ",
    "",
]
# A segment this short (a lone heading, a page number) is joined to the next one on the same page.
_MIN_SEGMENT_CHARS = 40


_LEADER = re.compile(r"(\.\s?){4,}\s*[\divxlc]+\s*$", re.I)  # "1.2 What is Debian? . . . . . 1"
_ENDS_IN_PAGE = re.compile(r"\s[\divxlc]{1,4}\s*$", re.I)
_TOC_TITLE = re.compile(r"^\s*(table of contents|contents|目\s*录|目\s*次)\s*$", re.I | re.M)


def is_table_of_contents(text: str) -> bool:
    """A table-of-contents page: most lines end in a page number, with dot leaders or under a "Contents" title.
    Such pages repeat every heading, so a search for a heading would land on them instead of on the text."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 5:
        return False
    leaders = sum(bool(_LEADER.search(ln)) for ln in lines)
    numbered = sum(bool(_ENDS_IN_PAGE.search(ln)) for ln in lines)
    return leaders >= 0.4 * len(lines) or (bool(_TOC_TITLE.search(text[:200])) and numbered >= 0.6 * len(lines))


def _segments(doc: Document) -> list[tuple[int, int]]:
    """Character ranges of `doc.text` that do not cross a page or section start."""
    cuts = {0, len(doc.text)} | {p.start for p in doc.pages} | {s.start for s in doc.sections}
    bounds = sorted(c for c in cuts if 0 <= c <= len(doc.text))
    out: list[tuple[int, int]] = []
    pending = None
    for a, b in zip(bounds, bounds[1:]):
        if pending is not None:
            if doc.page_at(pending) == doc.page_at(a):
                a = pending
            else:
                out.append((pending, a))
            pending = None
        if len(doc.text[a:b].strip()) < _MIN_SEGMENT_CHARS:
            pending = a
            continue
        out.append((a, b))
    if pending is not None:
        if out and doc.page_at(out[-1][0]) == doc.page_at(pending):
            out[-1] = (out[-1][0], len(doc.text))
        else:
            out.append((pending, len(doc.text)))
    return out


def _locate(segment: str, piece: str, prev_start: int, prev_end: int, overlapping: bool) -> int:
    """Where `piece` starts in `segment`, given the previous chunk's span. The splitter's own start index is
    unreliable on repetitive text, so: with overlap, the latest match that begins inside the previous chunk;
    otherwise (or if there is none) the first match after it."""
    if overlapping and prev_end > 0:
        pos, best = prev_start, -1
        while (pos := segment.find(piece, pos + 1, prev_end + len(piece))) != -1 and pos <= prev_end:
            best = pos
        if best != -1:
            return best
    pos = segment.find(piece, prev_end)
    return pos if pos != -1 else max(0, segment.find(piece))


def _hard_split(text: str, count_tokens: Callable[[str], int], limit: int) -> list[tuple[int, str]]:
    """Last resort for a piece still over `limit`: binary-search the longest prefix that fits."""
    out, start = [], 0
    while start < len(text):
        lo, hi = 1, len(text) - start
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count_tokens(text[start : start + mid]) <= limit:
                lo = mid
            else:
                hi = mid - 1
        out.append((start, text[start : start + lo]))
        start += lo
    return out


def _prose_chunks(
    segment: str, a: int, splitter: Any, count_tokens: Callable[[str], int], limit: int, overlapping: bool
) -> Iterator[tuple[int, str, int]]:
    """(start in the document, text, tokens) of each chunk of `segment` (which starts at `a`), in order."""
    if not segment.strip():
        return
    prev_start, prev_end = -1, 0
    for text in splitter.split_text(segment):
        rel = _locate(segment, text, prev_start, prev_end, overlapping)
        prev_start, prev_end = rel, rel + len(text)
        parts = [(0, text)]
        n = count_tokens(text)
        if n > limit:
            parts = _hard_split(text, count_tokens, limit)
        for off, part in parts:
            if not part.strip():
                continue
            yield a + rel + off, part, n if len(parts) == 1 else count_tokens(part)


def chunk_document(
    doc: Document,
    count_tokens: Callable[[str], int],
    chunk_tokens: int = 200,
    overlap: int = 40,
    max_tokens: int | None = None,
) -> list[Chunk]:
    """Split `doc` into chunks of at most `chunk_tokens` tokens (and never above `max_tokens`)."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    limit = min(chunk_tokens, max_tokens) if max_tokens else chunk_tokens
    splitter = RecursiveCharacterTextSplitter(
        separators=SEPARATORS,
        keep_separator="end",
        chunk_size=limit,
        chunk_overlap=min(overlap, limit // 2),
        length_function=count_tokens,
        strip_whitespace=True,
    )
    chunks: list[Chunk] = []
    tables = _tables(doc)
    for a0, b0 in _segments(doc):
        whole = doc.text[a0:b0]
        if not whole.strip() or (doc.pages and is_table_of_contents(whole)):
            continue
        section = SECTION_SEP.join(doc.section_at(a0))
        page = doc.page_at(a0)
        for a, b, table in _pieces(a0, b0, tables):
            if table is not None:
                for start, end, text in _table_chunks(doc.text, a, b, table, count_tokens, limit):
                    chunks.append(
                        Chunk(
                            text=text,
                            start=start,
                            end=end,
                            ordinal=len(chunks),
                            page=page,
                            section=section,
                            n_tokens=count_tokens(text),
                        )
                    )
                continue
            for start, part, n_tokens in _prose_chunks(doc.text[a:b], a, splitter, count_tokens, limit, overlap > 0):
                chunks.append(
                    Chunk(
                        text=part,
                        start=start,
                        end=start + len(part),
                        ordinal=len(chunks),
                        page=page,
                        section=section,
                        n_tokens=n_tokens,
                    )
                )
    return chunks


# ---------------------------------------------------------------------------------------------- tables


def _tables(doc: Document) -> list[tuple[int, int, int]]:
    """(start, end, header_end) of each table the loader marked in metadata["tables"], sorted, non-overlapping."""
    out: list[tuple[int, int, int]] = []
    for t in doc.metadata.get("tables") or ():
        try:
            start, end, header_end = (int(x) for x in t)
        except (TypeError, ValueError):
            continue
        if 0 <= start < header_end <= end <= len(doc.text) and (not out or start >= out[-1][1]):
            out.append((start, end, header_end))
    return out


def _pieces(a: int, b: int, tables: list[tuple[int, int, int]]) -> list[tuple[int, int, tuple[int, int, int] | None]]:
    """[a, b) cut into prose pieces (None) and table pieces (the table they belong to)."""
    out: list[tuple[int, int, tuple[int, int, int] | None]] = []
    pos = a
    for t in tables:
        lo, hi = max(t[0], a), min(t[1], b)
        if lo >= hi:
            continue
        if lo > pos:
            out.append((pos, lo, None))
        out.append((lo, hi, t))
        pos = hi
    if pos < b:
        out.append((pos, b, None))
    return out


def _table_chunks(
    text: str, a: int, b: int, table: tuple[int, int, int], count_tokens: Callable[[str], int], limit: int
) -> list[tuple[int, int, str]]:
    """Whole rows (lines) of a table, packed into chunks; every chunk that does not start with the header gets it
    prepended (so its text is header + "\n" + its rows, while start/end span the rows only)."""
    header = text[table[0] : table[2]].strip("\n")
    rows: list[tuple[int, int]] = []
    pos = a
    for line in text[a:b].split("\n"):
        if line.strip():
            rows.append((pos, pos + len(line)))
        pos += len(line) + 1
    out: list[tuple[int, int, str]] = []
    i = 0
    while i < len(rows):
        start = rows[i][0]
        prefix = "" if start <= table[0] else header + "\n"
        j = i + 1
        while j < len(rows) and count_tokens(prefix + text[start : rows[j][1]]) <= limit:
            j += 1
        body = text[start : rows[j - 1][1]]
        if count_tokens(prefix + body) > limit:  # one row alone is too long: split it, header first
            for off, part in _hard_split(prefix + body, count_tokens, limit):
                out.append(
                    (start + max(0, off - len(prefix)), start + min(len(body), off - len(prefix) + len(part)), part)
                )
        else:
            out.append((start, rows[j - 1][1], prefix + body))
        i = j
    return out
