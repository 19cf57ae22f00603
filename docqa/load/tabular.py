"""Spreadsheets and delimited text: XLSX (openpyxl, read-only), CSV and TSV. Each row becomes one line of
"header: value" pairs, so a chunk (which never splits a line unless the line alone is too long) means
something on its own.

    >>> rows_to_lines([["name", "port"], ["ssh", "22"], ["http", ""]])
    ['name: ssh; port: 22', 'name: http']
    >>> doc = load_delimited_text("hosts.csv", "host,ip\\nalpha,10.0.0.1\\n")
    >>> doc.text, doc.sections[0].path
    ('host: alpha; ip: 10.0.0.1', ('hosts.csv',))

The header is the first non-empty row when it looks like one (every cell filled, none a number, no repeats);
otherwise columns are named A, B, C... (spreadsheet letters). XLSX: one section per sheet (its name), formulas give
their cached value (as last saved by Excel/LibreOffice; a file written by a library that never computed them has
none, and such cells are left out), dates as ISO dates, hidden sheets skipped. CSV/TSV: decoded like text files
(BOM, UTF-8, GB18030, detection), the delimiter sniffed (",", ";", tab, "|"), section = the file name.
Limits: at most MAX_CELLS cells are read per file (the rest is dropped and metadata["truncated"] set); merged
cells keep their value in the top-left cell only; charts, comments and pictures in sheets are not read.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from docqa.documents import Document, Section
from docqa.errors import LoadError

MAX_CELLS = 2_000_000
_NUMBER = re.compile(r"^[-+]?[\d.,%$€¥]+$")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    if isinstance(v, dt.datetime):
        return v.date().isoformat() if v.time() == dt.time() else v.isoformat(sep=" ")
    if isinstance(v, (dt.date, dt.time)):
        return v.isoformat()
    return " ".join(str(v).split())


def _col_name(i: int) -> str:
    name = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        name = chr(65 + r) + name
    return name


def _is_header(row: list[str]) -> bool:
    cells = [c for c in row if c]
    return (
        len(cells) == len(row)
        and len(set(cells)) == len(cells)
        and len(cells) >= 1
        and not any(_NUMBER.match(c) for c in cells)
    )


def rows_to_lines(rows: Iterable[list[str]]) -> list[str]:
    """Rows of cell strings -> "header: value; ..." lines (empty cells left out, empty rows dropped)."""
    lines: list[str] = []
    header: list[str] | None = None
    for row in rows:
        while row and not row[-1]:
            row = row[:-1]
        if not row:
            continue
        if header is None:
            if _is_header(row):
                header = row
                continue
            header = []
        names = header + [_col_name(i) for i in range(len(header), len(row))]
        pairs = [f"{names[i]}: {v}" for i, v in enumerate(row) if v]
        if pairs:
            lines.append("; ".join(pairs))
    if not lines and header:  # a header row alone is still the table's content
        lines.append("; ".join(header))
    return lines


class _Builder:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.sections: list[Section] = []

    def table(self, title: str, lines: list[str]) -> None:
        if not lines:
            return
        if self.parts:
            self.parts.append("\n\n")
            self.pos += 2
        self.sections.append(Section(self.pos, (title,)))
        body = "\n".join(lines)
        self.parts.append(body)
        self.pos += len(body)

    def text(self) -> str:
        return "".join(self.parts)


def load_xlsx(path: Path) -> Document:
    """An .xlsx/.xlsm workbook: one section per visible sheet."""
    from docqa.load.docx import check_zip

    check_zip(path, "XLSX")
    import openpyxl

    try:
        wb = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
    except (KeyError, ValueError, TypeError, OSError, EOFError) as e:
        raise LoadError(f"corrupt XLSX ({type(e).__name__}: {e})"[:300]) from None
    b = _Builder()
    budget = MAX_CELLS
    meta: dict[str, Any] = {"format": "xlsx", "sheets": []}
    try:
        for ws in wb.worksheets:
            if getattr(ws, "sheet_state", "visible") != "visible":
                continue
            meta["sheets"].append(ws.title)

            def rows(ws: Any = ws) -> Iterable[list[str]]:
                nonlocal budget
                for row in ws.iter_rows(values_only=True):
                    budget -= len(row)
                    if budget < 0:
                        meta["truncated"] = True
                        return
                    yield [_cell(v) for v in row]

            b.table(ws.title, rows_to_lines(rows()))
            if budget < 0:
                break
    finally:
        wb.close()
    return Document(source=str(path), text=b.text(), sections=b.sections, metadata=meta)


def _dialect(sample: str, suffix: str) -> Any:
    if suffix == ".tsv":
        return csv.excel_tab
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        return csv.excel


def load_delimited_text(source: str, text: str, encoding: str = "utf-8") -> Document:
    """CSV/TSV text -> one section named after the file."""
    name = Path(source).name
    dialect = _dialect(text[:8192], Path(source).suffix.lower())
    budget = MAX_CELLS
    meta: dict[str, Any] = {"format": "tsv" if dialect is csv.excel_tab else "csv", "encoding": encoding}

    def rows() -> Iterable[list[str]]:
        nonlocal budget
        reader = csv.reader(io.StringIO(text), dialect)
        try:
            for row in reader:
                budget -= len(row)
                if budget < 0:
                    meta["truncated"] = True
                    return
                yield [" ".join(c.split()) for c in row]
        except csv.Error as e:  # a NUL byte or a field past csv's size limit: keep what was read
            meta["csv_error"] = str(e)

    csv.field_size_limit(10 * 1024 * 1024)
    b = _Builder()
    b.table(name, rows_to_lines(rows()))
    return Document(source=source, text=b.text(), sections=b.sections, metadata=meta)


def load_delimited(path: Path, data: bytes | None = None) -> Document:
    from docqa.load.text import decode_bytes

    text, enc = decode_bytes(path.read_bytes() if data is None else data)
    return load_delimited_text(str(path), text, enc)
