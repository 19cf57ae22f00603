"""One typed settings object. Precedence: defaults < config file < environment < flags.

The config file is TOML: `$DOCQA_CONFIG`, else `./docqa.toml`, else `~/.config/docqa/config.toml`.
Keys are the field names below; environment variables are `DOCQA_` + the upper-case field name:

    # docqa.toml
    embed_model = "BAAI/bge-small-zh-v1.5"
    chunk_tokens = 200

    $ DOCQA_INDEX=/data/kb docqa search "..."

This module is the only place that reads the environment. Three Hugging Face variables are honoured as fallbacks
when the matching docqa variable is unset (`_external_defaults`): HF_HUB_OFFLINE -> `offline`, HF_HUB_CACHE
(else $HF_HOME/hub) -> `hf_cache`, and XDG_CACHE_HOME/docqa -> `cache`. Functions elsewhere take these values
as parameters; the few that may be called without them (library convenience) ask `load_settings()`.

Choices are defined once here as tuples (MODES, LLM_DTYPES, ...): validation and the code that branches on a
setting use the same tuple, so an unknown value is a ConfigError at load instead of a surprise later (a
`Settings(...)` built directly is not validated; `load_settings` and `Settings.replace` are):

    >>> load_settings(llm_quantize="int3")
    Traceback (most recent call last):
    docqa.errors.ConfigError: llm_quantize must be one of auto, none, int8, int4, got 'int3'
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

#: retrieval modes (`mode`, `docqa search --mode`, `docqa eval --mode`)
MODES = ("dense", "bm25", "hybrid")
#: `embed_precision`: auto = bf16 autocast on CPUs with native bf16, else fp32
EMBED_PRECISIONS = ("auto", "fp32", "bf16")
#: `llm_dtype` (the ChatGLM2 weights' and activations' precision); LLM_DTYPE_ALIASES are accepted spellings
LLM_DTYPES = ("auto", "bf16", "fp16", "fp32")
LLM_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
#: `llm_quantize` (--quantize): auto = int8 for big models on CPU, none elsewhere; none = full weights
LLM_QUANTIZE = ("auto", "none", "int8", "int4")
#: `llm_device` (--device); "cuda:N" picks one GPU
LLM_DEVICES = ("auto", "cpu", "cuda")
#: `model_family`: which ChatGLM member a checkpoint folder holds; auto = decided from its config files
#: (chatglm = ChatGLM-6B v1, chatglm2 = ChatGLM2-6B, chatglm3 = ChatGLM3-6B); set it when a folder is ambiguous
MODEL_FAMILIES = ("auto", "chatglm", "chatglm2", "chatglm3")
#: `ocr` (--ocr): auto = OCR only pages with no or garbage text (and image files); always; never
OCR_MODES = ("auto", "always", "never")
#: `model_hub`: where a hub id such as THUDM/chatglm2-6b is downloaded from (ZhipuAI/... always uses ModelScope)
MODEL_HUBS = ("huggingface", "modelscope")
#: `store`: where the dense vectors live (SQLite is always the source of truth for documents and text)
STORES = ("faiss", "milvus")
#: `ann` (FAISS index type): auto = exact flat while small, an approximate index chosen by size above that
ANN_TYPES = ("auto", "flat", "hnsw", "ivfpq")
#: `embed_backend`: torch = the sentence-transformers model as shipped; onnx-int8 = a dynamically quantised
#: ONNX export run by onnxruntime (faster ingest on CPU)
EMBED_BACKENDS = ("torch", "onnx-int8")
#: what docqa/expand.py asks the chat model for: search keywords, a translation into the other language, a
#: hypothetical answer passage (HyDE); each becomes one more query fused into the search
QUERY_EXPANSIONS = ("keywords", "translate", "hyde")
#: `finetune_method` (docqa finetune --method)
FINETUNE_METHODS = ("lora", "qlora", "ptuning")


@dataclass
class Settings:
    # knowledge base
    index: Path = Path("indexes/default")
    store: str = "faiss"  # STORES
    milvus_uri: str = ""  # a Milvus Lite file path or http://host:19530; "" = <index>/milvus.db
    ann: str = "auto"  # ANN_TYPES
    # loading
    include_hidden: bool = False
    follow_symlinks: bool = False
    file_timeout: float = 120.0  # seconds one file may take to parse
    file_memory_mb: int = 2048  # address-space cap of the parsing worker
    max_file_mb: int = 100  # larger files are skipped with a reason (a 200 MB log would be ~1M chunks)
    ocr: str = "auto"  # OCR_MODES: auto = only pages/images without a usable text layer
    # chunking (in embedding-model tokens; capped at the model's max sequence length)
    chunk_tokens: int = 200
    chunk_overlap: int = 40
    # embedding
    embed_model: str = EMBEDDED_EMBED_MODEL
    embed_batch: int = 32
    embed_device: str = "cpu"
    embed_precision: str = "auto"  # one of EMBED_PRECISIONS
    embed_backend: str = "torch"  # EMBED_BACKENDS
    embed_languages: str = ""  # "en,zh": languages the embedding model handles well; "" = guess from its name
    # retrieval
    mode: str = "hybrid"
    top_k: int = 5
    rrf_k: int = 60
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    min_relevance: float = 0.0  # 0 = automatic rule (see retrieve.py)
    neighbours: int = 0
    reranker: str = ""
    # query expansion for retrieval by the chat model (docqa/expand.py): "off" (default: not measured here),
    # "auto" = keywords,translate when a generation is cheap (a GPU or a served model), or a list of QUERY_EXPANSIONS
    query_expansion: str = "off"
    # a Chinese question also searches its English gloss from a bilingual dictionary (docqa/lexicon.py): finds
    # English documents; dropped where the gloss's words are unknown or find mostly Chinese passages
    cross_language: bool = True
    # generation
    llm: str = "auto"  # auto | demo | chatglm2 path/id | openai
    llm_url: str = ""
    llm_api_key: str = ""
    llm_device: str = "auto"  # LLM_DEVICES, or cuda:N
    llm_dtype: str = "auto"  # LLM_DTYPES (or an alias)
    llm_quantize: str = "auto"  # LLM_QUANTIZE
    chatglm2_path: str = ""  # the local ChatGLM2-6B folder `llm = "auto"` / "chatglm2" uses; "" = search hf_cache
    model_hub: str = "huggingface"  # MODEL_HUBS
    model_family: str = "auto"  # MODEL_FAMILIES: overrides the ChatGLM member a folder is detected as
    offline: bool = False  # never download models (fallback: HF_HUB_OFFLINE)
    hf_cache: Path = Path.home() / ".cache/huggingface/hub"  # fallback: HF_HUB_CACHE, else $HF_HOME/hub
    cache: Path = Path.home() / ".cache/docqa"  # docqa's own caches (demo model, jieba); fallback: XDG_CACHE_HOME
    max_context: int = 0  # 0 = the model's own (on CPU: what first_token_s allows, see prompt budget)
    first_token_s: float = 60.0  # CPU only: the default context is sized so prefill takes about this long
    adapter: str = ""  # a fine-tuned adapter folder (docqa finetune) applied to the local ChatGLM model
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


def _one_of(name: str, value: str, allowed: tuple[str, ...], also: tuple[str, ...] = ()) -> None:
    if value not in allowed and value not in also:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def valid_device(value: str) -> bool:
    """True for an LLM_DEVICES entry or an indexed GPU such as "cuda:1"."""
    base, colon, index = value.partition(":")
    return value in LLM_DEVICES or (base == "cuda" and bool(colon) and index.isdigit())


def _validate(s: Settings) -> None:
    _one_of("mode", s.mode, MODES)
    _one_of("embed_precision", s.embed_precision, EMBED_PRECISIONS)
    _one_of("llm_dtype", s.llm_dtype, LLM_DTYPES, tuple(LLM_DTYPE_ALIASES))
    _one_of("llm_quantize", s.llm_quantize, LLM_QUANTIZE)
    _one_of("model_hub", s.model_hub, MODEL_HUBS)
    _one_of("ocr", s.ocr, OCR_MODES)
    _one_of("model_family", s.model_family, MODEL_FAMILIES)
    _one_of("store", s.store, STORES)
    _one_of("ann", s.ann, ANN_TYPES)
    _one_of("embed_backend", s.embed_backend, EMBED_BACKENDS)
    kinds = [k.strip() for k in s.query_expansion.split(",")]
    if s.query_expansion not in ("auto", "off") and not all(k in QUERY_EXPANSIONS for k in kinds):
        raise ConfigError(
            f"query_expansion must be auto, off or a comma-separated list of {', '.join(QUERY_EXPANSIONS)}, "
            f"got {s.query_expansion!r}"
        )
    if not valid_device(s.llm_device):
        raise ConfigError(f"llm_device must be one of {', '.join(LLM_DEVICES)} or cuda:N, got {s.llm_device!r}")
    if s.chunk_tokens < 16:
        raise ConfigError("chunk_tokens must be at least 16")
    if not 0 <= s.chunk_overlap < s.chunk_tokens:
        raise ConfigError("chunk_overlap must be >= 0 and smaller than chunk_tokens")
    if s.top_k < 1:
        raise ConfigError("top_k must be at least 1")
    if s.dense_weight < 0 or s.bm25_weight < 0:
        raise ConfigError("fusion weights must be >= 0")


def _external_defaults() -> dict[str, str]:
    """Defaults taken from other tools' environment variables (HF_*, XDG_*), as raw strings for `_apply`.

    They sit between the built-in defaults and the config file: a config key or DOCQA_* variable still wins.
    """
    env = os.environ
    out: dict[str, str] = {}
    if "HF_HUB_OFFLINE" in env:
        out["offline"] = env["HF_HUB_OFFLINE"]
    if env.get("HF_HUB_CACHE"):
        out["hf_cache"] = env["HF_HUB_CACHE"]
    elif env.get("HF_HOME"):
        out["hf_cache"] = str(Path(env["HF_HOME"]) / "hub")
    if env.get("XDG_CACHE_HOME"):
        out["cache"] = str(Path(env["XDG_CACHE_HOME"]) / "docqa")
    return out


def load_settings(**flags: Any) -> Settings:
    """Build the settings: defaults, then the config file, then DOCQA_* variables, then `flags`.

    HF_HUB_OFFLINE / HF_HUB_CACHE / HF_HOME / XDG_CACHE_HOME count as defaults (see `_external_defaults`).
    """
    s = _apply(Settings(), _external_defaults(), "environment (HF_*/XDG_*)")
    path = _config_path()
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
        s = _apply(s, data, str(path))
    env = {
        f.name: os.environ[f"DOCQA_{f.name.upper()}"]
        for f in fields(Settings)
        if f"DOCQA_{f.name.upper()}" in os.environ
    }
    s = _apply(s, env, "environment")
    return s.replace(**flags)
