"""ChatGLM checkpoints on disk: recognising a hub id, validating config.json, listing and reading weight files,
finding a local copy and downloading one.

    >>> looks_like_hub_id("THUDM/chatglm2-6b"), looks_like_hub_id("./models/chatglm2-6b")
    (True, False)
    >>> resolve_model_path("THUDM/chatglm2-6b", offline=True)     # doctest: +SKIP
    PosixPath('/root/.cache/huggingface/hub/models--THUDM--chatglm2-6b/snapshots/...')
    >>> find_local_checkpoint(chatglm2_path="", hf_cache=Path("~/.cache/huggingface/hub"))  # doctest: +SKIP

Where to look and whether to download come from the settings (`chatglm2_path`, `hf_cache`, `offline`,
`model_hub`); called without them, these functions take them from `docqa.config.load_settings()`, so a library
caller gets the same answer as the CLI. Nothing in a checkpoint folder is executed: `.bin` shards go through
`torch.load(weights_only=True)`, and only ChatGLM2 layouts pass `read_chatglm_config`.

Which member a folder holds (ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B) is decided from its config files by
`detect_family`, never by running them.

Limits: a hub id is "owner/name" with letters, digits, `_`, `.` and `-` only (a relative path such as
`models/chatglm2-6b` that does not exist is therefore taken for a hub id); ModelScope downloads need the
`modelscope` package; the cache search only knows THUDM/chatglm{,2,3}-6b* snapshots.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from docqa.errors import ModelError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
#: what a ChatGLM2 snapshot download fetches (no remote code, no pre-quantised extras)
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.bin", "tokenizer.model", "ice_text.model"]


def looks_like_hub_id(text: str) -> bool:
    """True for "owner/name" repo ids (THUDM/chatglm2-6b); paths starting with ".", "/" or "~" never are."""
    return bool(_HUB_ID.fullmatch(text)) and not text.startswith((".", "/", "~"))


# -- config.json ------------------------------------------------------------------------------------------------


def read_config_json(path: str | Path) -> dict[str, Any]:
    """config.json of any ChatGLM checkpoint folder (v1, v2, v3): parsed, `model_type: chatglm`, not
    pre-quantised; ModelError otherwise. Member-specific checks are `read_chatglm_config`'s (v2/v3) and
    `ChatGLM6BConfig.from_chatglm`'s (v1)."""
    cfg_file = Path(path) / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path} has no config.json: not a ChatGLM checkpoint folder") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {cfg_file}: {exc}") from exc
    if not isinstance(cfg, dict) or cfg.get("model_type") != "chatglm":
        got = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise ModelError(f"{cfg_file} is not a ChatGLM config (model_type={got!r})")
    if cfg.get("quantization_bit"):
        raise ModelError(
            f"{path} is a pre-quantised ChatGLM checkpoint (quantization_bit={cfg['quantization_bit']}), whose packed "
            "weights need upstream's remote code. Use the full THUDM weights (chatglm-6b, chatglm2-6b, chatglm3-6b); "
            "docqa quantises them itself (int8 by default on CPU, --quantize int4 for 4-bit)."
        )
    return cfg


