"""Plain text and Markdown loaders, and the byte -> str decoding every text-ish format shares.

    >>> text, enc = decode_bytes("第一章 简介".encode("gb18030"))
    >>> (text, enc)
    ('第一章 简介', 'gb18030')
    >>> doc = load_markdown_text("a.md", "# Intro\\nhello\\n## Setup\\nrun it\\n")
    >>> [(s.start, s.path) for s in doc.sections]
    [(0, ('Intro',)), (14, ('Intro', 'Setup'))]

Decoding order (detect, never guess silently): BOM (UTF-8/16/32) -> NUL bytes mean "binary file" (unless the
bytes are clearly BOM-less UTF-16) -> strict UTF-8 -> GB18030 when it decodes strictly *and* nearly all the
CJK characters it yields are common GB2312 ones (charset-normalizer often calls short GB text big5 or cp1252) ->
charset-normalizer's best guess -> reject if the result is mostly control/unassigned characters.

Limits: line endings are normalised to "\\n" (offsets refer to the normalised text); Markdown sections come
from ATX (`#`) and setext (`===`/`---`) headings outside fenced code blocks and YAML front matter; inline markup
in heading titles is simplified (emphasis/code marks removed, links reduced to their text); HTML blocks inside
Markdown are kept verbatim. Plain text (.txt/.log) has no sections; .rst gets sections from underlined titles.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from pathlib import Path

from docqa.documents import Document, Section
from docqa.errors import LoadError
from docqa.text import CJK, CJK_PUNCT, FULLWIDTH, HAN

_BOMS: list[tuple[bytes, str]] = [
    # UTF-32 first: its LE BOM starts with the UTF-16 LE BOM.
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
]

# Magic numbers of common binary formats, so a renamed archive/image is rejected before any decoding attempt.
_BINARY_MAGIC = (
    b"PK\x03\x04",
    b"\x7fELF",
    b"\x89PNG",
    b"\xff\xd8\xff",
    b"GIF8",
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ",
    b"7z\xbc\xaf",
    b"Rar!",
    b"\xd0\xcf\x11\xe0",
    b"MZ",
    b"SQLite format 3",
)

_CJK_FAMILY = {
    "big5",
    "big5hkscs",
    "cp950",
    "gb2312",
    "gbk",
    "gb18030",
    "hz",
    "cp936",
    "euc_jp",
    "shift_jis",
    "cp932",
    "euc_kr",
    "cp949",
    "johab",
    "iso2022_jp",
    "iso2022_kr",
}

_LATIN_SINGLE_BYTE = {
    "cp1250",
    "cp1257",
    "iso8859_2",
    "iso8859_4",
    "iso8859_10",
    "iso8859_13",
    "iso8859_15",
    "iso8859_16",
    "latin_1",
    "mac_latin2",
    "mac_roman",
    "cp850",
    "cp437",
}

MAX_BAD_RATIO = 0.02  # share of control/unassigned/private-use characters above which text counts as garbage


_CJK_CHAR = re.compile(f"[{HAN}{CJK_PUNCT}{FULLWIDTH}]")


def is_cjk(ch: str) -> bool:
    """A Han character, CJK punctuation or a full-width form: what GB-family text decodes to (kana excluded)."""
    return _CJK_CHAR.match(ch) is not None


def _bad_ratio(text: str) -> float:
    if not text:
        return 0.0
    bad = 0
    for ch in text:
        if ch in "\n\r\t\f\v":
            continue
        cat = unicodedata.category(ch)
        # Cc control, Cs surrogate, Co private use, Cn unassigned: real documents have (almost) none.
        if cat in ("Cc", "Cs", "Co", "Cn") or ch == "\ufffd":
            bad += 1
    return bad / len(text)


def _plausible_gb(data: bytes) -> str | None:
    """`data` as GB18030 text if it decodes strictly and reads like Chinese, else None."""
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        return None
    non_ascii = [c for c in text if ord(c) > 127]
    if not non_ascii:
        return None
    cjk = [c for c in non_ascii if is_cjk(c)]
    if len(cjk) < 0.9 * len(non_ascii):
        return None
    # Latin-1/Big5 bytes read as GB mostly land in the GBK extension area; real Chinese text is nearly all GB2312.
    common = 0
    for c in cjk:
        try:
            c.encode("gb2312")
            common += 1
        except UnicodeEncodeError:
            pass
    return text if common >= 0.9 * len(cjk) else None


def _looks_utf16_without_bom(data: bytes) -> str | None:
    sample = data[:4096]
    if len(sample) < 4 or len(sample) % 2:
        return None
    even, odd = sample[0::2], sample[1::2]
    if odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return None


def sniff_binary(data: bytes) -> bool:
    """True for bytes that are certainly not text (known binary magic, or NULs without a UTF-16/32 BOM)."""
    if any(data.startswith(bom) for bom, _ in _BOMS):
        return False
    if any(data.startswith(m) for m in _BINARY_MAGIC):
        return True
    return b"\x00" in data[:8192] and _looks_utf16_without_bom(data) is None


def decode_bytes(data: bytes) -> tuple[str, str]:
    """Decode file bytes to text; returns (text, encoding name). Raises LoadError for binary or garbage."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(enc.replace("-sig", ""))
            except UnicodeDecodeError as e:
                raise LoadError(f"undecodable text (bad {enc}: {e.reason})") from None
            return _checked(text), enc
    if sniff_binary(data):
        raise LoadError("binary file")
    if b"\x00" in data[:8192]:
        enc16 = _looks_utf16_without_bom(data)
        try:
            return _checked(data.decode(enc16 or "")), enc16 or ""
        except (UnicodeDecodeError, LookupError):
            raise LoadError("binary file") from None
    try:
        return _checked(data.decode("utf-8")), "utf-8"
    except UnicodeDecodeError:
        pass
    gb = _plausible_gb(data)
    if gb is not None:
        return _checked(gb), "gb18030"
    import charset_normalizer  # lazy: only legacy-encoded files need it

    results = charset_normalizer.from_bytes(data)
    best = results.best()
    if best is None:
        # The detector gives up on short text in less common code pages; cp1252 (Western) is the likeliest
        # legacy encoding and _checked still rejects control-character soup. Say it was a fallback.
        try:
            return _checked(data.decode("cp1252")), "cp1252 (fallback)"
        except UnicodeDecodeError:
            raise LoadError("undecodable text (binary?)") from None
    enc = best.encoding
    if enc in _LATIN_SINGLE_BYTE:
        # For short Western text the detector ties several Latin code pages (it says cp1257 for French);
        # prefer cp1252, the common one, when it is a candidate about as clean as the winner.
        for r in results:
            if r.encoding == "cp1252" and r.chaos <= best.chaos + 0.1:
                enc = "cp1252"
                break
    if enc in _CJK_FAMILY and enc.startswith("gb"):
        enc = "gb18030"  # GB2312/GBK files routinely contain characters only their superset knows
    try:
        text = data.decode(enc)
    except (UnicodeDecodeError, LookupError):
        text = str(best)
    return _checked(text), enc


