"""The `docqa` command (entry point `docqa.cli:app`): thin Typer commands over the library, printed with Rich.

    $ docqa ingest docs/ && docqa ask "How do I make a venv?"

    >>> from typer.testing import CliRunner
    >>> CliRunner().invoke(app, ["search", "x", "--index", "missing"]).exit_code
    1

| module | job |
| --- | --- |
| `app.py` | the Typer app, exit codes, the one place errors and usage errors become exit codes |
| `commands.py` | ingest, search, list, remove, verify, rebuild, eval |
| `ask.py` | ask, chat |
| `options.py` | flags shared between commands (`-k/--top-k` means "how many passages" everywhere) |
| `repl.py` | the chat loop: terminal line editing and history file, /commands |
| `render.py` | console output: passages, answers and sources, tables, reports, errors |
| `progress.py` | the ingest progress bar / plain progress lines |
| `finetune.py` | finetune (LoRA / QLoRA / P-Tuning v2), finetune merge |

Nothing outside this package imports it (docqa/chat.py is the conversation logic, without rich or typer).
Importing it loads typer and rich but not torch, transformers or faiss: `docqa --help` starts in ~0.1 s.
"""

from . import ask, commands, finetune, serve  # noqa: F401  (registers the commands on `app`)
from .app import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, app, exit_code_for

__all__ = ["EXIT_FATAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PARTIAL", "app", "exit_code_for"]
