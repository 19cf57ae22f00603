"""ChatGLM3: its tokenizer against THUDM's chatglm3-6b (tests/data/chatglm3/tokenizer_cases.json), its network (the
ChatGLM2 one) and the -32k RoPE rule (base * rope_ratio, unlike chatglm2-6b-32k's positions / rope_ratio)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from docqa.errors import ModelError
from docqa.generate.base import StreamDecoder
from docqa.generate.chatglm3_tokenizer import ChatGLM3Tokenizer, parse_tool_call

TESTS = Path(__file__).parent
V2 = TESTS / "data" / "chatglm2"
CASES = json.loads((TESTS / "data" / "chatglm3" / "tokenizer_cases.json").read_text(encoding="utf-8"))
V2_CASES = json.loads((V2 / "tokenizer_cases.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tok() -> ChatGLM3Tokenizer:
    return ChatGLM3Tokenizer.from_dir(V2)  # ChatGLM3 ships ChatGLM2's tokenizer.model unchanged


@pytest.mark.parametrize("case", CASES["chat_input"], ids=lambda c: repr(c["query"][:20]))
def test_chat_input_matches_upstream(tok, case):
    assert tok.build_chat_input(case["query"], case["history"], role=case["role"]) == case["input_ids"]
    full = tok.build_chat_input(case["query"], case["history"], case["role"], return_dict=True)
    assert (full["input_ids"], full["attention_mask"], full["position_ids"]) == (
        case["input_ids"],
        case["attention_mask"],
        case["position_ids"],
    )
    assert tok.decode(case["input_ids"]) == case["decoded"]


@pytest.mark.parametrize("case", CASES["encode"], ids=lambda c: repr(c["text"][:20]))
def test_encode_matches_upstream(tok, case):
    assert tok.encode(case["text"]) == case["ids"]


def test_encode_is_chatglm2s(tok):
    assert CASES["same_encode_as_chatglm2"]
    for case in V2_CASES["encode"]:
        assert tok.encode(case["text"]) == case["ids"]


@pytest.mark.parametrize("case", CASES["encode_special_tokens_true"], ids=lambda c: repr(c["text"][:20]))
def test_encode_special_tokens(tok, case):
    assert tok.encode(case["text"], encode_special_tokens=True) == case["ids"]


@pytest.mark.parametrize("case", CASES["decode"], ids=lambda c: repr(c["text"][:20]))
def test_decode_matches_upstream(tok, case):
    assert tok.decode(case["ids"]) == case["text"]


def test_special_ids_and_stop_tokens(tok):
    specials = {k: v for k, v in CASES["special_ids"].items() if not k.startswith(("<bos", "<eos", "<pad"))}
    assert tok.special_ids == specials
    assert (CASES["special_ids"]["<bos>"], CASES["special_ids"]["<eos>"], CASES["special_ids"]["<pad>"]) == (
        tok.bos_id,
        tok.eos_id,
        tok.pad_id,
    )
    assert (tok.eos_id, tok.pad_id, tok.sp_vocab_size, tok.vocab_size) == (
        CASES["eos_id"],
        CASES["pad_id"],
        CASES["sp_vocab_size"],
        CASES["vocab_size"],
    )
    assert tok.chat_eos_ids == CASES["chat_eos_ids"]


@pytest.mark.parametrize("case", CASES["process_response"], ids=lambda c: repr(c["output"][:20]))
def test_process_response_matches_upstream(tok, case):
    response, history = tok.process_response(case["output"], case["history"])
    assert response == case["response"] and history == case["new_history"]


def test_tool_calls_are_parsed_never_run(tok, tmp_path):
    tools = [{"name": "search_docs", "parameters": {}}]
    history = [{"role": "system", "content": "tools:", "tools": tools}]
    reply, _ = tok.process_response("search_docs\n```python\ntool_call(query='apt-get', k=3)\n```", history)
    assert reply == {"name": "search_docs", "parameters": {"query": "apt-get", "k": 3}}
    marker = tmp_path / "pwned"
    evil = f"search_docs\n```python\ntool_call(q=open({str(marker)!r}, 'w'))\n```"
    reply, _ = tok.process_response(evil, history)
    assert not marker.exists() and reply["name"] == "search_docs" and "open(" in reply["content"]
    assert parse_tool_call("__import__('os').system('true')") is None
    assert parse_tool_call("tool_call(**{'a': 1})") is None


def test_unknown_role_is_refused(tok):
    with pytest.raises(ModelError, match="role"):
        tok.build_chat_input("hi", [{"role": "wizard", "content": "x"}])


def test_stream_decoding_reproduces_full_decode(tok):
    ids = tok.build_chat_input("怎么查看一个软件包安装了哪些文件？ 👋")
    dec = StreamDecoder(tok.decode)
    assert "".join([dec.push(i) for i in ids] + [dec.flush()]) == tok.decode(ids)


# -- the network: ChatGLM2's, with ChatGLM3's RoPE rule ----------------------------------------------------------

torch = pytest.importorskip("torch")


def _as_v3(src: Path, dst: Path, **cfg_changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(_name_or_path="THUDM/chatglm3-6b", **cfg_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_v3_runs_the_chatglm2_network(tmp_path):
    from docqa.generate.chatglm import load

    ck = _as_v3(V2 / "tiny-chatglm2", tmp_path / "tiny-chatglm3", seq_length=8192)
    expected = json.loads((V2 / "tiny-chatglm2" / "expected.json").read_text())
    model, _ = load(ck, device="cpu")
    for case in expected["cases"][:2]:
        ids = torch.tensor([case["input_ids"]])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, -1]
        assert (logits - torch.tensor(case["last_logits"])).abs().max().item() <= expected["tolerance_abs"]
        out = model.generate(
            input_ids=ids, max_new_tokens=16, do_sample=False, return_dict_in_generate=True, output_scores=True
        )
        assert out.sequences[0, ids.shape[1] :].tolist() == case["greedy_16"] and len(out.scores) == 16


def _angles(model, positions):
    x = torch.zeros(1, dtype=torch.float32)
    cos, sin = model.model.rotary_emb(x, torch.tensor([positions]))
    half = cos.shape[-1] // 2
    return cos[0, :, :half], sin[0, :, :half]


def test_v3_32k_scales_the_rope_base_and_v2_32k_the_positions(tmp_path):
    from docqa.generate.chatglm import load

    positions = [0, 1, 700, 2499, 30000]
    pos = torch.tensor(positions, dtype=torch.float64)[:, None]
    n = 16 // 2  # rotary dims: half of each 16-wide head

    ck3 = _as_v3(V2 / "tiny-chatglm2-32k", tmp_path / "tiny-chatglm3-32k", rope_ratio=50)
    model3, _ = load(ck3, device="cpu")
    # upstream chatglm3-6b-32k: base = 10000 * rope_ratio, positions as they are
    theta3 = 1.0 / (10000.0 * 50) ** (torch.arange(0, n, 2, dtype=torch.float64) / n)
    cos, sin = _angles(model3, positions)
    assert torch.allclose(cos.double(), torch.cos(pos * theta3), atol=1e-4)
    assert torch.allclose(sin.double(), torch.sin(pos * theta3), atol=1e-4)

    model2, _ = load(V2 / "tiny-chatglm2-32k", device="cpu")
    # upstream chatglm2-6b-32k: base 10000, positions / rope_ratio (16)
    theta2 = 1.0 / 10000.0 ** (torch.arange(0, n, 2, dtype=torch.float64) / n)
    cos2, _ = _angles(model2, positions)
    assert torch.allclose(cos2.double(), torch.cos(pos / 16 * theta2), atol=1e-4)
    assert not torch.allclose(cos2, cos, atol=1e-2)
