"""Build small, real files of every format docqa reads beyond text/PDF/HTML/DOCX, from known text, for the tests.

    >>> data = make_pptx([("Backups", ["Keep two copies."], "Say it twice.")])      # doctest: +SKIP
    >>> scanned = scanned_pdf([("en", "The quick brown fox.")])                     # doctest: +SKIP

Everything is generated (python-pptx, XlsxWriter, zipfile, email, fpdf2 + pypdfium2 + Pillow for the scans); nothing is
downloaded. `render_text_image` draws known text with a real font (DejaVu for Latin, WenQuanYi Micro Hei for Chinese
when installed: `apt-get install fonts-wqy-microhei`), so OCR accuracy can be measured against the text itself.
Limits: the Chinese scans need a CJK font; `cjk_font()` is None without one and the tests that need it skip.
"""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage
from pathlib import Path

FONTS = {
    "sans": "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "serif": "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "cjk": "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "cjk2": "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
}


def font(name: str) -> str | None:
    p = FONTS[name]
    return p if Path(p).exists() else None


def cjk_font() -> str | None:
    return font("cjk") or font("cjk2")


def render_text_image(
    paragraphs: list[str],
    font_path: str,
    size: int = 34,
    width: int = 1650,
    skew: float = 0.0,
    noise: float = 0.0,
    margin: int = 120,
):
    """An RGB Pillow image of `paragraphs`, wrapped to `width` px, at `size` px per em (34 px ~ 10 pt at 240 dpi...
    at 200 dpi a 12 pt line), optionally rotated by `skew` degrees and speckled with `noise` (share of pixels)."""
    import random

    from PIL import Image, ImageDraw, ImageFont

    f = ImageFont.truetype(font_path, size)
    lines: list[str] = []
    for para in paragraphs:
        cur = ""
        tokens = list(para) if not para.isascii() else para.split(" ")
        sep = "" if not para.isascii() else " "
        for tok in tokens:
            cand = (cur + sep + tok) if cur else tok
            if f.getlength(cand) > width - 2 * margin and cur:
                lines.append(cur)
                cur = tok
            else:
                cur = cand
        lines.append(cur)
        lines.append("")
    line_h = int(size * 1.6)
    height = max(2 * margin + line_h * len(lines), 400)
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    for i, ln in enumerate(lines):
        d.text((margin, margin + i * line_h), ln, font=f, fill=(20, 20, 20))
    if skew:
        img = img.rotate(skew, resample=Image.BICUBIC, expand=True, fillcolor="white")
    if noise:
        rng = random.Random(0)
        px = img.load()
        w, h = img.size
        for _ in range(int(w * h * noise)):
            px[rng.randrange(w), rng.randrange(h)] = (90, 90, 90)
    return img


def images_to_pdf(images, dpi: int = 200) -> bytes:
    """An image-only PDF (no text layer), one page per image, as a scanner writes it."""
    buf = io.BytesIO()
    first, rest = images[0], images[1:]
    first.save(buf, "PDF", save_all=True, append_images=rest, resolution=dpi)
    return buf.getvalue()


def scanned_pdf(pages: list[tuple[str, str]], dpi: int = 200) -> bytes:
    """[(font name, text)] -> an image-only PDF; each text is one page (paragraphs split on blank lines)."""
    imgs = []
    for fname, text in pages:
        path = cjk_font() if fname == "cjk" else font(fname)
        assert path, f"font {fname} not installed"
        imgs.append(render_text_image(text.split("\n\n"), path))
    return images_to_pdf(imgs, dpi)


def make_pptx(
    slides: list[tuple[str, list[str], str]], table: list[list[str]] | None = None, picture: bytes | None = None
) -> bytes:
    """(title, body paragraphs, notes) per slide; `table` goes on the last slide; `picture` adds a picture-only slide."""
    from pptx import Presentation
    from pptx.util import Inches

    prs = Presentation()
    for i, (title, body, notes) in enumerate(slides):
        s = prs.slides.add_slide(prs.slide_layouts[1])
        s.shapes.title.text = title
        tf = s.placeholders[1].text_frame
        tf.text = body[0] if body else ""
        for para in body[1:]:
            tf.add_paragraph().text = para
        if notes:
            s.notes_slide.notes_text_frame.text = notes
        if table and i == len(slides) - 1:
            shape = s.shapes.add_table(len(table), len(table[0]), Inches(0.5), Inches(5), Inches(9), Inches(1.5))
            for r, row in enumerate(table):
                for c, v in enumerate(row):
                    shape.table.cell(r, c).text = v
    if picture is not None:
        s = prs.slides.add_slide(prs.slide_layouts[6])
        s.shapes.add_picture(io.BytesIO(picture), Inches(0), Inches(0), width=Inches(10))
    buf = io.BytesIO()
    prs.save(buf)
    return buf.getvalue()


def make_xlsx(sheets: dict[str, list[list[object]]], formula: tuple[str, str, str, object] | None = None) -> bytes:
    """{sheet name: rows}; `formula` = (sheet, cell, formula, cached value) written with its cached result."""
    import xlsxwriter

    buf = io.BytesIO()
    wb = xlsxwriter.Workbook(buf, {"in_memory": True})
    for name, rows in sheets.items():
        ws = wb.add_worksheet(name)
        for r, row in enumerate(rows):
            for c, v in enumerate(row):
                ws.write(r, c, v)
        if formula and formula[0] == name:
            ws.write_formula(formula[1], formula[2], None, formula[3])
    wb.close()
    return buf.getvalue()


def make_epub(title: str, chapters: list[tuple[str, str]]) -> bytes:
    """An EPUB 3 book: (chapter title, paragraph text) per chapter."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip")
        z.writestr(
            "META-INF/container.xml",
            '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:'
            'tc:opendocument:xmlns:container"><rootfiles><rootfile full-path="OEBPS/content.opf" media-type='
            '"application/oebps-package+xml"/></rootfiles></container>',
        )
        items = "".join(
            f'<item id="c{i}" href="ch{i}.xhtml" media-type="application/xhtml+xml"/>' for i in range(len(chapters))
        )
        spine = "".join(f'<itemref idref="c{i}"/>' for i in range(len(chapters)))
        z.writestr(
            "OEBPS/content.opf",
            f'<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" '
            f'version="3.0"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>{title}</dc:title>'
            f"</metadata><manifest>{items}</manifest><spine>{spine}</spine></package>",
        )
        for i, (head, text) in enumerate(chapters):
            body = "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
            z.writestr(
                f"OEBPS/ch{i}.xhtml",
                f'<?xml version="1.0" encoding="utf-8"?><!DOCTYPE html><html xmlns='
                f'"http://www.w3.org/1999/xhtml"><head><title>{head}</title></head><body><h1>{head}</h1>'
                f"{body}</body></html>",
            )
    return buf.getvalue()


def make_eml(subject: str, body: str, attachments: list[tuple[str, bytes, str]] = (), html: str | None = None) -> bytes:
    """A MIME mail; attachments are (file name, bytes, "maintype/subtype")."""
    m = EmailMessage()
    m["Subject"] = subject
    m["From"] = "运维组 <ops@example.org>"
    m["To"] = "team@example.org"
    m["Date"] = "Tue, 01 Dec 2026 09:30:00 +0800"
    m.set_content(body)
    if html:
        m.add_alternative(html, subtype="html")
    for name, data, ctype in attachments:
        main, sub = ctype.split("/")
        m.add_attachment(data, maintype=main, subtype=sub, filename=name)
    return m.as_bytes()
