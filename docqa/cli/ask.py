"""`docqa ask` and `docqa chat`: one grounded answer, or a conversation, streamed to the terminal.

    $ docqa ask "How do I make a venv?" -k 4 --model ~/models/chatglm2-6b --quantize int4
    $ printf 'How do I install nginx?\\nWhere is its configuration file?\\n' | docqa chat --json

Both take the same flags (docqa/cli/options.py: `answer_options`). The knowledge base is opened before the model
is loaded, so a wrong `--index` fails in a second rather than after a model load; the no-model notice and the
loader's progress go to stderr.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from .app import app
from .options import AnswerFlags, answer_options
from .render import answer_to_console, err, out


def _answer_setup(flags: AnswerFlags):
    """Settings, retriever and generator for ask/chat; when no real model answers, one notice on stderr."""
    from ..config import load_settings
    from ..generate import get_generator, notice
    from ..retrieve import open_retriever

    s = load_settings(**flags.settings())
    retriever = open_retriever(s)  # before the model: a missing knowledge base should fail fast
    if line := notice(s):
        err.print(f"[yellow]{escape(line)}[/]")
    gen = get_generator(s, progress=lambda msg: err.print(f"[dim]{escape(msg)}[/]"))
    return s, retriever, gen


@app.command("ask")
@answer_options
def ask_command(
    question: Annotated[str, typer.Argument(help="The question, in English or Chinese")],
    *,
    flags: AnswerFlags,
) -> None:
    """Answer a question from the knowledge base, citing the passages it used."""
    from ..answer import ask

    s, retriever, gen = _answer_setup(flags)
    answer_to_console(
        out,
        err,
        lambda **kw: ask(question, retriever, gen, s, abstain=not flags.no_abstain, **kw),
        verbose=flags.verbose,
        as_json=flags.as_json,
    )


@app.command("chat")
@answer_options
def chat_command(
    session: Annotated[
        str | None, typer.Option("--session", help="Save the conversation under this name; resume it later")
    ] = None,
    *,
    flags: AnswerFlags,
) -> None:
    """Talk with the knowledge base: follow-up questions, /sources, /history, /reset, /exit.

    Without a terminal it reads one question (or /command) per line from stdin."""
    from ..chat import Chat, Session
    from ..config import load_settings
    from .repl import run_repl

    # the session is checked before anything loads: a bad --session name fails at once
    sess = Session.load(load_settings(**flags.settings()).sessions_dir, session) if session else Session()
    s, retriever, gen = _answer_setup(flags)
    chat = Chat(retriever, gen, s, sess, abstain=not flags.no_abstain)
    run_repl(chat, out, err, None if sys.stdin.isatty() else sys.stdin, verbose=flags.verbose, as_json=flags.as_json)
