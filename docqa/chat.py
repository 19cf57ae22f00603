"""Conversations: follow-up rewriting, question/answer history, and sessions saved as JSON.

    >>> chat = Chat(retriever, generator, settings, Session.load(settings.sessions_dir, "work"))  # doctest: +SKIP
    >>> chat.ask("How do I install nginx?").text  # doctest: +SKIP
    'Run apt-get install nginx [1].'
    >>> a = chat.ask("And where is its configuration file?")  # doctest: +SKIP
    >>> a.rewritten_query                        # what retrieval searched for (the demo model's rule)  # doctest: +SKIP
    'And where is its configuration file? (install nginx)'

Follow-ups are rewritten into a standalone question for retrieval. A chat model (`generator.is_chat_model`) does
it with a short greedy prompt (at most `REWRITE_TOKENS` new tokens); an empty or absurd rewrite (over 4x the question's
length, or several lines of prose) falls back to the deterministic rule used for the demo base model:
when the follow-up refers back (它/这个/那些/...呢/it/that/this/they/what about...) or names at most one thing
("Windows?"), the content words of the previous standalone question that it lacks are appended to it. The model
then sees the question as asked, after the kept history turns (docqa/prompt.py budgets them).

History keeps question/answer turns only (passages are retrieved afresh each turn). A named session is saved after
every turn as JSON under `settings.sessions_dir/NAME.json` (atomic replace) and resumed by loading the same name.

A growing context. With a generator that reuses its KV cache (`generator.reuses_context`: ChatGLM2/ChatGLM3),
`Chat.context` (prompt.ChatContext) keeps every round as it was sent -- the passages with it -- and each turn's
prompt is the previous one + its answer + the new turn (prompt.build_chat_turn), so the model reads only the new
tokens (`timings["cached_tokens"]`). The new turn carries only the passages not already in the context; a passage
keeps its number for the whole conversation, so `[n]` in any answer means the same passage. When the budget would
overflow, the oldest rounds are dropped (the prompt is then read again once); passages are never cut. The
question rewrite is a separate prompt: the generator keeps a second cache for it, so it does not evict the
conversation's. A resumed session starts the context from its question/answer turns, without their passages.

The `docqa chat` loop, its /commands and the console output live in docqa/cli/repl.py; this module has no
terminal code (no rich, typer or prompt_toolkit), so a server can hold a `Chat` per conversation as well.
Limits: the deterministic rewrite only helps retrieval by keywords, it does not resolve what a pronoun refers to.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .answer import ask as ask_question
from .config import Settings
from .documents import Answer
from .errors import ConfigError, DocQAError
from .expand import greedy_reply, reply_line
from .generate.base import Generator
from .prompt import ChatContext, PromptPlan, build_chat_turn
from .store import write_atomic
from .text import EN_FILLER_WORDS, EN_STOP_WORDS, HAN, ZH_FILLER_WORDS, ZH_STOP_WORDS, detect_language

if TYPE_CHECKING:
    from .retrieve import Retriever

REWRITE_TOKENS = 64
SESSION_VERSION = 1
_NAME = re.compile(r"^[\w\-][\w.\-]{0,63}$")

# -- follow-up rewriting ----------------------------------------------------------------------------------------

# Words that refer back to something said before. Bare 这/那/其 and English "there"/"and" are too common in
# standalone questions to count anywhere; they count at the start only.
_ZH_ANAPHOR = re.compile(
    r"它|他们|她们|那个|那些|这个|这些|该|此|上述|前者|后者|^\s*(?:那|这|那么|还有|另外)|呢\s*[？?]?\s*$"
)
_EN_ANAPHOR = re.compile(
    r"\b(?:it|its|it's|this|that|these|those|they|them|their)\b|^\s*(?:and|what about|how about|also|then|same)\b",
    re.IGNORECASE,
)
_EN_WORD = re.compile(r"[A-Za-z0-9][\w.+#/\-]*[\w+#]|[A-Za-z0-9]")
_CJK_RUN = re.compile(f"[{HAN}]+")
# a follow-up's topic: stop words and the words of how a question is asked ("please tell", 使用) both carry none
_EN_SKIP = EN_STOP_WORDS | EN_FILLER_WORDS
_ZH_SKIP = ZH_STOP_WORDS | ZH_FILLER_WORDS


def content_words(text: str) -> list[str]:
    """Words of `text` that carry its topic, in order, without repeats (stop words and punctuation dropped)."""
    from .tokenize import tokenize

    words: list[str] = []
    pos = 0
    for m in _CJK_RUN.finditer(text):
        words += [w for w in _EN_WORD.findall(text, pos, m.start()) if w.lower() not in _EN_SKIP]
        # jieba (through the BM25 tokenizer, without bigrams) segments the Chinese run into words
        words += [w for w in tokenize(m.group(), bigrams=False) if w not in _ZH_SKIP and len(w) > 1]
        pos = m.end()
    words += [w for w in _EN_WORD.findall(text, pos) if w.lower() not in _EN_SKIP]
    return list(dict.fromkeys(words))


def looks_like_follow_up(question: str) -> bool:
    """True when the question refers back (它/那个/...呢, it/they/what about...) or names at most one thing."""
    anaphor = _ZH_ANAPHOR if detect_language(question) == "zh" else _EN_ANAPHOR
    return bool(anaphor.search(question)) or len(content_words(question)) <= 1


def combine_follow_up(question: str, previous: str) -> str:
    """The deterministic rewrite: `question` plus the content words of `previous` that it does not have."""
    have = {w.lower() for w in content_words(question)}
    extra = [w for w in content_words(previous) if w.lower() not in have and w not in question]
    return f"{question} ({' '.join(extra)})" if extra else question


_REWRITE = {
    "zh": (
        "下面是一段对话和一个后续问题。请把后续问题改写成一个完整、独立的问题，使人不看对话也能理解"
        "（把“它”“那”等指代换成具体的对象）。只输出改写后的问题，不要回答它。\n\n对话：\n{conversation}\n\n"
        "后续问题：{question}\n独立问题："
    ),
    "en": (
        "Below are a conversation and a follow-up question. Rewrite the follow-up as one complete, standalone "
        "question that can be understood without the conversation (replace 'it', 'that' and the like with what "
        "they refer to). Output only the rewritten question, do not answer it.\n\nConversation:\n{conversation}\n\n"
        "Follow-up question: {question}\nStandalone question:"
    ),
}
_REWRITE_PREFIX = re.compile(
    r"^\s*(?:独立问题|改写后的问题|问题|standalone question|rewritten question|question)\s*[:：]\s*", re.IGNORECASE
)


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "…"


def llm_rewrite(question: str, turns: list[tuple[str, str]], generator: Generator) -> str | None:
    """The chat model's standalone version of `question`, or None when its output is unusable."""
    lang = detect_language(question)
    q_word, a_word = ("问", "答") if lang == "zh" else ("Q", "A")
    conversation = "\n".join(f"{q_word}: {_clip(q, 200)}\n{a_word}: {_clip(a, 300)}" for q, a in turns[-3:])
    prompt = _REWRITE[lang].format(conversation=conversation, question=question)
    raw = greedy_reply(generator, [{"role": "user", "content": prompt}], REWRITE_TOKENS)
    text = reply_line(raw, _REWRITE_PREFIX) if raw is not None else None
    if not text or len(text) > max(200, 4 * len(question)):
        return None
    return text


