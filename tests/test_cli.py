"""The `docqa` command end to end (Typer's runner, real embedding model), its exit codes and flags."""

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from docqa.cli import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, app, exit_code_for
from docqa.errors import DocQAError
from docqa.generate.base import Generator

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)


@pytest.fixture
def kb(docs_dir, tmp_path):
    index = tmp_path / "kb"
    r = run("ingest", docs_dir, "--index", index)
    assert r.exit_code == 0, r.output
    return index


def test_ingest_search_list(kb, docs_dir):
    r = run("search", "How do I create a virtual environment?", "--index", kb, "-k", "2", "--json")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    assert obj["question"].startswith("How do I")
    res = obj["results"]
    assert len(res) == 2 and res[0]["rank"] == 1
    assert set(res[0]) >= {"rank", "score", "chunk_id", "source", "page", "section", "text"}
    assert res[0]["source"].endswith("venv.md") and "venv" in res[0]["text"]

    r = run("list", "--index", kb, "--json")
    docs = json.loads(r.stdout)
    assert {os.path.basename(d["path"]) for d in docs} == {"venv.md", "tar.txt", "fstab.txt"}
    assert all(d["status"] == "ok" and d["chunks"] > 0 for d in docs)


def test_batch_search_reads_stdin_jsonl(kb):
    r = run("search", "-", "--index", kb, "--json", input="怎么解压 tar.gz 文件？\n\n修改 /etc/fstab 后怎么检查？\n")
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [x["question"] for x in lines] == ["怎么解压 tar.gz 文件？", "修改 /etc/fstab 后怎么检查？"]
    assert lines[0]["results"][0]["source"].endswith("tar.txt")
    assert lines[1]["results"][0]["source"].endswith("fstab.txt")
    # what was searched besides the question is part of the output: the English dictionary gloss of a Chinese
    # question (docqa/lexicon.py), which finds this folder's Chinese pages through their gloss vectors (rule 7)
    assert "decompress" in lines[0]["expansions"][0].split()


def test_search_shows_the_english_gloss_it_searched(tmp_path, embedder):
    from conftest import EXTRACT_QUESTION, MIXED_DOCS, build_kb

    settings = build_kb(tmp_path, MIXED_DOCS, embedder)
    r = run("search", EXTRACT_QUESTION, "--index", settings.index, "-k", "1")
    assert r.exit_code == 0, r.output
    assert "searched also: " in r.stdout and "extract" in r.stdout.split("searched also: ")[1].split("\n")[0]
    assert "tar -xzf" in r.stdout  # the English passage, found through the gloss
    r = run("search", EXTRACT_QUESTION, "--index", settings.index, "-k", "1", "--json")
    assert "extract" in json.loads(r.stdout)["expansions"][0].split()


def test_exit_code_2_when_a_file_failed(docs_dir, tmp_path):
    (docs_dir / "bad.pdf").write_bytes(b"%PDF-1.7 garbage")
    r = run("ingest", docs_dir, "--index", tmp_path / "kb")
    assert r.exit_code == 2
    assert "bad.pdf" in r.output


def test_errors_are_one_line_and_exit_1(tmp_path):
    r = run("search", "x", "--index", tmp_path / "missing")
    assert r.exit_code == 1
    assert "no knowledge base" in r.output and "Traceback" not in r.output
    r = run("ingest", tmp_path / "missing-folder", "--index", tmp_path / "kb")
    assert r.exit_code == 1 and "no such file" in r.output


