"""docqa finetune: data formats, LoRA / QLoRA / P-Tuning v2 training and resume, adapters at inference (LoRA merged
at load time, P-Tuning prefixes, official P-Tuning v2 folders), `docqa finetune` / `merge` and `--adapter`.

Heavy checks (a few hundred steps halving the loss, a SIGKILLed subprocess resuming) are marked slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from docqa.cli import app
from docqa.errors import LoadError, ModelError
from docqa.finetune.data import IGNORE, encode, parse_lines, read_records, split

DATA = Path(__file__).parent / "data"
TINY_1K = DATA / "chatglm2" / "tiny-chatglm2"  # vocab 1024: fast, for the runtime checks

QA = [
    ("What does dpkg -L do?", "It lists the files of a package."),
    ("How do I make a venv?", "Run python3 -m venv .venv."),
    ("怎么解压 tar.gz 文件？", "用 tar -xzf 解压。"),
    ("What is APT?", "Debian's package manager."),
]


def write_qa(path: Path, pairs=QA) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": a}, ensure_ascii=False) + "\n" for q, a in pairs))
    return path


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


# -- data ---------------------------------------------------------------------------------------------------------


def test_four_formats_and_errors_name_the_line(tmp_path):
    lines = [
        json.dumps({"content": "类型#裤*风格#简约", "summary": "简约的裤子"}, ensure_ascii=False),
        json.dumps({"prompt": "And dpkg -S?", "response": "It finds the owner.", "history": [["APT?", "A manager."]]}),
        json.dumps({"instruction": "Translate", "input": "猫", "output": "cat"}, ensure_ascii=False),
        json.dumps(
            {
                "conversations": [
                    {"from": "human", "value": "hi"},
                    {"from": "gpt", "value": "hello"},
                    {"from": "human", "value": "bye"},
                    {"from": "gpt", "value": "see you"},
                ]
            }
        ),
    ]
    recs = parse_lines(lines, "d.jsonl")
    assert [(r.query, r.answer, r.line) for r in recs] == [
        ("类型#裤*风格#简约", "简约的裤子", 1),
        ("And dpkg -S?", "It finds the owner.", 2),
        ("Translate\n猫", "cat", 3),
        ("hi", "hello", 4),
        ("bye", "see you", 4),
    ]
    assert recs[1].history == [("APT?", "A manager.")] and recs[4].history == [("hi", "hello")]
    bad = tmp_path / "bad.json"  # a JSON array: the error names the element's line
    bad.write_text('[\n  {"question": "q", "answer": "a"},\n  {"question": "q2"}\n]\n')
    with pytest.raises(LoadError, match=r"bad\.json:3: unknown record format"):
        read_records(bad)
    with pytest.raises(LoadError, match=r"x\.jsonl:2: not valid JSON"):
        parse_lines(['{"question": "q", "answer": "a"}', "{oops"], "x.jsonl")
    with pytest.raises(LoadError, match=r"x\.jsonl:1: 'history' must be"):
        parse_lines(['{"prompt": "q", "response": "a", "history": "no"}'], "x.jsonl")


def test_labels_cover_only_the_answer_and_eos_in_the_chat_format():
    from docqa.generate.chatglm2_tokenizer import ChatGLM2Tokenizer

    tok = ChatGLM2Tokenizer.from_dir(DATA / "chatglm2")
    (rec,) = parse_lines([json.dumps({"prompt": "Q2", "response": "A2", "history": [["Q1", "A1"]]})])
    ex = encode(rec, tok, "chatglm2")
    prompt = tok.encode(tok.build_prompt("Q2", [("Q1", "A1")]))
    answer = tok.encode("A2", add_special_tokens=False) + [tok.eos_id]
    assert ex.input_ids == prompt + answer
    assert ex.labels == [IGNORE] * len(prompt) + answer
    train, held = split([rec] * 3)
    assert held == [] and len(train) == 3  # too few records to hold any out


# -- P-Tuning layout and the prefix at inference --------------------------------------------------------------------


def upstream_get_prompt(flat, layers, groups, hd):
    """Upstream ChatGLM2's get_prompt for batch 1, re-typed: view [b, pre, 2L, g, d], permute [2, 1, 0, 3, 4],
    split(2) -> per layer [2, pre, b, g, d] in seq-first layout; returned here as ours, [1, g, pre, d]."""
    pre = flat.shape[0]
    pkv = flat.unsqueeze(0).view(1, pre, layers * 2, groups, hd).permute([2, 1, 0, 3, 4]).split(2)
    return [(kv[0].permute(1, 2, 0, 3), kv[1].permute(1, 2, 0, 3)) for kv in pkv]


def write_official_ptuning(folder: Path, model_cfg: dict, pre: int, projection: bool, say_projection=None, seed=0):
    """An official ChatGLM2 P-Tuning v2 checkpoint folder: pytorch_model.bin (torch.save of the prefix encoder's
    state only) and config.json with pre_seq_len / prefix_projection."""
    g = torch.Generator().manual_seed(seed)
    kv = model_cfg["num_layers"] * 2 * model_cfg["multi_query_group_num"] * model_cfg["kv_channels"]
    state = {"transformer.prefix_encoder.embedding.weight": torch.randn(pre, kv, generator=g) * 0.5}
    if projection:
        h = model_cfg["hidden_size"]
        state.update(
            {
                "transformer.prefix_encoder.trans.0.weight": torch.randn(h, kv, generator=g) * 0.1,
                "transformer.prefix_encoder.trans.0.bias": torch.randn(h, generator=g) * 0.1,
                "transformer.prefix_encoder.trans.2.weight": torch.randn(kv, h, generator=g) * 0.5,
                "transformer.prefix_encoder.trans.2.bias": torch.randn(kv, generator=g) * 0.1,
            }
        )
    folder.mkdir(parents=True)
    torch.save(state, folder / "pytorch_model.bin")
    cfg = dict(model_cfg, pre_seq_len=pre, prefix_projection=projection if say_projection is None else say_projection)
    (folder / "config.json").write_text(json.dumps(cfg))
    return state


@pytest.mark.parametrize("projection", [False, True])
def test_official_ptuning_folder_gives_upstreams_prefix(tmp_path, projection):
    from docqa.generate.adapters import prefix_from_adapter, read_adapter

    cfg = json.loads((TINY_1K / "config.json").read_text())
    # the config claims the opposite of what was saved (upstream's `Missing key(s) trans.0.weight`): weights win
    state = write_official_ptuning(tmp_path / "pt", cfg, 5, projection, say_projection=not projection)
    adapter = read_adapter(tmp_path / "pt")
    assert adapter.official and adapter.pre_seq_len == 5 and adapter.prefix_projection == projection
    got = prefix_from_adapter(adapter, cfg)
    emb = state["transformer.prefix_encoder.embedding.weight"]
    if projection:
        t = torch.nn.Sequential(
            torch.nn.Linear(emb.shape[1], cfg["hidden_size"]),
            torch.nn.Tanh(),
            torch.nn.Linear(cfg["hidden_size"], emb.shape[1]),
        )
        t.load_state_dict({k.split("trans.")[1]: v for k, v in state.items() if "trans." in k})
        with torch.no_grad():
            emb = t(emb)
    want = upstream_get_prompt(emb, cfg["num_layers"], cfg["multi_query_group_num"], cfg["kv_channels"])
    assert len(got) == cfg["num_layers"]
    for (k, v), (wk, wv) in zip(got, want):
        assert k.shape == (1, 2, 5, 16)
        assert torch.allclose(k, wk, atol=1e-6) and torch.allclose(v, wv, atol=1e-6)


def test_prefix_generation_matches_a_no_cache_greedy_loop(tmp_path):
    """The generator's cached decoding with a prefix = a full forward per token (two implementations: transformers
    with a prefilled DynamicCache, and glm_runtime's explicit reference), and the prefix really changes it."""
    from docqa.generate.adapters import (
        greedy_no_cache,
        prefix_from_adapter,
        prefix_logits,
        prefix_sample_tokens,
        read_adapter,
    )
    from docqa.generate.base import GenerationOptions
    from docqa.generate.chatglm2 import load_model
    from docqa.generate.glm_runtime import GlmSession, forward_logits

    cfg = json.loads((TINY_1K / "config.json").read_text())
    write_official_ptuning(tmp_path / "pt", cfg, 6, True)

    model = load_model(TINY_1K, device="cpu", dtype="fp32", quantize="none")
    prefix = prefix_from_adapter(read_adapter(tmp_path / "pt"), cfg)
    ids = [5, 17, 300, 42, 9, 77, 120]
    ref = forward_logits(model, ids, prefix)
    with torch.no_grad():
        ours = prefix_logits(model, torch.tensor([ids]), prefix)[0]
    assert torch.allclose(ours, ref, atol=1e-4)
    plain = forward_logits(model, ids)
    assert (plain - ref).abs().max() > 1e-2  # the prefix matters
    want = greedy_no_cache(model, ids, 8, [2], prefix)
    assert (
        list(prefix_sample_tokens(model, ids, GenerationOptions(max_new_tokens=8, temperature=0), [2], prefix)) == want
    )
    session = GlmSession(model, prefix)
    logits, _ = session.prefill(ids)
    got = []
    for _ in range(8):
        nxt = int(torch.argmax(logits))
        if nxt == 2:
            break
        got.append(nxt)
        logits = session.step(nxt)
    assert got == want
    assert want != greedy_no_cache(model, ids, 8, [2], None)


