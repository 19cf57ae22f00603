"""The extractive answerer: quote the few units of the retrieved passages that answer the question, each cited.

No model generates anything, so nothing is invented and the answer is instant. It is the offline default where
no instruction-following model is available (a tiny base model answers worse than its own sources):

    >>> passages = ["To create a virtual environment, run the venv module as a script with the directory path:\\n\\n"
    ...             "python3 -m venv tutorial-env\\n\\nThis will create the tutorial-env directory.",
    ...             "To deactivate a virtual environment, type:\\n\\ndeactivate"]
    >>> print(render(select("How do I make a virtual environment?", passages), "en"))
    From the documents:
    To create a virtual environment, run the venv module as a script with the directory path: [1]
    python3 -m venv tutorial-env [1]
    ...

How it works:
  * docqa/generate/units.py cuts each passage into answer units that make sense alone (sentences, command lines,
    list items, man-page option entries, table rows, headings).
  * `select` scores every unit: lexical overlap with the question's terms (docqa.tokenize, the BM25 tokenizer:
    stems, Chinese words; cross-word Chinese bigrams and the parts of a compound such as apt-get count 0.35;
    question words and single Chinese characters carry nothing; each term weighted by its rarity among the
    units, technical terms such as options, paths and dotted names x3 and matched as substrings), plus the injected
    embedding cosine where the caller says the embedder covers the language, plus a prior for the passage's
    retrieval rank. A heading or FAQ question that matches lends its score to the units under it; the best
    unit brings its neighbours (a sentence ending in ':' brings the command after it, a command brings the
    sentence that introduces it). Quotes come back grouped by passage, in reading order, within `max_chars`.
  * `ExtractiveAnswerer` (a `Generator`) renders the quotes under a lead-in, the whole text within `max_chars`.

Limits: extraction cannot paraphrase, combine facts across passages or answer yes/no; synonyms the question
and the text do not share (解压 vs 提取) only match through the embedder, which covers English only by default.
The answer is only as good as retrieval: if no passage holds the answer, the best-matching sentences are quoted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..text import CJK, detect_language
from ..tokenize import is_code_term, tokenize_query
from .base import GenerationOptions, Generator, Prompt
from .units import TERMINAL, Unit, split_units

__all__ = ["ExtractiveAnswerer", "Quote", "Unit", "render", "select", "split_units"]

Similarity = Callable[[str, Sequence[str]], Sequence[float]]

#: picks ExtractiveAnswerer asks select for (see its docstring)
ANSWER_UNITS = 6

LEAD_IN = {"en": "From the documents:", "zh": "文档中的相关原文："}
NOTHING = {"en": "The documents found do not contain a passage to quote.", "zh": "检索到的文档中没有可以引用的内容。"}


@dataclass(frozen=True)
class Quote:
    """A unit chosen for the answer: from passage number `passage` (1-based), at its character `start`."""

    passage: int
    text: str
    start: int
    score: float


# ----------------------------------------------------------------------------------------------- scoring

# Question words: they say what kind of answer is wanted, never what it is about.
_EN_QUESTION = frozenset(
    """how what which who whom whose why when where do does did doing i me my can could would should shall
    may might must will is are was were be there way ways tell want need wish able possible anyone somebody
    someone something anything use using used get make sure let know""".split()
)
_EN_QUESTION_STEMS = frozenset({"tell", "want", "need", "wish", "abl", "possibl", "use", "get", "make", "know", "way"})
_ZH_QUESTION_CHARS = set("怎么吗呢啥哪什么")
_ZH_QUESTION = frozenset(
    """怎么 怎样 怎么样 如何 哪个 哪些 哪里 哪儿 什么 为什么 为何 是否 能否 能不能 可不可以 可以 应该 怎么办
    怎么做 干什么 做什么 请问 有没有 是不是 一下 一个 指的是 的话 要改""".split()
)
# Weights, tuned on the `tune` half of corpora/dev_qa.jsonl (answer contains the keyword; /tmp scratch harness).
# Flat ranges: +-50% on any one of them moved the tune score by at most 2 points.
_CODE_WEIGHT = 3.0  # options, paths, dotted names: a question naming one is asking about exactly that
_HEADING_WEIGHT = 0.35  # a heading is a signpost: it lends its score to what follows rather than being quoted
_LEND = 0.8  # share of a matching heading's / FAQ question's score lent to the units under it (decays by 0.6)
_NEIGHBOUR = 0.25  # x best score: a neighbour of a quoted unit continues the same answer
_INTRO_BONUS = 1.3  # for how-questions, a sentence that runs into a command ("run:", "请执行")
_LONG = 400  # characters past which a unit is damped: long sentences match many words by sheer size
_LENGTH_PENALTY = 0.25
_MIN_SHARE = 0.3  # after the first pick, a unit needs this share of the best score to be quoted
_RANK_PRIOR = (0.3, 0.18, 0.1, 0.05, 0.01)  # retrieval rank 1 holds the answer about 2/3 of the time it is there
_DENSE_WEIGHT = 0.3  # all-MiniLM cosines of short sentences are noisy: higher weights measured worse
_HOW_WORDS = re.compile(r"\b(how|which command|what command|command)\b|怎么|怎样|如何|命令|选项|哪个文件|怎么做")
_HAS_CJK = re.compile(f"[{CJK}]")


def _question_terms(question: str) -> dict[str, float]:
    """The question's content terms with a base weight: 1 for a word; less for a Chinese bigram that crosses a
    word boundary ("统升" of 系统升级) and for the parts of a compound the whole of which is also a term
    ("apt" of apt-get): they mostly repeat what the word already says."""
    words = set(tokenize_query(question, bigrams=False))
    terms: dict[str, float] = {}
    raw = tokenize_query(question)
    compounds = [t for t in raw if is_code_term(t)]
    for t in raw:
        if t in terms or t in _EN_QUESTION or t in _EN_QUESTION_STEMS or t in _ZH_QUESTION:
            continue
        if _HAS_CJK.search(t):
            if len(t) == 1 or any(c in _ZH_QUESTION_CHARS for c in t):
                continue  # single characters (用, 有, 能) match nearly everything
            terms[t] = 0.35 if t not in words else 1.0
        else:
            part = not is_code_term(t) and any(t in c and t != c for c in compounds)
            terms[t] = 0.35 if part else 1.0
    return terms


def _code_pattern(term: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w-])" + re.escape(term) + r"(?![\w])", re.IGNORECASE)


@dataclass
class _Cand:
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


def _score_units(question: str, units_by_passage: list[list[Unit]], similarity: Similarity | None) -> list[_Cand]:
    cands = [_Cand(p, i, u) for p, units in enumerate(units_by_passage) for i, u in enumerate(units)]
    if not cands:
        return []
    texts = [c.unit.text for c in cands]
    lex = _lexical(_question_terms(question), texts)
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
            if c.unit.kind in ("command", "item"):
                s *= 1.15
            elif nxt is not None and nxt.kind == "command" and not c.unit.text.endswith(TERMINAL):
                s *= _INTRO_BONUS  # "run:" + a command is what a how-to question wants
        c.own = s
    _lend_and_prior(cands)
    return cands


def _lend_and_prior(cands: list[_Cand]) -> None:
    """Set each candidate's `score`: headings and FAQ questions lend their match to the units under them, and
    every matching unit gets its passage's retrieval-rank prior."""
    by_p: dict[int, list[_Cand]] = {}
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
        prior = _RANK_PRIOR[p] if p < len(_RANK_PRIOR) else 0.0
        for c in cs:
            if c.score > 0:
                c.score += prior


