"""Retrieval evaluation: a JSONL file of questions with known answers -> hit@k and MRR per language and mode.

    $ docqa eval corpora/dev_qa.jsonl --index indexes/dev --mode dense,bm25,hybrid

    # in Python (an illustration; the README has the measured figures):
    items = load_qa("corpora/dev_qa.jsonl")
    report = evaluate(items, retriever, modes=("bm25", "hybrid"))
    report.modes["hybrid"]["zh/report"]["hit@5"]      # Chinese, reporting half

    >>> metrics([1, 4, None, 2], ks=(1, 5))
    {'n': 4, 'hit@1': 0.25, 'hit@5': 0.75, 'mrr@10': 0.4375}

Each line is a JSON object with a `question` and at least one way to judge a retrieved passage:

- `"keywords": [...]`: the passage holds every keyword (case-insensitive; runs of whitespace count as one space);
- `"source": "file name"` and optionally `"page": n`: the passage comes from a file with that base name (and that
  page). When both keywords and a source are given, keywords decide, because they pin the answer itself while a
  chunk that starts on the previous page would fail a page check; `judge_by="all"` requires both;
  `judge_by="first"` asks only for the first keyword (the answer's command or option: how the held-out questions
  of the project's issues are judged; the others pin the passage that explains it).

`lang` ("zh" | "en") groups the scores; without it the question's language is detected. `split` (e.g. "tune" /
"report") adds a group per language and half, so a rule tuned on one half is judged on the other. `"xlang": true`
marks a question answered only in a document in the other language; `--same-language` leaves those out (a manual
with its translation beside it has none). A question's rank is that
of the first passage judged a hit among the top 20 (`MAX_K`); hit@k is the share of questions ranked <= k and
MRR@10 the mean of 1/rank (0 when not found).

Limits: judging is by string matching, so a passage that answers in other words is a miss; the scores measure
retrieval only, not the answers a model writes from it.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from .config import MODES
from .documents import Hit
from .errors import ConfigError, DocQAError

KS = (1, 3, 5, 10, 20)
MAX_K = 20  # ask/chat put 20+ passages in a ChatGLM2 prompt, so hit@20 is what the model sees
_WS = re.compile(r"\s+")


@dataclass
class QAItem:
    """One evaluation question and how to recognise a passage that answers it."""

    question: str
    keywords: list[str] = field(default_factory=list)
    source: str | None = None
    page: int | None = None
    lang: str | None = None
    line: int = 0
    split: str | None = None  # "tune" | "report": tune rules on one half, report both
    cross_language: bool = False  # "xlang": the answer is only in a document in the other language


def normalise(text: str) -> str:
    """What judging compares: case folded, runs of whitespace as one space."""
    return _WS.sub(" ", text).strip().casefold()


def load_qa(path: str | Path, same_language: bool = False) -> list[QAItem]:
    """Read a QA file; raises DocQAError naming the line of the first malformed entry. `same_language` leaves out
    the questions marked `"xlang": true` (answered only in a document in the other language)."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DocQAError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DocQAError(f"cannot read {p}: {e}") from None
    items = [_parse_line(p, n, line) for n, line in enumerate(raw.splitlines(), 1) if line.strip()]
    if same_language:
        items = [it for it in items if not it.cross_language]
    if not items:
        raise DocQAError(f"{p} holds no questions" + (" in the question's own language" if same_language else ""))
    return items


def _parse_line(p: Path, n: int, line: str) -> QAItem:
    where = f"{p}:{n}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DocQAError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise DocQAError(f"{where}: expected a JSON object")
    q = obj.get("question")
    if not isinstance(q, str) or not q.strip():
        raise DocQAError(f"{where}: 'question' must be a non-empty string")
    kw = obj.get("keywords", [])
    if not isinstance(kw, list) or not all(isinstance(k, str) and k.strip() for k in kw):
        raise DocQAError(f"{where}: 'keywords' must be a list of non-empty strings")
    source = obj.get("source")
    if source is not None and (not isinstance(source, str) or not source.strip()):
        raise DocQAError(f"{where}: 'source' must be a file name")
    page = obj.get("page")
    if page is not None and (isinstance(page, bool) or not isinstance(page, int) or page < 1):
        raise DocQAError(f"{where}: 'page' must be a positive integer")
    if page is not None and source is None:
        raise DocQAError(f"{where}: 'page' needs a 'source'")
    if not kw and source is None:
        raise DocQAError(f"{where}: give 'keywords' and/or 'source' to judge the answer by")
    lang = obj.get("lang")
    if lang is not None and lang not in ("zh", "en"):
        raise DocQAError(f'{where}: \'lang\' must be "zh" or "en"')
    split = obj.get("split")
    if split is not None and (not isinstance(split, str) or not split.strip()):
        raise DocQAError(f'{where}: \'split\' must be a name such as "tune" or "report"')
    xlang = obj.get("xlang", False)
    if not isinstance(xlang, bool):
        raise DocQAError(f"{where}: 'xlang' must be true or false")
    return QAItem(q.strip(), list(kw), source, page, lang, n, split, xlang)


