"""The `docqa ingest` progress display: a Rich bar on a terminal, plain lines on stderr otherwise.

    with IngestProgress(err, enabled=err.is_terminal) as progress:
        report = ingest(paths, settings, progress=progress)

    $ docqa ingest docs/ 2>&1 | cat          # not a terminal: one line per event
    3 files: 3 to load, 0 unchanged, 0 removed
    added docs/venv.md (4 chunks)
    ...
    committed 3 documents, 9 chunks

It is the `progress` callback of `docqa.ingest.ingest`, which calls it with an event name and keyword fields:
`plan` (files, to_load, unchanged, removed), `file` (path, status, chunks, reason), `commit` (documents, chunks).
Unknown events are ignored, so the library can add some without breaking the display. Limits: the bar counts
files, not bytes, so one large PDF holds it still for a while.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from .render import short_path


class IngestProgress:
    """A context manager that is also the ingest progress callback (see the module docstring)."""

    def __init__(self, console: Console, enabled: bool):
        self.console = console
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> IngestProgress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[chunks]} chunks"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._bar.__enter__()
        return self

    def __call__(self, event: str, **info: Any) -> None:
        if event == "plan":
            if self._bar is not None:
                self._task = self._bar.add_task("files", total=info["to_load"], chunks=0)
            else:
                self.console.print(
                    f"{info['files']} files: {info['to_load']} to load, {info['unchanged']} unchanged, "
                    f"{info['removed']} removed",
                    markup=False,
                )
        elif event == "file":
            if self._bar is not None and self._task is not None:
                t = self._bar.tasks[self._task]
                self._bar.update(self._task, advance=1, chunks=t.fields["chunks"] + info.get("chunks", 0))
            elif info["status"] == "failed":
                self.console.print(f"failed {short_path(info['path'])}: {info['reason']}", markup=False)
            else:
                self.console.print(
                    f"{info['status']} {short_path(info['path'])} ({info.get('chunks', 0)} chunks)", markup=False
                )
        elif event == "commit" and self._bar is None:
            self.console.print(f"committed {info['documents']} documents, {info['chunks']} chunks", markup=False)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
