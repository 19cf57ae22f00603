"""The `docqa` command: thin Typer commands over the library; each calls one function and prints with Rich.

Heavy modules (torch, transformers, faiss) are imported inside the commands so `docqa --help` starts fast.
A DocQAError becomes a one-line message and exit code 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .errors import DocQAError

app = typer.Typer(
    help="Ask questions about your own documents (English and Chinese), with sources.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True)

IndexOpt = Annotated[Optional[Path], typer.Option("--index", help="Knowledge-base folder [env: DOCQA_INDEX]")]
EmbedOpt = Annotated[Optional[str], typer.Option("--embed-model", help="sentence-transformers model name or path")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output")]
ModeOpt = Annotated[Optional[str], typer.Option("--mode", help="dense | bm25 | hybrid")]


def _settings(**flags):
    from .config import load_settings

    return load_settings(**flags)


def _fail(e: Exception) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(str(e))}")
    return typer.Exit(1)


def _short(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to sync into the knowledge base")],
    index: IndexOpt = None,
    embed_model: EmbedOpt = None,
    chunk_tokens: Annotated[Optional[int], typer.Option(help="Chunk size in embedding tokens")] = None,
    chunk_overlap: Annotated[Optional[int], typer.Option(help="Overlap between chunks, in tokens")] = None,
    include_hidden: Annotated[Optional[bool], typer.Option("--include-hidden", help="Also hidden files")] = None,
    follow_symlinks: Annotated[Optional[bool], typer.Option("--follow-symlinks", help="Follow symlinks inside the folders")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Sync files and folders into the knowledge base (only changed files are re-embedded)."""
    from .ingest import ingest as run_ingest

    try:
        s = _settings(index=index, embed_model=embed_model, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap,
                      include_hidden=include_hidden, follow_symlinks=follow_symlinks)  # fmt: skip
        with _IngestProgress(enabled=err.is_terminal and not as_json) as progress:
            report = run_ingest(paths, s, progress=progress)
    except DocQAError as e:
        raise _fail(e) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: batches already committed are kept; run the same command to finish")
        raise typer.Exit(130) from None
    if as_json:
        out.print_json(data=report.to_json())
    else:
        for path, reason in report.failed:
            err.print(f"[red]failed[/] {escape(_short(path))}: {escape(reason)}")
        if report.skipped:
            err.print(f"[dim]skipped {len(report.skipped)} (use --json for the list): "
                      + escape(", ".join(sorted({r.split(' (')[0] for _, r in report.skipped}))) + "[/]")
        out.print(
            f"[bold]{s.index}[/]: added {report.added}, updated {report.updated}, unchanged {report.unchanged}, "
            f"removed {report.removed}, failed {len(report.failed)}; {report.chunks} chunks in {report.seconds:.1f}s"
        )
    raise typer.Exit(2 if report.failed else 0)


class _IngestProgress:
    """Rich progress bar on a terminal; plain lines on stderr otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[chunks]} chunks"), TimeElapsedColumn(), console=err)  # fmt: skip
            self._bar.__enter__()
        return self

    def __call__(self, event: str, **info) -> None:
        if event == "plan":
            if self._bar is not None:
                self._task = self._bar.add_task("files", total=info["to_load"], chunks=0)
            else:
                err.print(f"{info['files']} files: {info['to_load']} to load, {info['unchanged']} unchanged, "
                          f"{info['removed']} removed")  # fmt: skip
        elif event == "file":
            if self._bar is not None and self._task is not None:
                t = self._bar.tasks[self._task]
                self._bar.update(self._task, advance=1, chunks=t.fields["chunks"] + info.get("chunks", 0))
            elif info["status"] == "failed":
                err.print(f"failed {_short(info['path'])}: {info['reason']}")
            else:
                err.print(f"{info['status']} {_short(info['path'])} ({info.get('chunks', 0)} chunks)")
        elif event == "commit" and self._bar is None:
            err.print(f"committed {info['documents']} documents, {info['chunks']} chunks")

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _open_retriever(s):
    from .retrieve import open_retriever

    return open_retriever(s)


def _print_hits(question: str, hits, as_json: bool, mode: str) -> None:
    if as_json:
        print(json.dumps({"question": question, "mode": mode, "results": [h.to_json() for h in hits]},
                         ensure_ascii=False), flush=True)  # fmt: skip
        return
    if not hits:
        out.print(f"[yellow]no passages found for[/] {escape(question)}")
        return
    out.rule(f"[bold]{escape(question)}")
    for h in hits:
        section = f" — {escape(h.section)}" if h.section else ""
        out.print(f"[bold cyan][{h.rank}][/] [green]{escape(h.location)}[/]{section}  [dim]score {h.score:.4f}[/]")
        text = " ".join(h.text.split())
        out.print(escape(text if len(text) <= 400 else text[:400] + "…"), style="default")
        out.print()


@app.command()
def search(
    question: Annotated[str, typer.Argument(help="The question; '-' reads one question per line from stdin")],
    k: Annotated[Optional[int], typer.Option("-k", "--top-k", help="How many passages")] = None,
    mode: ModeOpt = None,
    index: IndexOpt = None,
    neighbours: Annotated[Optional[int], typer.Option(help="Add N neighbouring chunks around each hit")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the passages an answer would be built from."""
    try:
        s = _settings(index=index, top_k=k, mode=mode, neighbours=neighbours)
        retriever = _open_retriever(s)
        questions = (line.strip() for line in sys.stdin) if question == "-" else iter([question])
        for q in questions:
            if q:
                _print_hits(q, retriever.search(q), as_json, s.mode)
    except DocQAError as e:
        raise _fail(e) from None


