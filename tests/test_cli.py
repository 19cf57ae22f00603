"""The `docqa` command end to end (Typer's runner, real models)."""

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from docqa.cli import app

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
