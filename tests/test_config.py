from pathlib import Path

import pytest

from docqa.config import Settings, load_settings
from docqa.errors import ConfigError


def test_precedence_defaults_file_env_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('top_k = 7\nchunk_tokens = 120\nindex = "from-file"\n')
    monkeypatch.setenv("DOCQA_CONFIG", str(cfg))
    monkeypatch.setenv("DOCQA_CHUNK_TOKENS", "150")
    s = load_settings(index=Path("from-flag"))
    assert s.top_k == 7  # file beats default
    assert s.chunk_tokens == 150  # env beats file
    assert s.index == Path("from-flag")  # flag beats env and file
    assert s.mode == Settings().mode  # default survives


def test_none_flags_change_nothing(monkeypatch):
    monkeypatch.delenv("DOCQA_CONFIG", raising=False)
    monkeypatch.setenv("DOCQA_TOP_K", "9")
    assert load_settings(top_k=None).top_k == 9


@pytest.mark.parametrize(
    "env, value",
    [
        ("DOCQA_TOP_K", "many"),
        ("DOCQA_MODE", "fuzzy"),
        ("DOCQA_INCLUDE_HIDDEN", "perhaps"),
        ("DOCQA_CHUNK_OVERLAP", "999"),
    ],
)
def test_bad_values_are_config_errors(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError):
        load_settings()


def test_unknown_key_in_file(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text("no_such_setting = 1\n")
    monkeypatch.setenv("DOCQA_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="no_such_setting"):
        load_settings()


# -- the settings that used to be read ad hoc, and the environment as one source -------------------------------

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "env, value, field, want",
    [
        ("DOCQA_EMBED_LANGUAGES", "en,zh", "embed_languages", "en,zh"),
        ("DOCQA_CHATGLM2_PATH", "/models/chatglm2-6b", "chatglm2_path", "/models/chatglm2-6b"),
        ("DOCQA_MODEL_HUB", "modelscope", "model_hub", "modelscope"),
        ("DOCQA_CACHE", "/var/cache/docqa", "cache", Path("/var/cache/docqa")),
        ("DOCQA_OFFLINE", "1", "offline", True),
        ("DOCQA_HF_CACHE", "/hf/hub", "hf_cache", Path("/hf/hub")),
        ("DOCQA_LLM_QUANTIZE", "int4", "llm_quantize", "int4"),
        ("DOCQA_LLM_DEVICE", "cuda:1", "llm_device", "cuda:1"),
        ("DOCQA_LLM_DTYPE", "bf16", "llm_dtype", "bf16"),
        ("DOCQA_EMBED_PRECISION", "fp32", "embed_precision", "fp32"),
    ],
)
def test_each_setting_reads_its_docqa_variable(monkeypatch, env, value, field, want):
    monkeypatch.delenv("DOCQA_CONFIG", raising=False)
    monkeypatch.setenv(env, value)
    assert getattr(load_settings(), field) == want


def test_hf_and_xdg_variables_are_fallbacks(monkeypatch, tmp_path):
    monkeypatch.delenv("DOCQA_CONFIG", raising=False)
    for name in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "DOCQA_OFFLINE", "DOCQA_HF_CACHE"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().offline is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    s = load_settings()
    assert s.offline is True and s.hf_cache == tmp_path / "hf" / "hub" and s.cache == tmp_path / "xdg" / "docqa"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))  # beats HF_HOME, as in huggingface_hub
    assert load_settings().hf_cache == tmp_path / "hubcache"
    monkeypatch.setenv("DOCQA_OFFLINE", "0")  # docqa's own variable beats the HF one
    assert load_settings().offline is False


@pytest.mark.parametrize(
    "env, value",
    [
        ("DOCQA_LLM_DTYPE", "int8"),
        ("DOCQA_LLM_DTYPE", "fp64"),
        ("DOCQA_EMBED_PRECISION", "fp16"),
        ("DOCQA_LLM_QUANTIZE", "int3"),
        ("DOCQA_LLM_DEVICE", "tpu"),
        ("DOCQA_LLM_DEVICE", "cuda:x"),
        ("DOCQA_MODEL_HUB", "github"),
    ],
)
def test_bad_choices_are_config_errors_at_load(monkeypatch, env, value):
    monkeypatch.delenv("DOCQA_CONFIG", raising=False)
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=value.replace(":", ".")):  # the message names the bad value
        load_settings()


def test_dtype_aliases_and_flags_are_checked_too():
    assert load_settings(llm_dtype="float16").llm_dtype == "float16"  # the loader maps it to fp16
    with pytest.raises(ConfigError, match="llm_quantize must be one of auto, none, int8, int4"):
        Settings().replace(llm_quantize="int2")


def test_only_config_reads_the_environment():
    """No module but config.py reads os.environ / getenv; the sandbox may copy it for its child process."""
    import re

    reads = re.compile(r"os\.environ|getenv|environ\.get|from os import .*environ")
    allowed = {("docqa/load/sandbox.py", "env = dict(os.environ)")}
    offenders = []
    for path in sorted((REPO / "docqa").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "docqa/config.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if reads.search(code) and (rel, code.strip()) not in allowed:
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "read settings through docqa.config.Settings instead:\n" + "\n".join(offenders)


def test_every_error_type_lives_in_errors_py():
    import re

    defines = re.compile(r"^\s*class \w+\((?:\w+\.)*\w*(?:Error|Exception)\)")
    found = [
        f"{p.relative_to(REPO)}:{n}"
        for p in sorted((REPO / "docqa").rglob("*.py"))
        if p.name != "errors.py"
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if defines.match(line)
    ]
    assert not found, "define error types in docqa/errors.py: " + ", ".join(found)
