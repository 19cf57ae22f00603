"""The `docqa chat` loop: read a line, answer it (or run a /command), repeat.

    $ printf 'How do I install nginx?\\n/sources\\n/exit\\n' | docqa chat --json
    {"question": "How do I install nginx?", "answer": "...", "sources": [...], ...}
    {"command": "sources", "sources": [{"n": 1, "source": ".../nginx.md", ...}]}

On a terminal lines come from prompt_toolkit (line editing, and a history file `input-history.txt` in the sessions
folder, kept across runs); otherwise one question per line from stdin. Commands: /sources, /history, /reset,
/exit (or /quit) and /help; with --json each prints one `{"command": ...}` line. Ctrl-C stops the current answer,
not the session; at the prompt it clears the line, and Ctrl-D ends the chat. A `DocQAError` in one turn (e.g. a
question too long for the context) is printed and the loop goes on. Limits: one conversation per process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from ..errors import DocQAError
from .render import answer_to_console, print_error, shown_sources

if TYPE_CHECKING:
    from ..chat import Chat
    from ..config import Settings

HELP = "/sources  cited passages of the last answer\n/history  this conversation\n/reset    start over\n/exit     quit"

Emit = Callable[[str, dict[str, Any], str], None]


def history_file(settings: Settings) -> Path | None:
    """Where the terminal prompt keeps the lines typed (None when the sessions folder cannot be created)."""
    try:
        Path(settings.sessions_dir).mkdir(parents=True, exist_ok=True)
        return Path(settings.sessions_dir) / "input-history.txt"
    except OSError:
        return None


def terminal_lines(settings: Settings) -> Iterable[str]:
    """Lines typed at a `? ` prompt until Ctrl-D, with line editing and the history file."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    hist = history_file(settings)
    ps: PromptSession = PromptSession(history=FileHistory(str(hist)) if hist else InMemoryHistory())
    while True:
        try:
            yield ps.prompt("? ")
        except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line, like a shell
            continue
        except EOFError:
            return


def run_command(chat: Chat, cmd: str, emit: Emit) -> bool:
    """Run one /command; False when it ends the chat."""
    from ..answer import source_line

    if cmd in ("/exit", "/quit"):
        return False
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
    return True


def run_repl(
    chat: Chat,
    out: Console,
    err: Console,
    lines: Iterable[str] | None = None,
    *,
    verbose: bool = False,
    as_json: bool = False,
) -> None:
    """The chat loop: questions and /commands from `lines` (None = an interactive terminal prompt)."""
    interactive = lines is None
    source = terminal_lines(chat.settings) if lines is None else (ln.rstrip("\n") for ln in lines)
    if interactive:
        err.print(f"[dim]{len(chat.session.turns)} earlier turns; /help for commands, /exit or Ctrl-D to quit[/]")

    def emit(kind: str, payload: dict[str, Any], text: str) -> None:
        if as_json:
            print(json.dumps({"command": kind, **payload}, ensure_ascii=False), flush=True)
        else:
            out.print(text, highlight=False)

    for raw in source:
        line = raw.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not run_command(chat, line.split()[0].lower(), emit):
                break
            continue

        def on_rewrite(q: str, line: str = line) -> None:
            if verbose and q != line:
                err.print(f"[dim]standalone question: {escape(q)}[/]")

        try:
            answer_to_console(
                out,
                err,
                lambda line=line, **kw: chat.ask(line, on_rewrite=on_rewrite, **kw),
                verbose=verbose,
                as_json=as_json,
            )
        except DocQAError as e:  # one bad turn ends nothing
            print_error(err, e)
