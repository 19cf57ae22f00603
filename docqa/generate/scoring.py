"""Scoring the answer units of the retrieved passages against a question (docqa/generate/extractive.py quotes
the best of them).

    >>> from docqa.generate.units import split_units
    >>> cands = score_units("What does grep -w do?", [split_units("-v\\n   invert.\\n-w\\n   whole words.")], None)
    >>> max(cands, key=lambda c: c.score).unit.text
    '-w whole words.'

A unit's score: its lexical overlap with the question's terms (docqa.tokenize, the BM25 tokenizer: stems, Chinese
words; cross-word Chinese bigrams and the parts of a compound such as apt-get count 0.35; question words and
single Chinese characters carry nothing; each term weighted by its rarity among the units, technical terms such as
options, paths and dotted names x3 and matched as substrings), blended with the injected embedding cosine where
the caller gives one, adjusted for length and, for how/which-option questions, for commands and option entries
(x1.8, x2 more when the question says a word of the option's long name); then a matching heading or FAQ question
lends its score to the units under it, and each unit gets a prior for its passage's retrieval rank; for a Chinese
question, a unit that names a command, option, path or other Latin-script name the question does not say gets
x1.5 (the question says in Chinese what the passage names: 去重 -> uniq).
`companions` says which neighbours must come with a quoted unit to make sense.

Limits: no synonyms beyond what the embedder knows (解压 vs 提取 match only through it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..text import CJK, ZH_QUESTION_WORDS
from ..tokenize import is_code_term, tokenize_query
from .units import TERMINAL, Unit, split_units

__all__ = [
    "Candidate",
    "Similarity",
    "clip_to_clauses",
    "companions",
    "passage_evidence",
    "question_terms",
    "score_units",
]

Similarity = Callable[[str, Sequence[str]], Sequence[float]]

# Question words: they say what kind of answer is wanted, never what it is about.
_EN_QUESTION = frozenset(
    """how what which who whom whose why when where do does did doing i me my can could would should shall
    may might must will is are was were be there way ways tell want need wish able possible anyone somebody
    someone something anything use using used get make sure let know""".split()
)
_EN_QUESTION_STEMS = frozenset({"tell", "want", "need", "wish", "abl", "possibl", "use", "get", "make", "know", "way"})
_ZH_QUESTION_CHARS = set("怎么吗呢啥哪什么")
# Weights, tuned on the `tune` half of corpora/dev_qa.jsonl (answer contains the keyword; /tmp scratch harness).
# Flat ranges: +-50% on any one of them moved the tune score by at most 2 points.
_CODE_WEIGHT = 3.0  # options, paths, dotted names: a question naming one is asking about exactly that
_HEADING_WEIGHT = 0.35  # a heading is a signpost: it lends its score to what follows rather than being quoted
_LEND = 0.8  # share of a matching heading's / FAQ question's score lent to the units under it (decays by 0.6)
_INTRO_BONUS = 1.3  # for how-questions, a sentence that runs into a command ("run:", "请执行")
_LONG = 400  # characters past which a unit is damped: long sentences match many words by sheer size
_LENGTH_PENALTY = 0.25
_RANK_PRIOR = (0.3, 0.18, 0.1, 0.05, 0.01)  # retrieval rank 1 holds the answer about 2/3 of the time it is there
_DENSE_WEIGHT = 0.3  # all-MiniLM cosines of short sentences are noisy: higher weights measured worse
_OPTION_BONUS = 1.8  # for how/which-option questions, a man page's option entry ("-r, --read-only ...")
_OPTNAME_BONUS = 2.0  # ... and again when the question says a word of its long name ("read-only")
_NAMES_NEW = 0.5  # Chinese questions: a unit that names a command / option / path / Latin word the question lacks
# what a Chinese question asks for in Chinese words (去重, 忽略大小写) a passage answers by naming it (uniq, -i):
# options, paths, dotted names and calls, hyphenated or snake_case names, and any Latin word (in Chinese text a
# Latin word is nearly always a command, package or option name)
_NAME = re.compile(
    r"(?<![\w-])--?[A-Za-z][\w-]*|(?:~?/[\w.+-]+)+|\b\w+\.\w+(?:\.\w+)*\(?|\b\w+\(\)|\b[a-z]+-[a-z][\w-]*\b"
    r"|\b[a-z]+_[a-z_]+\b|\b[a-z][a-z0-9]{1,15}\b"
)
_HOW_WORDS = re.compile(
    r"\b(how|which command|what command|command|options?|flags?|switch)\b|怎么|怎样|如何|命令|选项|参数|哪个文件|怎么做|用什么|哪个"
)
_HAS_CJK = re.compile(f"[{CJK}]")


def question_terms(question: str) -> dict[str, float]:
    """The question's content terms with a base weight: 1 for a word; less for a Chinese bigram that crosses a
    word boundary ("统升" of 系统升级) and for the parts of a compound the whole of which is also a term
    ("apt" of apt-get): they mostly repeat what the word already says."""
    words = set(tokenize_query(question, bigrams=False))
    terms: dict[str, float] = {}
    raw = tokenize_query(question)
    compounds = [t for t in raw if is_code_term(t)]
    for t in raw:
        if t in terms or t in _EN_QUESTION or t in _EN_QUESTION_STEMS or t in ZH_QUESTION_WORDS:
            continue
        if _HAS_CJK.search(t):
            if len(t) == 1 or any(c in _ZH_QUESTION_CHARS for c in t):
                continue  # single characters (用, 有, 能) match nearly everything
            terms[t] = 0.35 if t not in words else 1.0
        else:
            part = not is_code_term(t) and any(t in c and t != c for c in compounds)
            terms[t] = 0.35 if part else 1.0
    return terms


# clause boundaries inside a sentence: after , ; 、 (and their full-width forms) and after a colon; not around
# parentheses: "(https://...)" or "(see below)" alone says nothing
_CLAUSE = re.compile(r"(?<=[,;，；、])|(?<=[:：])(?=\s)")


def clip_to_clauses(text: str, q_terms: dict[str, float], limit: int) -> str:
    """The run of consecutive clauses of `text` (at most `limit` characters) that holds the most question-term
    weight, with '…' where text was left out; `text` itself when it fits, has one clause, or no clause matches.

        >>> terms = question_terms("How do I keep the modification time when copying?")
        >>> clip_to_clauses("Unlike copy(), which drops metadata, copy2() also keeps the modification time, "
        ...                 "the access time and the flags, where the platform allows it.", terms, 80)
        '…copy2() also keeps the modification time, the access time and the flags…'

    Why: a long sentence spends the answer's few hundred characters on words the question did not ask about;
    quoting its matching clauses leaves room for more of the units that answer.
    """
    if len(text) <= limit:
        return text
    # clause spans (start, end) in `text`, so that what is quoted is the text's own characters
    cuts = [0] + [m.start() for m in _CLAUSE.finditer(text) if 0 < m.start() < len(text)] + [len(text)]
    spans = [(a, b) for a, b in zip(cuts, cuts[1:]) if text[a:b].strip()]
    if len(spans) < 2:
        return text
    weights = []
    for a, b in spans:
        terms = set(tokenize_query(text[a:b]))
        weights.append(sum(w for t, w in q_terms.items() if t in terms))
    best: tuple[tuple[float, int], int, int] | None = None
    for i in range(len(spans)):
        weight = 0.0
        for j in range(i, len(spans)):
            weight += weights[j]
            size = len(text[spans[i][0] : spans[j][1]].strip())
            if size > limit:
                break
            if best is None or (weight, -size) > best[0]:
                best = ((weight, -size), i, j)
    if best is None or best[0][0] <= 0:
        return text
    _, i, j = best
    quoted = text[spans[i][0] : spans[j][1]].strip()
    if j < len(spans) - 1:
        quoted = quoted.rstrip(",;，；、") + "…"
    return ("…" if i > 0 else "") + quoted


_LONG_OPTION = re.compile(r"--([A-Za-z][\w-]*)")


def _names_option(q_terms: dict[str, float], text: str) -> bool:
    """True when a word of one of the long options that head `text` is one of the question's terms."""
    head = text.split(" ", 3)[:3]
    names = {
        w for part in head for m in _LONG_OPTION.finditer(part) for w in tokenize_query(m.group(1).replace("-", " "))
    }
    return bool(names & q_terms.keys())


