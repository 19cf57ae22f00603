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
  * docqa/generate/scoring.py scores every unit against the question: lexical overlap with its terms (the BM25
    tokenizer), the injected embedding cosine where the caller says the embedder covers the language, bonuses
    for commands and option entries when the question asks how / which option, the lent score of a matching
    heading or FAQ question, and a prior for the passage's retrieval rank.
  * `select` takes the best units greedily, a long sentence as its clauses that match (`clip_to_clauses`); each
    brings its companions (a sentence ending in ':' brings the command after it, a command the sentence that
    introduces it, a later sentence of an option's description the option). Quotes come back grouped by passage, in reading order, within `max_chars`.
  * `ExtractiveAnswerer` (a `Generator`) renders the quotes under a lead-in, the whole text within `max_chars`.

Measured (`docqa eval corpora/dev_qa.jsonl --answers --llm extractive` over corpora/sample + corpora/dev, default
retrieval, no similarity: the factory builds it without one; "key" = the answer holds the first keyword), tune /
report: en 0.49 / 0.44, zh 0.59 / 0.56 at a median of ~590 characters, 20-40 ms on 2 cores
(README "Answers" has the table and the history of each rule). Similarity at weight 0.3 / 0.5 / 0.7 (English):
tune +5 / +4 / +7 points, report +2 / +1 / -1, at ~2 s of encoding per question: not worth it.

Limits: extraction cannot paraphrase, combine facts across passages or answer yes/no; synonyms the question
and the text do not share (解压 vs 提取) only match through the embedder, which covers English only by default.
The answer is only as good as retrieval: if no passage holds the answer, the best-matching sentences are quoted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..text import CITATION, detect_language
from .base import GenerationOptions, Generator, Prompt
from .scoring import Candidate, Similarity, clip_to_clauses, companions, question_terms, score_units
from .units import Unit, split_units

__all__ = ["ExtractiveAnswerer", "Quote", "Unit", "render", "select", "split_units"]

#: picks ExtractiveAnswerer asks select for, per question language (see its docstring)
ANSWER_UNITS = 14
ANSWER_UNITS_ZH = 16
#: a unit longer than this is quoted as its best-matching run of clauses (scoring.clip_to_clauses)
CLIP_CHARS = 120

LEAD_IN = {"en": "From the documents:", "zh": "文档中的相关原文："}
NOTHING = {"en": "The documents found do not contain a passage to quote.", "zh": "检索到的文档中没有可以引用的内容。"}


@dataclass(frozen=True)
class Quote:
    """A unit chosen for the answer: from passage number `passage` (1-based), at its character `start`."""

    passage: int
    text: str
    start: int
    score: float


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

# Tuned on the `tune` half of corpora/dev_qa.jsonl, checked on `report` (answer contains the keyword).
_NEIGHBOUR = 0.25  # x best score: a neighbour of a quoted unit continues the same answer
_MIN_SHARE = 0.3  # after the first pick, a unit needs this share of the best score to be quoted
# A stricter share for units of a passage not quoted yet (0.5, 0.7 of the best) was measured and dropped: it kept
# "Install Redis ..." out of an nginx answer but changed nothing on the reporting half (English -1 point).
# Taking the best unit of each other passage close to the best one (retrieval may rank the passage holding the
# answer 2nd to 5th) was measured and dropped: it costs the top passage's continuation the budget, and the top
# passage holds the answer most often (tune lost 5 points on the current retrieval, report gained nothing).


class _Picker:
    """The greedy choice of quotes: picks (at most `max_units`) and the companions each brings along (free)."""

    def __init__(
        self,
        cands: list[Candidate],
        passages: Sequence[str],
        units_by_passage: list[list[Unit]],
        max_chars: int,
        max_units: int,
        q_terms: dict[str, float] | None = None,
    ):
        self.q_terms = q_terms or {}
        self._quoted: dict[tuple[int, int], str] = {}
        self.texts = [p or "" for p in passages]
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

    def quoted(self, c: Candidate) -> str:
        """What quoting `c` shows: a long unit only its clauses that match the question (see CLIP_CHARS)."""
        key = (c.passage, c.index)
        if key not in self._quoted:
            text = c.unit.text
            # a sentence that introduces what follows ("..., run the venv module with the directory path:")
            # is quoted whole: its instruction is in the clause that shares no word with the question
            if CLIP_CHARS and self.q_terms and len(text) > CLIP_CHARS and not text.endswith((":", "：")):
                text = clip_to_clauses(text, self.q_terms, CLIP_CHARS)
            self._quoted[key] = text
        return self._quoted[key]

    def take(self, c: Candidate, pick: bool) -> bool:
        key = (c.passage, c.index)
        if key in self.chosen or (pick and len(self.picked) >= self.max_units):
            return False
        text = c.unit.text
        if text in self.seen_texts:
            return False  # overlapping chunks repeat sentences: quote each once
        self.seen_texts.add(text)
        text = self.quoted(c)
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

    def next_pick(self) -> Candidate | None:
        """The best unit not chosen yet, a neighbour of a chosen one getting a bonus; None when none qualifies."""
        pick: tuple[float, Candidate] | None = None
        for c in self.order:
            if (c.passage, c.index) in self.chosen or c.unit.text in self.seen_texts:
                continue
            bonus = 0.0
            if any((c.passage, c.index + d) in self.chosen for d in (-1, 1)):
                bonus = _NEIGHBOUR * self.best  # a neighbour of a chosen unit continues the same answer
            eff = c.score + bonus
            if self.chosen and eff < _MIN_SHARE * self.best:
                continue
            if self.chosen and self.needs(c) > self.max_chars - self.used:
                continue
            if pick is None or eff > pick[0] + 1e-12:
                pick = (eff, c)
        return pick[1] if pick else None

    def needs(self, c: Candidate) -> int:
        """Characters quoting `c` takes: a sentence that introduces a command ("...以下命令：") counts the commands
        it brings, because quoted without them it promises an answer and gives none."""
        size = len(self.quoted(c))
        if c.unit.text.endswith((":", "：")):
            for j in companions(c, self.units_by_passage[c.passage], self.texts[c.passage]):
                comp = self.index.get((c.passage, j))
                if comp is not None and (c.passage, j) not in self.chosen:
                    size += len(self.quoted(comp))
        return size

    def bring_companions(self, c: Candidate) -> None:
        # companions of companions too ("然后执行" / apt-get update / "然后运行" / apt-get dist-upgrade), two steps deep
        frontier = [c]
        for _ in range(2):
            nxt_frontier = []
            for f in frontier:
                for j in companions(f, self.units_by_passage[f.passage], self.texts[f.passage]):
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
                    quotes.append(
                        Quote(p + 1, text, self.index[(pp, i)].unit.start, round(self.index[(pp, i)].score, 6))
                    )
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
    cands = score_units(question, units_by_passage, similarity)
    return _Picker(cands, passages, units_by_passage, max_chars, max_units, question_terms(question)).run()


# ----------------------------------------------------------------------------------------------- rendering


_AS_PARENS = r"(\1)"


def render(quotes: Sequence[Quote], language: str) -> str:
    """A lead-in line in `language` ('en' or 'zh') and one `quote [n]` line per quote.

    >>> render([Quote(1, "dpkg --listfiles foo", 0, 1.0)], "zh")
    '文档中的相关原文：\\ndpkg --listfiles foo [1]'
    """
    lang = language if language in LEAD_IN else "en"
    if not quotes:
        return NOTHING[lang]
    # a quoted "[3]" (a footnote, a man page's "[file]") would read as a citation of passage 3: show it as (3)
    return "\n".join([LEAD_IN[lang]] + [f"{CITATION.sub(_AS_PARENS, q.text)} [{q.passage}]" for q in quotes])


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

    `max_units` (picks, not counting the commands and introductions they bring along) defaults to 14 for English
    and 16 for Chinese questions rather than select's 4 (with clause clipping a pick is short: 8 / 10 were the
    counts before it); it reads the best `passage_limit` = 8 passages. Measured
    with `docqa eval --answers` after retrieval started merging adjacent fragments (answer holds the first
    keyword, tune / report): 5 passages and 6 / 10 picks gave en 0.439 / 0.412, zh 0.537 / 0.450; 8 passages
    en 0.449 / 0.433, zh 0.537 / 0.475; 8 passages and 8 English picks en 0.490 / 0.443 at a median of 585
    characters (12 Chinese picks: no tune gain, so 10 stay). 3 passages lost on both halves.
    """

    name = "extractive"
    is_chat_model = False
    context_length = 1_000_000  # no model context: the prompt budget must never drop a passage
    passage_limit = 8
    # English passages a Chinese question's gloss finds are of no use to it: it quotes units that share the
    # question's words. With the gloss, dev-set Chinese answers fell (tune / report 0.585 / 0.562 -> 0.549 /
    # 0.500) while retrieval rose; the 20 questions over English-only documents stayed at 0.15 either way. (In a
    # knowledge base with gloss vectors the gloss also finds Chinese passages, and ask() searches it anyway.)
    reads_other_language = False

    def __init__(
        self,
        similarity: Similarity | None = None,
        covered_languages: frozenset[str] = frozenset({"en"}),
        max_chars: int = 600,
        *,
        max_units: int | None = None,
    ):
        self.similarity = similarity
        self.covered_languages = frozenset(covered_languages)
        self.max_chars = max_chars
        self.max_units = max_units  # None: ANSWER_UNITS, or ANSWER_UNITS_ZH for a Chinese question

    def answer_text(self, question: str, passages: Sequence[str]) -> str:
        """The rendered answer: at most `max_chars` long (unless that is too small for the lead-in and one cut
        quote)."""
        lang = detect_language(question)
        sim = self.similarity if lang in self.covered_languages else None
        # max_chars bounds the whole rendered answer (lead-in and [n] markers too): shrink the quotes' budget by
        # what rendering adds (usually settled in one round), then drop quotes from the end (the groups of the
        # weakest passages) if a smaller budget happened to choose a different, not shorter, set
        units = self.max_units or (ANSWER_UNITS_ZH if lang == "zh" else ANSWER_UNITS)
        budget = self.max_chars
        for _ in range(3):
            quotes = select(
                question, passages, similarity=sim, language=lang, max_chars=max(budget, 40), max_units=units
            )
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
