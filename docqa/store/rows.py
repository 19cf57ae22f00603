"""The rows a knowledge base hands out: documents (what `docqa list` shows) and chunks (what search returns).

    >>> kb.documents()[0]  # doctest: +SKIP
    DocumentInfo(path='/docs/a.md', status='ok', chunks=12, ..., id=1)
    >>> kb.chunks([42])[42].source  # doctest: +SKIP
    '/docs/a.md'

Limits: plain dataclasses, detached from the database: a row read in one snapshot says nothing about later ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class DocumentInfo:
    """A row of the documents table. `status` is 'ok' or 'failed' (then `error` says why and `chunks` is 0)."""

    path: str
    status: str = "ok"
    chunks: int = 0
    root: str = ""
    sha256: str = ""
    size: int = 0
    mtime_ns: int = 0
    error: str = ""
    pages: int | None = None
    title: str = ""
    updated_at: float = 0.0
    id: int = 0


# the columns of DocumentInfo, in order
DOCUMENT_COLUMNS = "path, status, chunks, root, sha256, size, mtime_ns, error, pages, title, updated_at, id"

# the columns of ChunkRow, in order
CHUNK_ROWS = (
    "SELECT c.id, c.document_id, c.ordinal, c.text, c.page, c.section, c.start, c.end, c.n_tokens, d.path "
    "FROM chunks c JOIN documents d ON d.id = c.document_id"
)


@dataclass
class ChunkRow:
    """A chunk as stored; `source` is its document's path, `start`/`end` character offsets in that document."""

    id: int
    document_id: int
    ordinal: int
    text: str
    page: int | None
    section: str
    start: int
    end: int
    n_tokens: int
    source: str


def index_text(section: str, text: str) -> str:
    """What the lexical index and the embedder see for a chunk: its section title helps both find it.

    >>> index_text("Installing", "Run pip install.")
    'Installing\\nRun pip install.'
    """
    return f"{section}\n{text}" if section else text


#: meta `lexical_text` of a knowledge base whose lexical index reads each chunk's document name before its
#: section and text (`lexical_text`); knowledge bases made before have no such row until `docqa rebuild`
DOCUMENT_NAMES = "names"
#: the name is indexed this many times (a field weight): 1-4 measured alike, 2 best on the dev set's tuning half
NAME_REPEAT = 2


def document_name(path: str) -> str:
    """The words of a file's name up to its first dot, for the lexical index: a question often names the
    document it is about (the tool, the library, the manual), and a man page's option list never repeats it.

    >>> document_name("/docs/grep.zh-cn.txt"), document_name("C:/docs/python-library_shutil.html")
    ('grep', 'python library shutil')

    Limits: a name with a dot inside ("release-2.4.pdf") keeps only its part before that dot ("release 2").
    """
    base = re.split(r"[\\/]", path)[-1].split(".")[0]
    return " ".join(w for w in re.split(r"[\W_]+", base) if w)


def lexical_text(name: str, section: str, text: str) -> str:
    """What the lexical index reads for a chunk: its document's name (`document_name`, NAME_REPEAT times; "" in a
    knowledge base made before), section title and text.

    >>> lexical_text("tar", "Options", "-x extracts.")
    'tar\\ntar\\nOptions\\n-x extracts.'
    """
    body = index_text(section, text)
    return "\n".join([name] * NAME_REPEAT + [body]) if name else body
