"""docqa.generate: which model `resolve_generator` picks, and that `get_generator` builds it (no model weights)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from docqa.config import Settings
from docqa.errors import ConfigError, ModelError
from docqa.generate import DEMO_NOTICE, get_generator, resolve_generator

CHATGLM2_CONFIG = {
    "model_type": "chatglm",
    "num_layers": 2,
    "hidden_size": 64,
    "kv_channels": 16,
    "ffn_hidden_size": 128,
    "padded_vocab_size": 128,
    "num_attention_heads": 4,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "seq_length": 256,
}


@pytest.fixture
def ckpt(tmp_path):
    d = tmp_path / "chatglm2-6b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CHATGLM2_CONFIG))
    return d


@pytest.fixture
def no_local_chatglm2(tmp_path) -> str:
    """A chatglm2_path that is not a checkpoint (so nothing is found, whatever the real HF cache holds)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    return str(empty)


def test_auto_without_checkpoint_is_extractive(no_local_chatglm2):
    assert resolve_generator(Settings(chatglm2_path=no_local_chatglm2)) == ("extractive", "extractive")
    assert resolve_generator(Settings(llm="extractive", chatglm2_path=no_local_chatglm2)) == (
        "extractive",
        "extractive",
    )
    gen = get_generator(Settings(chatglm2_path=no_local_chatglm2))
    assert gen.name == "extractive" and not gen.is_chat_model


def test_auto_with_local_checkpoint_is_chatglm2(ckpt):
    assert resolve_generator(Settings(chatglm2_path=str(ckpt))) == ("chatglm2", str(ckpt))
    assert resolve_generator(Settings(llm="chatglm2", chatglm2_path=str(ckpt))) == ("chatglm2", str(ckpt))


def test_checkpoint_found_in_the_hf_cache_setting(ckpt, tmp_path):
    snap = tmp_path / "hub" / "models--THUDM--chatglm2-6b" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(CHATGLM2_CONFIG))
    (snap / "tokenizer.model").write_bytes(b"")
    (snap / "model.safetensors").write_bytes(b"")
    assert resolve_generator(Settings(hf_cache=tmp_path / "hub")) == ("chatglm2", str(snap))
    assert resolve_generator(Settings(hf_cache=tmp_path / "nowhere")) == ("extractive", "extractive")


def test_url_means_openai_unless_llm_is_explicit(ckpt):
    url = "http://127.0.0.1:8000/v1"
    local = {"chatglm2_path": str(ckpt)}
    assert resolve_generator(Settings(llm_url=url, **local)) == ("openai", url)  # beats the local checkpoint
    assert resolve_generator(Settings(llm="openai", llm_url=url, **local)) == ("openai", url)
    assert resolve_generator(Settings(llm="demo", llm_url=url, **local)) == ("demo", "gemma-3-270m")
    assert resolve_generator(Settings(llm=str(ckpt), llm_url=url, **local)) == ("chatglm2", str(ckpt))


def test_paths_and_hub_ids(ckpt, tmp_path, no_local_chatglm2):
    assert resolve_generator(Settings(llm=str(ckpt))) == ("chatglm2", str(ckpt))
    assert resolve_generator(Settings(llm="THUDM/chatglm2-6b")) == ("chatglm2", "THUDM/chatglm2-6b")
    with pytest.raises(ConfigError, match="not found"):
        resolve_generator(Settings(llm=str(tmp_path / "missing" / "chatglm2-6b")))
    with pytest.raises(ConfigError, match="is a file"):
        resolve_generator(Settings(llm=str(ckpt / "config.json")))


@pytest.mark.parametrize("name", ["gpt-4", "chatglm", "llama"])
def test_unknown_names_are_config_errors(name, no_local_chatglm2):
    with pytest.raises(ConfigError, match="unknown model"):
        resolve_generator(Settings(llm=name, chatglm2_path=no_local_chatglm2))