@app.command("list")
def list_documents(index: IndexOpt = None, as_json: JsonOpt = False) -> None:
    """List the documents in the knowledge base."""
    from .store import KnowledgeBase

    try:
        s = _settings(index=index)
        with KnowledgeBase.open(s.index) as kb:
            docs = kb.documents()
    except DocQAError as e:
        raise _fail(e) from None
    if as_json:
        print(json.dumps([{"path": d.path, "status": d.status, "chunks": d.chunks, "pages": d.pages,
                           "error": d.error, "sha256": d.sha256} for d in docs], ensure_ascii=False, indent=1))  # fmt: skip
        return
    from rich.table import Table

    t = Table("status", "chunks", "pages", "path", box=None)
    for d in docs:
        status = "[green]ok[/]" if d.status == "ok" else f"[red]{d.status}[/]: {escape(d.error)}"
        t.add_row(status, str(d.chunks), str(d.pages or ""), escape(_short(d.path)))
    out.print(t)
    out.print(f"{sum(d.status == 'ok' for d in docs)} documents, {sum(d.chunks for d in docs)} chunks")


@app.command()
def remove(
    paths: Annotated[list[str], typer.Argument(help="Document paths as shown by `docqa list`")],
    index: IndexOpt = None,
) -> None:
    """Remove documents from the knowledge base."""
    import os

    from .store import KnowledgeBase

    try:
        s = _settings(index=index)
        with KnowledgeBase.open(s.index, writable=True) as kb:
            n = kb.remove_documents(os.path.abspath(p) for p in paths)
    except DocQAError as e:
        raise _fail(e) from None
    out.print(f"removed {n} of {len(paths)}")
    raise typer.Exit(0 if n == len(paths) else 2)


@app.command()
def verify(index: IndexOpt = None, as_json: JsonOpt = False) -> None:
    """Check the knowledge base's files agree with each other; exit 0 when healthy."""
    from .store import KnowledgeBase

    try:
        s = _settings(index=index)
        with KnowledgeBase.open(s.index, validate=False) as kb:
            problems = kb.verify()
            try:
                counts = {"documents": len(kb.documents()), "chunks": kb.chunk_count(), "generation": kb.generation}
            except DocQAError:  # a damaged database: the problems above already say what is wrong
                counts = {"documents": 0, "chunks": 0, "generation": -1}
    except DocQAError as e:
        if as_json:
            print(json.dumps({"healthy": False, "problems": [{"level": "error", "message": str(e)}]}))
            raise typer.Exit(1) from None
        raise _fail(e) from None
    healthy = not any(level == "error" for level, _ in problems)
    if as_json:
        print(json.dumps({"healthy": healthy, **counts,
                          "problems": [{"level": lv, "message": m} for lv, m in problems]}, ensure_ascii=False))  # fmt: skip
    else:
        for level, m in problems:
            (err if level == "error" else out).print(f"[{'red' if level == 'error' else 'yellow'}]{level}[/] {escape(m)}")
        out.print(("[green]healthy[/]" if healthy else "[red]damaged[/]")
                  + f": {counts['documents']} documents, {counts['chunks']} chunks, generation {counts['generation']}")
    raise typer.Exit(0 if healthy else 1)


@app.command()
def rebuild(index: IndexOpt = None) -> None:
    """Rebuild the FAISS and lexical indexes from the vectors and text kept in SQLite (no re-embedding)."""
    from .store import KnowledgeBase

    try:
        s = _settings(index=index)
        with KnowledgeBase.open(s.index, writable=True, validate=False) as kb:
            info = kb.rebuild()
    except DocQAError as e:
        raise _fail(e) from None
    out.print(f"rebuilt: {info['chunks']} chunks, generation {info['generation']}")


# -- ask / chat (docqa/answer.py, docqa/chat.py) ------------------------------------------------------------------