# -- LoRA merge ---------------------------------------------------------------------------------------------------


def _lora_adapter(folder: Path, base: Path, seed=0, r=4):
    """A random LoRA adapter for `base` written as docqa does (adapter.json + adapter.safetensors)."""
    from safetensors.torch import save_file

    from docqa.generate.adapters import ADAPTER_FORMAT, base_identity
    from docqa.generate.chatglm2 import load_model

    model = load_model(base, device="cpu", dtype="fp32", quantize="none")
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"):
            tensors[f"{name}.lora_A"] = torch.randn(r, mod.in_features, generator=g) * 0.2
            tensors[f"{name}.lora_B"] = torch.randn(mod.out_features, r, generator=g) * 0.2
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter.safetensors"))
    meta = {
        "format": ADAPTER_FORMAT,
        "method": "lora",
        "family": "chatglm2",
        "lora": {"r": r, "alpha": 8},
        "base": {"identity": base_identity(base, "chatglm2"), "path": str(base)},
    }
    (folder / "adapter.json").write_text(json.dumps(meta))
    return tensors


def test_lora_merged_at_load_equals_peft_and_merge_writes_the_same_model(tmp_path):
    from docqa.finetune.lora import LoRA
    from docqa.finetune.merge import merge_adapter
    from docqa.generate.adapters import merge_lora_tensors, read_adapter
    from docqa.generate.chatglm2 import build_model, load_model
    from docqa.generate.checkpoints import iter_checkpoint_tensors, read_chatglm_config

    tensors = _lora_adapter(tmp_path / "ad", TINY_1K)
    base = load_model(TINY_1K, device="cpu", dtype="fp32", quantize="none")
    with torch.no_grad():  # peft's own LoRA forward with the same A/B: the independent reference
        for mod in base.modules():
            for n, p in list(mod._parameters.items()):
                if p is not None:
                    mod._parameters[n] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
    lora = LoRA(base, r=4, alpha=8)
    lora.load_state(tensors)
    ids = torch.tensor([[5, 17, 300, 42, 9, 77]])
    with torch.no_grad():
        want = lora.logits(ids)[0]
    cfg = read_chatglm_config(TINY_1K)
    adapter = read_adapter(tmp_path / "ad")
    merged = build_model(
        cfg,
        merge_lora_tensors(iter_checkpoint_tensors(TINY_1K), adapter, cfg),
        device="cpu",
        dtype="fp32",
        quantize="none",
    )
    with torch.no_grad():
        got = merged(input_ids=ids).logits[0]
        plain = load_model(TINY_1K, device="cpu", dtype="fp32", quantize="none")(input_ids=ids).logits[0]
    assert torch.allclose(got, want, atol=1e-4) and (plain - want).abs().max() > 1e-2
    res = merge_adapter(tmp_path / "ad", tmp_path / "merged")
    assert res.shards == 1 and (tmp_path / "merged" / "model.safetensors").is_file()
    with torch.no_grad():
        again = load_model(tmp_path / "merged", device="cpu", dtype="fp32", quantize="none")(input_ids=ids).logits[0]
    assert torch.allclose(again, want, atol=1e-4)
    with pytest.raises(ModelError, match="not empty"):
        merge_adapter(tmp_path / "ad", tmp_path / "merged")