def _code_pattern(term: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w-])" + re.escape(term) + r"(?![\w])", re.IGNORECASE)


@dataclass
class Candidate:
    passage: int  # 0-based
    index: int  # position among the passage's units
    unit: Unit
    own: float = 0.0
    score: float = 0.0


def _lexical(q_terms: dict[str, float], texts: Sequence[str]) -> list[float]:
    """Each text's share of the question's term weight (rarer terms among `texts` weigh more)."""
    unit_terms = [set(tokenize_query(t)) for t in texts]
    lowered = [t.lower() for t in texts]
    n = len(texts)
    score = [0.0] * n
    total = 0.0
    for t, base in q_terms.items():
        code = is_code_term(t) or (t.startswith("-") and len(t) > 1)
        if code:
            pat = _code_pattern(t)
            hits = [bool(pat.search(low)) or t in ts for low, ts in zip(lowered, unit_terms)]
        else:
            hits = [t in ts for ts in unit_terms]
        w = math.log(1.0 + (n + 1) / (sum(hits) + 0.5)) * base * (_CODE_WEIGHT if code else 1.0)
        total += w
        for k, h in enumerate(hits):
            if h:
                score[k] += w
    return [s / (total or 1.0) for s in score]


def _dense(question: str, texts: Sequence[str], similarity: Similarity | None) -> list[float] | None:
    if similarity is None:
        return None
    try:
        sims = list(similarity(question, texts))
    except Exception:  # noqa: BLE001 - a failing embedder must not cost the answer; lexical still works
        return None
    return [max(0.0, float(s)) for s in sims] if len(sims) == len(texts) else None


