"""Build a folder of hostile and broken files beside good ones (for tests/test_hostile.py and benchmarks/hostile.py).

    >>> cases = build_hostile_folder(Path("/tmp/hostile"))      # doctest: +SKIP
    >>> cases["encrypted.pdf"].outcome, cases["encrypted.pdf"].reason  # doctest: +SKIP
    ('failed', 'encrypted PDF \\\\(password required\\\\)')

Each entry says what a correct ingest does with the file: "ok" (searchable by its `marker` word), "failed" or
"skipped", with a regular expression the reported reason must match. Everything is generated here (nothing is
downloaded); the bombs are small on disk: a FlateDecode stream that inflates to BOMB_GB GiB, a DOCX member that
inflates to 250 MB (and one whose zip header lies about its size), a billion-laughs entity bomb in a DOCX and in
HTML; the same bombs in XLSX/PPTX/EPUB, a PNG claiming 40 gigapixels and a broken mail (`good_new_formats`).
`big_mb` makes a sparse text file of that size (skipped when it exceeds max_file_mb).

Limits: POSIX only (symlinks, FIFO); run as root, a chmod 000 file is still readable, so it is not built here
(tests/test_hostile.py checks it in a process that dropped its privileges).
"""

from __future__ import annotations

import functools
import io
import os
import random
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

BOMB_GB = 2


@dataclass(frozen=True)
class Case:
    outcome: str  # "ok" | "failed" | "skipped"
    reason: str = ""  # regex the reason must match (failed/skipped)
    marker: str = ""  # a word only this file holds (ok)


GOOD_EN = """# Zephyr maintenance guide

The zephyrquartz procedure resets the controller. Run `zq-reset --all` after a firmware update and wait for the
green light before you reconnect the cables.

## Backups

Keep two copies of the configuration: one on the device, one off site.
"""


def _pdf(objects: list[bytes], root: int = 1) -> bytes:
    """A PDF with a correct xref table around `objects` (object i+1 is objects[i])."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for o in offsets:
        out += b"%010d 00000 n \n" % o
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, root, xref)
    return bytes(out)


def _stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s >>\nstream\n" % (len(data), extra) + data + b"\nendstream"


_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


@functools.lru_cache(maxsize=1)
def flate_bomb_stream(gib: int = BOMB_GB) -> bytes:
    """zlib data (~2 MB) that inflates to `gib` GiB: a text line, then spaces (PDF whitespace).

    Built without compressing gigabytes: after a full flush the compressor's state is reset, so every further
    16 MiB block of spaces compresses to the same bytes, which are repeated; the Adler-32 trailer is computed."""
    head, block, n = b"BT /F1 12 Tf 72 700 Td (flatebomb) Tj ET\n", b" " * (16 << 20), gib * 64
    c = zlib.compressobj(9)
    start = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    repeat = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.flush(zlib.Z_FINISH)[:-4]  # the empty last block, without the (wrong) checksum
    adler = zlib.adler32(head)
    for _ in range(n):
        adler = zlib.adler32(block, adler)
    return start + repeat * n + end + adler.to_bytes(4, "big")


def flate_bomb_pdf() -> bytes:
    return _pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
            _stream(flate_bomb_stream(), b"/Filter /FlateDecode"),
            _FONT,
        ]
    )


def reference_loop_pdf() -> bytes:
    """A Pages tree that contains itself and its parent, an object that is a reference to itself, and a stream
    whose /Length is that object."""
    return _pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R /Self 1 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R 2 0 R] /Count 3 >>",
            b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R 4 0 R] /Count 2 >>",
            b"<< /Type /Page /Parent 3 0 R /MediaBox [0 0 612 792] /Contents 5 0 R /Resources << /Font << /F1 7 0 R >> >> >>",
            b"<< /Length 6 0 R >>\nstream\nBT /F1 12 Tf 72 700 Td (loop) Tj ET\nendstream",
            b"6 0 R",
            _FONT,
        ]
    )


def good_pdf(pages: int = 3, marker: str = "pdfmarkerokapi") -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for i in range(pages):
        pdf.add_page()
        pdf.multi_cell(0, 8, text=f"Page {i + 1}. The {marker} setting controls the retry budget. " * 6)
    return bytes(pdf.output())


def encrypted_pdf(password: str = "s3cret-pass") -> bytes:
    """A real encrypted PDF (RC4-128: AES would need the `cryptography` package) with a non-empty user password."""
    import pypdf

    reader = pypdf.PdfReader(io.BytesIO(good_pdf(1, "encryptedmarker")))
    w = pypdf.PdfWriter()
    for p in reader.pages:
        w.add_page(p)
    w.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


_CT = (
    b'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    b'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    b'<Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" '
    b'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)
_RELS = (
    b'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/'
    b'relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    b'relationships/officeDocument" Target="word/document.xml"/></Relationships>'
)
_W = b'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def _docx(document_xml_parts, lie_size: int | None = None) -> bytes:
    """A minimal DOCX; `document_xml_parts` is an iterable of byte strings (streamed, so it may be huge)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CT)
        z.writestr("_rels/.rels", _RELS)
        with z.open("word/document.xml", "w", force_zip64=True) as f:
            for part in document_xml_parts:
                f.write(part)
    data = buf.getvalue()
    if lie_size is not None:  # claim a tiny uncompressed size in both headers: inflating must stop there
        data = _patch_zip_size(data, "word/document.xml", lie_size)
    return data