def test_chatglm6b_v1_lora_is_merged_onto_its_fused_weights(tmp_path):
    """ChatGLM-6B (v1): LoRA on its own network (upstream names), merged at load time = peft's forward."""
    from safetensors.torch import save_file

    from docqa.finetune.lora import LoRA
    from docqa.finetune.train import load_training_model
    from docqa.generate.adapters import ADAPTER_FORMAT, base_identity, merge_lora_tensors, read_adapter
    from docqa.generate.chatglm6b import build_model, load_model
    from docqa.generate.checkpoints import iter_checkpoint_tensors, read_config_json

    v1 = DATA / "chatglm6b" / "tiny-chatglm6b"
    model, cfg, _, _ = load_training_model(v1, "chatglm", "cpu", need_tokenizer=False)
    lora = LoRA(model, r=4, alpha=8)
    assert "transformer.layers.0.attention.query_key_value.lora_A" in lora.state()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in lora.parameters():  # peft starts B at zero: make the delta visible
            p.normal_(std=0.2)
    ids = torch.tensor([[5, 6, 7, 1001, 1004, 8, 9]])  # ... [gMASK] <sop> ...
    with torch.no_grad():
        want = lora.logits(ids)[0]
    (tmp_path / "ad").mkdir()
    save_file(lora.state(), str(tmp_path / "ad" / "adapter.safetensors"))
    meta = {
        "format": ADAPTER_FORMAT,
        "method": "lora",
        "family": "chatglm",
        "lora": {"r": 4, "alpha": 8},
        "base": {"identity": base_identity(v1, "chatglm"), "path": str(v1)},
    }
    (tmp_path / "ad" / "adapter.json").write_text(json.dumps(meta))
    cfg = read_config_json(v1)
    merged = build_model(
        cfg,
        merge_lora_tensors(iter_checkpoint_tensors(v1), read_adapter(tmp_path / "ad"), cfg),
        device="cpu",
        dtype="fp32",
        quantize="none",
    )
    with torch.no_grad():
        got = merged(input_ids=ids).logits[0]
        plain = load_model(v1, device="cpu", dtype="fp32", quantize="none")(input_ids=ids).logits[0]
    assert torch.allclose(got, want, atol=1e-4) and (plain - want).abs().max() > 1e-2


