"""E-mail (.eml, RFC 5322/MIME) with the standard library's `email`: headers as metadata, the body as text, and
attachments docqa can read appended as sections of their own.

    >>> doc = load_eml_bytes("m.eml", b"Subject: Backup plan\\nFrom: a@example.org\\n\\nRun the backup at 2am.\\n")
    >>> doc.text, doc.metadata["subject"], doc.sections[0].path
    ('Subject: Backup plan\\nFrom: a@example.org\\n\\nRun the backup at 2am.', 'Backup plan', ('Backup plan',))

The text starts with the Subject/From/To/Date lines (so a search for a sender or a subject finds the mail), then
the body: text/plain when the mail has it, else its text/html through docqa/load/html.py. Charsets come from the
MIME headers; an unknown or lying charset falls back to the shared text detector. Each attachment with a suffix
docqa loads (PDF, DOCX, XLSX, text...) is written to a private temporary folder, loaded with `load_file` and
appended under section ("<subject>", "<attachment name>"); metadata["attachments"] lists every attachment's name
and what became of it. Nested mails (message/rfc822) are read up to MAX_DEPTH levels.
Limits: attachments are part of the mail's document (one file = one document in docqa's ingest; their pages are
not kept); at most MAX_ATTACHMENTS are read, each at most MAX_ATTACHMENT_MB; S/MIME-encrypted bodies are not read.
"""

from __future__ import annotations

import email
import email.policy
import os
import tempfile
from email.message import Message
from pathlib import Path
from typing import Any

from docqa.documents import Document, Section
from docqa.errors import LoadError

MAX_DEPTH = 3
MAX_ATTACHMENTS = 50
MAX_ATTACHMENT_MB = 50
MAX_PARTS = 2000
HEADERS = ("Subject", "From", "To", "Cc", "Date")


def _header(msg: Message, name: str) -> str:
    try:
        v = msg.get(name)
    except Exception:  # a malformed encoded-word raises from the header registry
        v = msg.get_all(name, failobj=[None])[0] if hasattr(msg, "get_all") else None
    return " ".join(str(v).split()) if v is not None else ""


def _part_text(part: Message) -> str:
    from docqa.load.text import decode_bytes

    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset()
    if charset:
        try:
            return payload.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    try:
        return decode_bytes(payload)[0]
    except LoadError:
        return ""


def _body(msg: Message) -> str:
    plain, html = [], []
    for part in _walk(msg):
        if part.is_multipart() or _is_attachment(part):
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            plain.append(_part_text(part))
        elif ctype == "text/html":
            html.append(_part_text(part))
    if any(p.strip() for p in plain):
        return "\n\n".join(p.strip() for p in plain if p.strip()).replace("\r\n", "\n")
    from docqa.load.html import html_to_document

    return "\n\n".join(html_to_document("mail.html", h, "utf-8").text for h in html if h.strip())


def _walk(msg: Message) -> list[Message]:
    """msg.walk() with a cap on parts and without descending into attached mails."""
    out: list[Message] = []
    stack = [msg]
    while stack and len(out) < MAX_PARTS:
        part = stack.pop()
        out.append(part)
        if part.is_multipart() and part.get_content_type() != "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(reversed(payload))
    return out


def _is_attachment(part: Message) -> bool:
    disp = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
    return (
        disp == "attachment"
        or (bool(part.get_filename()) and disp != "inline")
        or part.get_content_type() == "message/rfc822"
    )


def _attachments(msg: Message, depth: int) -> list[tuple[str, str, str]]:
    """(name, text, status) for each attachment part."""
    from docqa.load import is_supported, load_file

    out: list[tuple[str, str, str]] = []
    for part in _walk(msg)[1:]:
        if not _is_attachment(part) or len(out) >= MAX_ATTACHMENTS:
            continue
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            if isinstance(inner, Message) and depth < MAX_DEPTH:
                out.append((_header(inner, "Subject") or "attached mail", _render(inner, depth + 1)[0], "ok"))
            continue
        name = os.path.basename(str(part.get_filename() or "attachment")).strip() or "attachment"
        if not is_supported(Path(name)):
            out.append((name, "", "unsupported"))
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes) or not data:
            out.append((name, "", "empty"))
            continue
        if len(data) > MAX_ATTACHMENT_MB << 20:
            out.append((name, "", "too large"))
            continue
        with tempfile.TemporaryDirectory(prefix="docqa-eml-") as tmp:
            p = Path(tmp) / ("a" + Path(name).suffix.lower())
            p.write_bytes(data)
            try:
                out.append((name, load_file(p).text, "ok"))
            except LoadError as e:
                out.append((name, "", f"failed: {e}"))
    return out


def _render(msg: Message, depth: int) -> tuple[str, dict[str, Any], list[tuple[str, str, str]]]:
    head = [f"{h}: {v}" for h in HEADERS if (v := _header(msg, h))]
    body = _body(msg).strip()
    text = "\n".join(head) + ("\n\n" + body if body else "")
    meta = {h.lower(): v for h in HEADERS if (v := _header(msg, h))}
    return text, meta, _attachments(msg, depth)


def load_eml_bytes(source: str, data: bytes) -> Document:
    try:
        msg = email.message_from_bytes(data, policy=email.policy.default)
    except (ValueError, TypeError, IndexError, LookupError) as e:
        raise LoadError(f"corrupt e-mail ({type(e).__name__}: {e})"[:300]) from None
    if not msg.keys():
        raise LoadError("not an e-mail (no headers)")
    text, meta, attachments = _render(msg, 1)
    subject = meta.get("subject") or Path(source).name
    sections = [Section(0, (subject,))]
    parts = [text]
    pos = len(text)
    for name, body, _status in attachments:
        body = body.strip()
        if not body:
            continue
        parts.append("\n\n")
        pos += 2
        sections.append(Section(pos, (subject, name)))
        parts.append(body)
        pos += len(body)
    meta = {"format": "eml", **meta, "attachments": [{"name": n, "status": s} for n, _, s in attachments]}
    if meta.get("subject"):
        meta["title"] = meta["subject"]
    return Document(source=source, text="".join(parts), sections=sections, metadata=meta)


def load_eml(path: Path, data: bytes | None = None) -> Document:
    """An .eml file."""
    return load_eml_bytes(str(path), path.read_bytes() if data is None else data)