def test_remove_verify_rebuild(kb, docs_dir):
    r = run("remove", docs_dir / "tar.txt", "--index", kb)
    assert r.exit_code == 0, r.output
    r = run("verify", "--index", kb, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["healthy"]
    gen = json.loads(r.stdout)["generation"]
    faiss_file = kb / f"vectors.{gen}.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    r = run("search", "tar", "--index", kb)
    assert r.exit_code == 1 and "docqa rebuild" in r.output
    assert run("verify", "--index", kb).exit_code == 1
    assert run("rebuild", "--index", kb).exit_code == 0
    assert run("verify", "--index", kb).exit_code == 0
    r = run("search", "gzip", "--index", kb, "--json")
    assert not any(x["source"].endswith("tar.txt") for x in json.loads(r.stdout)["results"])


def test_help_is_fast_and_imports_no_torch():
    code = "import sys, docqa.cli; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "docqa", "--help"], check=True, capture_output=True)
    assert time.perf_counter() - t < 3  # generous for a loaded CI machine; the benchmark reports the real figure


# -- exit codes, flags, layering --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],  # `docqa` alone prints the help, as a usage error
        ["bogus"],
        ["search"],  # missing argument
        ["search", "x", "--no-such-flag"],
        ["search", "x", "-k", "many"],
        ["ask", "q", "--quantize", "int3"],
    ],
)
def test_usage_errors_exit_1_not_2(args):
    """Click exits 2 for usage errors; the README keeps 2 for "some files failed"."""
    r = runner.invoke(app, args)
    assert r.exit_code == EXIT_FATAL == 1, r.output


def test_the_installed_script_exits_1_on_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "docqa", "search", "--no-such-flag"], capture_output=True, text=True)
    assert r.returncode == 1 and "--no-such-flag" in r.stderr


def _docqa_errors(cls=DocQAError):
    return [cls] + [c for sub in cls.__subclasses__() for c in _docqa_errors(sub)]


@pytest.mark.parametrize("error", _docqa_errors(), ids=lambda c: c.__name__)
def test_every_docqa_error_maps_to_exit_1_in_one_line(error, monkeypatch, tmp_path):
    assert exit_code_for(error("boom")) == EXIT_FATAL

    def fail(**flags):
        raise error("boom: run `docqa rebuild`")

    monkeypatch.setattr("docqa.config.load_settings", fail)
    r = runner.invoke(app, ["list", "--index", str(tmp_path)])
    assert r.exit_code == EXIT_FATAL
    assert r.stderr.strip() == "error: boom: run `docqa rebuild`" and r.stdout == ""


def test_exit_code_constants_match_the_readme():
    assert (EXIT_OK, EXIT_FATAL, EXIT_PARTIAL, EXIT_INTERRUPTED) == (0, 1, 2, 130)


class Recorder(Generator):
    """A model that records the settings it was made with and the prompt it got, and cites passage 1."""

    name = "recorder"

    def __init__(self):
        self.settings, self.prompts = None, []

    def stream(self, prompt, options=None):
        self.prompts.append(prompt)
        yield "Run python3 -m venv [1]."


@pytest.fixture
def recorder(monkeypatch):
    import docqa.generate

    gen = Recorder()

    def get_generator(settings, progress=None, **kw):
        gen.settings = settings
        return gen

    monkeypatch.setattr(docqa.generate, "get_generator", get_generator)
    return gen


@pytest.mark.parametrize("flag", ["-k", "--top-k", "--max-passages"])
def test_k_means_top_k_in_search_and_ask(kb, recorder, flag):
    """`-k 1`: search shows one passage and ask gives the model one passage (setting max_passages)."""
    q = "How do I create a virtual environment?"
    if flag != "--max-passages":  # search has no --max-passages
        r = run("search", q, "--index", kb, flag, "1", "--json")
        assert len(json.loads(r.stdout)["results"]) == 1
    r = run("ask", q, "--index", kb, "--model", "demo", flag, "1", "--json")
    assert r.exit_code == 0, r.output
    assert recorder.settings.max_passages == 1 and len(json.loads(r.stdout)["passages"]) == 1
    r = run("ask", q, "--index", kb, "--model", "demo", "--json")
    assert recorder.settings.max_passages == 0 and len(json.loads(r.stdout)["passages"]) > 1