_SIGNATURE = re.compile(r"^(?:class\s+)?[A-Za-z_][\w.]*\(.*\)$")


def _companions(c: _Cand, units: list[Unit]) -> list[int]:
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


def _cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters at a word (or, for Chinese, a character) boundary, with '…'."""
    if len(text) <= limit:
        return text
    if limit < 2:
        return ""
    head = text[: limit - 1]
    m = re.search(r"[\s，、；,;](?=[^\s，、；,;]*$)", head)
    if m and m.start() > limit * 0.6:
        head = head[: m.start()]
    return head.rstrip(" ,，、;；") + "…"


# ----------------------------------------------------------------------------------------------- selection


class _Picker:
    """The greedy choice of quotes: picks (at most `max_units`) and the companions each brings along (free)."""

    def __init__(self, cands: list[_Cand], units_by_passage: list[list[Unit]], max_chars: int, max_units: int):
        self.units_by_passage = units_by_passage
        self.index = {(c.passage, c.index): c for c in cands}
        scored = [c for c in cands if c.score > 0 and c.unit.kind != "heading"]
        self.order = sorted(scored, key=lambda c: (-c.score, c.passage, c.index))
        self.best = self.order[0].score if self.order else 0.0
        self.max_chars, self.max_units = max_chars, max_units
        self.chosen: dict[tuple[int, int], str] = {}  # (passage, unit index) -> the text quoted
        self.picked: set[tuple[int, int]] = set()  # the keys that count against max_units
        self.seen_texts: set[str] = set()
        self.passages: list[int] = []  # passages in the order their first quote was chosen
        self.used = 0

    def take(self, c: _Cand, pick: bool) -> bool:
        key = (c.passage, c.index)
        if key in self.chosen or (pick and len(self.picked) >= self.max_units):
            return False
        text = c.unit.text
        if text in self.seen_texts:
            return False  # overlapping chunks repeat sentences: quote each once
        self.seen_texts.add(text)
        room = self.max_chars - self.used
        if len(text) > room:
            if self.chosen or not pick:
                return False
            text = _cut(text, room)
            if not text:
                return False
        self.chosen[key] = text
        if pick:
            self.picked.add(key)
        self.used += len(text)
        if c.passage not in self.passages:
            self.passages.append(c.passage)
        return True

    def next_pick(self) -> _Cand | None:
        """The best unit not chosen yet, a neighbour of a chosen one getting a bonus; None when none qualifies."""
        pick: tuple[float, _Cand] | None = None
        for c in self.order:
            if (c.passage, c.index) in self.chosen or c.unit.text in self.seen_texts:
                continue
            bonus = 0.0
            if any((c.passage, c.index + d) in self.chosen for d in (-1, 1)):
                bonus = _NEIGHBOUR * self.best  # a neighbour of a chosen unit continues the same answer
            eff = c.score + bonus
            if self.chosen and eff < _MIN_SHARE * self.best:
                continue
            if len(c.unit.text) > self.max_chars - self.used and self.chosen:
                continue
            if pick is None or eff > pick[0] + 1e-12:
                pick = (eff, c)
        return pick[1] if pick else None

    def bring_companions(self, c: _Cand) -> None:
        # companions of companions too ("然后执行" / apt-get update / "然后运行" / apt-get dist-upgrade), two steps deep
        frontier = [c]
        for _ in range(2):
            nxt_frontier = []
            for f in frontier:
                for j in _companions(f, self.units_by_passage[f.passage]):
                    comp = self.index.get((f.passage, j))
                    if comp is not None and comp.unit.kind != "heading" and self.take(comp, pick=False):
                        nxt_frontier.append(comp)
            frontier = nxt_frontier

    def run(self) -> list[Quote]:
        while (c := self.next_pick()) is not None and self.take(c, pick=True):
            self.bring_companions(c)
            if len(self.picked) >= self.max_units or self.used >= self.max_chars:
                break
        quotes = []
        for p in self.passages:
            for (pp, i), text in sorted(self.chosen.items()):
                if pp == p:
                    quotes.append(Quote(p + 1, text, self.index[(pp, i)].unit.start, round(self.index[(pp, i)].score, 6)))
        return quotes


def select(
    question: str,
    passages: Sequence[str],
    *,
    similarity: Similarity | None = None,
    language: str | None = None,
    max_chars: int = 600,
    max_units: int = 4,
) -> list[Quote]:
    """The units of `passages` that best answer `question`, as quotes grouped by passage (the passage of the
    best quote first) and in reading order within a passage; their texts total at most `max_chars`.

        >>> passages = ["-v, --invert-match\\n   select non-matching lines.", "-w, --word-regexp\\n   whole words."]
        >>> [(q.passage, q.text) for q in select("What does grep -w do?", passages)]
        [(2, '-w, --word-regexp whole words.')]

    `similarity(question, texts)` returns one cosine per text (the embedder's); pass it only for a language the
    embedder covers. `language` is accepted for the caller's convenience (scoring adapts by itself: Chinese terms
    are words and bigrams). Deterministic: ties go to the earlier passage and the earlier unit.

    Limits: a unit longer than `max_chars` alone is cut with '…'; units under a tenth of the best score are left out.
    """
    del language  # the tokenizer handles both languages; kept in the signature for callers that know it
    units_by_passage = [split_units(p or "") for p in passages]
    cands = _score_units(question, units_by_passage, similarity)
    return _Picker(cands, units_by_passage, max_chars, max_units).run()


# ----------------------------------------------------------------------------------------------- rendering


def render(quotes: Sequence[Quote], language: str) -> str:
    """A lead-in line in `language` ('en' or 'zh') and one `quote [n]` line per quote.

    >>> render([Quote(1, "dpkg --listfiles foo", 0, 1.0)], "zh")
    '文档中的相关原文：\\ndpkg --listfiles foo [1]'
    """
    lang = language if language in LEAD_IN else "en"
    if not quotes:
        return NOTHING[lang]
    return "\n".join([LEAD_IN[lang]] + [f"{q.text} [{q.passage}]" for q in quotes])


def _prompt_text(prompt: Prompt) -> str:
    """The last user message of a chat prompt (or the prompt string itself)."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