def read_chatglm_config(path: str | Path) -> dict[str, Any]:
    """config.json of a ChatGLM2/ChatGLM3 checkpoint folder, validated; ModelError for anything we cannot run
    with the ChatGLM2 network (a ChatGLM-6B v1 folder included: docqa.generate.chatglm.load takes those)."""
    cfg_file = Path(path) / "config.json"
    cfg = read_config_json(path)
    if "multi_query_attention" not in cfg and "inner_hidden_size" in cfg:
        raise ModelError(
            f"{path} holds ChatGLM-6B (v1), not the ChatGLM2 network: load it with "
            "docqa.generate.chatglm.load (or --model, which picks the family itself)"
        )
    missing = [
        k
        for k in (
            "num_layers",
            "hidden_size",
            "kv_channels",
            "ffn_hidden_size",
            "padded_vocab_size",
            "num_attention_heads",
        )
        if k not in cfg
    ]
    if missing:
        raise ModelError(f"{cfg_file} lacks {', '.join(missing)}: not a ChatGLM2/ChatGLM3 layout docqa can load")
    unsupported = {
        "rmsnorm": (True, "LayerNorm variant"),
        "post_layer_norm": (True, "no final norm"),
        "apply_residual_connection_post_layernorm": (False, "post-norm residuals"),
        "add_bias_linear": (False, "biases on dense layers"),
        "original_rope": (True, "non-original RoPE"),
    }
    for key, (want, what) in unsupported.items():
        if cfg.get(key, want) != want:
            raise ModelError(f"{cfg_file}: {key}={cfg[key]} ({what}) is not supported by docqa's ChatGLM2 loader")
    return cfg


# -- which member of the family -------------------------------------------------------------------------------

#: the ChatGLM members docqa runs: ChatGLM-6B (v1), ChatGLM2-6B, ChatGLM3-6B (docqa.config.MODEL_FAMILIES less auto)
FAMILIES = ("chatglm", "chatglm2", "chatglm3")
#: the tokenizer file each member ships
TOKENIZER_FILES = {"chatglm": "ice_text.model", "chatglm2": "tokenizer.model", "chatglm3": "tokenizer.model"}


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_v1_layout(cfg: dict[str, Any]) -> bool:
    """True for a ChatGLM-6B (v1) config.json: it has no `multi_query_attention` (v2 and v3 always do) and
    v1's own fields (`inner_hidden_size`, `position_encoding_2d`) or none of v2's (`kv_channels`)."""
    if "multi_query_attention" in cfg:
        return False
    return "inner_hidden_size" in cfg or "position_encoding_2d" in cfg or "kv_channels" not in cfg


_V3_TEMPLATE_MARKS = ("<|user|>", "<|assistant|>", "<|system|>", "<|observation|>", "<|{{")


def v3_evidence(path: str | Path, cfg: dict[str, Any] | None = None) -> str | None:
    """Why a ChatGLM2-network folder holds ChatGLM3 (a short reason), or None when nothing says so.

    The two share config.json's layout, so only names and the chat template tell them apart: config.json's
    `_name_or_path`, tokenizer_config.json's `name_or_path`, or a `chat_template` there with ChatGLM3's role
    tokens (`<|user|>`, `<|assistant|>`, ... or the `<|{{ role }}|>` form)."""
    folder = Path(path)
    cfg = _read_json(folder / "config.json") if cfg is None else cfg
    tok_cfg = _read_json(folder / "tokenizer_config.json")
    for where, value in (
        ("config.json _name_or_path", cfg.get("_name_or_path")),
        ("tokenizer_config.json name_or_path", tok_cfg.get("name_or_path")),
    ):
        if isinstance(value, str) and "chatglm3" in value.lower():
            return f"{where} is {value!r}"
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # the multi-template form: [{"name": ..., "template": ...}]
        template = " ".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    # the published template writes the role tokens as "<|{{ message['role'] }}|>" plus a literal <|assistant|>
    if isinstance(template, str) and any(t in template for t in _V3_TEMPLATE_MARKS):
        return "tokenizer_config.json's chat_template uses ChatGLM3's role tokens"
    return None


