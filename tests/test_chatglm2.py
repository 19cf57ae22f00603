"""ChatGLM2 on GlmForCausalLM against logits/greedy tokens from THUDM's own modeling code (tests/data/chatglm2)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from docqa.errors import ModelError  # noqa: E402
from docqa.generate.base import GenerationOptions, sample_tokens  # noqa: E402
from docqa.generate.chatglm2 import (  # noqa: E402
    ChatGLM2Generator,
    count_params,
    find_local_checkpoint,
    glm_config_from_chatglm,
    is_chatglm2_checkpoint,
    load,
    messages_to_query_history,
    read_chatglm_config,
    resolve_model_path,
)

DATA = Path(__file__).parent / "data" / "chatglm2"
CHECKPOINTS = ("tiny-chatglm2", "tiny-chatglm2-32k")
EXPECTED = {name: json.loads((DATA / name / "expected.json").read_text()) for name in CHECKPOINTS}
BOOBY_TRAP = "raise RuntimeError('docqa must never import files from a checkpoint folder')\n"


def _to_safetensors(src: Path, dst: Path) -> Path:
    """A copy of a .bin checkpoint as one model.safetensors, plus traps proving what is (not) read."""
    from safetensors.torch import save_file

    dst.mkdir()
    state = {}
    for shard in sorted(src.glob("pytorch_model-*.bin")):
        state.update(torch.load(shard, weights_only=True))
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst / "model.safetensors"))
    shutil.copy(src / "config.json", dst / "config.json")
    # .bin files that would fail if read: safetensors must win when both exist
    shutil.copy(src / "pytorch_model.bin.index.json", dst)
    for shard in src.glob("pytorch_model-*.bin"):
        (dst / shard.name).write_bytes(b"garbage")
    (dst / "modeling_chatglm.py").write_text(BOOBY_TRAP)
    (dst / "configuration_chatglm.py").write_text(BOOBY_TRAP)
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(checkpoint, layout) -> model; each loaded once for the module."""
    out = {}
    for name in CHECKPOINTS:
        out[name, "bin"], tok = load(DATA / name, device="cpu")
        assert tok is None  # tiny checkpoints ship no tokenizer.model
        st = _to_safetensors(DATA / name, tmp_path_factory.mktemp("st") / name)
        out[name, "safetensors"], _ = load(st, device="cpu")
    return out


CASES = [
    (name, layout, i)
    for name in CHECKPOINTS
    for layout in ("bin", "safetensors")
    for i in range(len(EXPECTED[name]["cases"]))
]


@pytest.mark.parametrize(("name", "layout", "i"), CASES)
def test_logits_and_greedy_tokens_match_upstream(models, name, layout, i):
    model = models[name, layout]
    case = EXPECTED[name]["cases"][i]
    assert type(model).__name__ == "GlmForCausalLM" and not model.training
    with torch.inference_mode():
        logits = model(torch.tensor([case["input_ids"]])).logits[0, -1]
    diff = (logits - torch.tensor(case["last_logits"])).abs().max().item()
    assert diff <= EXPECTED[name]["tolerance_abs"]
    greedy = list(sample_tokens(model, case["input_ids"], GenerationOptions(max_new_tokens=16, temperature=0), []))
    assert greedy == case["greedy_16"]


def test_no_checkpoint_file_is_imported(models):
    assert not any("chatglm" in m for m in sys.modules if m.startswith(("modeling_", "configuration_")))
    assert not any(m.startswith("transformers_modules") for m in sys.modules)


def test_config_mapping():
    cfg = read_chatglm_config(DATA / "tiny-chatglm2")
    c = glm_config_from_chatglm(cfg)
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (1024, 64, 104, 2)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, 2, 16)
    assert c.attention_bias is True and c.tie_word_embeddings is False
    assert c.rms_norm_eps == 1e-5 and c.max_position_embeddings == 32768
    assert c.rope_parameters["partial_rotary_factor"] == 0.5
    assert c.rope_parameters["rope_type"] == "default"
    c32 = glm_config_from_chatglm(read_chatglm_config(DATA / "tiny-chatglm2-32k"))
    assert c32.rope_parameters["rope_type"] == "linear" and c32.rope_parameters["factor"] == 16


def test_real_6b_config_size():
    cfg = {
        "num_layers": 28,
        "hidden_size": 4096,
        "kv_channels": 128,
        "ffn_hidden_size": 13696,
        "padded_vocab_size": 65024,
        "num_attention_heads": 32,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
    }
    assert 6.1e9 < count_params(cfg) < 6.3e9


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(DATA / name, dst)
    return dst


def test_truncated_shard(tmp_path):
    ck = _copy("tiny-chatglm2", tmp_path)
    shard = ck / "pytorch_model-00002-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(ModelError, match="pytorch_model-00002-of-00002.bin"):
        load(ck, device="cpu")


def test_tampered_shard_with_code_is_refused(tmp_path):
    ck = _copy("tiny-chatglm2", tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"transformer.output_layer.weight": Evil()}, ck / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(ModelError, match="cannot read weight file"):
        load(ck, device="cpu")
    assert not marker.exists()


