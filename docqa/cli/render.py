"""Console output: passages, answers and their sources, tables, reports and errors (Rich, or JSON lines).

    >>> print_hits(out, "怎么解压 tar.gz 文件？", hits, as_json=False, mode="hybrid")  # doctest: +SKIP
    ───────────── 怎么解压 tar.gz 文件？ ─────────────
    [1] tar.txt — 解压文件  score 0.0328
    解压文件：使用 tar -xzvf archive.tar.gz 可以解压一个用 gzip 压缩的归档。…

Results go to `out` (stdout), everything about the run (notices, progress, errors, --verbose) to `err`
(stderr), so `docqa ask ... > answer.txt` keeps only the answer. JSON output is printed with `print`, not Rich,
so nothing is wrapped or styled. Text from documents and models is escaped before Rich sees it: a `[bold]` in a
PDF is printed as written. Limits: passage text is shown on one line, cut at `HIT_CHARS` characters.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from ..documents import Answer, Hit
    from ..evaluate import EvalReport
    from ..ingest import IngestReport
    from ..prompt import PromptPlan
    from ..store import DocumentInfo

HIT_CHARS = 400

out = Console(soft_wrap=True)
err = Console(stderr=True)


def print_error(console: Console, error: BaseException) -> None:
    """The one-line form every failure takes: `error: <message>` (scripts and tests rely on it)."""
    console.print(f"[bold red]error:[/] {escape(str(error))}")


def short_path(path: str) -> str:
    """`path` relative to the working directory when it is under it, else as given."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


# -- search ----------------------------------------------------------------------------------------------------


def print_hits(console: Console, question: str, hits: Iterable[Hit], as_json: bool, mode: str) -> None:
    """Ranked passages for `docqa search`: one JSON line per question, or a rule and one block per passage.
    What was searched besides the question (a Chinese question's English gloss) is shown too."""
    expansions = list(getattr(hits, "expansions", []))
    hits = list(hits)
    if as_json:
        out = {"question": question, "mode": mode, "expansions": expansions, "results": [h.to_json() for h in hits]}
        print(json.dumps(out, ensure_ascii=False), flush=True)
        return
    if not hits:
        console.print(f"[yellow]no passages found for[/] {escape(question)}")
        return
    console.rule(f"[bold]{escape(question)}")
    for e in expansions:
        console.print(f"[dim]searched also: {escape(e)}[/]")
    for h in hits:
        section = f" — {escape(h.section)}" if h.section else ""
        console.print(f"[bold cyan][{h.rank}][/] [green]{escape(h.location)}[/]{section}  [dim]score {h.score:.4f}[/]")
        text = " ".join(h.text.split())
        console.print(escape(text if len(text) <= HIT_CHARS else text[:HIT_CHARS] + "…"), style="default")
        console.print()


# -- answers ---------------------------------------------------------------------------------------------------


def shown_sources(answer: Answer | None) -> list[tuple[int, Hit]]:
    """The passages to show as sources: those cited, else (small models often cite nothing) the best three given."""
    if answer is None or answer.abstained:
        return []
    return answer.sources or list(enumerate(answer.passages[:3], 1))


def print_sources(console: Console, answer: Answer) -> None:
    """The Sources block under an answer (cited passages only; invalid numbers are flagged, not listed)."""
    from ..answer import source_line

    if answer.abstained:
        return
    if answer.sources:
        console.print("[bold]Sources[/]")
    elif answer.passages:
        console.print(
            "[bold]Sources[/] [yellow](the answer cites no passage; these were the best passages given to the model)[/]"
        )
    for n, h in shown_sources(answer):
        console.print(f"  [cyan]{escape(source_line(n, h))}[/]")
    if answer.invalid_citations:
        nums = ", ".join(f"[{n}]" for n in answer.invalid_citations)
        console.print(f"[yellow]cites passages that do not exist: {escape(nums)}[/]")


def describe_plan(plan: PromptPlan) -> str:
    """One line for --verbose: how the budget was spent."""
    return (
        f"prompt {plan.total_tokens}/{plan.budget} tokens (context {plan.context_length}); "
        f"{len(plan.passages)} passages ({sum(plan.passage_tokens)} tokens, {plan.dropped_passages} left out); "
        f"history {len(plan.history)} turns kept, {len(plan.dropped_history)} dropped"
    )


def answer_to_console(
    out: Console, err: Console, answer_fn: Callable[..., Answer], *, verbose: bool, as_json: bool
) -> Answer | None:
    """Run `answer_fn(on_text=, cancel=, on_plan=)` streaming to `out`; print the sources (or one JSON line).

    Returns None when interrupted before an answer existed; Ctrl-C during generation keeps the partial answer
    (docqa/answer.py stops on the `cancel` event). Shared by `docqa ask` and each turn of `docqa chat`.
    """
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
        for e in answer.query_expansions:
            err.print(f"[dim]searched also: {escape(e)}[/]", highlight=False)
        err.print(f"[dim]{escape(describe_timings(answer.timings))}[/]", highlight=False)
    return answer


#: timings that count tokens, not seconds (docqa.generate.base.GenerationStats)
_TOKEN_COUNTS = ("prompt_tokens", "cached_tokens", "new_tokens")


