"""`docqa chat` (docqa/cli/repl.py): /commands, and whole conversations scripted through stdin with the real
knowledge base and demo model; the extractive default end to end."""

from __future__ import annotations

import io
import json

import pytest
from conftest import OneHitRetriever, build_kb, echo_generator
from rich.console import Console
from typer.testing import CliRunner

from docqa.chat import Chat, Session
from docqa.cli.repl import HELP, run_repl
from docqa.config import Settings


def stream(self, prompt, options=None):
    yield "Use apt [1]."


def test_repl_commands_without_a_model(tmp_path, capsys):
    """The loop alone: JSON lines per /command, one bad turn does not end it, /exit does."""
    chat = Chat(OneHitRetriever(), echo_generator(), Settings(sessions_dir=tmp_path), Session())
    console = Console(file=io.StringIO())
    run_repl(
        chat,
        console,
        console,
        ["/help", "/sources", "How do I install nginx?", "/sources", "/nope", "/exit", "never asked"],
        as_json=True,
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x.get("command") for x in lines] == ["help", "sources", None, "sources", "error"]
    assert lines[0]["text"] == HELP and lines[1]["sources"] == []
    assert lines[2]["answer"] == "Use apt [1]." and lines[3]["sources"][0]["n"] == 1
    assert [t.question for t in chat.session.turns] == ["How do I install nginx?"]


# -- docqa chat, scripted through stdin, real knowledge base and demo model -------------------------------------

DOCS = {
    "nginx.md": "# nginx\n\nInstall nginx with `sudo apt install nginx`. The web server starts automatically.\n\n"
    "The nginx configuration file is /etc/nginx/nginx.conf. After editing it, run `sudo nginx -s reload`.\n",
    "postgres.md": "# PostgreSQL\n\nInstall PostgreSQL with `sudo apt install postgresql`. The database starts "
    "automatically.\n\nThe PostgreSQL configuration file is /etc/postgresql/15/main/postgresql.conf.\n",
    "redis.md": "# Redis\n\nInstall Redis with `sudo apt install redis-server`. Redis listens on port 6379.\n\n"
    "The Redis configuration file is /etc/redis/redis.conf. Restart redis-server after editing it.\n",
}

runner = CliRunner()


@pytest.fixture(scope="module")
def kb(tmp_path_factory, embedder):
    return build_kb(tmp_path_factory.mktemp("chat"), DOCS, embedder).index


@pytest.fixture
def cli(demo, kb, tmp_path, monkeypatch):
    """Run `docqa chat` with stdin lines; the demo model is loaded once per module, not per command."""
    import docqa.generate
    from docqa.cli import app

    monkeypatch.setattr(docqa.generate, "get_generator", lambda settings, progress=None, **kw: demo)
    monkeypatch.setenv("DOCQA_SESSIONS_DIR", str(tmp_path / "sessions"))
    monkeypatch.setenv("DOCQA_MAX_NEW_TOKENS", "16")

    def run(lines: list[str], *args: str):
        r = runner.invoke(
            app,
            ["chat", "--index", str(kb), "--model", "demo", "--temperature", "0", *args],
            input="".join(line + "\n" for line in lines),
            catch_exceptions=False,
        )
        assert r.exit_code == 0, r.output
        return r

    run.sessions = tmp_path / "sessions"
    return run


def json_lines(r) -> list[dict]:
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def test_scripted_chat_rewrites_the_follow_up_for_retrieval(cli):
    r = cli(
        [
            "How do I install nginx?",
            "Where is its configuration file?",
            "/history",
            "/sources",
            "/reset",
            "/history",
            "/exit",
            "Never asked?",
        ],
        "--json",
    )
    first, second, hist, sources, reset, hist2 = json_lines(r)
    assert first["rewritten_query"] is None and first["passages"][0]["source"].endswith("nginx.md")
    # alone, "Where is its configuration file?" matches every document equally; with the first turn it is nginx's
    assert "nginx" in second["rewritten_query"] and second["rewritten_query"].startswith("Where is its configuration")
    assert second["passages"][0]["source"].endswith("nginx.md")
    assert "/etc/nginx/nginx.conf" in second["passages"][0]["text"]
    assert [t["question"] for t in hist["turns"]] == ["How do I install nginx?", "Where is its configuration file?"]
    assert sources["command"] == "sources"
    assert reset["command"] == "reset" and hist2["turns"] == []
    assert "Never asked" not in r.stdout  # /exit ended the loop
    assert r.stderr.count("Using the demo model") == 1  # DEMO_NOTICE, once, on stderr


def test_verbose_shows_the_standalone_question_and_sources(cli):
    r = cli(["How do I install nginx?", "Where is its configuration file?"], "--verbose")
    assert "standalone question: Where is its configuration file? (install nginx)" in " ".join(r.stderr.split())
    assert "prompt " in r.stderr and "tokens" in r.stderr


def test_session_is_saved_and_resumed(cli):
    cli(["How do I install nginx?"], "--session", "ops", "--json")
    saved = json.loads((cli.sessions / "ops.json").read_text(encoding="utf-8"))
    assert [t["question"] for t in saved["turns"]] == ["How do I install nginx?"]
    r = cli(["/history", "Where is its configuration file?"], "--session", "ops", "--json")
    hist, answer = json_lines(r)
    assert [t["question"] for t in hist["turns"]] == ["How do I install nginx?"]
    assert "nginx" in answer["rewritten_query"] and answer["passages"][0]["source"].endswith("nginx.md")
    assert len(json.loads((cli.sessions / "ops.json").read_text(encoding="utf-8"))["turns"]) == 2
    # a new, unnamed chat knows nothing of it
    r = cli(["Where is its configuration file?"], "--json")
    assert json_lines(r)[0]["rewritten_query"] is None


def test_bad_session_name_fails_cleanly(cli, demo, kb):
    from docqa.cli import app

    r = runner.invoke(app, ["chat", "--index", str(kb), "--session", "../x"], input="")
    assert r.exit_code == 1 and "session name" in r.stderr


def test_scripted_chat_with_the_extractive_default_quotes_and_cites(kb, tmp_path, monkeypatch):
    """No model configured: chat --json answers each question (and its follow-up) with cited quotes, at once."""
    from docqa.cli import app

    monkeypatch.setenv("DOCQA_SESSIONS_DIR", str(tmp_path / "sessions"))
    monkeypatch.setenv("DOCQA_CHATGLM2_PATH", str(tmp_path))  # not a checkpoint: auto falls back to extractive
    lines = ["How do I install nginx?", "Where is its configuration file?", "/reset"]
    r = runner.invoke(
        app, ["chat", "--index", str(kb), "--json"], input="".join(x + "\n" for x in lines), catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    first, second, _ = json_lines(r)
    assert "apt install nginx" in first["answer"] and first["citations"] and not first["invalid_citations"]
    assert "/etc/nginx/nginx.conf" in second["answer"] and second["citations"]
    assert {p["n"] for p in first["passages"]} >= set(first["citations"])
    assert first["timings"]["total"] - first["timings"]["retrieval"] < 5
    assert r.stderr.count("No language model configured") == 1