def detect_family(path: str | Path, override: str = "auto") -> str:
    """ "chatglm" (ChatGLM-6B v1), "chatglm2" or "chatglm3" for a checkpoint folder, from its config files only.

    v1 is told by its layout (`is_v1_layout`); between v2 and v3, which share one, `v3_evidence` decides and
    "chatglm2" is the default. `override` (the `model_family` setting) other than "auto" picks v2 or v3 for an
    ambiguous folder; an override that contradicts the layout (v1 weights called chatglm3, or the reverse) is a
    ModelError, since that network could not load them anyway.

        >>> detect_family("tests/data/chatglm6b/tiny-chatglm6b"), detect_family("tests/data/chatglm2/tiny-chatglm2")
        ('chatglm', 'chatglm2')
    """
    if override not in ("auto", *FAMILIES):
        raise ModelError(f"unknown model family {override!r}: use auto, {', '.join(FAMILIES)} (model_family)")
    cfg = read_config_json(path)
    layout = "chatglm" if is_v1_layout(cfg) else "chatglm2"
    if override != "auto":
        if (override == "chatglm") != (layout == "chatglm"):
            what = "ChatGLM-6B (v1)" if layout == "chatglm" else "ChatGLM2/ChatGLM3"
            raise ModelError(
                f"model_family={override} but {path} holds the {what} layout (config.json); "
                "set model_family to auto or to the member the folder holds"
            )
        return override
    if layout == "chatglm":
        return "chatglm"
    return "chatglm3" if v3_evidence(path, cfg) else "chatglm2"


def is_chatglm_checkpoint(path: str | Path) -> bool:
    """True when `path` is a folder holding any ChatGLM member docqa can load (by its config.json)."""
    try:
        cfg = read_config_json(path)
        if not is_v1_layout(cfg):
            read_chatglm_config(path)
        return True
    except ModelError:
        return False


def is_chatglm2_checkpoint(path: str | Path) -> bool:
    """True when `path` is a folder whose config.json describes a ChatGLM2-style model we can load."""
    try:
        read_chatglm_config(path)
        return True
    except ModelError:
        return False


# -- weight files -----------------------------------------------------------------------------------------------


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files in load order; safetensors preferred over .bin when both exist."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                names = list(dict.fromkeys(weight_map.values()))
            except (OSError, ValueError, KeyError, AttributeError) as exc:
                raise ModelError(f"cannot read the shard index {index}: {exc}") from exc
            files = []
            for n in names:
                shard = (folder / n).resolve()
                if shard.parent != folder.resolve():
                    raise ModelError(f"{index} points outside the checkpoint folder: {n!r}")
                if not shard.is_file():
                    raise ModelError(
                        f"{folder} is incomplete: shard {n} listed in {index_name} is missing (re-download the model)"
                    )
                files.append(shard)
            return files
        if (folder / single).is_file():
            return [folder / single]
    raise ModelError(
        f"no weights in {folder}: expected *.safetensors or pytorch_model*.bin (with their index json when sharded)"
    )


def iter_checkpoint_tensors(folder: str | Path) -> Iterator[tuple[str, Any]]:
    """(name, tensor) for every tensor of a checkpoint, one shard at a time, without executing anything."""
    import torch

    for file in weight_files(Path(folder)):
        try:
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(file), framework="pt") as f:
                    keys = list(f.keys())
                    for key in keys:
                        yield key, f.get_tensor(key)
                continue
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except ModelError:
            raise
        except Exception as exc:  # truncated zip, disallowed pickle global, bad header...: all mean "bad file"
            raise ModelError(
                f"cannot read weight file {file}: {type(exc).__name__}: {exc} "
                "(the file is truncated, corrupt or not a plain weights file; re-download it)"
            ) from exc
        if not isinstance(state, dict):
            raise ModelError(f"{file} does not hold a dict of tensors")
        for key in list(state):
            tensor = state.pop(key)
            if not isinstance(tensor, torch.Tensor):
                raise ModelError(f"{file}: entry {key!r} is not a tensor")
            yield key, tensor
        del state


# -- finding and downloading ------------------------------------------------------------------------------------


def _download_modelscope(repo_id: str) -> Path:
    try:
        from modelscope import snapshot_download as ms_download
    except ImportError:
        raise ModelError(
            f"{repo_id} is a ModelScope id but the modelscope package is not installed "
            "(pip install modelscope), or download the model and pass its folder"
        ) from None
    try:
        return Path(ms_download(repo_id))
    except Exception as exc:
        raise ModelError(f"cannot download {repo_id} from ModelScope: {exc}") from exc


