"""Image files (.png .jpg .jpeg .tif .tiff .webp .bmp) through OCR: one page per frame.

    >>> doc = load_image(Path("receipt.png"))              # doctest: +SKIP
    >>> doc.metadata["format"], doc.metadata["ocr_pages"], doc.pages   # doctest: +SKIP
    ('image', [1], [])

Pillow reads the header first; an image above ocr.MAX_PIXELS (or a frame count above MAX_FRAMES) is refused
before any pixel is decoded, so a decompression bomb costs nothing. A multi-frame TIFF becomes one page per frame
(`Page(n, ...)` 1-based, so citations say `scan.tif:3`); a single image has no pages. EXIF orientation is applied
(phone photos are often stored sideways). Under `ocr = "never"` an image gives LoadError("OCR is off ...").
`images_to_text` is shared with DOCX/PPTX, which OCR their embedded pictures when a slide or document has no text.
Limits: animated GIF is not read; text smaller than ~8 px high in the decoded image is not recognised.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from docqa.documents import Document, Page
from docqa.errors import LoadError
from docqa.load import ocr

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"})
MAX_FRAMES = 200
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", b"RIFF")


def _open(source: Any) -> Any:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # our own, lower check below says why, instead of a warning or a bare error
    try:
        img = Image.open(source)
    except UnidentifiedImageError:
        raise LoadError("not an image Pillow can read") from None
    ocr.check_pixels(*img.size)
    return img


def _rgb(frame: Any) -> Any:
    import numpy as np
    from PIL import ImageOps

    frame = ImageOps.exif_transpose(frame) if hasattr(frame, "getexif") else frame
    if frame.mode not in ("RGB", "L"):
        if "A" in frame.getbands() or frame.mode == "P":  # transparent areas become white, not black
            frame = frame.convert("RGBA")
            from PIL import Image

            bg = Image.new("RGBA", frame.size, (255, 255, 255, 255))
            frame = Image.alpha_composite(bg, frame)
    return np.asarray(frame.convert("RGB"))


def frames_text(img: Any, what: str) -> list[str]:
    """OCR every frame of an opened Pillow image."""
    n = getattr(img, "n_frames", 1)
    if n > MAX_FRAMES:
        raise LoadError(f"{what} has too many frames ({n} > {MAX_FRAMES})")
    out = []
    for i in range(n):
        if n > 1:
            img.seek(i)
            ocr.check_pixels(*img.size)
        ocr.beat(f"{what} frame {i + 1}")
        out.append(ocr.recognise(_rgb(img)))
    return out


def images_to_text(blobs: list[bytes]) -> str:
    """OCR embedded pictures (bytes of PNG/JPEG/...) in order; unreadable or oversized ones are skipped."""
    if ocr.current_mode() == "never" or not ocr.available():
        return ""
    texts = []
    for data in blobs:
        if not data.startswith(_MAGIC):
            continue  # EMF/WMF/SVG: vector formats Pillow cannot rasterise
        try:
            with _open(io.BytesIO(data)) as img:
                texts.extend(t for t in frames_text(img, "embedded image") if t.strip())
        except LoadError:
            continue
        except (OSError, ValueError, SyntaxError):  # a damaged picture must not cost the rest of the file
            continue
    return "\n\n".join(texts)


def load_image(path: Path) -> Document:
    """OCR an image file into a Document with one page per frame."""
    if ocr.current_mode() == "never":
        raise LoadError("OCR is off (ocr = never): an image file has no text without it")
    try:
        img = _open(path)
    except OSError as e:
        raise LoadError(f"corrupt image ({e})"[:300]) from None
    with img:
        fmt = img.format or "image"
        try:
            texts = frames_text(img, "image")
        except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt pixel data
            raise LoadError(f"corrupt image ({type(e).__name__}: {e})"[:300]) from None
    parts, pages, pos = [], [], 0
    for i, t in enumerate(texts):
        if i:
            parts.append("\n\n")
            pos += 2
        pages.append(Page(i + 1, pos))
        parts.append(t)
        pos += len(t)
    meta = {"format": "image", "image_format": fmt, "ocr_pages": [p.number for p in pages]}
    if len(pages) == 1:
        pages = []  # one picture has no pages to cite: "photo.png", not "photo.png:1"
    return Document(source=str(path), text="".join(parts), pages=pages, metadata=meta)