#: how `judge` decides that a passage answers (see the module docstring)
JUDGES = ("auto", "keywords", "first", "source", "all")


def judge(item: QAItem, hit: Hit, judge_by: str = "auto") -> bool:
    """Whether `hit` answers `item` (see the module docstring for the rules)."""
    kw_ok = src_ok = None
    if item.keywords:
        text = normalise(hit.text)
        if judge_by == "first":
            return normalise(item.keywords[0]) in text
        kw_ok = all(normalise(k) in text for k in item.keywords)
    if item.source is not None:
        src_ok = PurePath(hit.source).name == PurePath(item.source).name and (
            item.page is None or hit.page == item.page
        )
    if judge_by == "keywords" or (judge_by == "auto" and kw_ok is not None):
        return bool(kw_ok) if kw_ok is not None else bool(src_ok)
    if judge_by == "source":
        return bool(src_ok) if src_ok is not None else bool(kw_ok)
    return all(x for x in (kw_ok, src_ok) if x is not None)


def first_hit_rank(item: QAItem, hits: Sequence[Hit], judge_by: str = "auto") -> int | None:
    """1-based rank of the first passage judged a hit, or None."""
    for i, h in enumerate(hits[:MAX_K], 1):
        if judge(item, h, judge_by):
            return i
    return None


def metrics(ranks: Sequence[int | None], ks: Iterable[int] = KS) -> dict[str, float]:
    """hit@k for each k and MRR@10 over the ranks of `first_hit_rank` (None = not found)."""
    n = len(ranks)
    out: dict[str, float] = {"n": n}
    for k in ks:
        out[f"hit@{k}"] = sum(1 for r in ranks if r is not None and r <= k) / n if n else math.nan
    out["mrr@10"] = sum(1.0 / r for r in ranks if r is not None and r <= 10) / n if n else math.nan
    return out


@dataclass
class EvalReport:
    """Scores per mode: `modes[mode]` = {"overall"|"zh"|"en": metrics, "latency_ms": mean}; `ranks` per mode."""

    modes: dict[str, dict[str, Any]]
    ranks: dict[str, list[int | None]]
    items: list[QAItem]

    def groups(self, mode: str) -> list[str]:
        """The question groups scored for `mode`, in display order: languages, their halves, then overall."""
        return [g for g in self.modes[mode] if g not in ("overall", "latency_ms")] + ["overall"]

    def to_json(self) -> dict[str, Any]:
        return {
            "n": len(self.items),
            "modes": self.modes,
            "questions": [
                {
                    "line": it.line,
                    "question": it.question,
                    "lang": item_language(it),
                    "rank": {m: r[i] for m, r in self.ranks.items()},
                }
                for i, it in enumerate(self.items)
            ],
        }


def item_language(item: QAItem) -> str:
    """The item's `lang`, else the detected language of its question."""
    if item.lang:
        return item.lang
    from .text import detect_language

    return detect_language(item.question)


def language_groups(keys: Iterable[tuple[str, str | None]]) -> list[str]:
    """'en', 'zh', then 'en/report', 'en/tune', ... for the (language, split) pairs present: every figure is
    reported per language and per half.

    >>> language_groups([("zh", "tune"), ("en", "report"), ("en", None)])
    ['en', 'zh', 'en/report', 'en/tune', 'zh/report', 'zh/tune']
    """
    keys = list(keys)
    langs = sorted({lang for lang, _ in keys})
    splits = sorted({split for _, split in keys if split})
    return langs + [f"{lg}/{s}" for lg in langs for s in splits]


def in_group(lang: str, split: str | None, group: str) -> bool:
    """Whether a question of `lang` in half `split` counts in `group` ('en' or 'en/report')."""
    g_lang, _, g_split = group.partition("/")
    return lang == g_lang and (not g_split or split == g_split)