def _patch_zip_size(data: bytes, name: str, size: int) -> bytes:
    """Rewrite the uncompressed size of member `name` in its local header and central directory entry."""
    out = bytearray(data)
    raw = name.encode()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        local = z.getinfo(name).header_offset
    central = next(i for i in _find_all(out, b"PK\x01\x02") if out[i + 46 : i + 46 + len(raw)] == raw)
    for header, size_at, name_at in ((local, 22, 30), (central, 24, 46)):
        extra_at = header + name_at + len(raw)
        if (
            out[header + size_at : header + size_at + 4] == b"\xff\xff\xff\xff"
            and out[extra_at : extra_at + 2] == b"\x01\x00"
        ):
            out[extra_at + 4 : extra_at + 12] = size.to_bytes(8, "little")  # zip64 extra: the real size lives here
        else:
            out[header + size_at : header + size_at + 4] = size.to_bytes(4, "little")
    return bytes(out)


def _find_all(data: bytearray, needle: bytes):
    i = data.find(needle)
    while i >= 0:
        yield i
        i = data.find(needle, i + 1)


def good_docx(marker: str = "docxmarkerbanjo") -> bytes:
    body = (
        b"<w:document "
        + _W
        + b"><w:body><w:p><w:r><w:t>The "
        + marker.encode()
        + b" checklist: drain the tank before winter.</w:t></w:r></w:p></w:body></w:document>"
    )
    return _docx([body])


def docx_zip_bomb(mb: int = 250) -> bytes:
    head = b"<w:document " + _W + b"><w:body><w:p><w:r><w:t>bomb"
    return _docx([head, *(b" " * (1 << 20) for _ in range(mb)), b"</w:t></w:r></w:p></w:body></w:document>"])


def docx_lying_zip(mb: int = 64) -> bytes:
    head = b"<w:document " + _W + b"><w:body><w:p><w:r><w:t>liar"
    return _docx(
        [head, *(b" " * (1 << 20) for _ in range(mb)), b"</w:t></w:r></w:p></w:body></w:document>"], lie_size=2000
    )


_LAUGHS = (
    b'<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, (b"&lol%s;" % (str(i - 1).encode() if i > 1 else b"")) * 10) for i in range(1, 10)
    )
    + b"]>"
)


def docx_entity_bomb() -> bytes:
    return _docx(
        [
            b'<?xml version="1.0"?>'
            + _LAUGHS
            + b"<w:document "
            + _W
            + b"><w:body><w:p><w:r><w:t>&lol9;</w:t></w:r></w:p></w:body></w:document>"
        ]
    )


def html_entity_bomb() -> bytes:
    return (
        b'<?xml version="1.0"?>' + _LAUGHS + b"<html><head><title>laughs</title></head><body><p>htmlbombmarker "
        b"&lol9;</p></body></html>"
    )