def test_missing_and_misshapen_tensors(tmp_path):
    ck = _copy("tiny-chatglm2", tmp_path)
    shard = ck / "pytorch_model-00002-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    good = dict(state)
    del state["transformer.encoder.final_layernorm.weight"]
    torch.save(state, shard)
    with pytest.raises(ModelError, match="missing weights for model.norm.weight"):
        load(ck, device="cpu")
    good["transformer.output_layer.weight"] = good["transformer.output_layer.weight"][:, :32]
    torch.save(good, shard)
    with pytest.raises(ModelError, match="shape"):
        load(ck, device="cpu")


def test_missing_shard_and_unexpected_tensor(tmp_path):
    ck = _copy("tiny-chatglm2", tmp_path)
    shard = ck / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    state["transformer.encoder.layers.0.self_attention.query_key_value.weight_scale"] = torch.ones(3)
    torch.save(state, shard)
    with pytest.raises(ModelError, match="unexpected tensor"):
        load(ck, device="cpu")
    shard.unlink()
    with pytest.raises(ModelError, match="missing"):
        load(ck, device="cpu")


def test_int4_repo_and_foreign_configs_are_refused(tmp_path):
    ck = _copy("tiny-chatglm2", tmp_path)
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "quantization_bit": 4}))
    with pytest.raises(ModelError, match="pre-quantised"):
        load(ck, device="cpu")
    assert not is_chatglm2_checkpoint(ck)
    (ck / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(ModelError, match="not a ChatGLM config"):
        load(ck, device="cpu")
    assert is_chatglm2_checkpoint(DATA / "tiny-chatglm2")
    assert not is_chatglm2_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize(("quantize", "tol"), [("int8", 0.05), ("int4", 0.5)])
def test_cpu_quantisation_stays_close(quantize, tol):
    model, _ = load(DATA / "tiny-chatglm2", device="cpu", quantize=quantize)
    assert type(model.model.layers[0].mlp.gate_up_proj).__name__.startswith(quantize.capitalize())
    case = EXPECTED["tiny-chatglm2"]["cases"][1]
    with torch.inference_mode():
        logits = model(torch.tensor([case["input_ids"]])).logits[0, -1].float()
    assert (logits - torch.tensor(case["last_logits"])).abs().max().item() < tol


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    ck = tmp_path_factory.mktemp("gen") / "tiny-chatglm2"
    shutil.copytree(DATA / "tiny-chatglm2", ck)
    shutil.copy(DATA / "tokenizer.model", ck)
    return ChatGLM2Generator(ck, device="cpu", max_context=64)


def test_generator_streams_greedy_tokens(generator):
    case = EXPECTED["tiny-chatglm2"]["cases"][1]
    # the tiny model's 1,024-token vocabulary cannot embed real prompts: feed the reference ids directly
    generator.tokenizer.encode = lambda text, add_special_tokens=True: list(case["input_ids"])
    try:
        pieces = list(
            generator.stream("anything", GenerationOptions(max_new_tokens=16, temperature=0, stop_loops=False))
        )
        looped = "".join(generator.stream("anything", GenerationOptions(max_new_tokens=16, temperature=0)))
    finally:
        del generator.tokenizer.encode
    assert "".join(pieces) == generator.tokenizer.decode(case["greedy_16"])
    # the random model repeats one word; by default the stream ends once that loop is evident
    assert len(looped) < len("".join(pieces)) and "".join(pieces).startswith(looped)
    assert "\ufffd" not in "".join(pieces)


def test_generator_metadata_and_prompt(generator):
    assert generator.context_length == 64  # max_context override
    assert generator.count_tokens("你好") == 2
    msgs = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is APT?"},
        {"role": "assistant", "content": "A package manager."},
        {"role": "user", "content": "和 dpkg？"},
    ]
    assert generator.render(msgs) == (
        "[Round 1]\n\n问：Answer briefly.\n\nWhat is APT?\n\n答：A package manager.\n\n"
        "[Round 2]\n\n问：和 dpkg？\n\n答："
    )
    assert messages_to_query_history(msgs[1:]) == ("和 dpkg？", [("What is APT?", "A package manager.")])
    with pytest.raises(ModelError, match="more than the model's context"):
        list(generator.stream("长" * 100))


def test_native_context_lengths(tmp_path):
    for name, want in (("tiny-chatglm2", 8192), ("tiny-chatglm2-32k", 32768)):
        ck = _copy(name, tmp_path)
        shutil.copy(DATA / "tokenizer.model", ck)
        assert ChatGLM2Generator(ck, device="cpu").context_length == want


def test_locating_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCQA_CHATGLM2_PATH", str(DATA / "tiny-chatglm2"))
    assert find_local_checkpoint() == DATA / "tiny-chatglm2"
    monkeypatch.setenv("DOCQA_CHATGLM2_PATH", str(tmp_path))
    assert find_local_checkpoint() is None
    monkeypatch.delenv("DOCQA_CHATGLM2_PATH")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert find_local_checkpoint() is None
    snap = tmp_path / "hub" / "models--THUDM--chatglm2-6b" / "snapshots" / "abc"
    shutil.copytree(DATA / "tiny-chatglm2", snap)
    shutil.copy(DATA / "tokenizer.model", snap)
    assert find_local_checkpoint() == snap
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path(snap) == snap
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        resolve_model_path("THUDM/no-such-model-here")
    with pytest.raises(ModelError, match="not found"):
        resolve_model_path(tmp_path / "missing")