def parse_modes(modes: str | Sequence[str]) -> list[str]:
    """'dense,bm25' -> ['dense', 'bm25'] (validated, order kept, duplicates dropped)."""
    parts = modes.split(",") if isinstance(modes, str) else list(modes)
    out: list[str] = []
    for m in (p.strip() for p in parts):
        if m not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {m!r}")
        if m not in out:
            out.append(m)
    if not out:
        raise ConfigError("no mode given")
    return out


def evaluate(
    items: Sequence[QAItem],
    retriever,
    modes: Sequence[str] = MODES,
    judge_by: str = "auto",
    expander: Callable[[str], list[str]] | None = None,
) -> EvalReport:
    """Search every question in every mode with one retriever (one loaded model) and score the results.

    With `expander` (question -> extra search queries: docqa/expand.py) every mode is also run with the
    expansions fused in, reported as "<mode>+expand" beside it; each question is expanded once."""
    report_modes: dict[str, dict[str, Any]] = {}
    all_ranks: dict[str, list[int | None]] = {}
    expanded: dict[str, list[str]] = {}
    runs = [m for mode in modes for m in ((mode, f"{mode}+expand") if expander else (mode,))]
    for name in runs:
        mode = name.split("+")[0]
        ranks: list[int | None] = []
        seconds: list[float] = []
        if items:
            retriever.search(items[0].question, k=MAX_K, mode=mode)  # warm-up: the first call loads the model
        for it in items:
            extra: list[str] = []
            if name != mode and expander is not None:
                if it.question not in expanded:
                    expanded[it.question] = expander(it.question)
                extra = expanded[it.question]
            t = time.perf_counter()
            hits = retriever.search(it.question, k=MAX_K, mode=mode, expansions=extra)
            seconds.append(time.perf_counter() - t)
            ranks.append(first_hit_rank(it, hits, judge_by))
        res: dict[str, Any] = {"overall": metrics(ranks)}
        keys = [(item_language(it), it.split) for it in items]
        for group in language_groups(keys):
            res[group] = metrics([r for r, key in zip(ranks, keys) if in_group(*key, group)])
        res["latency_ms"] = 1000 * sum(seconds) / len(seconds) if seconds else math.nan
        report_modes[name] = res
        all_ranks[name] = ranks
    return EvalReport(report_modes, all_ranks, list(items))


def run_eval(
    path: str | Path,
    settings,
    modes: str | Sequence[str] = MODES,
    judge_by: str = "auto",
    expand: str = "",
    llm: str = "auto",
    same_language: bool = False,
) -> EvalReport:
    """Load the QA file, open the knowledge base at `settings.index` once, and evaluate every mode; with
    `expand` (comma-separated QUERY_EXPANSIONS kinds) also every mode with the expansions that the chat model
    named by `llm` (as `docqa eval --answers --llm` names one) writes for each question. `same_language`: see
    `load_qa`."""
    if judge_by not in JUDGES:
        raise ConfigError(f"judge_by must be one of {', '.join(JUDGES)}, got {judge_by!r}")
    wanted = parse_modes(modes)
    items = load_qa(path, same_language)
    from .retrieve import open_retriever

    expander = None
    if expand:
        from .evaluate_answers import answerer_settings
        from .expand import expand_query, expansion_kinds
        from .generate import get_generator

        gen_settings = answerer_settings(settings, llm).replace(query_expansion=expand)
        generator = get_generator(gen_settings)
        kinds = expansion_kinds(gen_settings, generator)
        if not kinds:
            raise ConfigError(f"--expand needs a chat model that follows instructions; {generator.name} is not one")

        def expander(question: str) -> list[str]:
            return expand_query(question, generator, kinds)

    retriever = open_retriever(settings.replace(neighbours=0) if settings.neighbours else settings)
    try:
        return evaluate(items, retriever, wanted, judge_by, expander)
    finally:
        retriever.kb.close()


def markdown_table(report: EvalReport) -> str:
    """The report as a Markdown table: one row per mode and language group."""
    cols = [f"hit@{k}" for k in KS] + ["mrr@10"]
    lines = ["| mode | questions | " + " | ".join(cols) + " | ms/query |", "|---" * (len(cols) + 3) + "|"]
    for mode, res in report.modes.items():
        for group in report.groups(mode):
            m = res[group]
            lines.append(
                f"| {mode} | {group} ({m['n']}) | "
                + " | ".join(f"{m[c]:.3f}" for c in cols)
                + f" | {res['latency_ms']:.1f} |"
            )
    return "\n".join(lines)
