"""Conversations: follow-up rewriting, question/answer history, sessions saved as JSON, and the `docqa chat` loop.

    >>> chat = Chat(retriever, generator, settings, Session.load(settings.sessions_dir, "work"))
    >>> chat.ask("How do I install nginx?").text
    'Run apt-get install nginx [1].'
    >>> a = chat.ask("And where is its configuration file?")
    >>> a.rewritten_query                        # what retrieval searched for (the demo model's rule)
    'And where is its configuration file? (install nginx)'

Follow-ups are rewritten into a standalone question for retrieval. A chat model (`generator.is_chat_model`) does
it with a short greedy prompt (at most `REWRITE_TOKENS` new tokens); an empty or absurd rewrite (over 4x the question's
length, or several lines of prose) falls back to the deterministic rule used for the demo base model:
when the follow-up refers back (它/这个/那些/...呢/it/that/this/they/what about...) or names at most one thing
("Windows?"), the content words of the previous standalone question that it lacks are appended to it. The model
then sees the question as asked, after the kept history turns (docqa/prompt.py budgets them).

History keeps question/answer turns only (passages are retrieved afresh each turn). A named session is saved after
every turn as JSON under `settings.sessions_dir/NAME.json` (atomic replace) and resumed by loading the same name.

`run_repl` is the loop behind `docqa chat`: prompt_toolkit line editing with a history file on a terminal, else
one question per line from stdin. Commands: /sources, /history, /reset, /exit (and /help). Ctrl-C stops the
current answer, not the session. Limits: one conversation per process; the deterministic rewrite only helps
retrieval by keywords, it does not resolve what a pronoun refers to.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .answer import ask as ask_question
from .answer import source_line
from .config import Settings
from .documents import Answer, Hit
from .errors import ConfigError, DocQAError
from .generate.base import GenerationOptions, Generator
from .lang import detect_language
from .prompt import PromptPlan
from .store import write_atomic

if TYPE_CHECKING:
    from rich.console import Console

    from .retrieve import Retriever

REWRITE_TOKENS = 64
SESSION_VERSION = 1
_NAME = re.compile(r"^[\w\-][\w.\-]{0,63}$")

# -- follow-up rewriting ----------------------------------------------------------------------------------------

# Words that refer back to something said before. Bare 这/那/其 and English "there"/"and" are too common in
# standalone questions to count anywhere; they count at the start only.
_ZH_ANAPHOR = re.compile(r"它|他们|她们|那个|那些|这个|这些|该|此|上述|前者|后者|^\s*(?:那|这|那么|还有|另外)|呢\s*[？?]?\s*$")
_EN_ANAPHOR = re.compile(
    r"\b(?:it|its|it's|this|that|these|those|they|them|their)\b|^\s*(?:and|what about|how about|also|then|same)\b",
    re.IGNORECASE,
)
_EN_WORD = re.compile(r"[A-Za-z0-9][\w.+#/\-]*[\w+#]|[A-Za-z0-9]")
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_EN_STOP = frozenset(
    """a about above after again all am an and any are as at be been being both but by can could did do does doing
    down during each few for from further had has have having he her here him his how i if in into is it its itself
    just me more most my no nor not of off on once only or other our out over own same she should so some such than
    that the their them then there these they this those through to too under until up very was we were what when
    where which while who whom why will with would you your about also else instead one ones please tell know
    use used using way ways get""".split()
)
_ZH_STOP = frozenset(
    """的 了 是 在 和 与 及 或 也 都 就 而 之 其 这 那 着 过 吗 呢 吧 啊 呀 么 个 把 被 让 给 对 从 向 于 以 为 将 并 且
    等 我 你 他 她 它 我们 你们 他们 她们 它们 这个 那个 这些 那些 什么 怎么 怎样 怎么样 如何 为什么 哪个 哪些 哪里 一个
    一些 可以 能够 以及 还是 或者 因为 所以 如果 但是 然后 是否 请问 有没有 应该 需要 要 用 使用 有 会 能 吗？ 呢？ 在哪
    哪儿 多少 几 哪 谁""".split()
)


def content_words(text: str) -> list[str]:
    """Words of `text` that carry its topic, in order, without repeats (stop words and punctuation dropped)."""
    from .lexical import tokenize

    words: list[str] = []
    pos = 0
    for m in _CJK_RUN.finditer(text):
        words += [w for w in _EN_WORD.findall(text, pos, m.start()) if w.lower() not in _EN_STOP]
        # jieba (through the lexical tokenizer, without bigrams) segments the Chinese run into words
        words += [w for w in tokenize(m.group(), bigrams=False) if w not in _ZH_STOP and len(w) > 1]
        pos = m.end()
    words += [w for w in _EN_WORD.findall(text, pos) if w.lower() not in _EN_STOP]
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
_REWRITE_PREFIX = re.compile(r"^\s*(?:独立问题|改写后的问题|问题|standalone question|rewritten question|question)\s*[:：]\s*",
                             re.IGNORECASE)  # fmt: skip


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "…"


def llm_rewrite(question: str, turns: list[tuple[str, str]], generator: Generator) -> str | None:
    """The chat model's standalone version of `question`, or None when its output is unusable."""
    lang = detect_language(question)
    q_word, a_word = ("问", "答") if lang == "zh" else ("Q", "A")
    conversation = "\n".join(f"{q_word}: {_clip(q, 200)}\n{a_word}: {_clip(a, 300)}" for q, a in turns[-3:])
    prompt = _REWRITE[lang].format(conversation=conversation, question=question)
    opts = GenerationOptions(max_new_tokens=REWRITE_TOKENS, temperature=0.0, repetition_penalty=1.0)
    try:
        raw = generator.generate([{"role": "user", "content": prompt}], opts)
    except DocQAError:
        return None
    lines = [ln for ln in raw.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    text = _REWRITE_PREFIX.sub("", lines[0]).strip().strip("\"'“”「」").strip()
    if not text or len(text) > max(200, 4 * len(question)) or len(lines) > 3:
        return None
    return text


def rewrite_question(question: str, turns: list[tuple[str, str]], previous: str | None,
                     generator: Generator) -> str:  # fmt: skip
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
        return {"version": SESSION_VERSION, "name": self.name, "created": self.created, "updated": time.time(),
                "turns": [asdict(t) for t in self.turns]}  # fmt: skip

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

    def __init__(self, retriever: Retriever, generator: Generator, settings: Settings,
                 session: Session | None = None, abstain: bool = True):  # fmt: skip
        self.retriever = retriever
        self.generator = generator
        self.settings = settings
        self.session = session or Session()
        self.abstain = abstain
        self.last_answer: Answer | None = None

    def history(self) -> list[tuple[str, str]]:
        """(question, answer) turns the model sees; abstentions are not conversation."""
        return [(t.question, t.answer) for t in self.session.turns if not t.abstained and t.answer]

    def standalone(self, question: str) -> str:
        turns = self.session.turns
        previous = turns[-1].standalone if turns else None
        return rewrite_question(question, self.history(), previous, self.generator)

    def ask(self, question: str, on_text: Callable[[str], None] | None = None,
            cancel: threading.Event | None = None, on_plan: Callable[[PromptPlan], None] | None = None,
            on_rewrite: Callable[[str], None] | None = None) -> Answer:  # fmt: skip
        """Answer a (follow-up) question; the turn is recorded and the session saved unless interrupted."""
        question = question.strip()
        rewritten = self.standalone(question)
        if on_rewrite:
            on_rewrite(rewritten)
        answer = ask_question(question, self.retriever, self.generator, self.settings, self.history(), on_text,
                              rewritten, abstain=self.abstain, cancel=cancel, on_plan=on_plan)  # fmt: skip
        self.last_answer = answer
        if cancel is None or not cancel.is_set():
            self.session.turns.append(
                Turn(
                    question=question, answer=answer.text, rewritten=answer.rewritten_query,
                    citations=answer.citations, abstained=answer.abstained, at=time.time(),
                    sources=[{"n": n, "source": h.source, "page": h.page, "section": h.section} for n, h in answer.sources],
                )
            )  # fmt: skip
            self.session.save()
        return answer

    def reset(self) -> None:
        self.session.turns.clear()
        self.last_answer = None
        self.session.save()


# -- the REPL ---------------------------------------------------------------------------------------------------

HELP = "/sources  cited passages of the last answer\n/history  this conversation\n/reset    start over\n/exit     quit"


def shown_sources(answer: Answer | None) -> list[tuple[int, Hit]]:
    """The passages to show as sources: those cited, else (small models often cite nothing) the best three given."""
    if answer is None or answer.abstained:
        return []
    return answer.sources or list(enumerate(answer.passages[:3], 1))


def print_sources(out: Console, answer: Answer) -> None:
    """The Sources block under an answer (cited passages only; invalid numbers are flagged, not listed)."""
    from rich.markup import escape

    if answer.abstained:
        return
    if answer.sources:
        out.print("[bold]Sources[/]")
    elif answer.passages:
        out.print("[bold]Sources[/] [yellow](the answer cites no passage; these were the best passages given to the model)[/]")
    for n, h in shown_sources(answer):
        out.print(f"  [cyan]{escape(source_line(n, h))}[/]")
    if answer.invalid_citations:
        nums = ", ".join(f"[{n}]" for n in answer.invalid_citations)
        out.print(f"[yellow]cites passages that do not exist: {escape(nums)}[/]")


def describe_plan(plan: PromptPlan) -> str:
    """One line for --verbose: how the budget was spent."""
    return (f"prompt {plan.total_tokens}/{plan.budget} tokens (context {plan.context_length}); "
            f"{len(plan.passages)} passages ({sum(plan.passage_tokens)} tokens, {plan.dropped_passages} left out); "
            f"history {len(plan.history)} turns kept, {len(plan.dropped_history)} dropped")  # fmt: skip


def answer_to_console(out: Console, err: Console, answer_fn: Callable[..., Answer], *, verbose: bool,
                      as_json: bool) -> Answer | None:  # fmt: skip
    """Run `answer_fn(on_text=, cancel=, on_plan=)` streaming to `out`; print the sources (or one JSON line).
    Returns None when interrupted before an answer existed. Shared by `docqa ask` and `docqa chat`."""
    cancel = threading.Event()

    def on_text(piece: str) -> None:
        if not as_json:
            out.print(piece, end="", markup=False, highlight=False)

    def on_plan(plan: PromptPlan) -> None:
        if verbose:
            err.print(f"[dim]{describe_plan(plan)}[/]", highlight=False)

    try:
        answer = answer_fn(on_text=on_text, cancel=cancel, on_plan=on_plan)
    except KeyboardInterrupt:
        err.print("\n[yellow]interrupted[/]")
        return None
    if as_json:
        print(json.dumps(answer.to_json(), ensure_ascii=False), flush=True)
        return answer
    out.print()
    if cancel.is_set():
        err.print("[yellow]interrupted[/]")
    print_sources(out, answer)
    if verbose:
        t = answer.timings
        err.print("[dim]" + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()) + "[/]", highlight=False)
    return answer


