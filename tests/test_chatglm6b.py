"""docqa's own ChatGLM-6B (v1) network against logits/greedy tokens from THUDM's code (tests/data/chatglm6b)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from docqa.errors import ModelError  # noqa: E402
from docqa.generate.base import GenerationOptions, sample_tokens  # noqa: E402
from docqa.generate.chatglm import load  # noqa: E402
from docqa.generate.chatglm6b import (  # noqa: E402
    RESIDUAL_ALPHA,
    ChatGLM6BConfig,
    ChatGLM6BForCausalLM,
    Prefix,
    count_params,
    load_model,
)

DATA = Path(__file__).parent / "data" / "chatglm6b"
TINY = DATA / "tiny-chatglm6b"
EXPECTED = json.loads((TINY / "expected.json").read_text())
TOL = EXPECTED["tolerance_abs"]
CASES = EXPECTED["cases"]
BOOBY_TRAP = "raise RuntimeError('docqa must never import files from a checkpoint folder')\n"


@pytest.fixture(scope="module")
def model():
    m, tok = load(TINY, device="cpu", family="auto")
    assert tok is None  # the tiny checkpoint ships no ice_text.model
    return m


@pytest.mark.parametrize("i", range(len(CASES)), ids=lambda i: f"{CASES[i]['kind']}-{len(CASES[i]['input_ids'])}")
def test_logits_and_greedy_tokens_match_upstream(model, i):
    case = CASES[i]
    ids = torch.tensor([case["input_ids"]])
    assert isinstance(model, ChatGLM6BForCausalLM) and not model.training
    logits = model(input_ids=ids).logits[0, -1]
    assert (logits - torch.tensor(case["last_logits"])).abs().max().item() <= TOL
    out = model.generate(
        input_ids=ids, max_new_tokens=16, do_sample=False, return_dict_in_generate=True, output_scores=True
    )
    assert out.sequences[0, ids.shape[1] :].tolist() == case["greedy_16"]
    assert len(out.scores) == len(case["greedy_16"])
    # the logits that chose the 16th token come from the KV-cache path: the real check of the cache
    assert (out.scores[-1][0] - torch.tensor(case["greedy_last_logits"])).abs().max().item() <= TOL
    plain = model.generate(input_ids=ids, max_new_tokens=16, do_sample=False)
    assert torch.equal(plain, out.sequences)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_positions_follow_upstream(model, i):
    case = CASES[i]
    ids = torch.tensor([case["input_ids"]])
    assert Prefix.of(ids, model.config).position_ids(0, ids.shape[1], True)[0].tolist() == case["position_ids"]


def test_docqa_decoding_loop_drives_the_cache(model):
    case = CASES[3]  # [MASK] in the middle
    greedy = list(sample_tokens(model, case["input_ids"], GenerationOptions(max_new_tokens=16, temperature=0), []))
    assert greedy == case["greedy_16"]


def test_generation_stops_at_eos_and_samples(model):
    ids = torch.tensor([CASES[0]["input_ids"]])
    first = CASES[0]["greedy_16"][0]
    out = model.generate(input_ids=ids, max_new_tokens=8, eos_token_id=first)
    assert out.shape[1] == ids.shape[1] + 1 and out[0, -1].item() == first  # eos is kept, then it stops
    gen = torch.Generator().manual_seed(0)
    sampled = model.generate(input_ids=ids, max_new_tokens=4, do_sample=True, temperature=0.9, top_p=0.7, generator=gen)
    assert sampled.shape == (1, ids.shape[1] + 4)
    assert model.generate(input_ids=ids).shape[1] == 20  # transformers' default max_length


def test_batch_rows_match_single_rows(model):
    a, b = CASES[4]["input_ids"], CASES[1]["input_ids"][:34] + [1001, 1004]  # different <sop>/mask positions
    both = model(input_ids=torch.tensor([a, b])).logits[:, -1]
    for row, ids in enumerate((a, b)):
        assert torch.allclose(both[row], model(input_ids=torch.tensor([ids])).logits[0, -1], atol=1e-5)


def test_fully_masked_rows_are_uniform_not_nan(model):
    ids = torch.tensor([CASES[0]["input_ids"]])
    n = ids.shape[1]
    mask = torch.ones(1, 1, n, n, dtype=torch.bool)  # upstream's left-padding rows look like this
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    assert torch.isfinite(out.logits).all()


def test_config_and_facts():
    cfg = json.loads((TINY / "config.json").read_text())
    c = ChatGLM6BConfig.from_chatglm(cfg)
    assert (c.hidden_size, c.num_layers, c.num_attention_heads, c.inner_hidden_size, c.head_dim) == (64, 2, 4, 208, 16)
    assert (c.bos_token_id, c.eos_token_id, c.mask_token_id, c.gmask_token_id, c.pad_token_id) == (
        1004,
        1005,
        1000,
        1001,
        3,
    )
    assert RESIDUAL_ALPHA == pytest.approx(7.4833, abs=1e-4)  # sqrt(2 * 28), not sqrt(2 * num_layers)
    real = {"hidden_size": 4096, "inner_hidden_size": 16384, "vocab_size": 130528, "num_layers": 28}
    assert 6.0e9 < count_params(real) < 7.0e9
    with pytest.raises(ModelError, match="P-tuning"):
        ChatGLM6BConfig.from_chatglm({**cfg, "pre_seq_len": 128})


def test_input_without_sop_or_mask_is_refused(model):
    with pytest.raises(ModelError, match="<sop>"):
        model(input_ids=torch.tensor([[5, 6, 1001]]))
    with pytest.raises(ModelError, match=r"\[gMASK\]"):
        model(input_ids=torch.tensor([[5, 6, 1004]]))


def test_no_checkpoint_file_is_imported(model):
    assert not any(m.startswith("transformers_modules") for m in sys.modules)
    assert not any("chatglm" in m for m in sys.modules if m.startswith(("modeling_", "configuration_")))


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "tiny-chatglm6b"
    shutil.copytree(TINY, dst)
    (dst / "modeling_chatglm.py").write_text(BOOBY_TRAP)
    return dst


def test_safetensors_and_untied_head(tmp_path):
    from safetensors.torch import save_file

    src = _copy(tmp_path)
    state = {}
    for shard in sorted(src.glob("pytorch_model-*.bin")):
        state.update(torch.load(shard, weights_only=True))
    del state["lm_head.weight"]  # tied to the embeddings: the loader shares them
    st = tmp_path / "st"
    st.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(st / "model.safetensors"))
    shutil.copy(src / "config.json", st)
    m = load_model(st, device="cpu")
    logits = m(input_ids=torch.tensor([CASES[1]["input_ids"]])).logits[0, -1]
    assert (logits - torch.tensor(CASES[1]["last_logits"])).abs().max().item() <= TOL


@pytest.mark.parametrize(("quantize", "tol"), [("int8", 0.2), ("int4", 1.5)])
def test_cpu_quantisation_stays_close(quantize, tol):
    m = load_model(TINY, device="cpu", quantize=quantize)
    assert type(m.transformer.layers[0].mlp.dense_h_to_4h).__name__.startswith(quantize.capitalize())
    assert type(m.lm_head).__name__.startswith(quantize.capitalize())
    logits = m(input_ids=torch.tensor([CASES[1]["input_ids"]])).logits[0, -1]
    assert (logits - torch.tensor(CASES[1]["last_logits"])).abs().max().item() < tol


def test_bad_checkpoints_are_refused(tmp_path):
    ck = _copy(tmp_path)
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "quantization_bit": 4}))
    with pytest.raises(ModelError, match="pre-quantised"):
        load(ck, device="cpu")
    (ck / "config.json").write_text(json.dumps(cfg))
    shard = ck / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    state["transformer.layers.0.attention.query_key_value.weight_scale"] = torch.ones(3)
    torch.save(state, shard)
    with pytest.raises(ModelError, match="unexpected tensor"):
        load(ck, device="cpu")
    del state["transformer.layers.0.attention.query_key_value.weight_scale"]
    del state["transformer.layers.0.attention.dense.bias"]
    torch.save(state, shard)
    with pytest.raises(ModelError, match="missing weights for transformer.layers.0.attention.dense.bias"):
        load(ck, device="cpu")
