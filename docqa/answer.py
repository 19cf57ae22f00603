"""One grounded answer: retrieve -> budgeted prompt -> stream the model's text -> Answer with citations.

    # an illustration (the answer depends on the knowledge base and the model):
    a = ask("怎么解压 tar.gz 文件？", retriever, generator, settings, on_text=lambda s: print(s, end=""))
    a.citations, [h.location for _, h in a.sources], a.timings["total"]

The generator streams the text from the passages through `Generator.stream_grounded`: a language model reads
the budgeted prompt; the extractive answerer (the offline default) quotes the passages themselves.

Retrieval asks for `CANDIDATES` passages (or `settings.max_passages` when set) and the prompt keeps as many as the
token budget holds (docqa/prompt.py). When `retriever.is_relevant` says nothing found is relevant, `ask` abstains
without calling the model (unless `abstain=False`), with a message in the question's language. Where the
`query_expansion` setting asks for it (docqa/expand.py; off by default, `auto` only with a model on a GPU or a
served one), the model first writes extra search queries, which retrieval fuses in (`Answer.query_expansions`).

Citations `[1]`, `[1,2]`, `[1][3]`, `[2-4]`, `【1】`, `【1，2】` are parsed from the text after generation; numbers
that point to no passage in the prompt go to `Answer.invalid_citations` and are never shown as sources.
The model's output is only ever returned as text: nothing here executes it or calls tools with it.

Timings (seconds): `retrieval` (query expansion included; `expansion` alone when it ran), `prompt`, `first_token` (from the call, i.e. what the user waits),
`generation` (model time), `total`; a local model adds `prompt_tokens`, `cached_tokens` (of those, reused from the
previous turn's KV cache), `new_tokens`, `prefill_s`, `decode_s` and `tokens_per_s` (GenerationStats).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from .config import Settings
from .documents import Answer, Hit
from .expand import expand_query, expansion_kinds
from .generate.base import GenerationOptions, GenerationStats, Generator
from .prompt import PromptPlan, build_prompt, passage_label
from .text import CITATION, detect_language

if TYPE_CHECKING:
    from .retrieve import Retriever

#: passages retrieved per question before the prompt budget picks how many fit
CANDIDATES = 50


ABSTAIN = {
    "zh": "知识库中没有找到与这个问题相关的内容，所以不作回答。可以换个问法，或加 --no-abstain 强制回答。",
    "en": "Nothing in the knowledge base looks relevant to this question, so I won't guess. "
    "Try rephrasing it, or pass --no-abstain to answer anyway.",
}


def parse_citations(text: str, n_passages: int) -> tuple[list[int], list[int]]:
    """(valid, invalid) passage numbers cited in `text`, each in order of first appearance, no repeats.

    >>> parse_citations("见 [1][3]，另见【2，9】和 [4-5]", 4)
    ([1, 3, 2, 4], [9, 5])
    """
    seen: dict[int, None] = {}
    for m in CITATION.finditer(text):
        for part in re.split(r"\s*[,，、]\s*", m.group(1)):
            if "-" in part or "–" in part:
                lo, hi = (int(x) for x in re.split(r"\s*[\-–]\s*", part))
                nums = range(lo, hi + 1) if 0 <= hi - lo < 50 else [lo, hi]
            else:
                nums = [int(part)]
            for n in nums:
                seen.setdefault(n, None)
    valid = [n for n in seen if 1 <= n <= n_passages]
    invalid = [n for n in seen if not 1 <= n <= n_passages]
    return valid, invalid


def source_line(n: int, hit: Hit) -> str:
    """`[n] manual.pdf:41 — Install > Packages` as printed under an answer."""
    return f"[{n}] {hit.location}" + (f" — {hit.section}" if hit.section else "")


def generation_options(
    settings: Settings, cancel: threading.Event | None = None, stats: GenerationStats | None = None
) -> GenerationOptions:
    return GenerationOptions(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        repetition_penalty=settings.repetition_penalty,
        cancel=cancel,
        stats=stats,
    )


def ask(
    question: str,
    retriever: Retriever,
    generator: Generator,
    settings: Settings,
    history: Sequence[tuple[str, str]] | None = None,
    on_text: Callable[[str], None] | None = None,
    rewritten: str | None = None,
    *,
    abstain: bool = True,
    cancel: threading.Event | None = None,
    on_plan: Callable[[PromptPlan], None] | None = None,
    plan_fn: Callable[[str, list[Hit]], PromptPlan] | None = None,
) -> Answer:
    """Answer `question` from the knowledge base, streaming text pieces to `on_text` as they come.

    `rewritten` is the standalone form of a follow-up (docqa/chat.py): it is what retrieval searches for, while
    the model sees the question as asked after the kept `history` turns. When `cancel` is given, Ctrl-C
    (KeyboardInterrupt) during generation stops the answer instead of propagating: the event is set and the
    partial answer is returned. `on_plan` sees the prompt plan before generation (for --verbose). `plan_fn`
    (question, hits) -> PromptPlan replaces `build_prompt` (docqa/chat.py: a turn that extends the conversation).
    """
    t0 = time.perf_counter()
    question = question.strip()
    query = (rewritten or question).strip()
    k = settings.max_passages if settings.max_passages > 0 else CANDIDATES
    kinds = expansion_kinds(settings, generator)
    expansions = expand_query(query, generator, kinds) if kinds else []
    t_expand = time.perf_counter() - t0
    # a Chinese question's English gloss finds English passages: of use to a model, which reads them, not to the
    # extractive answerer, which quotes only units that share the question's words (docqa/lexicon.py) -- unless
    # the knowledge base embeds its Chinese chunks as their gloss (retrieval rule 7): there the gloss finds
    # Chinese passages by meaning too (extractive zh answer_key tune / report 0.59 / 0.56 -> 0.62 / 0.60)
    reads = getattr(generator, "reads_other_language", True) or getattr(retriever, "gloss_vectors", False)
    hits = retriever.search(query, k=k, mode=settings.mode, expansions=expansions, cross_language=reads)
    searched = list(getattr(hits, "expansions", None) or expansions)
    t_retrieval = time.perf_counter() - t0
    answer = Answer(
        question=question,
        text="",
        passages=[],
        model=getattr(generator, "name", ""),
        rewritten_query=rewritten if rewritten and rewritten != question else None,
        query_expansions=searched,
    )
    if abstain and not retriever.is_relevant(query, hits, searched):
        return _abstain(answer, on_text, {"retrieval": t_retrieval, "total": time.perf_counter() - t0})

    t1 = time.perf_counter()
    if plan_fn is not None:
        plan = plan_fn(question, list(hits))
    else:
        plan = build_prompt(question, hits, generator, settings, history or ())
    t_prompt = time.perf_counter() - t1
    if on_plan:
        on_plan(plan)
    answer.passages = plan.passages
    answer.passage_tokens = plan.passage_tokens

    t2 = time.perf_counter()
    passages = [h.text for h in plan.passages]
    stats = GenerationStats()
    stream = generator.stream_grounded(question, passages, plan.messages, generation_options(settings, cancel, stats))
    text, first = _consume(stream, on_text, cancel, t0)
    t_end = time.perf_counter()
    answer.text = text
    answer.citations, answer.invalid_citations = parse_citations(answer.text, len(plan.passages))
    answer.timings = {
        "retrieval": t_retrieval,
        "prompt": t_prompt,
        **({"expansion": t_expand} if kinds else {}),
        "first_token": first if first is not None else t_end - t0,
        "generation": t_end - t2,
        "total": t_end - t0,
    }
    if stats.prompt_tokens:  # a local model ran: what reading the prompt and generating cost
        answer.timings.update(stats.to_timings())
    return answer


def _abstain(answer: Answer, on_text: Callable[[str], None] | None, timings: dict[str, float]) -> Answer:
    """`answer` as the refusal in its question's language (no model is called), streamed to `on_text`."""
    answer.text = ABSTAIN[detect_language(answer.question)]
    answer.abstained = True
    answer.timings = timings
    if on_text:
        on_text(answer.text)
    return answer


def _consume(
    stream: Iterator[str], on_text: Callable[[str], None] | None, cancel: threading.Event | None, t0: float
) -> tuple[str, float | None]:
    """(the whole stripped text, seconds from `t0` to its first piece) of `stream`, passing each piece to
    `on_text`. Ctrl-C sets `cancel` and keeps the partial text when a `cancel` event is given; the stream is
    closed either way, so a model stops decoding at once."""
    pieces: list[str] = []
    first: float | None = None
    try:
        for piece in stream:
            if first is None:
                first = time.perf_counter() - t0
            pieces.append(piece)
            if on_text:
                on_text(piece)
    except KeyboardInterrupt:
        if cancel is None:
            raise
        cancel.set()
    finally:
        close = getattr(stream, "close", None)
        if close:
            close()
    return "".join(pieces).strip(), first


__all__ = ["ABSTAIN", "CANDIDATES", "ask", "parse_citations", "passage_label", "source_line"]