def _checked(text: str) -> str:
    if _bad_ratio(text[:200_000]) > MAX_BAD_RATIO:
        raise LoadError("undecodable text (binary?)")
    return normalize_newlines(text.lstrip("\ufeff"))


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


#: a line whose last character is one of these continues mid-sentence (a Han character, or punctuation that never
#: ends a paragraph: ，、；：（“‘《「), so a break after it can be a wrap
_CJK_END = f"[{HAN}\uff0c\u3001\uff1b\uff1a\uff08\u201c\u2018\u300a\u300c]"
#: a break that may be a wrap: Chinese on both sides, or a compound broken after its hyphen (man: "--keep-⏎
#: newer-files", "per-⏎ host": letters or digits, one hyphen, a lower-case letter)
_WRAP = re.compile(f"{_CJK_END}[ \\t]*\\n[ \\t]*[{HAN}]|[^\\W_]{{2}}-[ \\t]*\\n[ \\t]*[a-z]")
_SPACED_WORDS = re.compile(f"[{HAN}] +(?=[{HAN}])")
_WIDE = re.compile(f"[{CJK}{CJK_PUNCT}{FULLWIDTH}]")
WRAP_MIN_WIDTH = 30  # columns: a shorter line is a heading, a list item or a table cell, never taken for a wrap
WRAP_FILL = 0.8  # ... and a wrapped line fills at least this share of the text's usual full line width


def _columns(line: str) -> int:
    """Display width: a CJK character takes two columns."""
    return len(line) + len(_WIDE.findall(line))


