"""The dataclasses that flow through docqa: Document -> Chunk -> Hit (in a SearchResult) -> Answer.

A `Document` keeps its text as one string; pages and sections are *offset maps* into that string, so any
character range (a chunk) can be labelled with its page and section by a binary search:

    >>> d = Document(source="a.md", text="# A\\nx\\n# B\\ny", sections=[Section(0, ("A",)), Section(6, ("B",))])
    >>> d.section_at(7)
    ('B',)
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, overload


@dataclass(frozen=True)
class Page:
    """Page `number` (1-based, as printed by a PDF viewer) starts at character `start` of Document.text."""

    number: int
    start: int


@dataclass(frozen=True)
class Section:
    """From character `start` on, the text belongs to the heading path `path` (outermost first)."""

    start: int
    path: tuple[str, ...]


@dataclass
class Document:
    """A loaded file: plain text plus where its pages and sections begin."""

    source: str
    text: str
    pages: list[Page] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def page_at(self, offset: int) -> int | None:
        """The page holding character `offset`, or None for formats without pages."""
        if not self.pages:
            return None
        i = bisect.bisect_right([p.start for p in self.pages], offset) - 1
        return self.pages[max(i, 0)].number

    def section_at(self, offset: int) -> tuple[str, ...]:
        """The heading path in force at character `offset` (empty before the first heading)."""
        i = bisect.bisect_right([s.start for s in self.sections], offset) - 1
        return self.sections[i].path if i >= 0 else ()

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "text": self.text,
            "pages": [[p.number, p.start] for p in self.pages],
            "sections": [[s.start, list(s.path)] for s in self.sections],
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Document:
        return cls(
            source=d["source"],
            text=d["text"],
            pages=[Page(n, s) for n, s in d.get("pages", [])],
            sections=[Section(s, tuple(p)) for s, p in d.get("sections", [])],
            metadata=d.get("metadata", {}),
        )


SECTION_SEP = " > "


@dataclass
class Chunk:
    """A piece of a Document small enough to embed whole. `start`/`end` are offsets into Document.text."""

    text: str
    start: int
    end: int
    ordinal: int
    page: int | None = None
    section: str = ""
    n_tokens: int = 0


@dataclass
class Hit:
    """One retrieved passage. `score` is the ranking score of the mode that produced it (higher is better);
    `scores` keeps each signal's own score (`dense`, `bm25`, `rrf`, `rerank`) for display and abstention."""

    chunk_id: int
    score: float
    source: str
    text: str
    page: int | None = None
    section: str = ""
    ordinal: int = 0
    document_id: int = 0
    rank: int = 0
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def location(self) -> str:
        """`file:page` as shown to users (`manual.pdf:41`), or just the file name."""
        from pathlib import Path

        name = Path(self.source).name
        return f"{name}:{self.page}" if self.page is not None else name

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "score": round(float(self.score), 6),
            "chunk_id": self.chunk_id,
            "source": self.source,
            "page": self.page,
            "section": self.section,
            "text": self.text,
            "scores": {k: round(float(v), 6) for k, v in self.scores.items()},
        }


@dataclass
class SearchResult:
    """What `Retriever.search` returns: the hits, best first, with how long each step took and the fusion weights.

        >>> result = retriever.search("怎么解压 tar.gz 文件？", k=5)  # doctest: +SKIP
        >>> [h.location for h in result][:1], len(result), result.weights, sorted(result.timings)  # doctest: +SKIP
        (['tar.txt'], 5, (0.0, 1.3), ['bm25', 'dense', 'embed', 'retrieval'])

    It reads like the list of its hits (iterate, index, slice, `len`, truthiness), so code that only walks the
    hits needs no change; `list(result)` or `result.hits` gives the plain list. `timings` are seconds per step
    ("embed", "dense", "bm25", "rerank", "retrieval" = all of them); `weights` are the (dense, bm25) RRF weights
    of a hybrid search, None in the other modes. Unlike attributes on the retriever, these belong to this one
    search and cannot go stale."""

    hits: list[Hit] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    weights: tuple[float, float] | None = None
    #: the extra queries searched with the question: the chat model's (docqa/expand.py) and a Chinese
    #: question's English dictionary gloss (docqa/lexicon.py)
    expansions: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    @overload
    def __getitem__(self, i: int) -> Hit: ...
    @overload
    def __getitem__(self, i: slice) -> list[Hit]: ...
    def __getitem__(self, i: int | slice) -> Hit | list[Hit]:
        return self.hits[i]

    def __bool__(self) -> bool:
        return bool(self.hits)


@dataclass
class Answer:
    """What `ask` returns: the generated text, which passages it cited, and how long each step took."""

    question: str
    text: str
    passages: list[Hit]
    citations: list[int] = field(default_factory=list)
    invalid_citations: list[int] = field(default_factory=list)
    rewritten_query: str | None = None
    #: extra queries retrieval searched: the chat model's (docqa/expand.py), a Chinese question's English
    #: dictionary gloss (docqa/lexicon.py); [] when there were none
    query_expansions: list[str] = field(default_factory=list)
    abstained: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    passage_tokens: list[int] = field(default_factory=list)
    model: str = ""

    @property
    def sources(self) -> list[tuple[int, Hit]]:
        """The cited passages as (number, Hit), numbered as in the prompt (1-based)."""
        return [(n, self.passages[n - 1]) for n in self.citations if 0 < n <= len(self.passages)]

    def to_json(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.text,
            "abstained": self.abstained,
            "rewritten_query": self.rewritten_query,
            "query_expansions": self.query_expansions,
            "citations": self.citations,
            "invalid_citations": self.invalid_citations,
            "sources": [{"n": n, **h.to_json()} for n, h in self.sources],
            "passages": [
                {
                    "n": i + 1,
                    "tokens": (self.passage_tokens[i] if i < len(self.passage_tokens) else None),
                    **h.to_json(),
                }
                for i, h in enumerate(self.passages)
            ],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "model": self.model,
        }
