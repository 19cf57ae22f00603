"""The generator interface shared by every language model docqa can use.

A `Generator` turns a prompt (a string, or chat messages) into a stream of text pieces:

    >>> gen = get_generator("demo")                       # docqa.generate.get_generator  # doctest: +SKIP
    >>> for piece in gen.stream([{"role": "user", "content": "Hi"}], GenerationOptions(max_new_tokens=8)):  # doctest: +SKIP
    ...     print(piece, end="")

Implementations differ only in `stream`; they also report `context_length` and count tokens with their own
tokenizer so prompts can be budgeted (docqa/prompt.py). Local transformers models share `sample_tokens`, a
plain KV-cache decoding loop that runs in the caller's thread, so Ctrl-C (KeyboardInterrupt) or a `cancel`
event stops generation between two tokens with nothing left running. ChatGLM2/3 run it over a `DecodeSession`
(glm_runtime.GlmSession: a preallocated cache that reuses the longest common prefix with the last prompt);
other models over transformers' DynamicCache.
"""

from __future__ import annotations

import inspect
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypedDict

from ..text import CJK, CJK_PUNCT

if TYPE_CHECKING:  # torch is imported lazily: `docqa --help` must start fast
    import torch


class Message(TypedDict):
    role: str  # "user" | "assistant" (ChatGLM2 has no system role; see prompt.py)
    content: str


Prompt = str | Sequence[Message]

# characters a tokenizer without the text at hand should count as about one token each (Han, kana, 。、「」)
_ONE_TOKEN_CHAR = re.compile(f"[{CJK_PUNCT}{CJK}]")


@dataclass
class GenerationStats:
    """What one generation cost, filled in by a local model when the caller hands one in `GenerationOptions.stats`
    (a fresh object per call, so figures never go stale): prompt tokens (of which `cached_tokens` were reused from
    an earlier call's KV cache: a chat turn that extends the previous one), generated tokens, and the seconds spent reading the prompt (prefill, up
    to the first token's logits) and generating the rest (decode)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    def to_timings(self) -> dict[str, float]:
        """The figures as `Answer.timings` keys, with decode tokens/s."""
        out = {k: float(v) for k, v in vars(self).items()}
        if self.decode_s > 0 and self.new_tokens > 1:
            out["tokens_per_s"] = (self.new_tokens - 1) / self.decode_s  # the first token comes with the prefill
        return out


@dataclass
class GenerationOptions:
    max_new_tokens: int = 512
    temperature: float = 0.3  # 0 = greedy
    top_p: float = 0.8
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_loops: bool = True  # end the answer when it degenerates into a repeated phrase (see is_degenerate)
    cancel: threading.Event | None = None  # set it (from another thread) to stop after the current token
    stats: GenerationStats | None = None  # filled in by local models (see GenerationStats)


class Generator(ABC):
    """A language model that streams text. Subclasses implement `stream`; the rest has sensible defaults."""

    name: str = "generator"
    #: the longest prompt + answer the model handles, in its own tokens
    context_length: int = 2048
    #: True for instruction/chat-tuned models; False for the embedded demo (a small base model)
    is_chat_model: bool = True
    #: at most this many passages go into a prompt even when the budget holds more (0 = as many as fit)
    passage_limit: int = 0
    #: True when a prompt that extends the previous one reuses its KV cache (ChatGLM2/3): docqa/chat.py then
    #: builds each turn as an extension of the conversation so far (prompt.build_chat_turn)
    reuses_context: bool = False
    #: True when one more short generation costs little (a model on a GPU, or a served one): docqa/expand.py
    #: then asks it for search queries by default
    cheap_generation: bool = False
    #: True when passages in the other language than the question's are of use (a model reads both): a Chinese
    #: question then also searches its English gloss (docqa/lexicon.py); the extractive answerer says False
    #: (ask() searches the gloss anyway where it finds Chinese passages too: retrieval rule 7's gloss vectors)
    reads_other_language: bool = True

    @abstractmethod
    def stream(self, prompt: Prompt, options: GenerationOptions | None = None) -> Iterator[str]:
        """Yield the answer's text piece by piece (concatenate them for the whole answer)."""

    def stream_grounded(
        self, question: str, passages: Sequence[str], prompt: Prompt, options: GenerationOptions | None = None
    ) -> Iterator[str]:
        """The answer to `question` from the numbered `passages` (passage n is `passages[n - 1]`), streamed.

        `prompt` is what docqa/prompt.py built from them; a language model reads only that. An answerer that
        works on the passages themselves (docqa/generate/extractive.py) overrides this instead."""
        return self.stream(prompt, options)

    def generate(self, prompt: Prompt, options: GenerationOptions | None = None) -> str:
        return "".join(self.stream(prompt, options))

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in this model's prompt. Default: a conservative estimate (no tokenizer)."""
        # CJK characters are roughly one token each; other text about 4 characters per token.
        cjk = len(_ONE_TOKEN_CHAR.findall(text))
        return cjk + (len(text) - cjk + 3) // 4

    def render(self, messages: Sequence[Message]) -> str:
        """The plain-text prompt for `messages` (used for counting and by models without a chat API)."""
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def runs_on_accelerator(model) -> bool:
    """True when `model`'s (first) weights are not on the CPU: one more short generation is then cheap."""
    try:
        return next(iter(model.parameters())).device.type != "cpu"
    except (AttributeError, StopIteration, TypeError):
        return False


