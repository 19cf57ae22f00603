"""The ChatGLM checkpoints on this machine, and what each would run with (for `docqa models`).

    >>> from docqa.config import Settings
    >>> infos = find_models(Settings(llm="tests/data/chatglm6b/tiny-chatglm6b", llm_device="cpu",
    ...                              hf_cache=Path("/nonexistent")), modelscope_cache=Path("/nonexistent"))
    >>> [(i.family, i.device, i.precision, i.context_length, i.problem) for i in infos]
    [('chatglm', 'cpu', 'fp32', 2048, 'no ice_text.model')]

Where it looks: the `llm` setting when it is a folder, `chatglm2_path`, every `*chatglm*` snapshot in the Hugging
Face cache (`hf_cache`) and every `*chatglm*` repository in the ModelScope cache (~/.cache/modelscope/hub, both its
`owner/name` and `models/owner/name` layouts). Each folder is read, never executed: config.json says the member
(checkpoints.detect_family), its size and context; the settings' device/dtype/quantize say how it would run.

Limits: `memory_bytes` is an estimate: the weights at the precision they would load in (embeddings stay in the
activation dtype when the layers are quantised) plus a full-context KV cache; activations and the Python process
are not counted. A folder that cannot run is still listed, with the reason in `problem`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docqa.errors import ModelError
from docqa.generate.checkpoints import TOKENIZER_FILES, detect_family, read_config_json, weight_files

if TYPE_CHECKING:
    from docqa.config import Settings

#: bytes per weight for each precision the loaders use
_BYTES = {"int4": 0.5, "int8": 1, "bf16": 2, "fp16": 2, "fp32": 4}
_DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
MODELSCOPE_CACHE = Path.home() / ".cache" / "modelscope" / "hub"


@dataclass
class ModelInfo:
    """One checkpoint folder: what it is and how docqa would run it."""

    path: Path
    source: str  # "llm" | "chatglm2_path" | "huggingface" | "modelscope"
    name: str  # the repository id when the cache says it (THUDM/chatglm3-6b), else the folder's name
    family: str | None  # chatglm | chatglm2 | chatglm3; None when config.json is unusable
    params: int = 0
    device: str = ""  # "cpu" | "cuda" | "cuda:N"
    precision: str = ""  # "int8" | "int4" | "bf16" | "fp16" | "fp32"
    memory_bytes: int = 0
    context_length: int = 0
    problem: str = ""  # why it cannot run as it is ("" = ready)


def _candidates(settings: Settings, modelscope_cache: Path) -> list[tuple[Path, str, str]]:
    out: list[tuple[Path, str, str]] = []
    for value, source in ((settings.llm, "llm"), (settings.chatglm2_path, "chatglm2_path")):
        p = Path(str(value)).expanduser() if str(value).strip() else None
        if p is not None and p.is_dir():
            out.append((p, source, p.name))
    hub = Path(settings.hf_cache).expanduser()
    if hub.is_dir():
        for repo in sorted(hub.iterdir()):
            if repo.name.startswith("models--") and "chatglm" in repo.name.lower():
                rid = "/".join(repo.name.split("--")[1:])
                out += [(s, "huggingface", rid) for s in sorted((repo / "snapshots").glob("*")) if s.is_dir()]
    for root in (modelscope_cache, modelscope_cache / "models"):
        if root.is_dir():
            for owner in sorted(p for p in root.iterdir() if p.is_dir()):
                for repo in sorted(owner.iterdir()):
                    if repo.is_dir() and "chatglm" in repo.name.lower():
                        out.append((repo, "modelscope", f"{owner.name}/{repo.name}".replace("___", ".")))
    seen: set[Path] = set()
    unique = []
    for path, source, name in out:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((path, source, name))
    return unique


def _sizes(cfg: dict[str, Any], family: str) -> tuple[int, int, int]:
    """(parameters, embedding parameters, KV-cache values per token) from config.json."""
    if family == "chatglm":
        from docqa.generate.chatglm6b import count_params

        h, v = int(cfg["hidden_size"]), int(cfg["vocab_size"])
        return count_params(cfg), 2 * v * h, 2 * int(cfg["num_layers"]) * h
    from docqa.generate.chatglm2 import count_params

    h, v, heads = int(cfg["hidden_size"]), int(cfg["padded_vocab_size"]), int(cfg["num_attention_heads"])
    groups = int(cfg.get("multi_query_group_num", heads)) if cfg.get("multi_query_attention") else heads
    return count_params(cfg), 2 * v * h, 2 * int(cfg["num_layers"]) * groups * int(cfg["kv_channels"])


def describe(path: Path, settings: Settings, source: str = "llm", name: str = "") -> ModelInfo:
    """The ModelInfo of one folder under `settings` (device, dtype, quantize, model_family)."""
    from docqa.generate.chatglm import context_length
    from docqa.generate.weights import resolve_device_dtype

    info = ModelInfo(path=path, source=source, name=name or path.name, family=None)
    try:
        cfg = read_config_json(path)
        info.family = detect_family(path, settings.model_family)
        info.params, embed, kv_per_token = _sizes(cfg, info.family)
        info.context_length = context_length(cfg, info.family)
        dev, dtype, scheme = resolve_device_dtype(
            settings.llm_device, settings.llm_dtype, settings.llm_quantize, info.params
        )
    except (ModelError, KeyError, ValueError, TypeError) as exc:
        info.problem = str(exc) if isinstance(exc, ModelError) else f"config.json: bad or missing {exc}"
        return info
    act = _DTYPE_NAMES[str(dtype).removeprefix("torch.")]
    info.device, info.precision = str(dev), scheme or act
    weights = (info.params - embed) * _BYTES[info.precision] + embed * _BYTES[act if scheme else info.precision]
    ctx = settings.max_context if settings.max_context > 0 else info.context_length
    info.memory_bytes = int(weights + kv_per_token * ctx * _BYTES[act])
    problems = []
    try:
        weight_files(path)
    except ModelError as exc:
        problems.append(str(exc))
    if not (path / TOKENIZER_FILES[info.family]).is_file():
        problems.append(f"no {TOKENIZER_FILES[info.family]}")
    info.problem = "; ".join(problems)
    return info


def find_models(settings: Settings | None = None, modelscope_cache: Path | None = None) -> list[ModelInfo]:
    """Every ChatGLM checkpoint folder the settings and the two hub caches hold, described (see module doc).
    `settings` None: `load_settings()`; `modelscope_cache` None: ~/.cache/modelscope/hub."""
    if settings is None:
        from docqa.config import load_settings

        settings = load_settings()
    cache = MODELSCOPE_CACHE if modelscope_cache is None else Path(modelscope_cache)
    return [describe(path, settings, source, name) for path, source, name in _candidates(settings, cache)]