def test_quantize_and_device_reach_the_settings(kb, recorder):
    r = run(
        "ask",
        "How do I create a virtual environment?",
        "--index",
        kb,
        "--model",
        "demo",
        "--quantize",
        "int4",
        "--device",
        "cpu",
        "--json",
    )
    assert r.exit_code == 0, r.output
    assert (recorder.settings.llm_quantize, recorder.settings.llm_device) == ("int4", "cpu")
    r = run("ask", "x", "--index", kb, "--model", "demo", "--device", "tpu")
    assert r.exit_code == 1 and "llm_device" in r.stderr


def test_skipped_files_are_counted_per_reason(docs_dir, tmp_path):
    for name in ("a.mp3", "b.mp3", "c.wav"):
        (docs_dir / name).write_bytes(b"ID3")
    r = run("ingest", docs_dir, "--index", tmp_path / "kb")
    assert r.exit_code == 0, r.output
    stderr = " ".join(r.stderr.split())  # Rich wraps stderr at the terminal width
    assert "skipped 3 (use --json for the list): 2 × unsupported file type .mp3, unsupported file type .wav" in stderr


def test_the_library_never_imports_the_cli_and_chat_has_no_terminal_code():
    import ast
    from pathlib import Path

    import docqa

    root = Path(docqa.__file__).parent
    for path in root.rglob("*.py"):
        if root / "cli" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert (
                not any(
                    n in ("cli", ".cli", "..cli", "docqa.cli") or n.startswith(("docqa.cli.", ".cli.")) for n in names
                )
                or path.name == "__main__.py"
            ), path
            if path.name == "chat.py":
                assert not any(n.split(".")[0] in ("rich", "typer", "prompt_toolkit") for n in names), names


def test_models_lists_a_checkpoint_with_how_it_would_run(tmp_path):
    from pathlib import Path

    tiny = Path(__file__).parent / "data" / "chatglm2" / "tiny-chatglm2"
    r = run("models", "--model", tiny, "--json")
    assert r.exit_code == 0, r.output
    (m,) = [x for x in json.loads(r.stdout) if x["source"] == "llm"]
    assert m["family"] == "chatglm2" and m["device"] == "cpu" and m["context_length"] == 8192 and m["memory_bytes"] > 0
    r = run("models", "--model", tmp_path, "--json")  # a folder that is no checkpoint is listed with the reason
    assert r.exit_code == 0 and "not a ChatGLM checkpoint" in json.loads(r.stdout)[0]["problem"]


def test_ingest_ocr_and_model_family_flags_reach_the_settings(kb, recorder):
    r = run("ask", "x", "--index", kb, "--model", "demo", "--model-family", "chatglm3")
    assert r.exit_code == 0, r.output
    assert recorder.settings.model_family == "chatglm3"
    assert run("ingest", kb, "--ocr", "sometimes").exit_code == 1  # not a choice: a usage error


def test_ingest_says_what_an_older_knowledge_base_misses_and_rebuild_answers_it(kb, docs_dir):
    from docqa.store import KnowledgeBase

    assert "note" not in run("ingest", docs_dir, "--index", kb).stderr  # made now: nothing to say
    with KnowledgeBase.open(kb, writable=True) as k:
        k.conn.execute("DELETE FROM meta WHERE key = 'lexical_text'")  # as an older docqa made it
    r = run("ingest", docs_dir, "--index", kb)
    assert r.exit_code == 0 and "note BM25 here does not read document names" in " ".join(r.stderr.split())
    assert json.loads(run("ingest", docs_dir, "--index", kb, "--json").stdout)["notes"][0].startswith("BM25 here")
    assert run("rebuild", "--index", kb).exit_code == 0
    assert "note" not in run("ingest", docs_dir, "--index", kb).stderr


def test_ingest_reload_reads_unchanged_files_again(kb, docs_dir):
    plain = json.loads(run("ingest", docs_dir, "--index", kb, "--json").stdout)
    assert (plain["unchanged"], plain["updated"]) == (3, 0)
    again = json.loads(run("ingest", docs_dir, "--index", kb, "--reload", "--json").stdout)
    assert (again["unchanged"], again["updated"], again["added"]) == (0, 3, 0)
