"""ChatGLM6BTokenizer against ids/text from THUDM's own v1 tokenizer (tests/data/chatglm6b/tokenizer_cases.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docqa.errors import ModelError
from docqa.generate.base import StreamDecoder
from docqa.generate.chatglm6b_tokenizer import ChatGLM6BTokenizer

DATA = Path(__file__).parent / "data" / "chatglm6b"
CASES = json.loads((DATA / "tokenizer_cases.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tok() -> ChatGLM6BTokenizer:
    return ChatGLM6BTokenizer.from_dir(DATA)


@pytest.mark.parametrize("case", CASES["encode"], ids=lambda c: repr(c["text"][:20]))
def test_encode_matches_upstream(tok, case):
    assert tok.encode(case["text"]) == case["ids"]
    assert tok.encode(case["text"], add_special_tokens=False) == case["ids"][:-2]
    assert case["ids"][-2:] == tok.suffix_tokens() == [130001, 130004]  # at the end, unlike ChatGLM2
    assert tok.count_tokens(case["text"]) == len(case["ids"]) - 2


@pytest.mark.parametrize("case", CASES["tokenize"], ids=lambda c: repr(c["text"][:20]))
def test_tokenize_matches_upstream(tok, case):
    assert tok.tokenize(case["text"]) == case["pieces"]


@pytest.mark.parametrize("case", CASES["decode"], ids=lambda c: repr(c["text"][:20]))
def test_decode_matches_upstream(tok, case):
    assert tok.decode(case["ids"]) == case["text"]


@pytest.mark.parametrize("case", CASES["chat_prompt"], ids=lambda c: repr(c["query"][:20]))
def test_chat_prompt_matches_upstream(tok, case):
    history = [tuple(h) for h in case["history"]]
    assert tok.build_prompt(case["query"], history) == case["prompt"]
    assert tok.build_chat_prompt(case["query"], history) == case["prompt"]  # the ChatGLM2 name works too
    assert tok.build_chat_input(case["query"], history) == case["ids"]


@pytest.mark.parametrize("case", CASES["process_response"], ids=lambda c: repr(c["response"][:20]))
def test_process_response_matches_upstream(tok, case):
    assert tok.process_response(case["response"]) == case["output"]
    # the streaming form keeps lengths, so it agrees except for the trailing strip
    streamed = tok.process_response_prefix(case["response"]).rstrip()
    assert streamed == case["output"].replace("2023年", "[[训练时间]]")


def test_special_ids_and_sizes(tok):
    for piece, i in CASES["special_ids"].items():
        assert tok._sp.piece_to_id(piece) == i
    assert tok.special_ids == {k: CASES["special_ids"][k] for k in tok.special_ids}
    got = (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id, tok.mask_id, tok.gmask_id, tok.end_token_id, tok.vocab_size)
    want = tuple(
        CASES[k] for k in ("bos_id", "eos_id", "pad_id", "unk_id", "mask_id", "gmask_id", "end_token_id", "vocab_size")
    )
    assert got == want
    assert CASES["num_image_tokens"] == 0 and CASES["sp_vocab_size"] == tok.sp_vocab_size


def test_registered_special_tokens_are_split_out_of_text(tok):
    case = CASES["special_in_text"]
    assert tok.encode(case["text"]) == case["ids"]
    # docqa's prompts keep them as text, so a document cannot inject control tokens
    plain = tok.encode(case["text"], split_special=False)
    assert 130000 not in plain[:-2] and 130005 not in plain


def test_batch_padding_matches_upstream(tok):
    case = CASES["batch_pad"]
    out = tok(case["texts"], padding=True)
    assert out["input_ids"] == case["input_ids"]
    assert out["attention_mask"] == case["attention_mask_true_is_masked"]
    assert out["position_ids"] == case["position_ids"]


def test_model_vocab_ids_beyond_the_tokenizer_decode_to_nothing(tok):
    assert CASES["model_vocab_size"] == 130528
    assert tok.decode([5, 74874, 130400, 130527]) == "你好"


@pytest.mark.parametrize(
    "text",
    [
        "Debian 参考手册 dpkg -L 列出软件包安装的文件。",
        "def f():\n\treturn  1",
        "emoji 👋 and 中文",
        "数字 12345 和 3.14159",
    ],
)
def test_stream_decoding_reproduces_full_decode(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    dec = StreamDecoder(tok.decode)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)


def test_missing_or_bad_model_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        ChatGLM6BTokenizer.from_dir(tmp_path)
    (tmp_path / "ice_text.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ModelError, match="SentencePiece"):
        ChatGLM6BTokenizer.from_dir(tmp_path)
    with pytest.raises(ModelError, match="gMASK"):
        ChatGLM6BTokenizer(Path(__file__).parent / "data" / "chatglm2" / "tokenizer.model")
