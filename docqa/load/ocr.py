"""OCR for pages without a usable text layer: RapidOCR (PP-OCRv4 Chinese+English) on onnxruntime's CPU build.

    >>> with ocr_mode("always"):                                  # doctest: +SKIP
    ...     text = recognise(image)                               # an RGB uint8 array -> reading-order text
    >>> needs_ocr("", has_images=True), needs_ocr("A real text layer with words.", has_images=True)
    (True, False)

The models come inside the rapidocr-onnxruntime wheel: nothing is downloaded at run time. The engine is built once
per process (~1 s) and kept. Reading order: recognised lines are grouped into blocks (a line joins the block above
it when it overlaps it horizontally and the gap is under 0.8 line heights), blocks are ordered by a recursive XY
cut (column gaps first, left to right, then full-width horizontal gaps, top to bottom), lines inside a block are joined (no space
between two CJK characters, a rejoined word where a line ends in a hyphen), blocks are separated by a blank line.

`ocr_mode` ("auto" | "always" | "never", the `ocr` setting) is a context the loaders read: auto = OCR a page only
when its text layer is empty or garbage (and it holds an image); always = OCR every PDF page and image; never = no
OCR (image files then fail with LoadError). `set_heartbeat` lets the sandbox worker report each page, so the parent
gives every page its own time budget instead of one budget for the whole file.

Each image is binarised (adaptive threshold) before recognition; see BINARIZE for why.
Limits: horizontal text only (the direction classifier, off by default, fixes 180° lines, not vertical CJK);
images above MAX_PIXELS are refused before decoding (decompression bombs); pages are rendered so the long side is
at most MAX_SIDE pixels; at ~120 dpi a dense page takes 5-20 s on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Callable, Iterator
from typing import Any

from docqa.errors import LoadError

OCR_MODES = ("auto", "always", "never")
MAX_PIXELS = 60_000_000  # ~ an A4 page at 900 dpi; a decompression bomb claims far more
MAX_SIDE = 2400  # the recogniser works on ~48 px high lines; more resolution only costs time
RENDER_DPI = 120  # measured: PP-OCRv4 reads 10-11 pt text best around here (see tests/test_load_ocr.py)
MIN_TEXT_CHARS = 20  # a text layer with fewer visible characters than this is treated as absent
USE_CLS = False
# Adaptive binarisation first: JPEG ringing around glyphs makes PP-OCRv4 drop the spaces between English words
# ("Thezephyrcontroller..."), and a global (Otsu) threshold wipes out unevenly lit photos; measured in
# tests/test_load_ocr.py.
BINARIZE = True

_mode: contextvars.ContextVar[str] = contextvars.ContextVar("docqa_ocr_mode", default="auto")
_heartbeat: Callable[[str], None] | None = None
_engine: Any = None
_CJK = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]")


@contextlib.contextmanager
def ocr_mode(mode: str) -> Iterator[None]:
    """Run the loaders inside with OCR `mode` ("auto", "always" or "never")."""
    if mode not in OCR_MODES:
        raise ValueError(f"ocr must be one of {', '.join(OCR_MODES)}, got {mode!r}")
    token = _mode.set(mode)
    try:
        yield
    finally:
        _mode.reset(token)


def current_mode() -> str:
    return _mode.get()


def set_heartbeat(fn: Callable[[str], None] | None) -> None:
    """`fn(what)` is called before each page is recognised (the sandbox worker sends it to the parent)."""
    global _heartbeat
    _heartbeat = fn


def beat(what: str) -> None:
    if _heartbeat is not None:
        _heartbeat(what)


def available() -> bool:
    try:
        import rapidocr_onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def engine() -> Any:
    """The process-wide RapidOCR instance (LoadError when the package is missing)."""
    global _engine
    if _engine is None:
        try:
            import logging

            from rapidocr_onnxruntime import RapidOCR
        except ImportError:
            raise LoadError("OCR needs rapidocr-onnxruntime (pip install rapidocr-onnxruntime)") from None
        _engine = RapidOCR()
        logging.getLogger("RapidOCR").setLevel(logging.WARNING)
    return _engine


def needs_ocr(text: str, has_images: bool) -> bool:
    """Under `auto`: does a page with text layer `text` need OCR? Only pages holding an image, whose text is
    (nearly) empty or mostly unprintable (a broken font encoding gives control and private-use characters)."""
    if not has_images:
        return False
    visible = [c for c in text if not c.isspace()]
    if len(visible) < MIN_TEXT_CHARS:
        return True
    import unicodedata

    bad = sum(unicodedata.category(c) in ("Cc", "Co", "Cn", "Cs") or c == "\ufffd" for c in visible)
    return bad > 0.3 * len(visible)


def check_pixels(width: int, height: int, what: str = "image") -> None:
    if width <= 0 or height <= 0:
        raise LoadError(f"{what} has no pixels")
    if width * height > MAX_PIXELS:
        raise LoadError(
            f"{what} too large ({width}x{height} = {width * height / 1e6:.0f} MP > "
            f"{MAX_PIXELS / 1e6:.0f} MP; decompression bomb?)"
        )


def _binarize(arr: Any) -> Any:
    import cv2
    import numpy as np

    gray = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    bw = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, 31, 15)
    return np.ascontiguousarray(np.stack([bw] * 3, axis=-1))


def recognise(image: Any, use_cls: bool | None = None, binarize: bool | None = None) -> str:
    """OCR one RGB (H, W, 3) uint8 array into reading-order text ("" when nothing is found)."""
    import numpy as np

    arr = np.ascontiguousarray(image[:, :, :3])
    h, w = arr.shape[:2]
    check_pixels(w, h)
    if max(h, w) > MAX_SIDE:
        import cv2

        f = MAX_SIDE / max(h, w)
        arr = cv2.resize(arr, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_AREA)
    if binarize if binarize is not None else BINARIZE:
        arr = _binarize(arr)
    # RapidOCR expects OpenCV's BGR order
    result, _ = engine()(arr[:, :, ::-1].copy(), use_cls=USE_CLS if use_cls is None else use_cls)
    lines = []
    for box, text, _score in result or []:
        text = " ".join(str(text).split())
        if not text:
            continue
        xs, ys = [p[0] for p in box], [p[1] for p in box]
        lines.append((min(xs), min(ys), max(xs), max(ys), text))
    return layout(lines)


# ---------------------------------------------------------------------------------------------- reading order

Line = tuple[float, float, float, float, str]  # x0, y0, x1, y1, text


def _join(a: str, b: str) -> str:
    if a.endswith("-") and b[:1].islower() and len(a) > 1 and a[-2].isalpha():
        return a[:-1] + b
    if _CJK.match(a[-1:]) and _CJK.match(b[:1]):
        return a + b
    return a + " " + b


def _blocks(lines: list[Line]) -> list[list[Line]]:
    blocks: list[list[Line]] = []
    for ln in sorted(lines, key=lambda t: (t[1], t[0])):
        x0, y0, x1, y1, _ = ln
        h = max(y1 - y0, 1.0)
        best = None
        for b in blocks:
            bx0, bx1 = min(t[0] for t in b), max(t[2] for t in b)
            last = b[-1]
            gap = y0 - last[3]
            overlap = min(x1, bx1) - max(x0, bx0)
            if -0.5 * h <= gap <= 0.8 * h and overlap > 0.3 * min(x1 - x0, bx1 - bx0):
                best = b
        if best is None:
            blocks.append([ln])
        else:
            best.append(ln)
    return blocks


def _bbox(b: list[Line]) -> tuple[float, float, float, float]:
    return min(t[0] for t in b), min(t[1] for t in b), max(t[2] for t in b), max(t[3] for t in b)


def _cut(items: list[tuple[tuple[float, float, float, float], list[Line]]], axis: int) -> list[list[Any]]:
    """Split items into groups separated by a gap along `axis` (1 = y: rows, 0 = x: columns) that no item spans."""
    items = sorted(items, key=lambda it: it[0][axis])
    groups: list[list[Any]] = []
    end = None
    for it in items:
        lo, hi = it[0][axis], it[0][axis + 2]
        if end is None or lo > end:
            groups.append([it])
            end = hi
        else:
            groups[-1].append(it)
            end = max(end, hi)
    return groups


def _order(items: list[Any], depth: int = 0) -> list[list[Line]]:
    if len(items) <= 1 or depth > 20:
        return [b for _, b in sorted(items, key=lambda it: (it[0][1], it[0][0]))]
    # columns first: a y cut between two columns' paragraphs would interleave them; a full-width title blocks
    # the x cut, so the y cut takes it off and the columns are found one level down
    for axis in (0, 1):
        groups = _cut(items, axis)
        if len(groups) > 1:
            return [b for g in groups for b in _order(g, depth + 1)]
    return [b for _, b in sorted(items, key=lambda it: (it[0][1], it[0][0]))]


def layout(lines: list[Line]) -> str:
    """Lines with their boxes -> text in reading order (blocks by columns, blank line between blocks).

    >>> layout([(0, 0, 40, 10, "left one"), (60, 0, 100, 10, "right"), (0, 12, 40, 22, "left two")])
    'left one left two\\n\\nright'
    """
    blocks = _order([(_bbox(b), b) for b in _blocks(lines)])
    out = []
    for b in blocks:
        text = ""
        for ln in sorted(b, key=lambda t: t[1]):
            text = _join(text, ln[4]) if text else ln[4]
        out.append(text)
    return "\n\n".join(out)