def score_units(
    question: str, units_by_passage: list[list[Unit]], similarity: Similarity | None, *, rank_prior: bool = True
) -> list[Candidate]:
    """Every unit of every passage as a Candidate with its `own` and final `score` (see the module docstring);
    `rank_prior=False` leaves out the prior for the passage's retrieval rank (passage_evidence)."""
    cands = [Candidate(p, i, u) for p, units in enumerate(units_by_passage) for i, u in enumerate(units)]
    if not cands:
        return []
    texts = [c.unit.text for c in cands]
    q_terms = question_terms(question)
    lex = _lexical(q_terms, texts)
    dense = _dense(question, texts, similarity)
    wants_how = bool(_HOW_WORDS.search(question.lower()))
    for k, c in enumerate(cands):
        s = lex[k] if dense is None else (1 - _DENSE_WEIGHT) * lex[k] + _DENSE_WEIGHT * dense[k]
        length = len(c.unit.text)
        if length < 12:
            s *= 0.6  # fragments ("9.3", "deactivate") say little alone; their neighbours bring them in
        elif length > _LONG:
            s /= 1.0 + _LENGTH_PENALTY * math.log2(length / _LONG)  # long sentences match many words by sheer size
        if wants_how and s > 0:
            units = units_by_passage[c.passage]
            nxt = units[c.index + 1] if c.index + 1 < len(units) else None
            if c.unit.kind == "item" and _OPTION_HEAD.match(c.unit.text):
                s *= _OPTION_BONUS  # a man page's option entry: what "how do I / which option" asks for
                if _OPTNAME_BONUS != 1 and _names_option(q_terms, c.unit.text):
                    s *= _OPTNAME_BONUS  # the question says the option's name ("read-only" for --read-only)
            elif c.unit.kind in ("command", "item"):
                s *= 1.15
            elif nxt is not None and nxt.kind == "command" and not c.unit.text.endswith(TERMINAL):
                s *= _INTRO_BONUS  # "run:" + a command is what a how-to question wants
        c.own = s
    _lend_and_prior(cands, rank_prior)
    if _HAS_CJK.search(question):
        _favour_new_names(question, cands)
    return cands


def _favour_new_names(question: str, cands: list[Candidate]) -> None:
    """x(1 + _NAMES_NEW) for each matching unit that names something the question does not (see _NAME).

    Chinese only: measured on corpora/dev_qa.jsonl (answer holds the first keyword), zh tune 0.549 -> 0.598, zh
    report 0.512 -> 0.562 (0.2 / 1.0: tune 0.573 both, report 0.550 / 0.562); for English questions, which
    mostly name the command themselves, no weight gained on the tune half (report 0.464 -> 0.474 / 0.454 at
    0.2 / 0.5), so they are left alone."""
    asked = {m.group(0).lower() for m in _NAME.finditer(question)}
    for c in cands:
        if c.score > 0 and any(m.group(0).lower() not in asked for m in _NAME.finditer(c.unit.text)):
            c.score *= 1 + _NAMES_NEW