class StreamDecoder:
    """Turns token ids into text pieces as they arrive, never emitting half a UTF-8 character.

    Decoding ids one by one loses spaces (SentencePiece's "▁") and splits multi-byte characters spread
    over several byte-fallback tokens, so it decodes the whole sequence and emits the new stable suffix:

        >>> dec = StreamDecoder(tokenizer.decode)  # doctest: +SKIP
        >>> "".join(dec.push(i) for i in ids) + dec.flush() == tokenizer.decode(ids)  # doctest: +SKIP
        True
    """

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self._ids: list[int] = []
        self._emitted = 0

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        text = self._decode(self._ids)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for its other bytes
            return ""
        # decode() may strip or rewrite the tail; only emit what extends the already-emitted prefix
        piece = text[self._emitted :]
        self._emitted = len(text)
        return piece

    def flush(self) -> str:
        text = self._decode(self._ids)
        piece = text[self._emitted :]
        self._emitted = len(text)
        return piece


def _apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    import torch

    if penalty == 1.0 or seen.numel() == 0:
        return logits
    picked = torch.gather(logits, 0, seen)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return logits.scatter(0, seen, picked)


def pick_next(logits: torch.Tensor, options: GenerationOptions, seen: torch.Tensor, generator=None) -> int:
    """Choose the next token from one position's logits: greedy at temperature 0, else top-p sampling."""
    import torch

    logits = _apply_repetition_penalty(logits.float(), seen, options.repetition_penalty)
    if options.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < options.top_p  # always keeps the top token
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


class DecodeSession(Protocol):
    """A model with its own KV cache (docqa.generate.glm_runtime.GlmSession): `prefill` returns the last
    position's logits and how many leading prompt tokens it reused from the cache; `step` appends one token."""

    def prefill(self, ids: Sequence[int]) -> tuple[torch.Tensor, int]: ...

    def step(self, token: int) -> torch.Tensor: ...


def sample_tokens(
    model,
    input_ids: Sequence[int],
    options: GenerationOptions,
    eos_ids: Iterable[int],
    session: DecodeSession | None = None,
) -> Iterator[int]:
    """Decode new token ids one at a time with a KV cache: prefill `input_ids`, then feed one token per step.

    `model` is a transformers causal LM (`GlmForCausalLM`, `Gemma3ForCausalLM`, ...). Stops at an eos id,
    at `max_new_tokens`, or when `options.cancel` is set. Runs in the caller's thread (no background work).
    A `session` (or, for ChatGLM2/3's GlmForCausalLM, a fresh glm_runtime.GlmSession) runs the model with a
    preallocated cache and reuses what it holds of `input_ids` (`stats.cached_tokens`).
    """
    if session is None:
        from .glm_runtime import is_glm

        if is_glm(model):
            from .glm_runtime import GlmSession

            session = GlmSession(model)
    if session is not None:
        return _sample_session(session, input_ids, options, eos_ids)
    return sample_dynamic(model, input_ids, options, eos_ids)


def _sample_session(
    session: DecodeSession, input_ids: Sequence[int], options: GenerationOptions, eos_ids: Iterable[int]
) -> Iterator[int]:
    import torch

    eos = set(int(e) for e in eos_ids)
    gen = torch.Generator(device="cpu").manual_seed(options.seed) if options.seed is not None else None
    seen = torch.tensor(list(dict.fromkeys(int(i) for i in input_ids)), dtype=torch.long)
    try:
        if options.max_new_tokens > 0 and not (options.cancel is not None and options.cancel.is_set()):
            yield from _session_loop(session, input_ids, options, eos, seen, gen)
    finally:
        release = getattr(session, "release", None)
        if release is not None:
            release()


def _session_loop(session, input_ids, options, eos, seen, gen) -> Iterator[int]:
    stats = options.stats
    t = time.perf_counter()
    logits, reused = session.prefill(input_ids)
    if stats is not None:
        stats.prompt_tokens, stats.cached_tokens = len(input_ids), reused
    for step in range(options.max_new_tokens):
        nxt, seen = _next_token(logits, options, seen, gen, eos, step, t)
        if nxt is None:
            return
        yield nxt
        # the last token is not fed: nothing would read its logits (the session's ids end before it)
        if step == options.max_new_tokens - 1 or (options.cancel is not None and options.cancel.is_set()):
            return
        t = time.perf_counter()
        logits = session.step(nxt)


