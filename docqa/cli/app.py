"""The Typer app, the exit codes, and the one place where errors become exit codes.

    $ docqa search x --index missing ; echo $?
    error: no knowledge base at missing (run `docqa ingest DIR --index missing` first)
    1
    $ docqa search --no-such-flag ; echo $?      # a usage error: 1 too, not Click's 2
    1

Exit codes (the README's table): `EXIT_OK` 0; `EXIT_PARTIAL` 2 when some of the work failed and the rest was kept
(files that failed during `ingest`, paths `remove` did not find); `EXIT_FATAL` 1 for anything that stopped the
command: bad arguments (Click usage errors), and every `DocQAError` (config, locked or damaged knowledge base,
missing model, unreadable QA file...); `EXIT_INTERRUPTED` 130 for Ctrl-C.

Commands do not catch `DocQAError`: `DocQAGroup.invoke` prints it as one `error: ...` line on stderr and exits with
`exit_code_for(error)`. A command that must say more before failing (`verify --json`) catches it, prints, and
raises `typer.Exit(exit_code_for(error))`, so the mapping still lives here only.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

try:  # recent Typer releases carry their own copy of Click, whose exceptions are not click's
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - Typer versions that use Click itself
    from click.exceptions import UsageError

from ..errors import DocQAError
from .render import err, print_error

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_PARTIAL = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

#: the most specific class in an error's MRO wins; every DocQAError is fatal today, the table is where a
#: subclass would get a code of its own
EXIT_CODES: dict[type[DocQAError], int] = {DocQAError: EXIT_FATAL}


def exit_code_for(error: DocQAError) -> int:
    """The exit code for `error`: `EXIT_CODES` of the nearest class in its MRO.

    >>> from docqa.errors import StoreLockedError
    >>> exit_code_for(StoreLockedError("locked"))
    1
    """
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_FATAL


class DocQAGroup(TyperGroup):
    """The `docqa` command group: usage errors exit 1, a `DocQAError` from any command one line and its code.

    Click gives usage errors exit code 2, which the README reserves for "some files failed"; setting the code on
    the exception (before Click or Typer print it and exit) keeps their formatting. This runs under Typer's
    `CliRunner` as well as the `docqa` script, because both go through the group's `make_context` / `invoke`.
    """

    def make_context(
        self, info_name: str | None, args: list[str], parent: typer.Context | None = None, **extra: Any
    ) -> typer.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except UsageError as e:  # bad global options, `docqa` alone, an unknown command
            e.exit_code = EXIT_FATAL
            raise

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as e:  # a command's own arguments (parsed inside the group's invoke)
            e.exit_code = EXIT_FATAL
            raise
        except DocQAError as e:
            print_error(err, e)
            raise typer.Exit(exit_code_for(e)) from None


app = typer.Typer(
    cls=DocQAGroup,
    help="Ask questions about your own documents (English and Chinese), with sources.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
