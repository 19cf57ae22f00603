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
    [("DOCQA_TOP_K", "many"), ("DOCQA_MODE", "fuzzy"), ("DOCQA_INCLUDE_HIDDEN", "perhaps"), ("DOCQA_CHUNK_OVERLAP", "999")],
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