ModelOpt = Annotated[Optional[str], typer.Option("--model", help="auto | demo | chatglm2 | openai[:MODEL] | a ChatGLM2 folder or hub id")]
LlmUrlOpt = Annotated[Optional[str], typer.Option("--llm-url", help="Base URL of an OpenAI-compatible server")]
MaxContextOpt = Annotated[Optional[int], typer.Option("--max-context", help="Context tokens to use (0 = the model's own)")]
MaxPassagesOpt = Annotated[Optional[int], typer.Option("-k", "--max-passages", help="At most this many passages (0 = as many as fit)")]
TemperatureOpt = Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature (0 = greedy)")]
NoAbstainOpt = Annotated[bool, typer.Option("--no-abstain", help="Answer even when nothing relevant was found")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show the rewritten question, prompt budget and timings")]


def _answer_setup(flags: dict):
    """Settings, retriever and generator for ask/chat; the demo notice once, on stderr."""
    from .generate import DEMO_NOTICE, get_generator, resolve_generator

    s = _settings(**flags)
    retriever = _open_retriever(s)  # before the model: a missing knowledge base should fail fast
    if resolve_generator(s)[0] == "demo":
        err.print(f"[yellow]{escape(DEMO_NOTICE)}[/]")
    gen = get_generator(s, progress=lambda msg: err.print(f"[dim]{escape(msg)}[/]"))
    return s, retriever, gen


@app.command("ask")
def ask_command(
    question: Annotated[str, typer.Argument(help="The question, in English or Chinese")],
    model: ModelOpt = None,
    llm_url: LlmUrlOpt = None,
    max_context: MaxContextOpt = None,
    max_passages: MaxPassagesOpt = None,
    mode: ModeOpt = None,
    temperature: TemperatureOpt = None,
    index: IndexOpt = None,
    no_abstain: NoAbstainOpt = False,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question from the knowledge base, citing the passages it used."""
    from .answer import ask as run_ask
    from .chat import answer_to_console

    try:
        s, retriever, gen = _answer_setup(dict(index=index, llm=model, llm_url=llm_url, max_context=max_context,
                                               max_passages=max_passages, mode=mode, temperature=temperature))  # fmt: skip
        answer_to_console(out, err, lambda **kw: run_ask(question, retriever, gen, s, abstain=not no_abstain, **kw),
                          verbose=verbose, as_json=as_json)  # fmt: skip
    except DocQAError as e:
        raise _fail(e) from None


@app.command("chat")
def chat_command(
    session: Annotated[Optional[str], typer.Option("--session", help="Save the conversation under this name; resume it later")] = None,
    model: ModelOpt = None,
    llm_url: LlmUrlOpt = None,
    max_context: MaxContextOpt = None,
    max_passages: MaxPassagesOpt = None,
    mode: ModeOpt = None,
    temperature: TemperatureOpt = None,
    index: IndexOpt = None,
    no_abstain: NoAbstainOpt = False,
    verbose: VerboseOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Talk with the knowledge base: follow-up questions, /sources, /history, /reset, /exit.

    Without a terminal it reads one question (or /command) per line from stdin."""
    from .chat import Chat, Session, run_repl

    try:
        flags = dict(index=index, llm=model, llm_url=llm_url, max_context=max_context, max_passages=max_passages,
                     mode=mode, temperature=temperature)  # fmt: skip
        sess = Session.load(_settings(**flags).sessions_dir, session) if session else Session()
        s, retriever, gen = _answer_setup(flags)
        chat = Chat(retriever, gen, s, sess, abstain=not no_abstain)
        run_repl(chat, out, err, None if sys.stdin.isatty() else sys.stdin, verbose=verbose, as_json=as_json)
    except DocQAError as e:
        raise _fail(e) from None


@app.command("eval")
def eval_command(
    qa_file: Annotated[Path, typer.Argument(help="JSONL: {question, keywords: [...]} and/or {question, source, page}")],
    index: IndexOpt = None,
    mode: Annotated[str, typer.Option("--mode", help="Comma-separated modes to compare: dense,bm25,hybrid")] = "dense,bm25,hybrid",
    as_json: JsonOpt = False,
) -> None:
    """Score retrieval on questions with known answers: hit@1/3/5/10 and MRR@10 per language and mode."""
    from .evaluate import KS, run_eval

    try:
        report = run_eval(qa_file, _settings(index=index), mode)
    except DocQAError as e:
        raise _fail(e) from None
    if as_json:
        print(json.dumps(report.to_json(), ensure_ascii=False), flush=True)
        return
    from rich.table import Table

    cols = [f"hit@{k}" for k in KS] + ["mrr@10"]
    t = Table("mode", "questions", *cols, "ms/query", box=None)
    for m, res in report.modes.items():
        for group in [g for g in ("zh", "en") if g in res] + ["overall"]:
            row = res[group]
            t.add_row(m, f"{group} ({row['n']})", *(f"{row[c]:.3f}" for c in cols), f"{res['latency_ms']:.1f}")
    out.print(t)


def main() -> None:  # pragma: no cover
    app()