def test_adapter_on_the_wrong_base_is_refused(tmp_path, tiny_chatglm2_real):
    from docqa.generate.adapters import open_adapted

    _lora_adapter(tmp_path / "ad", TINY_1K)
    with pytest.raises(ModelError, match="trained on .*tiny-chatglm2.*use it with its own base"):
        open_adapted(tiny_chatglm2_real, tmp_path / "ad", device="cpu")
    cfg = json.loads((tiny_chatglm2_real / "config.json").read_text())
    write_official_ptuning(tmp_path / "pt", dict(cfg, num_layers=3), 4, False)
    with pytest.raises(ModelError, match="different model"):
        open_adapted(tiny_chatglm2_real, tmp_path / "pt", device="cpu")


# -- training -----------------------------------------------------------------------------------------------------


class Interrupt:
    """A progress callback that raises KeyboardInterrupt (Ctrl-C) after step `at`."""

    def __init__(self, at):
        self.at, self.events = at, []

    def __call__(self, event):
        self.events.append(event)
        if event.kind == "step" and event.step == self.at:
            raise KeyboardInterrupt


def test_lora_training_cuts_the_loss_and_resumes_after_ctrl_c(tmp_path, tiny_chatglm2_real):
    from docqa.finetune import FinetuneConfig, finetune
    from docqa.generate.adapters import read_adapter

    data = write_qa(tmp_path / "qa.jsonl")
    cfg = FinetuneConfig(method="lora", steps=4, lr=3e-2, batch_size=2, eval_fraction=0, device="cpu")
    stop = Interrupt(at=2)
    with pytest.raises(KeyboardInterrupt):
        finetune(data, tiny_chatglm2_real, tmp_path / "run", cfg, progress=stop)
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()
    assert [e.step for e in stop.events if e.kind == "checkpoint"] == [1, 2]  # every quarter (step 1), and on Ctrl-C
    step = [e for e in stop.events if e.kind == "step"][-1]
    assert step.tokens_per_s > 0 and step.eta_s > 0 and step.loss > 0
    result = finetune(data, tiny_chatglm2_real, tmp_path / "run", cfg)
    assert result.resumed_from_step == 2
    assert result.loss_after < 0.85 * result.loss_before, result
    meta = json.loads((tmp_path / "run" / "adapter.json").read_text())
    assert meta["method"] == "lora" and meta["steps"] == 4 and meta["losses"]["train_after"] == result.loss_after
    assert len(meta["base"]["identity"]) == 64 and len(meta["data"]["sha256"]) == 64
    # an uninterrupted run ends with the same adapter: the resume restored weights, moments and data order
    whole = finetune(data, tiny_chatglm2_real, tmp_path / "whole", cfg)
    a, b = read_adapter(tmp_path / "run").tensors, read_adapter(tmp_path / "whole").tensors
    assert whole.resumed_from_step is None and a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3
    other = FinetuneConfig(method="lora", steps=4, lr=1e-3, batch_size=2, eval_fraction=0, device="cpu")
    with pytest.raises(ModelError, match="different run .*lr"):
        finetune(data, tiny_chatglm2_real, tmp_path / "run", other)