def passage_evidence(question: str, passages: Sequence[str]) -> list[float]:
    """Per passage, the score of its best answer unit (no retrieval-rank prior): how well its best sentence,
    command or option entry answers `question`, rather than how many of the question's words the whole passage
    has. docqa/retrieve.py re-ranks the top fused hits by it.

        >>> passages = ["-v, --invert-match\\n   select non-matching lines.\\n-c, --count\\n   print a count.",
        ...             "grep searches files for lines. It prints lines, and counts lines, or whole lines."]
        >>> [round(x, 2) for x in passage_evidence("How do I print only a count of matching lines?", passages)]
        [1.86, 0.68]
    """
    best = [0.0] * len(passages)
    for c in score_units(question, [split_units(p or "") for p in passages], None, rank_prior=False):
        if c.unit.kind != "heading" and c.score > best[c.passage]:
            best[c.passage] = c.score
    return best


def _lend_and_prior(cands: list[Candidate], rank_prior: bool = True) -> None:
    """Set each candidate's `score`: headings and FAQ questions lend their match to the units under them, and
    (with `rank_prior`) every matching unit gets its passage's retrieval-rank prior."""
    by_p: dict[int, list[Candidate]] = {}
    for c in cands:
        by_p.setdefault(c.passage, []).append(c)
    for p, cs in by_p.items():
        lend = 0.0
        for c in cs:
            if c.unit.kind == "heading":
                lend = max(lend * 0.5, c.own)  # an FAQ question that matches: its answer follows
                c.score = c.own * _HEADING_WEIGHT
                continue
            c.score = c.own + _LEND * lend
            lend *= 0.6
        prior = _RANK_PRIOR[p] if rank_prior and p < len(_RANK_PRIOR) else 0.0
        for c in cs:
            if c.score > 0:
                c.score += prior


_SIGNATURE = re.compile(r"^(?:class\s+)?[A-Za-z_][\w.]*\(.*\)$")
_OPTION_HEAD = re.compile(r"^[‘'`]?--?[A-Za-z0-9?]")  # an item that is an option entry


def companions(c: Candidate, units: list[Unit], text: str = "") -> list[int]:
    """Indexes of the units that must come with unit `c` to make sense: the commands after a sentence that
    introduces them (ends in ':' or runs on into the command), the sentence that introduces a command, a
    sentence's tail after a command in its middle ("您可以将 / log /var/log/dpkg.log / 添加到 ... 文件中。")."""
    i, u = c.index, c.unit
    out: list[int] = []

    def run_after(k: int, intro: Unit) -> None:
        j = k + 1
        while j < len(units) and units[j].kind == "command" and j - k <= 3:
            out.append(j)
            j += 1
        if j > k + 1 and not intro.text.endswith((":", "：")) and j < len(units) and units[j].kind == "sentence":
            if not intro.text.endswith(TERMINAL):
                out.append(j)  # the rest of the sentence the command interrupted

    if u.kind in ("sentence", "item") and not u.text.endswith(TERMINAL) and i + 1 < len(units):
        if units[i + 1].kind == "command":
            run_after(i, u)
        elif u.text.endswith((":", "：")) and units[i + 1].kind in ("item", "row"):
            out.append(i + 1)
    if u.kind in ("sentence", "item") and u.text.endswith(TERMINAL) and i + 2 < len(units):
        nxt = units[i + 1]
        if nxt.kind == "sentence" and len(nxt.text) <= 20 and not nxt.text.endswith(TERMINAL):
            if units[i + 2].kind == "command":  # "...完成设置。" + "然后执行" + "apt-get update"
                out.append(i + 1)
                run_after(i + 1, nxt)
    if u.kind == "sentence" and i > 0 and units[i - 1].kind == "item" and text:
        gap = text[units[i - 1].end : u.start]
        if "\n\n" not in gap and _OPTION_HEAD.match(units[i - 1].text):
            out.append(i - 1)  # a later sentence of an option's description: the option it describes
    if u.kind == "command" and _SIGNATURE.match(u.text) and i + 1 < len(units) and units[i + 1].kind == "sentence":
        out.append(i + 1)  # an API signature and the sentence that says what it does
    if u.kind == "sentence" and i > 0 and units[i - 1].kind == "command" and _SIGNATURE.match(units[i - 1].text):
        out.append(i - 1)
    if u.kind == "command":
        j = i - 1
        while j >= 0 and units[j].kind == "command" and i - j <= 3:
            j -= 1
        if j >= 0 and units[j].kind in ("sentence", "item") and (j == i - 1 or not units[j].text.endswith(TERMINAL)):
            out.extend(range(j, i))
            if not units[j].text.endswith(TERMINAL):
                run_after(i, units[j])
        k = i + 1
        while k < len(units) and units[k].kind == "command" and k - i <= 2:
            out.append(k)
            k += 1
    return [j for j in dict.fromkeys(out) if j != i]