def rewrite_question(question: str, turns: list[tuple[str, str]], previous: str | None, generator: Generator) -> str:
    """The standalone question to retrieve with. `turns` are the earlier (question, answer) pairs and
    `previous` the previous turn's standalone question."""
    if not turns:
        return question
    if generator.is_chat_model:
        rewritten = llm_rewrite(question, turns, generator)
        if rewritten:
            return rewritten
    if previous and looks_like_follow_up(question):
        return combine_follow_up(question, previous)
    return question


# -- sessions ---------------------------------------------------------------------------------------------------


@dataclass
class Turn:
    question: str
    answer: str
    rewritten: str | None = None
    citations: list[int] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)  # the cited passages: n, source, page, section
    abstained: bool = False
    at: float = 0.0

    @property
    def standalone(self) -> str:
        return self.rewritten or self.question


@dataclass
class Session:
    """A conversation; `name` None = not saved."""

    name: str | None = None
    turns: list[Turn] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    directory: Path | None = None

    @staticmethod
    def check_name(name: str) -> str:
        if not _NAME.match(name):
            raise ConfigError(f"session name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        return name

    @classmethod
    def load(cls, directory: Path, name: str) -> Session:
        """The saved session `name` under `directory`, or a new empty one with that name."""
        path = Path(directory) / f"{cls.check_name(name)}.json"
        if not path.exists():
            return cls(name=name, directory=Path(directory))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != SESSION_VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            turns = [Turn(**t) for t in data["turns"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DocQAError(f"cannot read session {path}: {e}; delete it or pick another --session name") from None
        return cls(name=name, turns=turns, created=float(data.get("created", time.time())), directory=Path(directory))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SESSION_VERSION,
            "name": self.name,
            "created": self.created,
            "updated": time.time(),
            "turns": [asdict(t) for t in self.turns],
        }

    def save(self) -> Path | None:
        """Write the session atomically (temp file + rename); nothing for an unnamed session."""
        if self.name is None or self.directory is None:
            return None
        d = Path(self.directory)
        path = d / f"{self.name}.json"
        data = json.dumps(self.to_json(), ensure_ascii=False, indent=1).encode("utf-8")
        try:
            d.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        except OSError as e:
            raise DocQAError(f"cannot save session {path}: {e}") from None
        return path


class Chat:
    """One conversation over one knowledge base and one model."""

    def __init__(
        self,
        retriever: Retriever,
        generator: Generator,
        settings: Settings,
        session: Session | None = None,
        abstain: bool = True,
    ):
        self.retriever = retriever
        self.generator = generator
        self.settings = settings
        self.session = session or Session()
        self.abstain = abstain
        self.last_answer: Answer | None = None
        #: what the model's context holds, for a generator that reuses its KV cache (`reuses_context`): each
        #: turn then extends the last prompt, so the model reads only the new tokens (prompt.build_chat_turn)
        self.context: ChatContext | None = None

    def history(self) -> list[tuple[str, str]]:
        """(question, answer) turns the model sees; abstentions are not conversation."""
        return [(t.question, t.answer) for t in self.session.turns if not t.abstained and t.answer]

    def standalone(self, question: str) -> str:
        turns = self.session.turns
        previous = turns[-1].standalone if turns else None
        return rewrite_question(question, self.history(), previous, self.generator)

    def ask(
        self,
        question: str,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        on_plan: Callable[[PromptPlan], None] | None = None,
        on_rewrite: Callable[[str], None] | None = None,
    ) -> Answer:
        """Answer a (follow-up) question; the turn is recorded and the session saved unless interrupted."""
        question = question.strip()
        rewritten = self.standalone(question)
        if on_rewrite:
            on_rewrite(rewritten)
        plans: list[PromptPlan] = []
        plan_fn = None
        if getattr(self.generator, "reuses_context", False):
            if self.context is None:
                self.context = ChatContext.from_history(self.history())
            context = self.context

            def plan_fn(q: str, hits: list) -> PromptPlan:
                return build_chat_turn(q, hits, self.generator, self.settings, context)

        def seen_plan(plan: PromptPlan) -> None:
            plans.append(plan)
            if on_plan:
                on_plan(plan)

        answer = ask_question(
            question,
            self.retriever,
            self.generator,
            self.settings,
            self.history(),
            on_text,
            rewritten,
            abstain=self.abstain,
            cancel=cancel,
            on_plan=seen_plan,
            plan_fn=plan_fn,
        )
        self.last_answer = answer
        done = cancel is None or not cancel.is_set()
        if done and self.context is not None and plans and plans[-1].turn is not None and answer.text:
            self.context.commit(plans[-1].turn, answer.text)
        if done:
            self.session.turns.append(
                Turn(
                    question=question,
                    answer=answer.text,
                    rewritten=answer.rewritten_query,
                    citations=answer.citations,
                    abstained=answer.abstained,
                    at=time.time(),
                    sources=[
                        {"n": n, "source": h.source, "page": h.page, "section": h.section} for n, h in answer.sources
                    ],
                )
            )
            self.session.save()
        return answer

    def reset(self) -> None:
        self.session.turns.clear()
        self.last_answer = None
        self.context = None
        self.session.save()
