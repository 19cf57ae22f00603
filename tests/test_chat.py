"""docqa.chat: follow-up rewriting, sessions and turns (the library; `docqa chat` itself is in test_cli_repl.py)."""

from __future__ import annotations

import json

import pytest
from conftest import OneHitRetriever, echo_generator

from docqa.chat import (
    Chat,
    Session,
    Turn,
    combine_follow_up,
    content_words,
    looks_like_follow_up,
    rewrite_question,
)
from docqa.config import Settings
from docqa.errors import DocQAError
from docqa.generate.base import Generator

# -- rewriting --------------------------------------------------------------------------------------------------


def test_content_words_drop_stop_words_in_both_languages():
    assert content_words("How do I install nginx on Debian?") == ["install", "nginx", "Debian"]
    words = content_words("怎么安装 nginx 服务器？")
    assert "nginx" in words and "安装" in words and "怎么" not in words


@pytest.mark.parametrize(
    "q, follow",
    [
        ("那它的配置文件在哪？", True),
        ("what about on Windows?", True),
        ("Where is its configuration file?", True),
        ("Windows?", True),
        ("How do I create a Python virtual environment with venv?", False),
        ("怎么用 tar 命令解压 gzip 压缩的归档文件？", False),
        ("怎么安装 redis？", False),
        ("How do I install redis?", False),
        ("What is the difference between tar and gzip?", False),
    ],
)
def test_looks_like_follow_up(q, follow):
    assert looks_like_follow_up(q) is follow


def test_combine_follow_up_adds_the_previous_topic():
    assert (
        combine_follow_up("what about on Windows?", "How do I install nginx?")
        == "what about on Windows? (install nginx)"
    )
    zh = combine_follow_up("那它的配置文件在哪？", "怎么安装 nginx？")
    assert zh.startswith("那它的配置文件在哪？") and "nginx" in zh and "安装" in zh
    assert combine_follow_up("install nginx?", "install nginx") == "install nginx?"


class Rewriter(Generator):
    """A chat model that answers the rewrite prompt with `reply`."""

    is_chat_model = True

    def __init__(self, reply: str):
        self.reply, self.calls = reply, []

    def stream(self, prompt, options=None):
        self.calls.append((prompt, options))
        yield self.reply


def test_chat_models_rewrite_with_a_short_greedy_prompt():
    gen = Rewriter("独立问题：nginx 的配置文件在哪里？")
    turns = [("怎么安装 nginx？", "用 apt install nginx [1]。")]
    assert rewrite_question("那它的配置文件在哪？", turns, "怎么安装 nginx？", gen) == "nginx 的配置文件在哪里？"
    prompt, opts = gen.calls[0]
    assert opts.temperature == 0 and opts.max_new_tokens <= 64
    assert "怎么安装 nginx？" in prompt[0]["content"] and "那它的配置文件在哪？" in prompt[0]["content"]
    # no history: nothing to rewrite, the model is not asked
    assert rewrite_question("What is nginx?", [], None, gen) == "What is nginx?" and len(gen.calls) == 1


@pytest.mark.parametrize("reply", ["", "   \n", "x" * 500, "Sure.\nHere is a long answer\nwith\nmany\nlines"])
def test_absurd_rewrites_fall_back_to_the_rule(reply):
    q = rewrite_question(
        "what about on Windows?", [("How do I install nginx?", "apt")], "How do I install nginx?", Rewriter(reply)
    )
    assert q == "what about on Windows? (install nginx)"


def test_base_models_use_the_rule_only_for_follow_ups():
    base = Rewriter("never used")
    base.is_chat_model = False
    turns = [("How do I install nginx?", "apt")]
    assert (
        rewrite_question("what about it?", turns, "How do I install nginx?", base) == "what about it? (install nginx)"
    )
    standalone = "How do I create a Python virtual environment with venv?"
    assert rewrite_question(standalone, turns, "How do I install nginx?", base) == standalone
    assert base.calls == []


# -- sessions ---------------------------------------------------------------------------------------------------


def test_session_save_and_load_round_trip(tmp_path):
    s = Session.load(tmp_path, "work")
    assert s.turns == []
    s.turns.append(
        Turn(
            "怎么安装？",
            "用 apt [1]。",
            rewritten=None,
            citations=[1],
            sources=[{"n": 1, "source": "/d/a.md", "page": None, "section": ""}],
        )
    )
    path = s.save()
    assert path == tmp_path / "work.json" and sorted(p.name for p in tmp_path.iterdir()) == ["work.json"]
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == 1 and data["turns"][0]["question"] == "怎么安装？"
    again = Session.load(tmp_path, "work")
    assert again.turns == s.turns


def test_session_names_and_damaged_files_are_clear_errors(tmp_path):
    for bad in ("../evil", "a/b", "", ".hidden"):
        with pytest.raises(DocQAError):
            Session.load(tmp_path, bad)
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DocQAError, match="broken.json"):
        Session.load(tmp_path, "broken")


def test_chat_records_turns_and_feeds_history(tmp_path):
    r = OneHitRetriever()
    chat = Chat(r, echo_generator(), Settings(), Session.load(tmp_path, "t"))
    chat.ask("How do I install nginx?")
    a = chat.ask("what about it?")
    assert r.queries == ["How do I install nginx?", "what about it? (install nginx)"]
    assert a.rewritten_query == "what about it? (install nginx)"
    assert chat.history() == [("How do I install nginx?", "Use apt [1]."), ("what about it?", "Use apt [1].")]
    assert len(Session.load(tmp_path, "t").turns) == 2  # saved after each turn
    chat.reset()
    assert Session.load(tmp_path, "t").turns == [] and chat.last_answer is None