def _history_file(settings: Settings) -> Path | None:
    try:
        Path(settings.sessions_dir).mkdir(parents=True, exist_ok=True)
        return Path(settings.sessions_dir) / "input-history.txt"
    except OSError:
        return None


def _terminal_lines(settings: Settings) -> Iterable[str]:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    hist = _history_file(settings)
    ps: PromptSession = PromptSession(history=FileHistory(str(hist)) if hist else InMemoryHistory())
    while True:
        try:
            yield ps.prompt("? ")
        except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line, like a shell
            continue
        except EOFError:
            return


def run_repl(chat: Chat, out: Console, err: Console, lines: Iterable[str] | None = None, *,
             verbose: bool = False, as_json: bool = False) -> None:  # fmt: skip
    """The chat loop: questions and /commands from `lines` (None = an interactive terminal prompt)."""
    from rich.markup import escape

    interactive = lines is None
    source = _terminal_lines(chat.settings) if lines is None else (ln.rstrip("\n") for ln in lines)
    if interactive:
        err.print(f"[dim]{len(chat.session.turns)} earlier turns; /help for commands, /exit or Ctrl-D to quit[/]")

    def emit(kind: str, payload: Any, text: str) -> None:
        if as_json:
            print(json.dumps({"command": kind, **payload}, ensure_ascii=False), flush=True)
        else:
            out.print(text, highlight=False)

    for raw in source:
        line = raw.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd = line.split()[0].lower()
            if cmd in ("/exit", "/quit"):
                break
            if cmd == "/reset":
                chat.reset()
                emit("reset", {}, "[dim]conversation cleared[/]")
            elif cmd == "/history":
                turns = chat.session.turns
                text = "\n".join(f"[bold]{i}. {escape(t.question)}[/]\n{escape(t.answer)}" for i, t in enumerate(turns, 1))
                emit("history", {"turns": [asdict(t) for t in turns]}, text or "[dim]no turns yet[/]")
            elif cmd == "/sources":
                src = shown_sources(chat.last_answer)
                text = "\n\n".join(f"[cyan]{escape(source_line(n, h))}[/]\n{escape(' '.join(h.text.split()))}" for n, h in src)
                emit("sources", {"sources": [{"n": n, **h.to_json()} for n, h in src]}, text or "[dim]no sources[/]")
            elif cmd == "/help":
                emit("help", {"text": HELP}, escape(HELP))
            else:
                emit("error", {"error": f"unknown command {cmd}"}, f"[red]unknown command {escape(cmd)}[/] (/help)")
            continue

        def on_rewrite(q: str, line: str = line) -> None:
            if verbose and q != line:
                err.print(f"[dim]standalone question: {escape(q)}[/]")

        try:
            answer_to_console(out, err, lambda **kw: chat.ask(line, on_rewrite=on_rewrite, **kw),
                              verbose=verbose, as_json=as_json)  # fmt: skip
        except DocQAError as e:  # one bad turn (e.g. a question too long for the context) ends nothing
            err.print(f"[bold red]error:[/] {escape(str(e))}")
