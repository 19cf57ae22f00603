"""RTF (striprtf) and legacy Word .doc (the `antiword` or `catdoc` program): plain text, paragraphs kept.

    >>> load_rtf_bytes("a.rtf", rb"{\\rtf1\\ansi\\ansicpg936 \\'d6\\'d0\\'ce\\'c4 text\\par Second}").text
    '中文 text\\nSecond'

RTF: the code page comes from `\\ansicpgNNNN` (936 = GBK, read as GB18030; 950 = Big5...), `\\uN` escapes are
Unicode either way; the text is what striprtf leaves after dropping control words, font and style tables.
.doc: `antiword -w 0` (UTF-8 output, no wrapping) when installed, else `catdoc -w -d utf-8`; both run as child
processes under DOC_TIMEOUT seconds. Neither installed -> LoadError("... install antiword: apt-get install
antiword"). A .doc that is really RTF or HTML (Word saves those under .doc too) is read as what it is.
Limits: no sections from either (both formats come out as flat text); .doc tables come out as tab-separated text;
Word 95 and older files may be refused by antiword (catdoc is tried next).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from docqa.documents import Document
from docqa.errors import LoadError

DOC_TIMEOUT = 60
_CPG = re.compile(rb"\\ansicpg(\d+)")
_CODEPAGES = {"936": "gb18030", "950": "cp950", "932": "cp932", "949": "cp949", "65001": "utf-8"}
_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def load_rtf_bytes(source: str, data: bytes) -> Document:
    from striprtf.striprtf import rtf_to_text

    if not data.lstrip().startswith(b"{\\rtf"):
        raise LoadError("not an RTF file (no {\\rtf header)")
    m = _CPG.search(data[:4096])
    cp = m.group(1).decode() if m else "1252"
    encoding = _CODEPAGES.get(cp, f"cp{cp}")
    try:
        "".encode(encoding)
    except LookupError:
        encoding = "cp1252"
    text = rtf_to_text(data.decode("latin-1"), encoding=encoding, errors="replace")
    text = "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")).strip()
    return Document(source=source, text=text, metadata={"format": "rtf", "encoding": encoding})


def load_rtf(path: Path, data: bytes | None = None) -> Document:
    """An .rtf file."""
    return load_rtf_bytes(str(path), path.read_bytes() if data is None else data)


def _run(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=DOC_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LoadError(f"{cmd[0]} timed out after {DOC_TIMEOUT}s") from None
    if r.returncode != 0:
        raise LoadError(f"{cmd[0]} failed: {r.stderr.decode('utf-8', 'replace').strip()[:200] or r.returncode}")
    return r.stdout.decode("utf-8", "replace")


def load_doc(path: Path) -> Document:
    """A legacy Word .doc through antiword, else catdoc."""
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith(b"{\\rtf"):
        doc = load_rtf(path)
        doc.metadata["format"] = "doc (rtf)"
        return doc
    if head != _OLE:
        from docqa.load.html import load_html

        if head.lstrip().lower().startswith((b"<html", b"<!doc", b"<?xml")):
            return load_html(path)
        raise LoadError("not a Word .doc file (no OLE2 header)")
    tools = [t for t in ("antiword", "catdoc") if shutil.which(t)]
    if not tools:
        raise LoadError("reading .doc needs antiword or catdoc: install antiword (apt-get install antiword)")
    errors = []
    for tool in tools:
        cmd = (
            ["antiword", "-w", "0", "-m", "UTF-8.txt", str(path)]
            if tool == "antiword"
            else ["catdoc", "-w", "-d", "utf-8", str(path)]
        )
        try:
            text = _run(cmd)
        except LoadError as e:
            errors.append(str(e))
            continue
        text = "\n".join(line.rstrip() for line in text.replace("\r", "\n").split("\n")).strip()
        text = re.sub(r"\n{3,}", "\n\n", text)
        return Document(source=str(path), text=text, metadata={"format": "doc", "converter": tool})
    raise LoadError("; ".join(errors)[:300])
