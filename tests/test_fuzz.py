"""Fuzzing every loader: arbitrary and mutated bytes give a Document or LoadError, never another exception or a hang.

    DOCQA_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py       # a long run (`make fuzz`)

The default suite runs a short, derandomised pass (the same examples every time). In a long run examples are
random, and an input that breaks a loader is saved under tests/regressions/<loader>/ before the test fails;
`test_regressions_replay` replays every file there (commit them: they are the fuzzer's findings).

Text, Markdown, HTML, DOCX, CSV, EML, XLSX, PPTX, EPUB, ODT and RTF go through `load_file` in this process (pure Python: a hang shows up as a timed-out
example); a LoadError that wraps a programming error (IndexError, TypeError... see _BUG_TYPES) counts as a finding. PDF and images (Pillow decoding, OCR in onnxruntime) go through the sandbox worker, since that is native code: there a crash, a timeout or a
non-LoadError exception surfaces as a LoadError message, and those messages are what is checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile import good_docx, good_pdf, reference_loop_pdf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docqa.documents import Document
from docqa.errors import LoadError
from docqa.load.sandbox import LoaderSandbox

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
LONG = int(os.environ.get("DOCQA_FUZZ_EXAMPLES", "0"))
EXAMPLE_SECONDS = 10  # one input may take this long, at most
FUZZ = settings(
    max_examples=LONG or 30,
    derandomize=not LONG,
    deadline=None,  # timing is checked by _alarm (a hang), not per-example jitter
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
SUFFIX = {
    "text": ".txt",
    "markdown": ".md",
    "html": ".html",
    "docx": ".docx",
    "pdf": ".pdf",
    "csv": ".csv",
    "eml": ".eml",
    "xlsx": ".xlsx",
    "pptx": ".pptx",
    "epub": ".epub",
    "image": ".png",
    "odt": ".odt",
    "rtf": ".rtf",
}


# ---------------------------------------------------------------------------------------------- seeds and mutation

SEEDS: dict[str, list[bytes]] = {
    "text": [
        "第一章 简介\n\ntar 是归档工具。\n".encode("gb18030"),
        "UTF-16 text ünïcødé\n".encode("utf-16"),
        b"plain ascii\r\nwith CRLF\r\n",
        "中文 UTF-8 文本\n".encode(),
    ],
    "markdown": [b"---\ntitle: x\n---\n# H1\ntext\n## H2\n```\n# not a heading\n```\nSetext\n===\n- [a](b) *c*\n"],
    "html": [
        b'<html><head><meta charset="gb2312"><title>T</title></head><body><nav>m</nav><h1>A</h1><p>x<b>y</b>'
        b"</p><table><tr><td>1</td><td>2</td></tr></table><pre> a\n  b</pre></body></html>"
    ],
    "csv": ["名称,端口\nssh,22\n".encode("gb18030"), b'a;b\n"x\ny";2\n', b"k\tv\n1\t2\n"],
    "eml": [
        b"Subject: =?utf-8?b?5rWL6K+V?=\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/html;"
        b" charset=gbk\n\n<p>x</p>\n--b\nContent-Disposition: attachment; filename=a.csv\n\nk,v\n--b--\n"
    ],
    "rtf": [rb"{\rtf1\ansi\ansicpg936{\fonttbl{\f0 SimSun;}}\f0 \'d6\'d0 \u20013?x\par {\*\x y}\b b\b0}"],
    "xlsx": [],
    "pptx": [],
    "epub": [],
    "image": [],
    "odt": [],
    "docx": [],  # filled lazily (python-docx is not needed to build them, but keep import cost out of collection)
    "pdf": [],
}


def seeds(kind: str) -> list[bytes]:
    if not SEEDS[kind]:
        SEEDS[kind] = _lazy_seed(kind)
    return SEEDS[kind]


def _lazy_seed(kind: str) -> list[bytes]:
    from formatgen import font, make_epub, make_pptx, make_xlsx, render_text_image

    if kind == "image":
        buf = io.BytesIO()
        render_text_image(["OCR me"], font("sans"), size=20, width=200, margin=10).save(buf, "PNG")
        return [buf.getvalue()]
    return {
        "docx": lambda: [good_docx()],
        "pdf": lambda: [good_pdf(2), reference_loop_pdf()],
        "xlsx": lambda: [make_xlsx({"S": [["a", "b"], [1, "x"]]})],
        "pptx": lambda: [make_pptx([("T", ["body"], "notes")], table=[["h"], ["v"]])],
        "epub": lambda: [make_epub("B", [("C", "text")])],
        "odt": lambda: [_odt()],
    }[kind]()


def _odt() -> bytes:
    from test_load_office import odf

    return odf(
        "text",
        '<text:h text:outline-level="1">H</text:h><text:p>a<text:s text:c="3"/>b</text:p><table:table>'
        "<table:table-row><table:table-cell><text:p>c</text:p></table:table-cell></table:table-row></table:table>",
    )


@st.composite
def mutated(draw, kind: str) -> bytes:
    """A seed file with bytes flipped, ranges deleted or duplicated, random bytes inserted, or a truncation."""
    data = bytearray(draw(st.sampled_from(seeds(kind))))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "delete", "insert", "dup", "truncate", "set"]))
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("<"), ord("("), ord("\n")]))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=32))
        elif op == "dup":
            n = draw(st.integers(1, 256))
            data[i:i] = data[i : i + n] * draw(st.integers(1, 20))
        else:
            del data[i:]
    return bytes(data)


def _soup(tokens: list[str]) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(st.sampled_from(tokens), st.text(max_size=8)), max_size=60).map(
        lambda xs: "".join(xs).encode("utf-8", "surrogatepass")
    )


MD_TOKENS = [
    "#",
    "## ",
    "\n",
    "```",
    "~~~",
    "---\n",
    "===\n",
    "* ",
    "[a](b)",
    "`x`",
    "> ",
    "<div>",
    "    ",
    "\r\n",
    "- ",
    "1. ",
    "|a|b|\n",
    "\\",
    "![i](j)",
    "中文",
    "\u2028",
    "\x00",
    "\ufeff",
]
HTML_TOKENS = [
    "<h1>",
    "</h1>",
    "<p>",
    "</p>",
    "<table>",
    "<tr>",
    "<td>",
    "</td>",
    "<pre>",
    "</pre>",
    "<script>",
    "<nav>",
    "<article>",
    "<header>",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    "&amp;",
    "&#0;",
    "&#x110000;",
    '<meta charset="utf-16">',
    '<meta charset="bogus">',
    "<?xml version='1.0' encoding='gb2312'?>",
    "<h7>",
    '<div hidden aria-hidden="true" style="display:none">',
    "<br>",
    "中文",
    "\x00",
    "<",
]

STRATEGIES: dict[str, Callable[[], st.SearchStrategy[bytes]]] = {
    "text": lambda: st.one_of(
        st.binary(max_size=3000),
        mutated("text"),
        st.text(max_size=500).map(lambda s: s.encode("utf-8", "surrogatepass")),
    ),
    "markdown": lambda: st.one_of(_soup(MD_TOKENS), mutated("markdown"), st.binary(max_size=2000)),
    "html": lambda: st.one_of(_soup(HTML_TOKENS), mutated("html"), st.binary(max_size=2000)),
    "docx": lambda: st.one_of(
        mutated("docx"), st.binary(max_size=2000), _soup(HTML_TOKENS).map(lambda b: good_docx_body(b))
    ),
    "pdf": lambda: st.one_of(mutated("pdf"), st.binary(max_size=2000).map(lambda b: b"%PDF-1.7\n" + b)),
    "csv": lambda: st.one_of(
        mutated("csv"), st.binary(max_size=2000), _soup([",", ";", "\t", '"', "\n", "\r\n", "中文", "\x00"])
    ),
    "eml": lambda: st.one_of(
        mutated("eml"),
        st.binary(max_size=2000),
        _soup(
            [
                "Subject: ",
                "\n",
                "Content-Type: multipart/mixed; boundary=b\n",
                "--b\n",
                "--b--",
                "=?utf-8?b?",
                "?=",
                "charset=",
                "base64",
                "message/rfc822\n",
                "filename=x.pdf",
            ]
        ),
    ),
    **{
        k: (lambda k=k: st.one_of(mutated(k), st.binary(max_size=2000)))
        for k in ("xlsx", "pptx", "epub", "image", "odt", "rtf")
    },
}


def good_docx_body(xml: bytes) -> bytes:
    """A well-formed zip whose document.xml is `xml` (junk markup)."""
    import zipfile

    from hostile import _CT, _RELS

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", _CT)
        z.writestr("_rels/.rels", _RELS)
        z.writestr("word/document.xml", xml)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- the checks


class _Hang(Exception):
    pass


def _alarm(seconds: int):
    """SIGALRM-based timeout for an in-process loader call (main thread only)."""

    class _Ctx:
        def __enter__(self):
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGALRM, self._fire)
                signal.alarm(seconds)

        def _fire(self, *a):
            raise _Hang(f"loader took more than {seconds}s")

        def __exit__(self, *exc):
            if threading.current_thread() is threading.main_thread():
                signal.alarm(0)

    return _Ctx()


def _check_document(doc: Document) -> None:
    assert isinstance(doc, Document) and isinstance(doc.text, str)
    n = len(doc.text)
    assert all(0 <= p.start <= n for p in doc.pages)
    assert [p.start for p in doc.pages] == sorted(p.start for p in doc.pages)
    assert all(0 <= s.start <= n and all(isinstance(t, str) for t in s.path) for s in doc.sections)
    assert [s.start for s in doc.sections] == sorted(s.start for s in doc.sections)
    doc.to_json()  # the sandbox must be able to send it


def _save(kind: str, data: bytes) -> Path:
    d = REGRESSIONS / kind
    d.mkdir(parents=True, exist_ok=True)
    p = d / (hashlib.sha256(data).hexdigest()[:16] + SUFFIX[kind])
    p.write_bytes(data)
    return p


# Exception types that mean a bug in a loader (ours or the library's), not a file the parser rightly refused:
# load_file turns any exception into LoadError("<format> parse error: <Type>: ..."), so they are found by name.
_BUG_TYPES = (
    "IndexError",
    "TypeError",
    "AttributeError",
    "AssertionError",
    "ZeroDivisionError",
    "UnboundLocalError",
    "NameError",
    "OSError",
    "SystemError",
)


def check_inline(kind: str, data: bytes, save: bool = bool(LONG)) -> None:
    """`load_file` in this process: a Document or a LoadError that is not a disguised bug, within EXAMPLE_SECONDS."""
    from docqa.load import load_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("f" + SUFFIX[kind])
        path.write_bytes(data)
        try:
            with _alarm(EXAMPLE_SECONDS):
                try:
                    doc = load_file(path)
                except LoadError as e:
                    if "parse error: " in str(e) and str(e).split("parse error: ")[1].startswith(_BUG_TYPES):
                        raise AssertionError(f"bug disguised as a parse error: {e}") from None
                    return
            _check_document(doc)
        except BaseException as e:
            if save and not isinstance(e, KeyboardInterrupt):
                raise AssertionError(f"{type(e).__name__}: {e}; input saved to {_save(kind, data)}") from e
            raise


_BAD_SANDBOX = (
    "internal error",
    "parser crashed",
    "timed out",
    "pdf parse error",
    "image parse error",
    "too much memory",
)


def check_sandboxed(sb: LoaderSandbox, kind: str, data: bytes, save: bool = bool(LONG)) -> None:
    """Load `data` in the sandbox worker: a Document, or a LoadError that is not a crash, hang or stray exception."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("f" + SUFFIX[kind])
        path.write_bytes(data)
        try:
            _check_document(sb.load(path))
        except LoadError as e:
            if str(e).startswith(_BAD_SANDBOX):
                msg = f"{kind} loader: {e}"
                if save:
                    msg += f"; input saved to {_save(kind, data)}"
                raise AssertionError(msg) from None