def join_wraps(text: str) -> tuple[str, int]:
    """`text` with the line breaks that only wrap a word or Chinese prose at the margin removed, and how many.
    A PDF page or a man page breaks lines at the margin; where English words keep the space a break gives them,
    Chinese ones are cut in two ("软件\\n包": jieba segments each side apart, so BM25 no longer finds 软件包 there,
    and the passage reads as two lines), and so is a compound broken after its hyphen ("--keep-\\n newer-files").

        >>> body = "如果您正好需要使用比稳定版更新的内核头文件来编译程序，那您要么需要升级包含内核头文件的软"
        >>> join_wraps(body + "\\n件包，要么使用头文件。\\n10.2. 编译\\n内核")
        ('如果您正好需要使用比稳定版更新的内核头文件来编译程序，那您要么需要升级包含内核头文件的软件包，要么使用头文件。\\n10.2. 编译\\n内核', 1)
        >>> line = "       -k  don't replace existing files that are newer than their copies in the archive (--keep-"
        >>> join_wraps(line + "\\n       newer-files)")[0][-35:]
        'in the archive (--keep-newer-files)'

    A break is joined when the line before fills the measure (at least WRAP_MIN_WIDTH columns, a CJK character
    being two, and WRAP_FILL of the 90th-percentile line width of `text`) and either ends in a Han character or
    non-final punctuation with the next line (indentation dropped) starting with a Han character, or ends in a
    hyphen after two letters or digits with the next starting with a lower-case letter (the hyphen stays:
    "per-host"). Where the line before spaces its Chinese words (old man-page translations: "从 标准 输入"), a
    space joins. Limits: a short last line of a paragraph is never joined, so a heading stays its own line; a
    wrap between Chinese and Latin text ("安装\\napt") stays a line break (it already separates words); a word
    hyphenated by the typesetter stays split ("config-uration") unless the PDF marked it (docqa/load/pdf.py); a
    text whose long lines are all Chinese list items without punctuation would be joined (rare: lists end in 。or ；).
    """
    if not _WRAP.search(text):
        return text, 0  # most texts: nothing to measure
    lines = text.split("\n")
    widths = sorted(_columns(ln.rstrip()) for ln in lines if ln.strip())
    fill = max(WRAP_MIN_WIDTH, WRAP_FILL * widths[int(0.9 * (len(widths) - 1))])
    out = [lines[0]]
    joined = 0
    for before, line in zip(lines, lines[1:]):  # `before` as printed: a joined line's own width is what counts
        end = before.rstrip()
        tail = end[-3:] + "\n" + line.lstrip()[:1]
        if _WRAP.search(tail) and _columns(end) >= fill:
            # a translation that spaces its words ("从 标准 输入 读入") keeps a space where the line broke
            gap = " " if "-\n" not in tail and len(_SPACED_WORDS.findall(before)) >= 2 else ""
            out[-1] = out[-1].rstrip() + gap + line.lstrip()
            joined += 1
        else:
            out.append(line)
    return "\n".join(out), joined


# ---------------------------------------------------------------- plain text


def load_text(path: Path, data: bytes | None = None) -> Document:
    """A .txt/.log/... file: decoded text (lines wrapped mid-word joined: `join_wraps`), no sections
    (reStructuredText gets underlined-title sections)."""
    data = path.read_bytes() if data is None else data
    text, enc = decode_bytes(data)
    text, wraps = join_wraps(text)
    sections = _rst_sections(text) if path.suffix.lower() == ".rst" else []
    meta: dict[str, object] = {"format": "rst" if path.suffix.lower() == ".rst" else "text", "encoding": enc}
    if wraps:
        meta["wrapped_lines_joined"] = wraps
    return Document(source=str(path), text=text, sections=sections, metadata=meta)


_RST_ADORN = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")


def _rst_sections(text: str) -> list[Section]:
    """Titles underlined (optionally also overlined) with a repeated punctuation char; level by first use."""
    lines = text.split("\n")
    offsets = _line_offsets(lines)
    styles: list[tuple[str, bool]] = []
    stack: list[tuple[int, str]] = []
    sections: list[Section] = []
    i = 0
    while i < len(lines) - 1:
        title, under = lines[i], lines[i + 1]
        m = _RST_ADORN.match(under)
        if title.strip() and not _RST_ADORN.match(title) and m and len(under.rstrip()) >= len(title.rstrip()):
            over = i > 0 and lines[i - 1].strip() == under.strip()
            style = (m.group(1), over)
            if style not in styles:
                styles.append(style)
            level = styles.index(style) + 1
            start = offsets[i - 1] if over else offsets[i]
            _push(stack, level, title.strip())
            sections.append(Section(start, tuple(t for _, t in stack)))
            i += 2
            continue
        i += 1
    return sections


