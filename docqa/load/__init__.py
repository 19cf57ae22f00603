"""Turn a file into a `Document`: dispatch by extension, checked against the file's content.

    >>> from pathlib import Path
    >>> is_supported(Path("notes.md")), is_supported(Path("photo.jpg")), is_supported(Path("song.mp3"))
    (True, True, False)
    >>> doc = load_file(Path("manual.pdf"))          # doctest: +SKIP

Formats: .pdf (OCR for pages without a text layer); .md/.markdown/.mdown/.mkd; plain text (.txt/.text/.rst/.log/
.ini/.cfg/.conf/.json/.yaml/.yml/.toml/.tex/.srt, and README-like names without a suffix); .html/.htm/.xhtml;
.docx; images (.png/.jpg/.jpeg/.tif/.tiff/.webp/.bmp, through OCR); .pptx; .xlsx/.xlsm; .csv/.tsv; .epub; .eml;
.odt/.ods/.odp; .rtf; .doc (through antiword or catdoc, when installed).
`load_file(path, ocr="auto"|"always"|"never")` runs the loader under that OCR mode (docqa/load/ocr.py).

Content wins over the name where it is unambiguous: a file starting with `%PDF-` is loaded as a PDF whatever its
suffix (metadata["format"] says "pdf"); a text-named file that is binary is rejected with LoadError("binary file")
instead of being decoded as garbage. Decisions: a zero-byte file raises LoadError("empty file"); a file that
yields no visible text raises LoadError("no text") (for PDFs: "no text (scanned PDF without a text layer?)").
Any unexpected parser exception becomes LoadError("<format> parse error: ..."): callers only see LoadError.

Parsing untrusted files should go through `docqa.load.sandbox.LoaderSandbox` (time/memory caps, crash
isolation). `register_loader` lets plugins (and tests) add formats by suffix.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from docqa.documents import Document
from docqa.errors import LoadError

#: a registered loader: the file's path -> Document (it reads the file itself)
Loader = Callable[[Path], Document]

PDF_SUFFIXES = frozenset({".pdf"})
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdown", ".mkd", ".mkdn"})
TEXT_SUFFIXES = frozenset(
    {
        ".txt",
        ".text",
        ".rst",
        ".log",
        ".ini",
        ".cfg",
        ".conf",
        ".json",
        ".yaml",
        ".yml",
        ".toml",
        ".tex",
        ".srt",
        ".org",
        ".adoc",
        ".asciidoc",
    }
)
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
DOCX_SUFFIXES = frozenset({".docx"})
#: the other formats, suffix -> kind (each kind is one module of docqa/load, loaded on first use)
KIND_BY_SUFFIX = {
    **{s: "image" for s in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")},
    ".pptx": "pptx",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
    ".csv": "csv",
    ".tsv": "csv",
    ".epub": "epub",
    ".eml": "eml",
    ".odt": "odf",
    ".ods": "odf",
    ".odp": "odf",
    ".rtf": "rtf",
    ".doc": "doc",
}
SUPPORTED_SUFFIXES: frozenset[str] = (
    PDF_SUFFIXES | MARKDOWN_SUFFIXES | TEXT_SUFFIXES | HTML_SUFFIXES | DOCX_SUFFIXES | frozenset(KIND_BY_SUFFIX)
)
# Suffix-less files with these names are plain text (README, LICENSE...).
TEXT_NAMES = frozenset(
    {
        "readme",
        "license",
        "licence",
        "copying",
        "changelog",
        "changes",
        "news",
        "authors",
        "install",
        "todo",
        "notice",
        "contributing",
    }
)

_extra: dict[str, Loader] = {}
_PATH_LOADERS = {
    "image": ("docqa.load.image", "load_image"),
    "pptx": ("docqa.load.pptx", "load_pptx"),
    "xlsx": ("docqa.load.tabular", "load_xlsx"),
    "csv": ("docqa.load.tabular", "load_delimited"),
    "epub": ("docqa.load.epub", "load_epub"),
    "eml": ("docqa.load.eml", "load_eml"),
    "odf": ("docqa.load.odf", "load_odf"),
    "rtf": ("docqa.load.legacy", "load_rtf"),
    "doc": ("docqa.load.legacy", "load_doc"),
}


def register_loader(suffix: str, loader: Loader) -> None:
    """Load files ending in `suffix` (".xyz") with `loader(path) -> Document`; overrides built-ins."""
    _extra[suffix.lower()] = loader


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in _extra:
        return "extra"
    if suffix in PDF_SUFFIXES:
        return "pdf"
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    if suffix in HTML_SUFFIXES:
        return "html"
    if suffix in DOCX_SUFFIXES:
        return "docx"
    if suffix in KIND_BY_SUFFIX:
        return KIND_BY_SUFFIX[suffix]
    if suffix in TEXT_SUFFIXES or (not suffix and path.name.lower().split(".")[0] in TEXT_NAMES):
        return "text"
    return None


def is_supported(path: Path) -> bool:
    """True when `load_file` would try this file (judged by name only)."""
    return _kind(Path(path)) is not None


def load_file(path: Path, ocr: str | None = None) -> Document:
    """Load one file into a Document, or raise LoadError with a short reason; `ocr` sets the OCR mode for it
    (None = the mode in force, "auto" unless a caller set another with `docqa.load.ocr.ocr_mode`)."""
    if ocr is not None:
        from docqa.load.ocr import ocr_mode

        with ocr_mode(ocr):
            return load_file(path)
    path = Path(path)
    kind = _kind(path)
    if kind is None:
        raise LoadError(f"unsupported file type {path.suffix.lower() or '(no suffix)'}")
    try:
        if not path.is_file():
            raise LoadError("not a regular file" if path.exists() else "file not found")
        with path.open("rb") as f:
            head = f.read(1024)
    except PermissionError:
        raise LoadError("permission denied") from None
    except OSError as e:
        raise LoadError(f"cannot read file ({e.strerror or e})") from None
    if not head:
        raise LoadError("empty file")
    if kind == "extra":
        pass
    elif head.startswith(b"%PDF-"):
        kind = "pdf"  # a PDF under another name is still a PDF
    elif kind == "pdf" and b"%PDF-" not in head:  # readers accept junk before the header, within 1 KB
        raise LoadError("not a PDF (no %PDF- header)")
    try:
        doc = _dispatch(kind, path)
    except LoadError:
        raise
    except MemoryError:
        raise
    except RecursionError:
        raise LoadError(f"{kind} parse error: nested too deeply") from None
    except Exception as e:  # third-party parsers raise anything on hostile input
        raise LoadError(f"{kind} parse error: {type(e).__name__}: {e}"[:300]) from None
    if not doc.text.strip():
        raise LoadError("no text (scanned PDF without a text layer?)" if kind == "pdf" else "no text")
    doc.source = str(path)
    return doc


def _dispatch(kind: str, path: Path) -> Document:
    if kind == "extra":
        return _extra[path.suffix.lower()](path)
    if kind == "pdf":
        from docqa.load.pdf import load_pdf

        return load_pdf(path)
    if kind == "docx":
        from docqa.load.docx import load_docx

        return load_docx(path)
    if kind in _PATH_LOADERS:
        module, name = _PATH_LOADERS[kind]
        return getattr(importlib.import_module(module), name)(path)
    data = path.read_bytes()
    if kind == "html":
        from docqa.load.html import load_html

        return load_html(path, data)
    if kind == "markdown":
        from docqa.load.text import load_markdown

        return load_markdown(path, data)
    from docqa.load.text import load_text

    return load_text(path, data)


__all__ = ["SUPPORTED_SUFFIXES", "is_supported", "load_file", "register_loader", "Loader"]
