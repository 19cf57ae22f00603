"""The knowledge-base commands: ingest, search, list, remove, verify, rebuild, eval. Each calls one library function.

    $ docqa ingest docs/ --index kb && docqa search "怎么解压 tar.gz 文件？" --index kb -k 3

Heavy modules (torch, transformers, faiss) are imported inside the commands, so `docqa --help` starts fast.
`DocQAError`s are not caught here: docqa/cli/app.py turns them into one line and exit code 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import DocQAError
from .app import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, app, exit_code_for
from .options import EmbedOpt, IndexOpt, JsonOpt, ModelOpt, ModeOpt, OcrOpt, TopKOpt
from .render import (
    err,
    out,
    print_answer_eval,
    print_documents,
    print_eval,
    print_hits,
    print_ingest_report,
    print_models,
    print_verify,
)


def load_settings(**flags: Any):
    """The settings for one command (imported late: config is cheap, but this keeps the layering obvious)."""
    from ..config import load_settings as load

    return load(**flags)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to sync into the knowledge base")],
    index: IndexOpt = None,
    embed_model: EmbedOpt = None,
    chunk_tokens: Annotated[int | None, typer.Option(help="Chunk size in embedding tokens")] = None,
    chunk_overlap: Annotated[int | None, typer.Option(help="Overlap between chunks, in tokens")] = None,
    include_hidden: Annotated[bool | None, typer.Option("--include-hidden", help="Also hidden files")] = None,
    follow_symlinks: Annotated[
        bool | None, typer.Option("--follow-symlinks", help="Follow symlinks inside the folders")
    ] = None,
    ocr: OcrOpt = None,
    reload: Annotated[
        bool,
        typer.Option(
            "--reload",
            help="Read and embed every file again, changed or not (after new chunk settings, another --ocr mode or "
            "a docqa upgrade)",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Sync files and folders into the knowledge base (only changed files are re-embedded, unless --reload)."""
    from ..ingest import ingest as run_ingest
    from .progress import IngestProgress

    s = load_settings(
        index=index,
        embed_model=embed_model,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        include_hidden=include_hidden,
        follow_symlinks=follow_symlinks,
        ocr=None if ocr is None else str(ocr),
    )
    try:
        with IngestProgress(err, enabled=err.is_terminal and not as_json) as progress:
            report = run_ingest(paths, s, progress=progress, reload=reload)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: batches already committed are kept; run the same command to finish")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        out.print_json(data=report.to_json())
    else:
        print_ingest_report(out, err, report, s.index)
    raise typer.Exit(EXIT_PARTIAL if report.failed else EXIT_OK)