def describe_timings(t: dict[str, float]) -> str:
    """One line for --verbose: seconds per step, then what the model read and wrote.

    >>> describe_timings({"retrieval": 0.1, "total": 2.5, "prompt_tokens": 900, "cached_tokens": 850,
    ...                   "new_tokens": 32, "prefill_s": 1.2, "decode_s": 3.1, "tokens_per_s": 10.0})
    'retrieval 0.10s, total 2.50s, prefill 1.20s, decode 3.10s; prompt 900 tokens (850 cached, 50 read), 32 new, 10.0 tok/s'
    """
    secs = [
        f"{k} {v:.2f}s"
        for k, v in t.items()
        if k not in _TOKEN_COUNTS and k not in ("prefill_s", "decode_s", "tokens_per_s")
    ]
    secs += [f"{k[:-2]} {t[k]:.2f}s" for k in ("prefill_s", "decode_s") if k in t]
    line = ", ".join(secs)
    if "prompt_tokens" in t:
        p, c = int(t["prompt_tokens"]), int(t.get("cached_tokens", 0))
        line += f"; prompt {p} tokens ({c} cached, {p - c} read), {int(t.get('new_tokens', 0))} new"
        if "tokens_per_s" in t:
            line += f", {t['tokens_per_s']:.1f} tok/s"
    return line


# -- knowledge base --------------------------------------------------------------------------------------------


def print_ingest_report(out: Console, err: Console, report: IngestReport, index: Path) -> None:
    """Failures one per line, the skipped files counted per reason, then the one-line summary."""
    for path, reason in report.failed:
        err.print(f"[red]failed[/] {escape(short_path(path))}: {escape(reason)}")
    if report.skipped:
        # the reasons as the library wrote them, counted: a folder of 300 images is one entry, not 300
        reasons = Counter(reason for _, reason in report.skipped)
        listed = ", ".join(f"{n} × {r}" if n > 1 else r for r, n in sorted(reasons.items()))
        err.print(f"[dim]skipped {len(report.skipped)} (use --json for the list): {escape(listed)}[/]")
    out.print(
        f"[bold]{escape(str(index))}[/]: added {report.added}, updated {report.updated}, unchanged {report.unchanged}, "
        f"removed {report.removed}, failed {len(report.failed)}; {report.chunks} chunks in {report.seconds:.1f}s"
    )
    for note in report.notes:
        err.print(f"[yellow]note[/] {escape(note)}")


def print_documents(out: Console, docs: list[DocumentInfo]) -> None:
    """`docqa list` as a table, then the totals."""
    from rich.table import Table

    t = Table("status", "chunks", "pages", "path", box=None)
    for d in docs:
        status = "[green]ok[/]" if d.status == "ok" else f"[red]{escape(d.status)}[/]: {escape(d.error)}"
        t.add_row(status, str(d.chunks), str(d.pages or ""), escape(short_path(d.path)))
    out.print(t)
    out.print(f"{sum(d.status == 'ok' for d in docs)} documents, {sum(d.chunks for d in docs)} chunks")


def print_verify(out: Console, err: Console, problems: list[tuple[str, str]], healthy: bool, counts: dict) -> None:
    """Each problem (errors on stderr, warnings on stdout), then healthy/damaged with the counts."""
    for level, m in problems:
        (err if level == "error" else out).print(f"[{'red' if level == 'error' else 'yellow'}]{level}[/] {escape(m)}")
    out.print(
        ("[green]healthy[/]" if healthy else "[red]damaged[/]")
        + f": {counts['documents']} documents, {counts['chunks']} chunks, generation {counts['generation']}"
    )


def print_eval(out: Console, report: EvalReport) -> None:
    """hit@k and MRR per mode and group (each language, each language's tune/report half, then overall)."""
    from rich.table import Table

    from ..evaluate import KS

    cols = [f"hit@{k}" for k in KS] + ["mrr@10"]
    t = Table("mode", "questions", *cols, "ms/query", box=None)
    for m, res in report.modes.items():
        for group in report.groups(m):
            row = res[group]
            t.add_row(m, f"{group} ({row['n']})", *(f"{row[c]:.3f}" for c in cols), f"{res['latency_ms']:.1f}")
    out.print(t)


def print_answer_eval(out: Console, report) -> None:
    """Answer accuracy, citations, abstentions, length and latency per answerer and group, as a Markdown table
    (twelve columns do not fit a terminal's width as a Rich table; Markdown pastes into a report as it is)."""
    from ..evaluate_answers import markdown_table

    out.print(markdown_table(report), soft_wrap=True, markup=False, highlight=False)


def print_models(out: Console, models) -> None:
    """One row per model found: name, family, how it would run, where it is (or why it cannot run)."""
    from rich.table import Table

    if not models:
        out.print(
            'no ChatGLM checkpoint found: see the README\'s "ChatGLM weights" for the download commands; '
            "answers quote the passages meanwhile (llm = extractive)",
            markup=False,
            soft_wrap=True,
        )
        return
    t = Table("model", "family", "device", "precision", "memory", "context", "where", box=None)
    for m in models:
        mem = f"{m.memory_bytes / 2**30:.1f} GiB" if m.memory_bytes else "?"
        where = f"{m.path} ({m.source})" + (f" — {m.problem}" if m.problem else "")
        t.add_row(escape(m.name), m.family or "?", m.device, m.precision, mem, f"{m.context_length:,}", escape(where))
    out.print(t)