def test_openai_without_url_and_chatglm2_without_checkpoint(no_local_chatglm2):
    with pytest.raises(ConfigError, match="llm_url"):
        resolve_generator(Settings(llm="openai"))
    with pytest.raises(ConfigError, match="--model"):
        resolve_generator(Settings(llm="chatglm2", chatglm2_path=no_local_chatglm2))


def test_get_generator_openai():
    from docqa.generate.openai import OpenAIGenerator

    gen = get_generator(Settings(llm="openai:qwen2", llm_url="http://127.0.0.1:9/", llm_api_key="k", max_context=3000))
    assert isinstance(gen, OpenAIGenerator)
    assert (gen.model, gen.api_key, gen.context_length) == ("qwen2", "k", 3000)
    assert gen.endpoint == "http://127.0.0.1:9/v1/chat/completions"
    assert get_generator(Settings(llm_url="http://127.0.0.1:9")).context_length == 8192


def test_get_generator_chatglm2_goes_to_its_loader(ckpt):
    # the folder has a config but no weights: the ChatGLM2 loader itself must be the one complaining
    with pytest.raises(ModelError):
        get_generator(Settings(llm=str(ckpt)))


def test_notice_says_what_the_user_gets_and_how_to_switch(no_local_chatglm2):
    from docqa.generate import NOTICES, notice

    for line in NOTICES.values():
        assert "\n" not in line and "--model" in line and "--llm-url" in line
    assert "quote" in NOTICES["extractive"] and "DOCQA_LLM" in NOTICES["extractive"]
    assert notice(Settings(chatglm2_path=no_local_chatglm2)) == NOTICES["extractive"]  # auto fell back: say so
    assert notice(Settings(llm="extractive")) is None  # asked for by name: nothing to explain
    assert notice(Settings(llm="demo")) == DEMO_NOTICE == NOTICES["demo"]
    assert notice(Settings(llm_url="http://127.0.0.1:9/v1")) is None


def test_import_is_light():
    code = "import sys, docqa.generate; print(any(m == 'torch' or m.startswith(('torch.', 'transformers')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_llm_quantize_reaches_the_loader(tmp_path):
    """llm_quantize (--quantize) and llm_device (--device) go from the settings to the ChatGLM2 loader."""
    import shutil
    from pathlib import Path

    pytest.importorskip("torch")
    data = Path(__file__).parent / "data" / "chatglm2"
    ck = tmp_path / "tiny-chatglm2"
    shutil.copytree(data / "tiny-chatglm2", ck)
    shutil.copy(data / "tokenizer.model", ck)
    gen = get_generator(Settings(llm=str(ck), llm_device="cpu", llm_quantize="int4"))
    assert type(gen.model.model.layers[0].mlp.gate_up_proj).__name__ == "Int4WeightOnlyLinear"
    plain = get_generator(Settings(llm=str(ck), llm_device="cpu", llm_quantize="none"))
    assert type(plain.model.model.layers[0].mlp.gate_up_proj).__name__ == "Linear"


def test_quantize_choices_on_cpu():
    torch = pytest.importorskip("torch")
    from docqa.generate.chatglm2 import BIG_MODEL_PARAMS, _resolve_device_dtype

    big, small = BIG_MODEL_PARAMS * 6, 1000
    assert _resolve_device_dtype("cpu", "auto", None, big)[1:] == (torch.bfloat16, "int8")  # the 6B default
    assert _resolve_device_dtype("cpu", "auto", "auto", big)[1:] == (torch.bfloat16, "int8")
    assert _resolve_device_dtype("cpu", "auto", "none", big)[1:] == (torch.bfloat16, None)  # none means none
    assert _resolve_device_dtype("cpu", "auto", "int4", small)[1:] == (torch.bfloat16, "int4")
    assert _resolve_device_dtype("cpu", "float32", None, small)[1:] == (torch.float32, None)  # an alias
    for bad in (("cpu", "fp64", None), ("cpu", "auto", "int3"), ("tpu", "auto", None)):
        with pytest.raises(ModelError, match="--quantize|--device|llm_dtype"):
            _resolve_device_dtype(*bad, small)
