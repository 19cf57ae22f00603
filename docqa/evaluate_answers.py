"""Answer-level evaluation: ask every question of a QA file and judge the *answers*, per answerer and language.

    $ docqa eval corpora/dev_qa.jsonl --answers --llm extractive,demo --index indexes/dev

    # in Python (an illustration):
    report = evaluate_answers(load_qa("corpora/dev_qa.jsonl"), retriever, {"extractive": gen}, settings)
    report.groups["extractive"]["en/report"]["answer_key"]   # English reporting half: answers holding the term

The QA file is the one `docqa eval` reads (question, keywords, lang, optional split). For each answer:

- `answer_acc`: the answer text (the Sources block is not part of it) holds every keyword;
- `answer_key`: it holds the first keyword (the answer's command or option: the held-out rule);
- `cited_acc`: one of the passages it cites holds every keyword;
- `cited`: it cites at least one passage; `valid`: it cites no passage that was not given;
- `abstained`: it declined to answer; `chars`: median answer length;
- `first_token_s`, `after_retrieval_s`, `total_s`: median latencies (after retrieval = total - retrieval).

Groups are the languages, and `lang/split` for each split the file names (tune / report halves).

Limits: judging is by string matching, so a correct answer in other words counts as wrong, and an answer that
quotes many passages has more chances to hold the keyword: compare answerers at similar lengths (`chars`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .evaluate import QAItem, in_group, item_language, language_groups, normalise
from .generate.base import Generator

METRICS = ("answer_acc", "answer_key", "cited_acc", "cited", "valid", "abstained")
LATENCIES = ("first_token_s", "after_retrieval_s", "total_s")


@dataclass
class AnswerRecord:
    """How one answer was judged."""

    line: int
    question: str
    lang: str
    split: str | None
    answer: str
    answer_acc: bool
    answer_key: bool
    cited_acc: bool
    cited: bool
    valid: bool
    abstained: bool
    chars: int
    timings: dict[str, float] = field(default_factory=dict)


def judge_answer(item: QAItem, answer) -> AnswerRecord:
    """Score one `Answer` (docqa.documents.Answer) against `item`'s keywords.

    >>> from docqa.documents import Answer, Hit
    >>> h = Hit(1, 1.0, "faq.txt", "Use apt-mark hold to keep a package")
    >>> a = Answer("q", "Run apt-mark  hold PKG [1]", [h], citations=[1])
    >>> r = judge_answer(QAItem("q", ["apt-mark hold"], lang="en"), a)
    >>> r.answer_acc, r.cited_acc, r.valid
    (True, True, True)
    """
    text = normalise(answer.text)
    keys = [normalise(k) for k in item.keywords]
    cited_texts = [normalise(h.text) for _, h in answer.sources]
    t = answer.timings
    timings = {"first_token_s": t.get("first_token", t.get("total", 0.0)), "total_s": t.get("total", 0.0)}
    timings["after_retrieval_s"] = max(0.0, t.get("total", 0.0) - t.get("retrieval", 0.0))
    return AnswerRecord(
        line=item.line,
        question=item.question,
        lang=item_language(item),
        split=item.split,
        answer=answer.text,
        answer_acc=bool(keys) and all(k in text for k in keys),
        answer_key=bool(keys) and keys[0] in text,
        cited_acc=bool(keys) and any(all(k in c for k in keys) for c in cited_texts),
        cited=bool(answer.citations),
        valid=not answer.invalid_citations,
        abstained=answer.abstained,
        chars=len(answer.text),
        timings=timings,
    )


def summarise(records: Sequence[AnswerRecord]) -> dict[str, float]:
    """Shares of METRICS, the median answer length and median LATENCIES over `records`."""
    n = len(records)
    out: dict[str, float] = {"n": n}
    for m in METRICS:
        out[m] = sum(getattr(r, m) for r in records) / n if n else float("nan")
    out["chars"] = statistics.median(r.chars for r in records) if n else float("nan")
    for lat in LATENCIES:
        out[lat] = statistics.median(r.timings[lat] for r in records) if n else float("nan")
    return out


@dataclass
class AnswerReport:
    """`groups[answerer][group]` = summarise(...) for each answerer and group; `records[answerer]` per question."""

    groups: dict[str, dict[str, dict[str, float]]]
    records: dict[str, list[AnswerRecord]]

    def to_json(self) -> dict[str, Any]:
        return {
            "answerers": self.groups,
            "questions": {
                name: [{k: v for k, v in vars(r).items()} for r in recs] for name, recs in self.records.items()
            },
        }


def evaluate_answers(
    items: Sequence[QAItem],
    retriever,
    answerers: Mapping[str, Generator],
    settings,
    progress: Callable[[str, int, int], None] | None = None,
) -> AnswerReport:
    """Ask each question with each answerer (a fresh conversation each time) and judge the answers."""
    from .answer import ask

    groups: dict[str, dict[str, dict[str, float]]] = {}
    records: dict[str, list[AnswerRecord]] = {}
    for name, gen in answerers.items():
        recs = []
        for i, it in enumerate(items, 1):
            recs.append(judge_answer(it, ask(it.question, retriever, gen, settings)))
            if progress:
                progress(name, i, len(items))
        records[name] = recs
        keys = [(r.lang, r.split) for r in recs]
        groups[name] = {g: summarise([r for r in recs if in_group(r.lang, r.split, g)]) for g in language_groups(keys)}
    return AnswerReport(groups, records)


def answerer_settings(settings, spec: str):
    """The settings that select answerer `spec`: "extractive", "demo", "auto", a model folder or hub id, or the
    base URL of an OpenAI-compatible server (http://... or https://...).

    >>> from docqa.config import Settings
    >>> s = answerer_settings(Settings(), "http://127.0.0.1:8000/v1"); (s.llm, s.llm_url)
    ('openai', 'http://127.0.0.1:8000/v1')
    >>> answerer_settings(Settings(llm_url="http://x/v1"), "demo").llm_url
    ''
    """
    spec = spec.strip()
    if spec.startswith(("http://", "https://")):
        return settings.replace(llm="openai", llm_url=spec)
    return settings.replace(llm=spec, llm_url="")


def run_answer_eval(
    path, settings, llms: str | Sequence[str] = ("auto",), progress=None, same_language: bool = False
) -> AnswerReport:
    """Load the QA file (`same_language`: see `load_qa`), open the knowledge base once, and evaluate each answerer
    named in `llms` (comma-separated or a list; see `answerer_settings`), loading one model at a time."""
    from .errors import ConfigError
    from .evaluate import load_qa
    from .generate import get_generator
    from .retrieve import open_retriever

    specs = [x.strip() for x in (llms.split(",") if isinstance(llms, str) else llms) if x.strip()]
    if not specs:
        raise ConfigError("--llm names no answerer")
    items = load_qa(path, same_language)
    retriever = open_retriever(settings)
    groups: dict[str, dict[str, dict[str, float]]] = {}
    records: dict[str, list[AnswerRecord]] = {}
    try:
        for spec in specs:
            s = answerer_settings(settings, spec)
            gen = get_generator(s)
            part = evaluate_answers(items, retriever, {spec: gen}, s, progress)
            groups.update(part.groups)
            records.update(part.records)
            del gen  # one model in memory at a time
    finally:
        retriever.kb.close()
    return AnswerReport(groups, records)


def markdown_table(report: AnswerReport) -> str:
    """One row per answerer and group: the shares, the median length and latencies."""
    head = ["answerer", "questions", *METRICS, "chars", *LATENCIES]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, groups in report.groups.items():
        for group, m in groups.items():
            cells = [name, f"{group} ({m['n']})", *(f"{m[k]:.2f}" for k in METRICS), f"{m['chars']:.0f}"]
            cells += [f"{m[k]:.2f}" for k in LATENCIES]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
