"""ChatGLM2Tokenizer against ids/text produced by THUDM's own tokenizer (tests/data/chatglm2/tokenizer_cases.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docqa.errors import ModelError
from docqa.generate.base import StreamDecoder
from docqa.generate.chatglm2_tokenizer import ChatGLM2Tokenizer

DATA = Path(__file__).parent / "data" / "chatglm2"
CASES = json.loads((DATA / "tokenizer_cases.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tok() -> ChatGLM2Tokenizer:
    return ChatGLM2Tokenizer.from_dir(DATA)


@pytest.mark.parametrize("case", CASES["encode"], ids=lambda c: repr(c["text"][:20]))
def test_encode_matches_upstream(tok, case):
    assert tok.encode(case["text"]) == case["ids"]
    assert tok.encode(case["text"], add_special_tokens=False) == case["ids"][2:]
    assert tok.count_tokens(case["text"]) == len(case["ids"]) - 2


@pytest.mark.parametrize("case", CASES["decode"], ids=lambda c: repr(c["text"][:20]))
def test_decode_matches_upstream(tok, case):
    assert tok.decode(case["ids"]) == case["text"]


@pytest.mark.parametrize("case", CASES["chat_prompt"], ids=lambda c: repr(c["query"][:20]))
def test_chat_prompt_matches_upstream(tok, case):
    history = [tuple(h) for h in case["history"]]
    assert tok.build_chat_prompt(case["query"], history) == case["prompt"]
    assert tok.build_chat_input(case["query"], history) == case["ids"]


def test_special_ids_and_sizes(tok):
    assert tok.special_ids == CASES["special_ids"]
    assert tok.eos_id == CASES["eos_id"] == 2
    assert tok.pad_id == CASES["pad_id"] == 0
    assert tok.vocab_size == CASES["sp_vocab_size"]
    assert tok.prefix_tokens() == [64790, 64792]


def test_decode_drops_special_eos_pad_and_out_of_vocab_ids(tok):
    ids = tok.encode("Hello world")  # starts with [gMASK] sop
    assert tok.decode(ids + [tok.eos_id, tok.pad_id, 64793, 65000]) == "Hello world"


@pytest.mark.parametrize(
    "text",
    [
        "Debian 参考手册 dpkg -L 列出软件包安装的文件。",
        "emoji 👋 and full-width，标点！",
        "  leading spaces and trailing  ",
        "Line one\nLine two\n\n\nLine five",
        "数字 12345 和 3.14159",
    ],
)
def test_stream_decoding_reproduces_full_decode(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    dec = StreamDecoder(tok.decode)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


def test_emoji_bytes_are_held_back_until_complete(tok):
    ids = tok.encode("👋", add_special_tokens=False)
    assert len(ids) > 1  # byte fallback: one token per UTF-8 byte
    dec = StreamDecoder(tok.decode)
    assert [dec.push(i) for i in ids] == [""] * (len(ids) - 1) + ["👋"]


def test_missing_or_bad_model_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        ChatGLM2Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ModelError, match="SentencePiece"):
        ChatGLM2Tokenizer.from_dir(tmp_path)