# ---------------------------------------------------------------- markdown

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_NOT_PARAGRAPH = re.compile(r"^ {0,3}(?:[-+*>]|\d+[.)]|#|\|)|^\s{4,}|^\s*$")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MARKS = re.compile(r"(\*\*|__|\*|`+|~~)")


def clean_heading(title: str) -> str:
    title = _LINK.sub(r"\1", title)
    title = _MARKS.sub("", title)
    return " ".join(title.split())


def _push(stack: list[tuple[int, str]], level: int, title: str) -> None:
    while stack and stack[-1][0] >= level:
        stack.pop()
    stack.append((level, title))


def _line_offsets(lines: list[str]) -> list[int]:
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    return offsets


def _front_matter(lines: list[str]) -> tuple[int, str | None]:
    """The index of the first line after YAML front matter (0 without any) and its `title:` (or None)."""
    i, title = 0, None
    if lines and lines[0].strip() == "---":  # YAML front matter: its closing --- is not a setext underline
        for j in range(1, len(lines)):
            if lines[j].strip() in ("---", "..."):
                for k in range(1, j):
                    m = re.match(r"^title:\s*(.+?)\s*$", lines[k])
                    if m:
                        title = m.group(1).strip("'\"")
                i = j + 1
                break
    return i, title


def _closes_fence(line: str, fm: re.Match | None, fence: str) -> bool:
    """Whether `line` (its fence match `fm`) closes the open code fence `fence`."""
    return bool(
        fm
        and fm.group(1)[0] == fence[0]
        and len(fm.group(1)) >= len(fence)
        and not line.strip()[len(fm.group(1)) :].strip()
    )


def markdown_sections(text: str) -> tuple[list[Section], str | None]:
    """Sections from ATX/setext headings (outside code fences and front matter) and the first level-1 title."""
    lines = text.split("\n")
    offsets = _line_offsets(lines)
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    fence: str | None = None
    i, title = _front_matter(lines)
    para_start: int | None = None  # index of the first line of the current paragraph (setext heading body)
    while i < len(lines):
        line = lines[i]
        fm = _FENCE.match(line)
        if fence is not None:
            if _closes_fence(line, fm, fence):
                fence = None
            i += 1
            continue
        if fm:
            fence = fm.group(1)
            para_start = None
            i += 1
            continue
        m = _ATX.match(line)
        if m:
            level, heading = len(m.group(1)), clean_heading(m.group(2) or "")
            if heading:
                _push(stack, level, heading)
                sections.append(Section(offsets[i], tuple(t for _, t in stack)))
                if level == 1 and title is None:
                    title = heading
            para_start = None
            i += 1
            continue
        s = _SETEXT.match(line)
        if s and para_start is not None:
            level = 1 if s.group(1)[0] == "=" else 2
            heading = clean_heading(" ".join(lines[para_start:i]))
            if heading:
                _push(stack, level, heading)
                sections.append(Section(offsets[para_start], tuple(t for _, t in stack)))
                if level == 1 and title is None:
                    title = heading
            para_start = None
            i += 1
            continue
        if not line.strip():
            para_start = None
        elif para_start is None and not _NOT_PARAGRAPH.match(line):
            para_start = i
        i += 1
    return sections, title


def load_markdown_text(source: str, text: str, encoding: str = "utf-8") -> Document:
    text, wraps = join_wraps(text)
    sections, title = markdown_sections(text)
    meta: dict[str, object] = {"format": "markdown", "encoding": encoding}
    if wraps:
        meta["wrapped_lines_joined"] = wraps
    if title:
        meta["title"] = title
    return Document(source=source, text=text, sections=sections, metadata=meta)


def load_markdown(path: Path, data: bytes | None = None) -> Document:
    """A Markdown file: the text as written (it is shown to users; lines wrapped mid-word joined, `join_wraps`),
    sections from its headings."""
    data = path.read_bytes() if data is None else data
    text, enc = decode_bytes(data)
    return load_markdown_text(str(path), text, enc)
