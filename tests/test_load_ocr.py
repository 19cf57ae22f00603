"""OCR: scanned PDFs and image files through the sandbox, reading order, limits, and (slow) accuracy figures.

    python -m pytest tests/test_load_ocr.py -m slow -s     # prints pages/s and character accuracy per case

Pages are rendered here from known text (tests/formatgen.py), so accuracy is measured against the text itself:
1 - edit distance / length, on the text with whitespace collapsed (Chinese) or kept (English word breaks matter).
"""

from __future__ import annotations

import difflib
import io
import struct
import time
import zlib
from pathlib import Path

import pytest
from formatgen import cjk_font, font, images_to_pdf, render_text_image, scanned_pdf

from docqa.errors import LoadError
from docqa.load import load_file, ocr
from docqa.load.sandbox import LoaderSandbox

pytestmark = pytest.mark.skipif(not ocr.available(), reason="rapidocr-onnxruntime not installed")
needs_cjk = pytest.mark.skipif(cjk_font() is None, reason="no CJK font: apt-get install fonts-wqy-microhei")
SAMPLE = Path(__file__).resolve().parents[1] / "corpora" / "sample"

EN = (
    "The zephyr controller keeps two copies of its configuration. Run the reset tool after every firmware update "
    "and wait for the green light before you reconnect the cables."
)
ZH = "蜂鸟模块的参数控制重试次数。安装之后请重启服务，并检查日志中的错误信息。备份文件应当保存两份。"


def accuracy(truth: str, got: str, cjk: bool = False) -> float:
    norm = (lambda s: "".join(s.split())) if cjk else (lambda s: " ".join(s.split()))
    a, b = norm(truth), norm(got)
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def test_layout_orders_columns_and_joins_lines():
    lines = [
        (0, 0, 100, 10, "Title across the page"),
        (0, 20, 45, 30, "left column one"),
        (0, 32, 45, 42, "left col-"),
        (0, 44, 45, 54, "umn two"),
        (55, 20, 100, 30, "right column"),
        (55, 32, 100, 42, "还有中文"),
        (55, 44, 100, 54, "继续"),
    ]
    assert ocr.layout(lines) == "Title across the page\n\nleft column one left column two\n\nright column 还有中文继续"


def test_needs_ocr_rules():
    assert ocr.needs_ocr("", True) and not ocr.needs_ocr("", False)
    assert not ocr.needs_ocr("A real text layer with plenty of words on it.", True)
    assert ocr.needs_ocr("\ue000\ue001\ue002" * 10, True)  # private-use glyph codes: a broken font encoding


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (one tiny compressed row follows; nothing else is needed to lie)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_pixel_bomb_is_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header(100_000, 100_000))
    t = time.perf_counter()
    with pytest.raises(LoadError, match=r"too large \(100000x100000 .*decompression bomb"):
        load_file(p)
    assert time.perf_counter() - t < 2


def test_ocr_never(tmp_path):
    (tmp_path / "a.png").write_bytes(_png_header(10, 10))
    with pytest.raises(LoadError, match="OCR is off"):
        load_file(tmp_path / "a.png", ocr="never")
    (tmp_path / "s.pdf").write_bytes(images_to_pdf([render_text_image([EN], font("sans"))]))
    with pytest.raises(LoadError, match=r"no text \(scanned PDF"):
        load_file(tmp_path / "s.pdf", ocr="never")
    with pytest.raises(ValueError):
        LoaderSandbox(ocr="sometimes")


@needs_cjk
def test_scanned_bilingual_pdf_in_the_sandbox(tmp_path):
    p = tmp_path / "scan.pdf"
    p.write_bytes(scanned_pdf([("sans", EN), ("cjk", ZH), ("serif", "Page three: the backup tape rotates weekly.")]))
    with LoaderSandbox(timeout=5, ocr_page_timeout=120) as sb:  # 5 s would not do for 3 pages: each gets its own
        doc = sb.load(p)
    assert doc.metadata["ocr_pages"] == [1, 2, 3] and [pg.number for pg in doc.pages] == [1, 2, 3]
    bounds = [pg.start for pg in doc.pages] + [len(doc.text)]
    pages = [doc.text[a:b] for a, b in zip(bounds, bounds[1:])]
    assert accuracy(EN, pages[0]) > 0.97, pages[0]
    assert accuracy(ZH, pages[1], cjk=True) > 0.95, pages[1]
    assert "backup tape rotates weekly" in pages[2]
    assert doc.page_at(doc.text.index("重启服务")) == 2


def test_ocr_page_timeout_is_per_page(tmp_path):
    p = tmp_path / "scan.pdf"
    p.write_bytes(scanned_pdf([("sans", EN)]))
    with LoaderSandbox(timeout=30, ocr_page_timeout=0.05) as sb:
        with pytest.raises(LoadError, match=r"timed out \(OCR page/image 1 took over 0.05s\)"):
            sb.load(p)