def _download_huggingface(repo_id: str, offline: bool) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelError(f"{repo_id} is not a local folder and huggingface_hub is not installed") from None
    try:
        return Path(snapshot_download(repo_id, local_files_only=offline, allow_patterns=_DOWNLOAD_PATTERNS))
    except Exception as exc:
        how = (
            "offline (HF_HUB_OFFLINE / DOCQA_OFFLINE is set) and the model is not in the local cache"
            if offline
            else f"download failed ({type(exc).__name__}: {exc})"
        )
        raise ModelError(
            f"cannot get {repo_id}: {how}. Download it (e.g. `huggingface-cli download {repo_id}`) or "
            "set DOCQA_CHATGLM2_PATH to a local chatglm2-6b folder."
        ) from exc


def resolve_model_path(path: str | Path, *, model_hub: str | None = None, offline: bool | None = None) -> Path:
    """A local checkpoint folder for `path`: the folder itself, or a hub snapshot when `path` is a repo id.

    `model_hub` ("huggingface" | "modelscope"; ZhipuAI/... ids always go to ModelScope) and `offline` (only the
    local Hugging Face cache) default to the settings' values.
    """
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    text = str(path)
    if not looks_like_hub_id(text):
        raise ModelError(f"model folder not found: {path}")
    if model_hub is None or offline is None:
        from docqa.config import load_settings

        s = load_settings()
        model_hub = s.model_hub if model_hub is None else model_hub
        offline = s.offline if offline is None else offline
    if model_hub == "modelscope" or text.startswith("ZhipuAI/"):
        return _download_modelscope(text)
    return _download_huggingface(text, offline)


#: Hugging Face cache folders `find_local_checkpoint` looks in, in order of preference
CACHE_PATTERNS = ("models--THUDM--chatglm2-6b*", "models--THUDM--chatglm3-6b*", "models--THUDM--chatglm-6b*")


def usable_checkpoint(folder: Path) -> bool:
    """A loadable member with its tokenizer file and every weight shard present."""
    if not (folder.is_dir() and is_chatglm_checkpoint(folder)):
        return False
    try:
        family = detect_family(folder)
        weight_files(folder)
    except ModelError:
        return False
    return (folder / TOKENIZER_FILES[family]).is_file()


def find_local_checkpoint(
    chatglm2_path: str | Path | None = None, hf_cache: str | Path | None = None, *, family: str | None = None
) -> Path | None:
    """A ChatGLM folder: `chatglm2_path` when set (None if it is not a checkpoint of any member), else the newest
    complete THUDM/chatglm2-6b* snapshot in the Hugging Face cache `hf_cache`, else chatglm3-6b*, else
    chatglm-6b*, else None. `family` ("chatglm" | "chatglm2" | "chatglm3") keeps only that member: then
    `chatglm2_path` counts only when it holds that member, and the cache is searched otherwise.

    Either path left as None comes from the settings (DOCQA_CHATGLM2_PATH; HF_HUB_CACHE / HF_HOME).
    """
    if chatglm2_path is None or hf_cache is None:
        from docqa.config import load_settings

        s = load_settings()
        chatglm2_path = s.chatglm2_path if chatglm2_path is None else chatglm2_path
        hf_cache = s.hf_cache if hf_cache is None else hf_cache
    if str(chatglm2_path):
        p = Path(chatglm2_path).expanduser()
        if family is None:
            return p if is_chatglm_checkpoint(p) else None
        try:  # asked for by name: an ambiguous v2/v3 folder counts as the member asked for
            if is_chatglm_checkpoint(p) and detect_family(p, family):
                return p
        except ModelError:
            pass
    hub = Path(hf_cache).expanduser()
    for pattern in CACHE_PATTERNS:
        for snap in sorted(hub.glob(f"{pattern}/snapshots/*"), reverse=True):
            if usable_checkpoint(snap) and (family is None or detect_family(snap) == family):
                return snap
    return None