def _next_token(logits, options: GenerationOptions, seen, gen, eos: set[int], step: int, started: float):
    """One decoding step's bookkeeping, shared by both sampling loops: pick the token from `logits`, add the
    model call (begun at `started`) to the stats, count the token; (None, seen) at an end-of-sequence token, else
    (the token, `seen` with it added when a repetition penalty needs it)."""
    nxt = pick_next(logits.to("cpu"), options, seen, gen)
    _account(options.stats, step, started)
    if nxt in eos:
        return None, seen
    if options.stats is not None:
        options.stats.new_tokens += 1
    if options.repetition_penalty != 1.0:
        import torch

        seen = torch.unique(torch.cat([seen, torch.tensor([nxt])]))
    return nxt, seen


def _account(stats: GenerationStats | None, step: int, started: float) -> None:
    """Add one model call's time to `stats`: the first call of a generation is the prefill, the rest decode."""
    if stats is not None:
        if step == 0:
            stats.prefill_s += time.perf_counter() - started
        else:
            stats.decode_s += time.perf_counter() - started


def cache_kwarg(model) -> str:
    """The forward() keyword for the KV cache: transformers 5.x renamed `past_key_values` to `cache` (the old name
    is deprecated); accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def sample_dynamic(
    model,
    input_ids: Sequence[int],
    options: GenerationOptions,
    eos_ids: Iterable[int],
    cache=None,
    prefix_len: int = 0,
) -> Iterator[int]:
    """The sampling loop over transformers' own forward and cache, for models without a docqa session.

    `cache` may arrive holding `prefix_len` positions of a P-Tuning prefix (adapters.py): every token then attends
    to it, while positions count from 0 at the first real token (explicit position ids and attention mask)."""
    import torch
    from transformers import DynamicCache

    eos = set(int(e) for e in eos_ids)
    device = next(model.parameters()).device
    gen = None
    if options.seed is not None:
        gen = torch.Generator(device="cpu").manual_seed(options.seed)
    n = len(input_ids)
    ids = torch.tensor([list(input_ids)], dtype=torch.long, device=device)
    seen = torch.tensor(list(dict.fromkeys(int(i) for i in input_ids)), dtype=torch.long)
    if cache is None:
        try:  # with the config, sliding-window layers (Gemma 3) keep a bounded cache
            cache = DynamicCache(config=model.config)
        except TypeError:
            cache = DynamicCache()
    cache_kw = cache_kwarg(model)
    stats = options.stats
    if stats is not None:
        stats.prompt_tokens = n
    extra: dict = {}
    if prefix_len:
        extra["position_ids"] = torch.arange(n, device=device).unsqueeze(0)
    with torch.inference_mode():
        for step in range(options.max_new_tokens):
            if options.cancel is not None and options.cancel.is_set():
                return
            t = time.perf_counter()
            if prefix_len:
                extra["attention_mask"] = torch.ones(1, prefix_len + n + step, dtype=torch.long, device=device)
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **extra, **{cache_kw: cache})
            cache = getattr(out, "cache", None) or out.past_key_values
            nxt, seen = _next_token(out.logits[0, -1], options, seen, gen, eos, step, t)
            if nxt is None:
                return
            yield nxt
            ids = torch.tensor([[nxt]], dtype=torch.long, device=device)
            if prefix_len:
                extra["position_ids"] = torch.tensor([[n + step]], dtype=torch.long, device=device)


def stream_text(
    model,
    input_ids: Sequence[int],
    options: GenerationOptions,
    eos_ids: Iterable[int],
    decode: Callable[[list[int]], str],
    context_length: int,
    session: DecodeSession | None = None,
    sampler: Callable[..., Iterator[int]] | None = None,
) -> Iterator[str]:
    """`sample_tokens` decoded into text pieces, with `max_new_tokens` clipped to the room left in the context.

    `sampler(model, input_ids, options, eos_ids)` replaces `sample_tokens` (adapters.py's prefix loop).
    Raises ModelError when the prompt alone fills the context. Closing the iterator stops decoding at once.
    """
    from dataclasses import replace

    from ..errors import ModelError

    room = context_length - len(input_ids)
    if room <= 0:
        raise ModelError(f"the prompt takes {len(input_ids)} tokens, more than the model's context of {context_length}")
    if options.max_new_tokens > room:
        options = replace(options, max_new_tokens=room)
    if sampler is not None:
        tokens = sampler(model, input_ids, options, eos_ids)
    else:
        tokens = sample_tokens(model, input_ids, options, eos_ids, session)
    decoder = StreamDecoder(decode)
    text = ""
    try:
        for tok in tokens:
            if piece := decoder.push(tok):
                yield piece
                text = (text + piece)[-400:]
                if options.stop_loops and is_degenerate(text):
                    return
        if tail := decoder.flush():
            yield tail
    finally:
        tokens.close()


_LOOP = re.compile(r"(.{1,40}?)\1{7,}$", re.S)


def is_degenerate(text: str) -> bool:
    """True when `text` ends in one short unit repeated 8+ times ("1. 1. 1. 1. ..."): small models fall into
    such loops, and nothing useful comes after them.

        >>> is_degenerate("Answer: " + "1. " * 8), is_degenerate("a normal sentence.")
        (True, False)
    """
    m = _LOOP.search(text)
    return bool(m) and any(ch.isalnum() for ch in m.group(1))  # "----------" is a rule, not a loop