@needs_cjk
def test_photo_like_png_and_multiframe_tiff(tmp_path):
    img = render_text_image([EN, ZH], cjk_font(), skew=2, noise=0.002)
    img.save(tmp_path / "photo.png")
    doc = load_file(tmp_path / "photo.png")
    assert doc.metadata["format"] == "image" and accuracy(EN + ZH, doc.text, cjk=True) > 0.95, doc.text
    frames = [render_text_image([t], cjk_font()) for t in (EN, ZH)]
    frames[0].save(tmp_path / "two.tiff", save_all=True, append_images=frames[1:])
    doc = load_file(tmp_path / "two.tiff")
    assert [p.number for p in doc.pages] == [1, 2] and doc.page_at(doc.text.index("重启")) == 2


# ---------------------------------------------------------------------------------------------- the figures


def _cases():
    import numpy as np
    import pypdfium2 as pdfium

    # rendered cases hold their text three times (three paragraphs); the PDF pages hold their own text layer
    EN3, ZH3 = " ".join([EN] * 3), "".join([ZH] * 3)
    cases = [
        ("en DejaVu Sans", EN3, np.asarray(render_text_image([EN] * 3, font("sans"))), False),
        ("en DejaVu Serif", EN3, np.asarray(render_text_image([EN] * 3, font("serif"))), False),
        (
            "en Sans, 2° skew + specks",
            EN3,
            np.asarray(render_text_image([EN] * 3, font("sans"), skew=2, noise=0.002)),
            False,
        ),
    ]
    if cjk_font():
        cases += [
            ("zh WenQuanYi Micro Hei", ZH3, np.asarray(render_text_image([ZH] * 3, cjk_font())), True),
            (
                "zh Micro Hei, 2° skew + specks",
                ZH3,
                np.asarray(render_text_image([ZH] * 3, cjk_font(), skew=2, noise=0.002)),
                True,
            ),
        ]
    from PIL import Image

    def jpeg(img, quality: int = 75):  # what a scanner or a phone stores: ringing around every glyph
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    cases.append(("en Sans, JPEG q75", EN3, jpeg(render_text_image([EN] * 3, font("sans"))), False))
    if cjk_font():
        cases.append(("zh Micro Hei, JPEG q75", ZH3, jpeg(render_text_image([ZH] * 3, cjk_font())), True))
    for name, page, cjk in (("debian-faq.en.pdf", 20, False), ("debian-faq-ch9-11.zh-cn.pdf", 1, True)):
        pdf = pdfium.PdfDocument(str(SAMPLE / name))
        pg = pdf[page]
        truth = pg.get_textpage().get_text_bounded()
        img = np.asarray(pg.render(scale=ocr.RENDER_DPI / 72).to_pil().convert("RGB"))
        cases.append(
            (f"{'zh' if cjk else 'en'} {name} p{page + 1} (its own font, {ocr.RENDER_DPI} dpi)", truth, img, cjk)
        )
        pdf.close()
    return cases


@pytest.mark.slow
def test_ocr_figures():
    """Character accuracy and speed per case, with and without the text-direction classifier and binarisation."""
    cases = _cases()
    rows = []
    for cls, binarize in ((False, True), (True, True), (False, False)):
        total_t, total_pages = 0.0, 0
        for name, truth, img, cjk in cases:
            t = time.perf_counter()
            got = ocr.recognise(img, use_cls=cls, binarize=binarize)
            dt = time.perf_counter() - t
            total_t += dt
            total_pages += 1
            acc = accuracy(truth, got, cjk)
            rows.append(
                f"cls={cls!s:5} bin={binarize!s:5} {name:52} acc {acc:.4f}  {dt:5.1f}s  {img.shape[1]}x{img.shape[0]}"
            )
        rows.append(f"cls={cls!s:5} bin={binarize!s:5} {'== all':52} {total_pages / total_t:.3f} pages/s")
    print("\n" + "\n".join(rows))


def test_picture_only_slide_and_docx_are_ocrd(tmp_path):
    import docx
    from formatgen import make_pptx

    buf = io.BytesIO()
    render_text_image([EN], font("sans")).save(buf, "PNG")
    p = tmp_path / "deck.pptx"
    p.write_bytes(make_pptx([("Intro", ["Text slide."], "")], picture=buf.getvalue()))
    doc = load_file(p)
    assert doc.metadata["ocr_pages"] == [2] and doc.page_at(doc.text.index("firmware")) == 2
    assert doc.sections[1].path == ("Slide 2",) and accuracy(EN, doc.text[doc.pages[1].start :]) > 0.95
    d = docx.Document()
    buf.seek(0)
    d.add_picture(buf)
    out = io.BytesIO()
    d.save(out)
    (tmp_path / "scan.docx").write_bytes(out.getvalue())
    doc = load_file(tmp_path / "scan.docx")
    assert doc.metadata["ocr_pages"] == [1] and accuracy(EN, doc.text) > 0.95
