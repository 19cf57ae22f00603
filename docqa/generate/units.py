"""Answer units: a passage cut into the pieces an extractive answer quotes (docqa/generate/extractive.py).

    >>> [(u.kind, u.text) for u in split_units("Run:\\n\\n$ tar -xzf a.tar.gz\\n\\nDone. See os.path.join.")]
    [('sentence', 'Run:'), ('command', '$ tar -xzf a.tar.gz'), ('sentence', 'Done.'), ('sentence', 'See os.path.join.')]

A unit makes sense alone: a sentence (English and Chinese, never split inside a path, version, URL, dotted name
or "e.g."), a command line (shell prompts, doctest, fenced or indented code, a short code-looking line after
"run:" or between Chinese lines), a list item, an option entry of a manual page ("-w, --word-regexp" + the first
sentence of its description), a table row (as "header: value" pairs) or a heading (numbered headings, FAQ
questions, title lines: signposts, never quoted themselves).

Limits: structure comes from line layout only (indentation, prompts, bullets, pipes), as the loaders give it; a
PDF's wrapped prose line can look like a command and vice versa.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..text import CJK, CJK_PUNCT, FULLWIDTH

__all__ = ["TERMINAL", "UNIT_KINDS", "Unit", "split_units"]

UNIT_KINDS = ("sentence", "command", "item", "row", "heading")


@dataclass(frozen=True)
class Unit:
    """One answer unit of a passage: `text` (whitespace-normalised; a table row carries its header) taken from
    passage characters `start`..`end`; `kind` is one of sentence, command, item, row, heading."""

    text: str
    start: int
    end: int
    kind: str


#: endings of a unit that is complete (a unit without one runs on into what follows it)
TERMINAL = (".", "。", "!", "！", "?", "？", ";", "；", ")", "）")

_HAS_CJK = re.compile(f"[{CJK}]")
_HAS_WORD = re.compile(rf"[^\W\d_]|[{CJK}]")
# a line break between two of these disappears when a unit's text is normalised (a PDF's wrapped Chinese line)
_CJK_WRAP = re.compile(rf"(?<=[{CJK}{CJK_PUNCT}{FULLWIDTH}“”‘’])[ \t]*\n[ \t]*(?=[{CJK}{CJK_PUNCT}{FULLWIDTH}“”‘’])")
_FENCE = re.compile(r"^\s*(```|~~~)")
PROMPT = re.compile(r"^\s*(?:\$ |>>> |\.\.\. |PS [A-Za-z]:\\?>|[A-Za-z]:\\>|# (?=[a-z][\w.+-]*(?:\s|$)))")
_BULLET = re.compile(r"^\s*(?:[-*+•●▪◦]\s+|\(?\d{1,2}[.)]\s+(?!\d)|\(?[a-z][.)]\s+)")
_NUMBERED_HEADING = re.compile(r"^\s*(?:#{1,6}\s+|\d+(?:\.\d+)+\.?\s+(?=\S)|第\s*\d+\s*[章节]|\d+\.\s+(?=[A-Z]))")
_CAPS_HEADING = re.compile(
    r"^(?:[A-Z][A-Z0-9 _-]{2,}|[A-Z][A-Z0-9_-]*\(\d\w*\).*\(\d\w*\)|名称|概述|描述|选项|参见|示例|作者)$"
)
_INFO_MENU = re.compile(r"^\* [^:]{1,60}:{1,2}\s*[^.]{0,60}\.?$")  # "* --separate: Command-Line Options."
_MD_HEADING = re.compile(r"^\s*#{1,6}\s+\S")
_MD_WORD_HEADING = re.compile(r"^#\s+[\w.+-]+$")
_UNDERLINE = re.compile(r"^\s*([=*\-~^#+])\1{2,}\s*$")
_OPTION_START = re.compile(r"^\s*--?[A-Za-z0-9?]")
# an option term: "-w, --word-regexp", "-C NUM, --context=NUM", "--block-size=大小", "-name pattern",
# "-f, --file [主机名:]文件"
_OPTION_TERM = re.compile(
    r"^\s*-{1,2}[A-Za-z0-9?][\w?-]*(?:[=\[][^\s,]*)?(?:\s+(?!-)[^\s,，。]{1,20})?"
    r"(?:,\s*-{1,2}[A-Za-z0-9?][\w?-]*(?:[=\[][^\s,]*)?(?:\s+(?!-)[^\s,，。]{1,20})?)*\s*$"
)
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(?:\|\s*:?-{2,}:?\s*)*\|?\s*$")
CODE_MARK = re.compile(r"(?:^|\s)--?[A-Za-z]|[/\\=(){}<>\[\]]|\w\.\w|^\w[\w-]*$")
_CMD_WITH_OPTION = re.compile(
    rf"^[a-z][\w.+-]*(?:\s+[\w./'*<>\[\]{CJK}-]+)*?\s+--?[A-Za-z][\w-]*(?:\s+[^\s，。；：]+){{0,4}}$"
)
_END_PUNCT = ".?!,;:。？！，；：、"
_SENTENCE_END = (".", "。", "!", "！", "?", "？", ";", "；", ":", "：")
_ABBREV = frozenset("e.g i.e etc vs cf al fig mr mrs ms dr st jr sr approx resp incl esp ca vol ch sec eq p pp".split())


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _norm(text: str) -> str:
    """Collapse whitespace; a line break between two Chinese characters disappears (a PDF's wrapped line)."""
    return re.sub(r"\s+", " ", _CJK_WRAP.sub("", text)).strip()


def _is_table_row(s: str) -> bool:
    st = s.strip()
    if st.startswith("|") and st.count("|") >= 2:
        return True
    return st.count(" | ") >= 1 and len(st) < 300 and not PROMPT.match(s)


def _cells(s: str) -> list[str]:
    st = s.strip()
    if st.startswith("|"):
        st = st[1:]
    if st.endswith("|"):
        st = st[:-1]
    return [c.strip() for c in st.split("|")]


def looks_like_code_line(s: str, prev: str | None, nxt: str | None) -> bool:
    """A bare line that is a command, not prose: ASCII, short, no sentence ending, not capitalised, code marks or
    few words, and the next line starts something new (a wrapped prose line is followed by its lower-case tail)."""
    st = s.strip()
    if _CMD_WITH_OPTION.match(st):
        return True  # "dpkg --status 软件包名": a command whose placeholder is Chinese
    if not st or not st.isascii() or len(st) > 90 or st[-1] in _END_PUNCT:
        return False
    if st[0].isupper() and not re.match(r"^[A-Z][\w.-]*\(", st):  # "Set-ExecutionPolicy" prose-like; allow Foo(...)
        if not (prev and prev.rstrip().endswith((":", "："))):
            return False
    words = st.split()
    if len(words) > 8 and not CODE_MARK.search(st):
        return False
    if not (CODE_MARK.search(st) or len(words) <= 4):
        return False
    if prev is not None and _HAS_CJK.search(prev):
        return True  # an ASCII line between Chinese lines is code
    if nxt is not None and nxt.strip() and nxt.strip()[0].islower() and nxt.strip()[0].isascii():
        return False
    return prev is None or prev.rstrip().endswith((":", "：")) or not prev.strip() or len(words) <= 6


_END_CHAR = re.compile(r"[。！？；!?.]")  # the characters _sentence_end can end a sentence at


def _sentence_end(text: str, start: int, i: int) -> int | None:
    """Where a sentence ending at `text[i]` stops (after closing quotes), or None when `text[i]` ends none."""
    ch, n = text[i], len(text)
    if ch in "。！？；" or ch in "!?" and (i + 1 == n or text[i + 1].isspace()):
        j = i + 1
        while j < n and text[j] in "”’」』）)\"'":
            j += 1
        return j
    if (
        ch == "."
        and (i + 1 == n or text[i + 1].isspace())
        and i > 0
        and not text[i - 1].isspace()
        and text[i - 1] != "."
    ):
        word = re.search(r"([\w.]+)$", text[start:i])
        w = word.group(1).lower() if word else ""
        if w.rstrip(".") in _ABBREV or (len(w) == 1 and w.isalpha() and w.isupper()):
            return None  # "e.g.", "J. Smith"
        return i + 1
    return None


def _sentence_spans(text: str, base: int) -> list[tuple[int, int]]:
    """Sentence (start, end) offsets in `text` (shifted by `base`), whitespace trimmed; never inside a path,
    version, dotted name, URL or abbreviation, since those have no space after their dot."""
    spans = []
    start = i = 0
    # only a punctuation mark can end a sentence: jump from one to the next (a passage has thousands of characters)
    while (m := _END_CHAR.search(text, i)) is not None:
        i = m.start()
        cut = _sentence_end(text, start, i)
        if cut is None:
            i += 1
            continue
        if text[start:cut].strip():
            spans.append((start, cut))
        start = i = cut
    if text[start:].strip():
        spans.append((start, len(text)))
    out = []
    for a, b in spans:
        seg = text[a:b]
        out.append((base + a + len(seg) - len(seg.lstrip()), base + b - (len(seg) - len(seg.rstrip()))))
    return out


def split_units(text: str) -> list[Unit]:
    """The answer units of one passage, in reading order.

    >>> [(u.kind, u.text) for u in split_units("用法如下：\\ntar -xzf foo.tar.gz\\n解压到当前目录。见 os.path.join 和 3.4.1 版。")]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('sentence', '用法如下：'), ('command', 'tar -xzf foo.tar.gz'), ('sentence', '解压到当前目录。'),
     ('sentence', '见 os.path.join 和 3.4.1 版。')]
    >>> split_units("| option | meaning |\\n|---|---|\\n| -x | extract |")[-1].text
    'option: -x; meaning: extract'

    The last passages' units are cached: retrieval's evidence re-ranking and the extractive answer split the
    same passages of one question.
    """
    return list(_split_cached(text))


@functools.lru_cache(maxsize=256)
def _split_cached(text: str) -> tuple[Unit, ...]:
    return tuple(_Splitter(text).run())


class _Splitter:
    """One pass over a passage's lines; each `_step` consumes one construct (a line, a definition, an item)."""

    def __init__(self, text: str):
        self.text = text
        self.lines: list[tuple[int, str]] = []  # (offset of the line in text, the line without its newline)
        pos = 0
        for raw in text.splitlines(keepends=True):
            self.lines.append((pos, raw.rstrip("\r\n")))
            pos += len(raw)
        self.units: list[Unit] = []
        self.para: list[tuple[int, str]] = []  # the prose lines of the paragraph being read
        self.header: list[str] | None = None  # the header cells of the table being read
        self.in_fence = False
        # The body's indentation is the most common one; a chunk's first line has often lost its indentation to
        # the chunker's strip(), so it counts as body indentation rather than as a term sticking out to the left.
        indents = [_indent(s) for _, s in self.lines[1:] if s.strip()]
        self.base_indent = max(sorted(set(indents)), key=indents.count) if indents else 0
        first = self.lines[0] if self.lines else (0, "")
        if first[1].strip() and _indent(first[1]) == 0 and self.base_indent:
            self.lines[0] = (first[0] - self.base_indent, " " * self.base_indent + first[1])

    def run(self) -> list[Unit]:
        i = 0
        while i < len(self.lines):
            i = self._structure(i) or self._definition_at(i) or self._line(i)
        self._flush_para()
        return self.units

    # -- helpers

    def _line_at(self, i: int) -> str | None:
        return self.lines[i][1] if 0 <= i < len(self.lines) else None

    def _nonblank(self, i: int, step: int) -> str | None:
        j = i + step
        while 0 <= j < len(self.lines):
            if self.lines[j][1].strip():
                return self.lines[j][1]
            j += step
        return None

    def _add(self, kind: str, a: int, b: int, t: str | None = None) -> None:
        t = _norm(self.text[a:b]) if t is None else t
        if t and not _HAS_WORD.search(t):
            kind = "heading"  # "8.5", "9.3": a PDF's section numbers say nothing alone
        if t:
            self.units.append(Unit(t, a, b, kind))

    def _flush_para(self) -> None:
        if not self.para:
            return
        a = self.para[0][0] + _indent(self.para[0][1])
        b = self.para[-1][0] + len(self.para[-1][1])
        for s, e in _sentence_spans(self.text[a:b], a):
            t = _norm(self.text[s:e])
            if t:
                self.units.append(Unit(t, s, e, self._sentence_kind(t)))
        self.para.clear()

    def _sentence_kind(self, t: str) -> str:
        """'heading' for an FAQ question, a number, or a short title line standing alone; else 'sentence'."""
        kind = "heading" if t.endswith(("?", "？")) and len(t) < 160 else "sentence"
        if not _HAS_WORD.search(t):
            kind = "heading"
        if len(self.para) == 1 and len(t) < 50 and not t.endswith(TERMINAL + (":", "：", "，", ",")):
            nl = self.lines.index(self.para[0]) + 1
            after = next((x for _, x in self.lines[nl:] if x.strip()), None)
            if (
                (nl >= len(self.lines) or not self.lines[nl][1].strip())
                and not CODE_MARK.search(t)
                and not (after is not None and (PROMPT.match(after) or looks_like_code_line(after, t, None)))
                and not t[0].islower()
            ):
                kind = "heading"  # "Mutual exclusion", "Platform": a title line standing alone
        return kind

    # -- the constructs, tried in this order by run()

    def _structure(self, i: int) -> int | None:
        """Fences and fenced code, blank lines, underlines, reST markup, table rows: the next index, or None."""
        off, s = self.lines[i]
        st = s.strip()
        a = off + _indent(s)
        if _FENCE.match(s):
            self._flush_para()
            self.in_fence = not self.in_fence
        elif self.in_fence:
            if st:
                self._add("command", a, off + len(s))
        elif not st:
            self._flush_para()
            self.header = None
        elif _UNDERLINE.match(s):
            if self.para:  # an rst/setext underline: the paragraph just before it is a heading
                pa = self.para[0][0] + _indent(self.para[0][1])
                self._add("heading", pa, self.para[-1][0] + len(self.para[-1][1]))
                self.para.clear()
        elif st.startswith(".. ") or re.match(r"^:\w[\w ]*:", st):
            self._flush_para()  # reStructuredText directives and field lists are markup, not answers
        elif _TABLE_SEP.match(s) and "|" in s:
            pass
        elif _is_table_row(s):
            self._flush_para()
            cells = _cells(s)
            if self.header is None:
                self.header = cells
                self._add("row", a, off + len(s), " | ".join(c for c in cells if c))
            else:
                pairs = [f"{h}: {c}" if h else c for h, c in zip(self.header + [""] * len(cells), cells) if c]
                self._add("row", a, off + len(s), "; ".join(pairs))
        else:
            self.header = None
            return None
        return i + 1

    def _definition_at(self, i: int) -> int | None:
        """A shell prompt line, or a term with its description (man pages, Word option lists): next index or None."""
        off, s = self.lines[i]
        st = s.strip()
        a = off + _indent(s)
        nxt, nxt2 = self._line_at(i + 1), self._line_at(i + 2)
        if PROMPT.match(s):
            self._flush_para()
            prev = self._line_at(i - 1)
            # "# nginx" standing alone between blank lines is a Markdown heading, not a root prompt with a bare
            # command ("# apt-get install nginx" has arguments, and a prompt line sits in a code block)
            alone = (prev is None or not prev.strip()) and (nxt is None or not nxt.strip())
            self._add("heading" if alone and _MD_WORD_HEADING.match(st) else "command", a, off + len(s))
            return i + 1
        # a definition: a term line followed by more-indented description lines (man pages, tar's examples)
        nxt_is_term = bool(nxt2 and nxt2.strip() and nxt and _indent(nxt2) > _indent(nxt) + 1)
        if nxt_is_term and not _OPTION_START.match(s) and len(st) <= 60:
            self._flush_para()  # "常用选项" above indented option entries: a heading, not a term
            self._add("heading", a, off + len(s))
            return i + 1
        if (
            nxt is not None
            and nxt.strip()
            and _indent(nxt) > _indent(s) + 1
            and (_OPTION_START.match(s) or len(st) <= 60 and not st.endswith(tuple(_END_PUNCT)))
        ):
            self._flush_para()
            j = i + 1
            while j < len(self.lines) and self.lines[j][1].strip() and _indent(self.lines[j][1]) > _indent(s) + 1:
                j += 1
            _definition(self.text, a, off + len(s), self.lines[i + 1 : j], self._add)
            return j
        # a bare option term whose description is the next line (Word documents, unindented man pages)
        if _OPTION_TERM.match(s) and nxt is not None and nxt.strip() and not _OPTION_START.match(nxt):
            if not (nxt.strip().isascii() and looks_like_code_line(nxt, s, None)):
                self._flush_para()
                j = self._wrapped_end(i + 1)
                _definition(self.text, a, off + len(s), self.lines[i + 1 : j], self._add)
                return j
        if _OPTION_START.match(s) and _HAS_CJK.search(st) and not _BULLET.match(s):
            self._flush_para()  # "--help 显示此帮助信息并退出": term and description on one line
            self._add("item", a, off + len(s))
            return i + 1
        return None

    def _wrapped_end(self, i: int) -> int:
        """The index after line `i` and the lines that continue its unfinished sentence: same indentation, not
        blank, not an option ("在找到 NUM" / "个匹配的行之后，不再读这个文件。" wrapped by the manual's layout)."""
        j = i + 1
        while j < len(self.lines) and not self.lines[j - 1][1].rstrip().endswith(_SENTENCE_END):
            line = self.lines[j][1]
            if not line.strip() or _indent(line) != _indent(self.lines[i][1]) or _OPTION_START.match(line):
                break
            j += 1
        return j

    def _line(self, i: int) -> int:
        """A heading, a list item, a command line, or a line of prose (kept for its paragraph): the next index."""
        off, s = self.lines[i]
        st = s.strip()
        a = off + _indent(s)
        prev, nxt = self._line_at(i - 1), self._line_at(i + 1)
        if (
            _MD_HEADING.match(s)
            or (_NUMBERED_HEADING.match(s) and len(st) < 120)
            or _CAPS_HEADING.match(st)
            or (_INFO_MENU.match(st))
        ):
            self._flush_para()
            end = off + len(s)
            # a PDF heading wrapped onto a short second line ending with its question mark
            if nxt and not st.endswith(("?", "？")) and len(nxt.strip()) < 40 and nxt.strip().endswith(("?", "？")):
                end = self.lines[i + 1][0] + len(nxt)
                i += 1
            self._add("heading", a, end)
            return i + 1
        if _BULLET.match(s) and not _OPTION_TERM.match(s):
            self._flush_para()
            j = i + 1
            while j < len(self.lines):
                t = self.lines[j][1]
                if not t.strip() or _BULLET.match(t) or PROMPT.match(t) or _is_table_row(t):
                    break
                if looks_like_code_line(t, self.lines[j - 1][1], self._line_at(j + 1)):
                    break
                j += 1
            self._add("item", a, self.lines[j - 1][0] + len(self.lines[j - 1][1]))
            return j
        indented = (
            _indent(s) >= self.base_indent + 4
            and st.isascii()
            and not (st.endswith((".", ",", ";")) and len(st.split()) > 6 and not PROMPT.match(s))
        )  # an indented prose paragraph (a block quote) is still prose
        context = self._nonblank(i, -1) if prev is None or not prev.strip() else prev
        if indented and not self.para or looks_like_code_line(s, context, nxt):
            self._flush_para()
            self._add("command", a, off + len(s))
            return i + 1
        self.para.append((off, s))
        return i + 1


def _definition(text: str, a: int, term_end: int, desc: list[tuple[int, str]], add: Callable[..., None]) -> None:
    """Term + the first sentence of its description as one item; the description's other sentences follow."""
    if not desc:
        add("item", a, term_end)
        return
    da = desc[0][0] + _indent(desc[0][1])
    db = desc[-1][0] + len(desc[-1][1])
    spans = _sentence_spans(text[da:db], da)
    first_end = spans[0][1] if spans else db
    # the term and its description are separate lines: join them with a space even between Chinese characters
    add("item", a, first_end, _norm(text[a:term_end]) + " " + _norm(text[da:first_end]))
    for s, e in spans[1:]:
        add("sentence", s, e)
