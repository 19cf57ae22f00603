"""One typed settings object. Precedence: defaults < config file < environment < flags.

The config file is TOML: `$DOCQA_CONFIG`, else `./docqa.toml`, else `~/.config/docqa/config.toml`.
Keys are the field names below; environment variables are `DOCQA_` + the upper-case field name:

    # docqa.toml
    embed_model = "BAAI/bge-small-zh-v1.5"
    chunk_tokens = 200

    $ DOCQA_INDEX=/data/kb docqa search "..."
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

from .errors import ConfigError

EMBEDDED_EMBED_MODEL = "all-MiniLM-L6-v2"


@dataclass
class Settings:
    # knowledge base
    index: Path = Path("indexes/default")
    # loading
    include_hidden: bool = False
    follow_symlinks: bool = False
    file_timeout: float = 120.0  # seconds one file may take to parse
    file_memory_mb: int = 2048  # address-space cap of the parsing worker
    max_file_mb: int = 100  # larger files are skipped with a reason (a 200 MB log would be ~1M chunks)
    # chunking (in embedding-model tokens; capped at the model's max sequence length)
    chunk_tokens: int = 200
    chunk_overlap: int = 40
    # embedding
    embed_model: str = EMBEDDED_EMBED_MODEL
    embed_batch: int = 32
    embed_device: str = "cpu"
    embed_precision: str = "auto"  # auto = bf16 on CPUs with native bf16, else fp32
    # retrieval
    mode: str = "hybrid"
    top_k: int = 5
    rrf_k: int = 60
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    min_relevance: float = 0.0  # 0 = automatic rule (see retrieve.py)
    neighbours: int = 0
    reranker: str = ""
    # generation
    llm: str = "auto"  # auto | demo | chatglm2 path/id | openai
    llm_url: str = ""
    llm_api_key: str = ""
    llm_device: str = "auto"
    llm_dtype: str = "auto"
    max_context: int = 0  # 0 = the model's own
    max_new_tokens: int = 512
    temperature: float = 0.3
    top_p: float = 0.8
    repetition_penalty: float = 1.05
    max_passages: int = 0  # 0 = as many as the budget holds
    sessions_dir: Path = Path.home() / ".local/share/docqa/sessions"

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (None values are ignored, so unset CLI flags change nothing)."""
        return _apply(self, {k: v for k, v in changes.items() if v is not None}, "flag")


def _config_path() -> Path | None:
    env = os.environ.get("DOCQA_CONFIG")
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConfigError(f"DOCQA_CONFIG points to {p}, which is not a file")
        return p
    for p in (Path("docqa.toml"), Path.home() / ".config/docqa/config.toml"):
        if p.is_file():
            return p
    return None


def _coerce(name: str, typ: Any, value: Any, origin: str) -> Any:
    try:
        if typ is bool and isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if typ is Path:
            return Path(value).expanduser()
        if typ in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        return typ(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}: {name} must be {typ.__name__}, got {value!r}") from None


def _apply(s: Settings, values: dict[str, Any], origin: str) -> Settings:
    hints = get_type_hints(Settings)
    known = {f.name for f in fields(Settings)}
    out = {}
    for k, v in values.items():
        if k not in known:
            raise ConfigError(f"{origin}: unknown setting {k!r}")
        out[k] = _coerce(k, hints[k], v, origin)
    new = dataclasses.replace(s, **out)
    _validate(new)
    return new


def _validate(s: Settings) -> None:
    if s.mode not in ("dense", "bm25", "hybrid"):
        raise ConfigError(f"mode must be dense, bm25 or hybrid, got {s.mode!r}")
    if s.chunk_tokens < 16:
        raise ConfigError("chunk_tokens must be at least 16")
    if not 0 <= s.chunk_overlap < s.chunk_tokens:
        raise ConfigError("chunk_overlap must be >= 0 and smaller than chunk_tokens")
    if s.top_k < 1:
        raise ConfigError("top_k must be at least 1")
    if s.dense_weight < 0 or s.bm25_weight < 0:
        raise ConfigError("fusion weights must be >= 0")


def load_settings(**flags: Any) -> Settings:
    """Build the settings: defaults, then the config file, then DOCQA_* variables, then `flags`."""
    s = Settings()
    path = _config_path()
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
        s = _apply(s, data, str(path))
    env = {f.name: os.environ[f"DOCQA_{f.name.upper()}"] for f in fields(Settings) if f"DOCQA_{f.name.upper()}" in os.environ}
    s = _apply(s, env, "environment")
    return s.replace(**flags)