# ---------------------------------------------------------------------------------------------- the targets


@pytest.mark.parametrize(
    "kind", ["text", "markdown", "html", "docx", "csv", "eml", "xlsx", "pptx", "epub", "odt", "rtf"]
)
def test_fuzz_inline_loaders(kind):
    @FUZZ
    @given(STRATEGIES[kind]())
    def run(data: bytes) -> None:
        check_inline(kind, data)

    run()


@pytest.fixture(scope="module")
def pdf_sandbox():
    with LoaderSandbox(timeout=EXAMPLE_SECONDS, memory_mb=1024) as sb:
        yield sb


@pytest.fixture(scope="module")
def image_sandbox():
    with LoaderSandbox(timeout=EXAMPLE_SECONDS * 3, memory_mb=2048) as sb:  # onnxruntime maps ~1.6 GB
        yield sb


@pytest.mark.parametrize("kind", ["pdf", "image"])
def test_fuzz_sandboxed(request, kind):
    sb = request.getfixturevalue(f"{kind}_sandbox")

    @FUZZ
    @given(STRATEGIES[kind]())
    def run(data: bytes) -> None:
        check_sandboxed(sb, kind, data)

    run()


def _regression_files() -> list[Path]:
    return sorted(p for p in REGRESSIONS.rglob("*") if p.is_file() and p.parent.name in SUFFIX)


@pytest.mark.parametrize("path", _regression_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_regressions_replay(path, request):
    kind = path.parent.name
    pdf_sandbox = request.getfixturevalue("image_sandbox" if kind == "image" else "pdf_sandbox")
    data = path.read_bytes()
    if kind in ("pdf", "image"):
        check_sandboxed(pdf_sandbox, kind, data, save=False)
    else:
        check_inline(kind, data, save=False)
    # and the whole path, through load_file in a worker, never reports a crash or stray exception
    with (
        contextlib.nullcontext(pdf_sandbox)
        if kind in ("pdf", "image")
        else LoaderSandbox(timeout=EXAMPLE_SECONDS) as sb
    ):
        try:
            sb.load(path)
        except LoadError as e:
            assert not str(e).startswith(("internal error", "parser crashed", "timed out")), e