class ExtractiveAnswerer(Generator):
    """Answers by quoting the passages (see the module docstring); `similarity` is the embedder's cosine,
    used only for questions in `covered_languages`.

        >>> answerer = ExtractiveAnswerer()
        >>> print("".join(answerer.answer("How do I list a package's files?", ["Run dpkg -L foo to list them."])))
        From the documents:
        Run dpkg -L foo to list them. [1]

    As a `Generator` it answers through `stream_grounded` (docqa/answer.py hands it the top `passage_limit`
    passages); `stream` gets a plain prompt with no passages, so it says it has nothing to quote.

    `max_units` (picks, not counting the commands and introductions they bring along) defaults to 6 rather than
    select's 4: on the tune questions 6 picks find the expected command 5-6 points more often (answers still
    under 600 characters at the median); 8 picks add 2 (English) to 6 (Chinese) more, at the cost of more noise.
    """

    name = "extractive"
    is_chat_model = False
    context_length = 1_000_000  # no model context: the prompt budget must never drop a passage
    passage_limit = 5

    def __init__(
        self,
        similarity: Similarity | None = None,
        covered_languages: frozenset[str] = frozenset({"en"}),
        max_chars: int = 600,
        *,
        max_units: int = ANSWER_UNITS,
    ):
        self.similarity = similarity
        self.covered_languages = frozenset(covered_languages)
        self.max_chars = max_chars
        self.max_units = max_units

    def answer_text(self, question: str, passages: Sequence[str]) -> str:
        """The rendered answer: at most `max_chars` long (unless that is too small for the lead-in and one cut
        quote)."""
        lang = detect_language(question)
        sim = self.similarity if lang in self.covered_languages else None
        # max_chars bounds the whole rendered answer (lead-in and [n] markers too): shrink the quotes' budget by
        # what rendering adds (usually settled in one round), then drop quotes from the end (the groups of the
        # weakest passages) if a smaller budget happened to choose a different, not shorter, set
        budget = self.max_chars
        for _ in range(3):
            quotes = select(question, passages, similarity=sim, language=lang, max_chars=max(budget, 40),
                            max_units=self.max_units)  # fmt: skip
            text = render(quotes, lang)
            if len(text) <= self.max_chars or budget <= 40:
                break
            budget -= len(text) - self.max_chars
        while len(text) > self.max_chars and len(quotes) > 1:
            quotes = quotes[:-1]
            text = render(quotes, lang)
        return text

    def answer(self, question: str, passages: Sequence[str]) -> Iterator[str]:
        """The rendered answer in pieces (the lead-in, then one line per quote); joined they are `answer_text`."""
        lines = self.answer_text(question, passages).split("\n")
        for k, line in enumerate(lines):
            yield line + ("\n" if k + 1 < len(lines) else "")

    def stream_grounded(
        self, question: str, passages: Sequence[str], prompt: Prompt, options: GenerationOptions | None = None
    ) -> Iterator[str]:
        """The answer quoted from `passages` (the prompt is not read); stops when `options.cancel` is set."""
        cancel = options.cancel if options is not None else None
        if cancel is not None and cancel.is_set():
            return
        for piece in self.answer(question, passages):
            if cancel is not None and cancel.is_set():
                return
            yield piece

    def stream(self, prompt: Prompt, options: GenerationOptions | None = None) -> Iterator[str]:
        """A plain prompt carries no passages to quote: say so, in the language of its last user message."""
        cancel = options.cancel if options is not None else None
        if cancel is not None and cancel.is_set():
            return
        yield NOTHING[detect_language(_prompt_text(prompt))]
