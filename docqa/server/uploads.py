"""Multipart uploads streamed to disk while hashing, with the size limit enforced as the bytes arrive.

The request body is fed to python-multipart's push parser piece by piece as it is received, so a 2 GB upload
never sits in memory, the handler does not wait for the whole body before checking the limit, and other requests
keep being served between pieces. Each file part goes to a temporary file in the knowledge base's folder with its
SHA-256 computed on the way; a part over the limit stops the request with 413 and removes what was written.

File names: `filename*=UTF-8''...` (RFC 5987) when the client sends it, else `filename` as UTF-8 (what browsers
send), else Latin-1; then only the last path component is kept, control characters are dropped and the name is
NFC-normalised, so 中文 names arrive as typed and `../../x` cannot leave the folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request

from .errors import BadRequest, TooLarge

FIELD = "files"


@dataclass
class Received:
    name: str
    tmp_path: Path
    size: int = 0
    sha256: str = ""
    _hash: object = field(default_factory=hashlib.sha256, repr=False)


def safe_name(raw: str) -> str:
    """The last path component of `raw`, without control characters, NFC-normalised; 'upload' when empty.

    >>> safe_name("../../etc/报告.PDF"), safe_name("C:\\\\x\\\\a\\x00b.txt"), safe_name("..")
    ('报告.PDF', 'ab.txt', 'upload')
    """
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    name = name[:200]
    return name or "upload"


def _filename(params: dict[bytes, bytes]) -> str | None:
    star = params.get(b"filename*")
    if star:
        charset, _, rest = star.decode("latin-1").partition("'")
        _, _, value = rest.partition("'")
        try:
            return urllib.parse.unquote(value, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            pass
    raw = params.get(b"filename")
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _FileParts:
    """python-multipart callbacks that write each `files` part to a temporary file under `directory`, hashing it
    and stopping (in `error`) at the first part over `limit`."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory, self.limit = directory, limit
        self.got: list[Received] = []
        self.headers: dict = {}
        self.field, self.value = b"", b""
        self.current: Received | None = None
        self.fh = None
        self.error: Exception | None = None

    def callbacks(self) -> dict:
        """The callbacks to give MultipartParser."""
        return {
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field, self.value = b"", b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        disp, p = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = p.get(b"name", b"").decode("utf-8", "replace")
        fname = _filename(p)
        self.headers = {}
        if name != FIELD or fname is None:
            self.current = None
            return
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.directory)
        rec = Received(safe_name(fname), Path(tmp))
        self.current, self.fh = rec, os.fdopen(fd, "wb")
        self.got.append(rec)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        rec = self.current
        if rec is None or self.error:
            return
        piece = data[start:end]
        rec.size += len(piece)
        if rec.size > self.limit:
            self.error = TooLarge(f"{rec.name} is larger than the limit of {self.limit / 1e6:.1f} MB")
            return
        rec._hash.update(piece)  # type: ignore[attr-defined]
        self.fh.write(piece)

    def on_part_end(self) -> None:
        rec = self.current
        if rec is not None:
            self.fh.close()
            rec.sha256 = rec._hash.hexdigest()  # type: ignore[attr-defined]
        self.current, self.fh = None, None


async def receive_files(request: Request, directory: Path, limit: int, total_limit: int) -> list[Received]:
    """Stream the `files` parts of a multipart request into temporary files under `directory`."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise BadRequest("send the files as multipart/form-data, field 'files'")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > total_limit:
        raise TooLarge(f"the upload is {int(length) / 1e6:.1f} MB; at most {total_limit / 1e6:.1f} MB per request")
    directory.mkdir(parents=True, exist_ok=True)
    parts = _FileParts(directory, limit)
    parser = MultipartParser(params[b"boundary"], parts.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > total_limit:
                raise TooLarge(f"the upload is larger than {total_limit / 1e6:.1f} MB per request")
            parser.write(chunk)
            if parts.error:
                raise parts.error
        parser.finalize()
    except BaseException as e:
        if parts.fh is not None:
            parts.fh.close()
        for rec in parts.got:
            rec.tmp_path.unlink(missing_ok=True)
        if isinstance(e, TooLarge | BadRequest):
            raise
        if isinstance(e, Exception) and type(e).__name__.endswith("ParseError"):
            raise BadRequest(f"malformed multipart body: {e}") from None
        raise
    if not parts.got:
        raise BadRequest("no files in the request (multipart field 'files')")
    return parts.got


_RFC5987_SAFE = re.compile(r"[^A-Za-z0-9!#$&+\-.^_`|~]")


def content_disposition(name: str, inline: bool = False) -> str:
    """A Content-Disposition header that keeps a Unicode name (RFC 6266 / RFC 5987 `filename*`).

    >>> content_disposition("报告 v2.pdf")
    'attachment; filename="v2.pdf"; filename*=UTF-8\\'\\'%E6%8A%A5%E5%91%8A%20v2.pdf'
    """
    ascii_name = "".join(ch for ch in name if 32 <= ord(ch) < 127 and ch not in '"\\').strip() or "download"
    ascii_name = re.sub(r"\s+", " ", ascii_name).strip() or "download"
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"