def _zip(members: dict[str, object]) -> bytes:
    """A zip of `members` (bytes, or an iterable of byte strings streamed into the member)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            if isinstance(data, bytes):
                z.writestr(name, data)
            else:
                with z.open(name, "w", force_zip64=True) as f:
                    for part in data:
                        f.write(part)
    return buf.getvalue()


def ooxml_bomb(kind: str, mb: int = 250, entity: bool = False) -> bytes:
    """An XLSX/PPTX whose main part inflates to `mb` MB of spaces, or (entity=True) carries a billion laughs."""
    main = {"xlsx": "xl/workbook.xml", "pptx": "ppt/presentation.xml"}[kind]
    head = (b'<?xml version="1.0"?>' + _LAUGHS + b"<root>&lol9;</root>") if entity else b"<root>"
    body = [head] if entity else [head, *(b" " * (1 << 20) for _ in range(mb)), b"</root>"]
    return _zip({"[Content_Types].xml": _CT, "_rels/.rels": _RELS, main: body})


def epub_bomb(entity: bool = False) -> bytes:
    container = (
        b'<?xml version="1.0"?><container xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
        b'<rootfile full-path="c.opf"/></rootfiles></container>'
    )
    opf = (
        b'<package xmlns="http://www.idpf.org/2007/opf"><manifest><item id="a" href="a.xhtml" media-type='
        b'"application/xhtml+xml"/></manifest><spine><itemref idref="a"/></spine></package>'
    )
    chapter = (
        [b'<?xml version="1.0"?>' + _LAUGHS + b"<html><body><p>&lol9;</p></body></html>"]
        if entity
        else [b"<html><body><p>epubbomb", *(b" " * (1 << 20) for _ in range(250)), b"</p></body></html>"]
    )
    return _zip(
        {"mimetype": b"application/epub+zip", "META-INF/container.xml": container, "c.opf": opf, "a.xhtml": chapter}
    )


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    import struct

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def good_new_formats(put, rng: random.Random) -> None:
    """The new formats' good files and their hostile twins (tests/formatgen.py builds the good ones)."""
    from formatgen import make_eml, make_epub, make_pptx, make_xlsx

    put(
        "good.pptx",
        make_pptx([("Pelican deck", ["The pptxmarkerpelican slide."], "")]),
        Case("ok", marker="pptxmarkerpelican"),
    )
    put(
        "good.xlsx",
        make_xlsx({"Sheet": [["key", "value"], ["xlsxmarkerlynx", "1"]]}),
        Case("ok", marker="xlsxmarkerlynx"),
    )
    put("good.csv", b"key,value\ncsvmarkerotter,2\n", Case("ok", marker="csvmarkerotter"))
    put("good.epub", make_epub("B", [("One", "The epubmarkerheron chapter.")]), Case("ok", marker="epubmarkerheron"))
    put("good.eml", make_eml("Hello", "The emlmarkerbadger mail."), Case("ok", marker="emlmarkerbadger"))
    put("zipbomb.xlsx", ooxml_bomb("xlsx"), Case("failed", r"zip bomb\? \(250 MB uncompressed > 200 MB\)"))
    put("entitybomb.xlsx", ooxml_bomb("xlsx", entity=True), Case("failed", r"XLSX part .* has a DTD"))
    put("zipbomb.pptx", ooxml_bomb("pptx"), Case("failed", r"zip bomb\?"))
    put("entitybomb.pptx", ooxml_bomb("pptx", entity=True), Case("failed", r"PPTX part .* has a DTD"))
    put("zipbomb.epub", epub_bomb(), Case("failed", r"zip bomb\?"))
    put("entitybomb.epub", epub_bomb(entity=True), Case("failed", r"EPUB part .* has a DTD"))
    put("pixelbomb.png", png_claiming(200_000, 200_000), Case("failed", r"too large .*decompression bomb"))
    put("truncated.png", png_claiming(64, 64)[:-30], Case("failed", r"corrupt image|not an image"))
    put("garbage.xlsx", b"PK\x03\x04" + rng.randbytes(5000), Case("failed", r"corrupt XLSX"))
    put(
        "broken.eml",
        b'From: nobody\nContent-Type: multipart/mixed; boundary="x"\n\n--x\nContent-Type: '
        b"text/plain; charset=no-such\nContent-Transfer-Encoding: base64\n\n!!!not base64 emlbrokenmarker",
        Case("ok", marker="nobody"),
    )