@app.command()
def search(
    question: Annotated[str, typer.Argument(help="The question; '-' reads one question per line from stdin")],
    k: TopKOpt = None,
    mode: ModeOpt = None,
    index: IndexOpt = None,
    neighbours: Annotated[int | None, typer.Option(help="Add N neighbouring chunks around each hit")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the passages an answer would be built from."""
    from ..retrieve import open_retriever

    s = load_settings(index=index, top_k=k, mode=mode, neighbours=neighbours)
    retriever = open_retriever(s)
    questions = (line.strip() for line in sys.stdin) if question == "-" else iter([question])
    for q in questions:
        if q:
            print_hits(out, q, retriever.search(q), as_json, s.mode)


@app.command("list")
def list_documents(index: IndexOpt = None, as_json: JsonOpt = False) -> None:
    """List the documents in the knowledge base."""
    from ..store import KnowledgeBase, store_options

    s = load_settings(index=index)
    with KnowledgeBase.open(s.index, **store_options(s)) as kb:
        docs = kb.documents()
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "path": d.path,
                        "status": d.status,
                        "chunks": d.chunks,
                        "pages": d.pages,
                        "error": d.error,
                        "sha256": d.sha256,
                    }
                    for d in docs
                ],
                ensure_ascii=False,
                indent=1,
            )
        )
    else:
        print_documents(out, docs)


@app.command()
def remove(
    paths: Annotated[list[str], typer.Argument(help="Document paths as shown by `docqa list`")],
    index: IndexOpt = None,
) -> None:
    """Remove documents from the knowledge base (exit 2 when some paths were not in it)."""
    from ..store import KnowledgeBase, store_options

    s = load_settings(index=index)
    with KnowledgeBase.open(s.index, writable=True, **store_options(s)) as kb:
        n = kb.remove_documents(os.path.abspath(p) for p in paths)
    out.print(f"removed {n} of {len(paths)}")
    raise typer.Exit(EXIT_OK if n == len(paths) else EXIT_PARTIAL)


@app.command()
def verify(
    index: IndexOpt = None,
    as_json: JsonOpt = False,
    recall: Annotated[
        bool, typer.Option("--recall", help="also measure recall@10 of the vector index against exact search")
    ] = False,
) -> None:
    """Check the knowledge base's files agree with each other; exit 0 when healthy."""
    from ..store import KnowledgeBase, store_options
    from ..store.maintenance import measure_recall

    try:
        s = load_settings(index=index)
        with KnowledgeBase.open(s.index, validate=False, **store_options(s)) as kb:
            problems = kb.verify()
            measured = None
            if recall and not any(level == "error" for level, _ in problems):
                measured = measure_recall(kb)
            try:
                counts = {"documents": len(kb.documents()), "chunks": kb.chunk_count(), "generation": kb.generation}
            except DocQAError:  # a damaged database: the problems above already say what is wrong
                counts = {"documents": 0, "chunks": 0, "generation": -1}
    except DocQAError as e:
        if not as_json:
            raise
        # --json promises one JSON object on stdout even when the knowledge base cannot be opened
        print(json.dumps({"healthy": False, "problems": [{"level": "error", "message": str(e)}]}))
        raise typer.Exit(exit_code_for(e)) from None
    healthy = not any(level == "error" for level, _ in problems)
    if as_json:
        print(
            json.dumps(
                {
                    "healthy": healthy,
                    **counts,
                    "problems": [{"level": lv, "message": m} for lv, m in problems],
                    **({"recall": dataclasses.asdict(measured)} if measured else {}),
                },
                ensure_ascii=False,
            )
        )
    else:
        print_verify(out, err, problems, healthy, counts)
        if measured:
            out.print(
                f"recall@{measured.k} {measured.recall:.3f}: {measured.kind} index {measured.params} against exact "
                f"search, {measured.queries} stored vectors as queries; {measured.index_ms:.2f} ms per query "
                f"(exact {measured.exact_ms:.1f} ms)",
                markup=False,
                highlight=False,
            )
    raise typer.Exit(EXIT_OK if healthy else EXIT_FATAL)


@app.command()
def rebuild(index: IndexOpt = None) -> None:
    """Rebuild the vector (FAISS or Milvus) and lexical indexes from the vectors and text kept in SQLite (no re-embedding)."""
    from ..store import KnowledgeBase, store_options

    s = load_settings(index=index)
    with KnowledgeBase.open(s.index, writable=True, validate=False, **store_options(s)) as kb:
        info = kb.rebuild()
    out.print(f"rebuilt: {info['chunks']} chunks, generation {info['generation']}")


@app.command("eval")
def eval_command(
    qa_file: Annotated[Path, typer.Argument(help="JSONL: {question, keywords: [...]} and/or {question, source, page}")],
    index: IndexOpt = None,
    mode: Annotated[
        str, typer.Option("--mode", help="Comma-separated modes to compare: dense,bm25,hybrid")
    ] = "dense,bm25,hybrid",
    answers: Annotated[
        bool, typer.Option("--answers", help="Judge the answers (ask each question) instead of the retrieval")
    ] = False,
    llm: Annotated[
        str,
        typer.Option(
            "--llm",
            help="With --answers: comma-separated answerers to compare: extractive, demo, "
            "a ChatGLM2 folder, http://host:port/v1; with --expand: the one chat model that writes the expansions",
        ),
    ] = "auto",
    adapter: Annotated[
        str | None, typer.Option("--adapter", help="With --answers: a fine-tuned adapter for the ChatGLM answerers")
    ] = None,
    judge_by: Annotated[
        str,
        typer.Option(
            "--judge",
            help="Retrieval: a hit holds every keyword (auto/keywords), only the first (first: the answer's "
            "command or option), comes from the source file (source), or all of these (all)",
        ),
    ] = "auto",
    expand: Annotated[
        str,
        typer.Option(
            "--expand",
            help="Retrieval: also run each mode with the query expansions (keywords,translate,hyde) that the "
            "--llm chat model writes, as <mode>+expand",
        ),
    ] = "",
    same_language: Annotated[
        bool,
        typer.Option(
            "--same-language",
            help='Leave out the questions marked "xlang": true (answered only in a document in the other language)',
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Score retrieval (hit@1/3/5/10/20, MRR@10) or, with --answers, the answers, per language and half."""
    if answers:
        from ..evaluate_answers import run_answer_eval

        def progress(name: str, i: int, n: int) -> None:
            if err.is_terminal and (i == n or i % 10 == 0):
                err.print(f"[dim]{name}: {i}/{n}[/]")

        areport = run_answer_eval(qa_file, load_settings(index=index, adapter=adapter), llm, progress, same_language)
        if as_json:
            print(json.dumps(areport.to_json(), ensure_ascii=False), flush=True)
        else:
            print_answer_eval(out, areport)
        return
    from ..evaluate import run_eval

    settings = load_settings(index=index, adapter=adapter)
    report = run_eval(qa_file, settings, mode, judge_by, expand=expand, llm=llm, same_language=same_language)
    if as_json:
        print(json.dumps(report.to_json(), ensure_ascii=False), flush=True)
    else:
        print_eval(out, report)


@app.command("models")
def models_command(model: ModelOpt = None, as_json: JsonOpt = False) -> None:
    """The ChatGLM models docqa can find here (settings, DOCQA_*, the Hugging Face and ModelScope caches), what each
    is, and how it would run: device, precision, memory, context."""
    from ..generate.catalog import find_models

    found = find_models(load_settings(llm=model))
    if as_json:
        rows = [{**vars(m), "path": str(m.path)} for m in found]
        print(json.dumps(rows, ensure_ascii=False), flush=True)
    else:
        print_models(out, found)
