"""One loader and one generator choice for the ChatGLM family: which member a folder holds (from its files only),
the `model_family` override, and each member's Generator streaming on a tiny checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from docqa.config import Settings, load_settings
from docqa.errors import ConfigError, ModelError
from docqa.generate import CHATGLM_KINDS, resolve_generator
from docqa.generate.checkpoints import detect_family, find_local_checkpoint, is_chatglm_checkpoint, v3_evidence

TESTS = Path(__file__).parent / "data"
V1, V2 = TESTS / "chatglm6b" / "tiny-chatglm6b", TESTS / "chatglm2" / "tiny-chatglm2"
BOOBY_TRAP = "raise RuntimeError('docqa must never import files from a checkpoint folder')\n"


def _copy(src: Path, dst: Path, config: dict | None = None, tokenizer_config: dict | None = None) -> Path:
    shutil.copytree(src, dst)
    for name in ("modeling_chatglm.py", "configuration_chatglm.py", "tokenization_chatglm.py"):
        (dst / name).write_text(BOOBY_TRAP)
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**cfg, **config}))
    if tokenizer_config is not None:
        (dst / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return dst


# -- detection --------------------------------------------------------------------------------------------------

V3_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n "
    "{{ message['content'] }}{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.mark.parametrize(
    ("config", "tokenizer_config", "want"),
    [
        (None, None, "chatglm2"),  # v2 layout, nothing naming v3: ChatGLM2
        ({"_name_or_path": "THUDM/chatglm3-6b"}, None, "chatglm3"),
        ({"_name_or_path": "/data/ChatGLM3-6B-32K"}, None, "chatglm3"),
        (None, {"name_or_path": "THUDM/chatglm3-6b"}, "chatglm3"),
        (None, {"chat_template": V3_TEMPLATE}, "chatglm3"),
        (None, {"chat_template": [{"name": "default", "template": V3_TEMPLATE}]}, "chatglm3"),
        ({"_name_or_path": "THUDM/chatglm2-6b"}, {"name_or_path": "THUDM/chatglm2-6b"}, "chatglm2"),
        (None, {"chat_template": "{{ messages }}"}, "chatglm2"),
    ],
    ids=[
        "plain-v2",
        "config-name",
        "config-path",
        "tokenizer-name",
        "template",
        "template-list",
        "v2-names",
        "other-template",
    ],
)
def test_v2_or_v3_from_config_files(tmp_path, config, tokenizer_config, want):
    ck = _copy(V2, tmp_path / "ck", config, tokenizer_config)
    assert detect_family(ck) == want
    assert (v3_evidence(ck) is not None) == (want == "chatglm3")


def test_v1_from_its_layout(tmp_path):
    assert detect_family(V1) == "chatglm"
    # a v1 config naming chatglm3 is still v1: the layout decides between v1 and the rest
    ck = _copy(V1, tmp_path / "ck", {"_name_or_path": "THUDM/chatglm3-6b"})
    assert detect_family(ck) == "chatglm"
    assert is_chatglm_checkpoint(V1) and is_chatglm_checkpoint(V2)


def test_override_settles_an_ambiguous_folder(tmp_path, monkeypatch):
    from docqa.generate.chatglm import family_of

    assert detect_family(V2, "chatglm3") == "chatglm3"
    assert detect_family(V2, "chatglm2") == "chatglm2"
    v3 = _copy(V2, tmp_path / "v3", {"_name_or_path": "THUDM/chatglm3-6b"})
    assert detect_family(v3, "chatglm2") == "chatglm2"  # the override wins over the names too
    with pytest.raises(ModelError, match="model_family=chatglm3"):
        detect_family(V1, "chatglm3")
    with pytest.raises(ModelError, match="model_family=chatglm"):
        detect_family(V2, "chatglm")
    with pytest.raises(ModelError, match="unknown model family"):
        detect_family(V2, "glm4")
    monkeypatch.setenv("DOCQA_MODEL_FAMILY", "chatglm3")
    assert load_settings().model_family == "chatglm3"
    assert family_of(V2) == "chatglm3"  # None = the setting
    assert family_of(V2, "auto") == "chatglm2"
    monkeypatch.setenv("DOCQA_MODEL_FAMILY", "glm4")
    with pytest.raises(ConfigError, match="model_family"):
        load_settings()


def test_foreign_and_prequantised_folders(tmp_path):
    for change, match in (
        ({"model_type": "llama"}, "not a ChatGLM config"),
        ({"quantization_bit": 4}, "pre-quantised"),
        ({"quantization_bit": 8}, "pre-quantised"),
    ):
        for src in (V1, V2):
            ck = _copy(src, tmp_path / f"{src.name}-{len(list(tmp_path.iterdir()))}", change)
            with pytest.raises(ModelError, match=match):
                detect_family(ck)
            assert not is_chatglm_checkpoint(ck)
    with pytest.raises(ModelError, match="no config.json"):
        detect_family(tmp_path)


def test_chatglm2_loader_points_v1_to_the_family_loader():
    from docqa.generate.chatglm2 import load

    with pytest.raises(ModelError, match="ChatGLM-6B"):
        load(V1, device="cpu")


def test_resolve_generator_kinds(tmp_path):
    v3 = _copy(V2, tmp_path / "v3", {"_name_or_path": "THUDM/chatglm3-6b"})
    assert resolve_generator(Settings(llm=str(V1))) == ("chatglm", str(V1))
    assert resolve_generator(Settings(llm=str(V2))) == ("chatglm2", str(V2))
    assert resolve_generator(Settings(llm=str(v3))) == ("chatglm3", str(v3))
    assert resolve_generator(Settings(llm=str(V2), model_family="chatglm3"))[0] == "chatglm3"
    assert resolve_generator(Settings(llm="THUDM/chatglm3-6b-32k"))[0] == "chatglm3"
    assert resolve_generator(Settings(llm="THUDM/chatglm-6b"))[0] == "chatglm"
    assert resolve_generator(Settings(llm="ZhipuAI/chatglm2-6b"))[0] == "chatglm2"
    assert set(CHATGLM_KINDS) == {"chatglm", "chatglm2", "chatglm3"}


def test_cache_search_finds_any_member(tmp_path):
    hub = tmp_path / "hub"
    snap = hub / "models--THUDM--chatglm-6b" / "snapshots" / "abc"
    _copy(V1, snap)
    assert find_local_checkpoint("", hub) is None  # no ice_text.model yet
    shutil.copy(TESTS / "chatglm6b" / "ice_text.model", snap)
    assert find_local_checkpoint("", hub) == snap
    assert find_local_checkpoint(str(V1), hub) == V1
    v2 = hub / "models--THUDM--chatglm2-6b" / "snapshots" / "def"
    _copy(V2, v2)
    shutil.copy(TESTS / "chatglm2" / "tokenizer.model", v2)
    assert find_local_checkpoint("", hub) == v2  # ChatGLM2 first, as before


# -- one loader, one generator per member ----------------------------------------------------------------------

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    v1 = _copy(V1, root / "chatglm6b")
    shutil.copy(TESTS / "chatglm6b" / "ice_text.model", v1)
    v2 = _copy(V2, root / "chatglm2")
    shutil.copy(TESTS / "chatglm2" / "tokenizer.model", v2)
    v3 = _copy(V2, root / "chatglm3", {"seq_length": 8192}, {"chat_template": V3_TEMPLATE})
    shutil.copy(TESTS / "chatglm2" / "tokenizer.model", v3)
    return {"chatglm": v1, "chatglm2": v2, "chatglm3": v3}


def test_one_loader_for_the_family(folders):
    from docqa.generate.chatglm import load
    from docqa.generate.chatglm2_tokenizer import ChatGLM2Tokenizer
    from docqa.generate.chatglm3_tokenizer import ChatGLM3Tokenizer
    from docqa.generate.chatglm6b_tokenizer import ChatGLM6BTokenizer

    kinds = {
        "chatglm": ("ChatGLM6BForCausalLM", ChatGLM6BTokenizer),
        "chatglm2": ("GlmForCausalLM", ChatGLM2Tokenizer),
        "chatglm3": ("GlmForCausalLM", ChatGLM3Tokenizer),
    }
    for family, folder in folders.items():
        model, tok = load(folder, device=torch.device("cpu"), dtype=torch.float32)
        assert type(model).__name__ == kinds[family][0] and type(tok) is kinds[family][1]
        assert next(model.parameters()).dtype == torch.float32
        assert hasattr(tok, "build_chat_input" if family == "chatglm3" else "build_prompt")
    import sys

    assert not any(m.startswith("transformers_modules") for m in sys.modules)


def _expected(family: str) -> dict:
    path = (V1 if family == "chatglm" else V2) / "expected.json"
    return json.loads(path.read_text())["cases"][1]


@pytest.mark.parametrize("family", ["chatglm", "chatglm2", "chatglm3"])
def test_generator_streams_each_member(folders, family, monkeypatch):
    from docqa.generate import get_generator
    from docqa.generate.base import GenerationOptions

    gen = get_generator(Settings(llm=str(folders[family]), llm_device="cpu"))
    assert (
        type(gen).__name__
        == {"chatglm": "ChatGLM6BGenerator", "chatglm2": "ChatGLM2Generator", "chatglm3": "ChatGLM3Generator"}[family]
    )
    case = _expected(family)
    # the tiny models' vocabularies cannot embed real prompts: feed the reference ids directly
    if family == "chatglm2":
        monkeypatch.setattr(gen.tokenizer, "encode", lambda text, add_special_tokens=True: list(case["input_ids"]))
    else:
        monkeypatch.setattr(gen, "prompt_ids", lambda prompt: list(case["input_ids"]))
    opts = GenerationOptions(max_new_tokens=16, temperature=0, stop_loops=False)
    text = "".join(gen.stream([{"role": "user", "content": "anything"}], opts))
    want = gen.tokenizer.decode(case["greedy_16"])
    assert text == (gen.tokenizer.process_response_prefix(want) if family == "chatglm" else want.lstrip())
    assert text and "\ufffd" not in text


def test_generator_formats_and_limits(folders):
    from docqa.generate.chatglm import ChatGLMGenerator

    msgs = [
        {"role": "system", "content": "Answer from the passages."},
        {"role": "user", "content": "What is APT?"},
        {"role": "assistant", "content": "A package manager."},
        {"role": "user", "content": "和 dpkg？"},
    ]
    v1 = ChatGLMGenerator.open(folders["chatglm"], device="cpu")
    assert v1.context_length == 2048 and v1.stop_ids() == [1005]  # the tiny config's <eop>
    assert v1.render(msgs) == (
        "[Round 0]\n问：Answer from the passages.\n\nWhat is APT?\n答：A package manager.\n"
        "[Round 1]\n问：和 dpkg？\n答："
    )
    assert v1.prompt_ids(msgs)[-2:] == [130001, 130004]
    assert v1.count_tokens("你好") == 2
    assert ChatGLMGenerator.open(folders["chatglm"], device="cpu", max_context=512).context_length == 512

    v3 = ChatGLMGenerator.open(folders["chatglm3"], device="cpu")
    assert v3.context_length == 8192 and v3.stop_ids() == [2, 64795, 64797]
    ids = v3.prompt_ids(msgs)
    assert ids == v3.tokenizer.build_chat_input(
        "和 dpkg？", [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]]
    )
    assert ids[:3] == [64790, 64792, 64794]  # the instruction sits in the system slot
    assert v3.prompt_ids("只是一个问题") == v3.tokenizer.build_chat_input("只是一个问题")
    assert v3.count_tokens(v3.render(msgs)) >= len(ids) - 2
    with pytest.raises(ModelError, match="more than the model's context"):
        list(ChatGLMGenerator.open(folders["chatglm"], device="cpu", max_context=8).stream("长" * 20))


def test_generator_needs_the_tokenizer(tmp_path):
    from docqa.generate.chatglm import ChatGLMGenerator

    with pytest.raises(ModelError, match="ice_text.model"):
        ChatGLMGenerator.open(V1, device="cpu")


def test_find_models_lists_every_member_and_how_it_would_run(tmp_path):
    from docqa.generate.catalog import find_models

    hub, ms = tmp_path / "hf", tmp_path / "ms"
    v3 = _copy(
        V2,
        hub / "models--THUDM--chatglm3-6b" / "snapshots" / "abc",
        {"_name_or_path": "THUDM/chatglm3-6b", "seq_length": 8192},
    )
    shutil.copy(TESTS / "chatglm2" / "tokenizer.model", v3)
    v1 = _copy(V1, ms / "models" / "ZhipuAI" / "chatglm-6b")
    int4 = _copy(V1, ms / "THUDM" / "chatglm-6b-int4", {"quantization_bit": 4})
    _copy(V2, hub / "models--BAAI--bge-small-zh" / "snapshots" / "x")  # not ChatGLM: not listed
    settings = Settings(llm=str(V2), llm_device="cpu", hf_cache=hub)
    infos = {i.path: i for i in find_models(settings, modelscope_cache=ms)}
    assert set(infos) == {V2, v3, v1, int4}
    assert (infos[v3].family, infos[v3].name, infos[v3].source, infos[v3].context_length, infos[v3].problem) == (
        "chatglm3",
        "THUDM/chatglm3-6b",
        "huggingface",
        8192,
        "",
    )
    assert (infos[v1].family, infos[v1].name, infos[v1].source, infos[v1].context_length) == (
        "chatglm",
        "ZhipuAI/chatglm-6b",
        "modelscope",
        2048,
    )
    assert infos[v1].problem == "no ice_text.model"
    assert infos[int4].family is None and "pre-quantised" in infos[int4].problem
    tiny = infos[V2]
    assert (tiny.family, tiny.device, tiny.precision, tiny.source) == ("chatglm2", "cpu", "fp32", "llm")
    assert tiny.memory_bytes > tiny.params * 4  # weights plus a full-context KV cache
    big = find_models(Settings(llm=str(V2), llm_device="cpu", llm_quantize="int4", hf_cache=hub), ms)[0]
    assert big.precision == "int4"


def test_member_names_pick_that_member(tmp_path):
    hub = tmp_path / "hub"
    v3 = _copy(V2, hub / "models--THUDM--chatglm3-6b" / "snapshots" / "a", {"_name_or_path": "THUDM/chatglm3-6b"})
    shutil.copy(TESTS / "chatglm2" / "tokenizer.model", v3)
    v2 = _copy(V2, hub / "models--THUDM--chatglm2-6b" / "snapshots" / "b")
    shutil.copy(TESTS / "chatglm2" / "tokenizer.model", v2)
    assert resolve_generator(Settings(llm="chatglm3", hf_cache=hub)) == ("chatglm3", str(v3))
    assert resolve_generator(Settings(llm="chatglm2", hf_cache=hub)) == ("chatglm2", str(v2))
    assert resolve_generator(Settings(llm="auto", hf_cache=hub)) == ("chatglm2", str(v2))
    with pytest.raises(ConfigError, match="no local chatglm-6b checkpoint"):
        resolve_generator(Settings(llm="chatglm-6b", hf_cache=hub))
    # named explicitly, an ambiguous chatglm2_path folder counts as that member
    assert resolve_generator(Settings(llm="chatglm3", chatglm2_path=str(V2), hf_cache=tmp_path)) == (
        "chatglm3",
        str(V2),
    )
    with pytest.raises(ConfigError, match="no local chatglm3"):
        resolve_generator(Settings(llm="chatglm3", chatglm2_path=str(V1), hf_cache=tmp_path))