def build_hostile_folder(dest: Path, *, big_mb: int = 200, outside: Path | None = None) -> dict[str, Case]:
    """Write the hostile folder into `dest` (created); returns {file name: expected Case}.

    `outside` is a folder outside `dest` for the symlink that points out (default: dest's parent)."""
    dest = Path(os.path.abspath(dest))
    dest.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    cases: dict[str, Case] = {}

    def put(name: str, data: bytes, case: Case) -> None:
        (dest / name).write_bytes(data)
        cases[name] = case

    # good files, each with a marker word only it holds
    put("good_en.md", GOOD_EN.encode(), Case("ok", marker="zephyrquartz"))
    put(
        "good_zh.txt",
        "量子蜂鸟手册\n\n蜂鸟模块的 hummingzh 参数控制重试次数。安装之后请重启服务。\n".encode(),
        Case("ok", marker="hummingzh"),
    )
    put(
        "good_gb18030.txt",
        "文件系统表\n\n/etc/fstab 描述启动时挂载的文件系统，gbmarkerfstab 选项见手册。\n".encode("gb18030"),
        Case("ok", marker="gbmarkerfstab"),
    )
    put(
        "good_utf16.txt",
        "UTF-16 notes: the utfsixteenmarker flag enables verbose logs.\n".encode("utf-16"),
        Case("ok", marker="utfsixteenmarker"),
    )
    put(
        "good.html",
        b"<html><head><title>Guide</title></head><body><h1>Setup</h1><p>The htmlmarkerkiwi option "
        b"picks the mirror.</p></body></html>",
        Case("ok", marker="htmlmarkerkiwi"),
    )
    put("good.docx", good_docx(), Case("ok", marker="docxmarkerbanjo"))
    put("good.pdf", good_pdf(), Case("ok", marker="pdfmarkerokapi"))

    # broken and hostile PDFs
    whole = good_pdf(6, "truncatedmarker")
    put("truncated.pdf", whole[: len(whole) * 2 // 3], Case("failed", r"corrupt PDF|no text"))
    put("garbage.pdf", b"%PDF-1.7\n" + rng.randbytes(20000), Case("failed", r"corrupt PDF"))
    put("not_a_pdf.pdf", b"Just text pretending to be a PDF.\n", Case("failed", r"not a PDF \(no %PDF- header\)"))
    put("encrypted.pdf", encrypted_pdf(), Case("failed", r"^encrypted PDF \(password required\)$"))
    put("flatebomb.pdf", flate_bomb_pdf(), Case("failed", r"too much memory|out of memory|timed out"))
    put("refloop.pdf", reference_loop_pdf(), Case("failed", r"corrupt PDF|no text|parse error"))

    # DOCX bombs
    put("zipbomb.docx", docx_zip_bomb(), Case("failed", r"zip bomb\? \(250 MB uncompressed > 200 MB\)"))
    put("ratiobomb.docx", docx_zip_bomb(60), Case("failed", r"zip bomb\? \(word/document.xml inflates \d+x\)"))
    put("lyingzip.docx", docx_lying_zip(), Case("failed", r"docx parse error|corrupt DOCX"))
    put("entitybomb.docx", docx_entity_bomb(), Case("failed", r"has a DTD \(XML entity bomb\?\)"))
    put("entitybomb.html", html_entity_bomb(), Case("ok", marker="htmlbombmarker"))

    # text that is not what it claims
    put("binary.txt", b"\x7fELF\x02\x01\x01" + rng.randbytes(30000), Case("failed", r"binary file"))
    put("random_bytes.txt", rng.randbytes(30000), Case("failed", r"binary file|not text|garbage|undecodable"))
    put(
        "invalid_utf8.txt",
        b"Valid start invalidutfmarker then \xff\xfe\xc3\x28 broken \xa0\xa1 bytes.\n" * 20,
        Case("ok", marker="invalidutfmarker"),
    )
    put("empty.txt", b"", Case("failed", r"^empty file$"))
    put("whitespace.md", b" \n\t\n" * 100, Case("failed", r"^no text$"))

    # the file system's own traps
    big = dest / "huge.txt"
    with big.open("wb") as f:
        f.truncate(big_mb << 20)  # sparse: 200 MB that take no disk
    cases["huge.txt"] = Case("failed", rf"file too large \({big_mb} MB > \d+ MB\)")
    os.symlink("selfloop.txt", dest / "selfloop.txt")
    cases["selfloop.txt"] = Case("skipped", r"symlink")
    os.symlink(".", dest / "dirloop")
    cases["dirloop"] = Case("skipped", r"symlink to a folder")
    outside = Path(os.path.abspath(outside or dest.parent))
    (outside / "outside_secret.txt").write_text("outsidesecretmarker must never be indexed\n")
    os.symlink(outside / "outside_secret.txt", dest / "outside_link.txt")
    cases["outside_link.txt"] = Case("skipped", r"symlink")
    os.mkfifo(dest / "fifo.txt")
    cases["fifo.txt"] = Case("skipped", r"not a regular file")
    put("photo.jpg", b"\xff\xd8\xff\xe0" + rng.randbytes(1000), Case("failed", r"corrupt image|not an image"))
    put("song.mp3", b"ID3" + rng.randbytes(1000), Case("skipped", r"unsupported file type \.mp3"))
    good_new_formats(put, rng)
    return cases