def test_qlora_runs_on_cpu_with_an_nf4_base(tmp_path, tiny_chatglm2_real):
    import bitsandbytes as bnb

    from docqa.finetune.lora import LoRA, quantize_nf4
    from docqa.finetune.train import load_training_model

    model, _, _, _ = load_training_model(tiny_chatglm2_real, "chatglm2", "cpu")
    assert quantize_nf4(model) == 2 * 6
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    lora = LoRA(model, r=4, alpha=8)
    ids = torch.tensor([[64790, 64792, 30910, 13, 55437]])
    loss = lora.logits(ids).float().logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in lora.parameters())


def test_cli_finetune_ptuning_json_and_the_adapter_changes_the_answer(tmp_path, tiny_chatglm2_real):
    """`docqa finetune --method ptuning --json`; the generator the factory builds with `adapter` answers
    differently from the bare model (greedy)."""
    from docqa.config import Settings
    from docqa.generate import get_generator
    from docqa.generate.base import GenerationOptions

    data = write_qa(tmp_path / "qa.jsonl")
    r = run_cli(
        "finetune",
        data,
        "--model",
        tiny_chatglm2_real,
        "--method",
        "ptuning",
        "--out",
        tmp_path / "pt",
        "--steps",
        6,
        "--pre-seq-len",
        16,
        "--lr",
        5e-2,
        "--batch-size",
        2,
        "--json",
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["method"] == "ptuning" and res["steps"] == 6 and res["resumed_from_step"] is None
    assert res["loss_after"] < res["loss_before"] and res["s_per_step"] > 0 and res["peak_memory_mb"] > 0
    meta = json.loads((tmp_path / "pt" / "adapter.json").read_text())
    assert meta["ptuning"] == {"pre_seq_len": 16, "prefix_projection": False}
    opts = GenerationOptions(max_new_tokens=6, temperature=0)
    plain = get_generator(Settings(llm=str(tiny_chatglm2_real), llm_device="cpu"))
    adapted = get_generator(Settings(llm=str(tiny_chatglm2_real), llm_device="cpu", adapter=str(tmp_path / "pt")))
    assert adapted.prefix_kv is not None and adapted.prefix_kv[0][0].shape == (1, 2, 16, 16)
    q = [{"role": "user", "content": QA[0][0]}]
    assert plain.generate(q, opts) != adapted.generate(q, opts)
    r = run_cli("finetune", "merge", tmp_path / "pt", "--out", tmp_path / "m")
    assert r.exit_code == 1 and "nothing to merge" in " ".join(r.stderr.split())


def test_chatglm3_lora_trains_in_its_own_chat_format_and_applies(tmp_path, tiny_chatglm2_real):
    """The same tiny network labelled ChatGLM3: role-token prompts, loss on "\n" + answer + eos, and the adapter
    (refused on the ChatGLM2-labelled twin: another identity) changes the ChatGLM3 generator's answer."""
    from docqa.config import Settings
    from docqa.finetune import FinetuneConfig, finetune
    from docqa.finetune.data import Record
    from docqa.generate import get_generator
    from docqa.generate.adapters import AdaptedChatGLM3, open_adapted
    from docqa.generate.base import GenerationOptions
    from docqa.generate.chatglm3_tokenizer import ChatGLM3Tokenizer

    v3 = tmp_path / "tiny-v3"
    v3.mkdir()
    for f in ("pytorch_model.bin", "tokenizer.model"):
        (v3 / f).symlink_to(tiny_chatglm2_real / f)
    cfg = json.loads((tiny_chatglm2_real / "config.json").read_text())
    (v3 / "config.json").write_text(json.dumps(dict(cfg, _name_or_path="THUDM/chatglm3-6b")))
    tok = ChatGLM3Tokenizer(v3 / "tokenizer.model")
    ex = encode(Record("Q", "A"), tok, "chatglm3")
    n = len(tok.build_chat_input("Q"))
    assert ex.input_ids[n - 1] == tok.role_ids["assistant"] and ex.labels[:n] == [IGNORE] * n
    assert ex.labels[n:] == tok.build_single_message("assistant", "", "A")[1:] + [tok.eos_id]
    data = write_qa(tmp_path / "qa.jsonl")
    cfg3 = FinetuneConfig(method="lora", steps=2, lr=3e-2, batch_size=2, eval_fraction=0, device="cpu")
    res = finetune(data, v3, tmp_path / "ad", cfg3)
    assert res.loss_after < res.loss_before
    assert json.loads((tmp_path / "ad" / "adapter.json").read_text())["family"] == "chatglm3"
    opts = GenerationOptions(max_new_tokens=6, temperature=0)
    adapted = get_generator(Settings(llm=str(v3), llm_device="cpu", adapter=str(tmp_path / "ad")))
    assert isinstance(adapted, AdaptedChatGLM3)
    q = [{"role": "user", "content": QA[1][0]}]
    assert adapted.generate(q, opts) != get_generator(Settings(llm=str(v3), llm_device="cpu")).generate(q, opts)
    with pytest.raises(ModelError, match="use it with its own base"):
        open_adapted(tiny_chatglm2_real, tmp_path / "ad", device="cpu")


@pytest.mark.slow
def test_docqa_ask_with_adapter_answers_differently(tmp_path, tiny_chatglm2_real, docs_dir, monkeypatch):
    """End to end: `docqa finetune` (LoRA), then `docqa ask --llm TINY --adapter DIR --temperature 0`."""
    monkeypatch.setenv("DOCQA_MAX_NEW_TOKENS", "12")
    data = write_qa(tmp_path / "qa.jsonl")
    r = run_cli("finetune", data, "--model", tiny_chatglm2_real, "--out", tmp_path / "lora", "--steps", 20, "--json")
    assert r.exit_code == 0, r.output
    kb = tmp_path / "kb"
    assert run_cli("ingest", docs_dir, "--index", kb).exit_code == 0
    q = "How do I create a virtual environment?"
    common = ["ask", q, "--index", kb, "--llm", tiny_chatglm2_real, "--temperature", 0, "--no-abstain", "--json"]
    plain = run_cli(*common)
    adapted = run_cli(*common, "--adapter", tmp_path / "lora")
    assert plain.exit_code == 0 and adapted.exit_code == 0, plain.output + adapted.output
    a, b = (json.loads(x.stdout.strip().splitlines()[-1])["answer"] for x in (plain, adapted))
    assert a != b
    r = run_cli("ask", q, "--index", kb, "--model", "extractive", "--adapter", tmp_path / "lora")
    assert r.exit_code == 1 and "needs a local ChatGLM model" in " ".join(r.stderr.split())
    r = run_cli("finetune", "merge", tmp_path / "lora", "--out", tmp_path / "merged", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["tensors"] > 0, r.output
    merged = run_cli(
        "ask", q, "--index", kb, "--llm", tmp_path / "merged", "--temperature", 0, "--no-abstain", "--json"
    )
    assert json.loads(merged.stdout.strip().splitlines()[-1])["answer"] == b


# -- slow: the acceptance runs ----------------------------------------------------------------------------------------

MORE_QA = QA + [
    ("How do I see disk usage?", "Use df -h."),
    ("Which command shows processes?", "ps aux shows them."),
    ("What port does SSH use?", "Port 22."),
    ("如何查看内存？", "用 free -h 查看。"),
]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "ptuning"])
def test_defaults_halve_the_training_loss_in_a_few_hundred_steps(tmp_path, tiny_chatglm2_real, method):
    data = write_qa(tmp_path / "qa.jsonl", MORE_QA)
    r = run_cli(
        "finetune",
        data,
        "--model",
        tiny_chatglm2_real,
        "--method",
        method,
        "--out",
        tmp_path / "o",
        "--steps",
        200,
        "--json",
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["loss_after"] <= 0.5 * res["loss_before"], res


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_chatglm2_real):
    data = write_qa(tmp_path / "qa.jsonl")
    cmd = [
        sys.executable,
        "-m",
        "docqa",
        "finetune",
        str(data),
        "--model",
        str(tiny_chatglm2_real),
        "--out",
        str(tmp_path / "o"),
        "--steps",
        "40",
        "--json",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, DOCQA_LLM_DEVICE="cpu")
    )
    for line in proc.stderr:  # plain progress lines: kill it once the first checkpoint (step 10) is behind it
        if line.startswith("step 20/40") or line.startswith("step 30/40"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["resumed_from_step"] in (10, 20, 30)


def test_prefix_sampling_keeps_real_positions_from_zero(tmp_path):
    # a position shift of pre_seq_len barely moves a tiny random model's greedy tokens, so check the contract
    # directly: the prompt is fed at positions 0..n-1, then each new token at n, n+1, ..., the mask covers the prefix
    from docqa.generate.adapters import prefix_from_adapter, prefix_sample_tokens, read_adapter
    from docqa.generate.base import GenerationOptions
    from docqa.generate.chatglm2 import load_model

    cfg = json.loads((TINY_1K / "config.json").read_text())
    write_official_ptuning(tmp_path / "pt", cfg, 6, True)
    model = load_model(TINY_1K, device="cpu", dtype="fp32", quantize="none")
    prefix = prefix_from_adapter(read_adapter(tmp_path / "pt"), cfg)
    calls = []
    forward = model.forward

    def spy(*args, **kw):
        calls.append((kw["position_ids"].tolist(), kw["attention_mask"].shape[1]))
        return forward(*args, **kw)

    model.forward = spy
    ids = [5, 17, 300, 42]
    out = list(prefix_sample_tokens(model, ids, GenerationOptions(max_new_tokens=3, temperature=0), [], prefix))
    assert len(out) == 3
    assert calls[0] == ([[0, 1, 2, 3]], 6 + 4)
    assert calls[1:] == [([[4]], 6 + 5), ([[5]], 6 + 6)]
