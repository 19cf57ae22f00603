"""ChatGLM2-6B without remote code: its checkpoints mapped onto transformers' native `GlmForCausalLM`.

ChatGLM2 is a GLM decoder (RMSNorm, SwiGLU, grouped-query attention with 2 key/value groups, rotary embedding on
the first half of each head with interleaved pairs), which is exactly what `GlmForCausalLM` implements, so the only
work is renaming weights and splitting the fused ones. Nothing in the checkpoint folder is executed (no
`trust_remote_code`; `.bin` shards go through `torch.load(weights_only=True)`).

    >>> model, tok = load("~/models/chatglm2-6b")               # CPU: int8 weights, ~7 GB of RAM
    >>> gen = ChatGLM2Generator("~/models/chatglm2-6b")
    >>> gen.generate([{"role": "user", "content": "dpkg -L 是做什么的？"}], GenerationOptions(max_new_tokens=64))

Weights stream shard by shard onto a model built on the meta device, and each decoder layer is quantised as soon
as its weights are in, so peak memory stays near one copy of the (quantised) weights.

Precision on CPU: big models default to int8 weight-only quantisation (per output channel, bf16 activations,
`torch.ops.aten._weight_int8pack_mm`); `quantize="int4"` uses 4-bit groups of 128 (`_weight_int4pack_mm_for_cpu`);
`dtype="bf16"`/`"fp32"` without `quantize` keeps full weights. Tiny (test) models default to fp32.

Limits: ChatGLM2 layouts only (chatglm2-6b, chatglm2-6b-32k; chatglm3-6b loads too but its prompt format differs);
the pre-quantised `-int4`/`-int8` repos and ChatGLM-6B v1 are refused with a ModelError. `rope_ratio` is applied
as upstream chatglm2-6b-32k does (positions divided by it = linear RoPE scaling); chatglm3-6b-32k instead scales
the RoPE base and would need a different mapping. GPU int8/int4 need `torchao`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docqa.errors import ModelError
from docqa.generate.base import GenerationOptions, Generator, Message, Prompt, stream_text
from docqa.generate.chatglm2_tokenizer import ChatGLM2Tokenizer

if TYPE_CHECKING:
    import torch

EOS_ID = 2
DEFAULT_HUB_ID = "THUDM/chatglm2-6b"
#: models with more parameters than this default to int8 on CPU (smaller ones to fp32)
BIG_MODEL_PARAMS = 1_000_000_000
#: rows of activations above which the int8 layer dequantises its weight instead (faster for long prefills)
_INT8_DEQUANT_MIN_ROWS = 192

_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16", "half": "float16",
           "fp32": "float32", "float32": "float32", "float": "float32"}


# -- config -----------------------------------------------------------------------------------------------------


def read_chatglm_config(path: str | Path) -> dict[str, Any]:
    """config.json of a ChatGLM2 checkpoint folder, validated; ModelError for anything we cannot run."""
    cfg_file = Path(path) / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path} has no config.json: not a ChatGLM2 checkpoint folder") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {cfg_file}: {exc}") from exc
    if not isinstance(cfg, dict) or cfg.get("model_type") != "chatglm":
        raise ModelError(f"{cfg_file} is not a ChatGLM config (model_type={cfg.get('model_type')!r})")
    if cfg.get("quantization_bit"):
        raise ModelError(
            f"{path} is a pre-quantised ChatGLM2 checkpoint (quantization_bit={cfg['quantization_bit']}), whose packed "
            "weights need upstream's remote code. Use the full THUDM/chatglm2-6b weights; docqa quantises them "
            "itself (int8 by default on CPU, --quantize int4 for 4-bit)."
        )
    missing = [k for k in ("num_layers", "hidden_size", "kv_channels", "ffn_hidden_size", "padded_vocab_size",
                           "num_attention_heads") if k not in cfg]
    if missing:
        raise ModelError(f"{cfg_file} lacks {', '.join(missing)}: ChatGLM-6B (v1) and other layouts are not supported")
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


def is_chatglm2_checkpoint(path: str | Path) -> bool:
    """True when `path` is a folder whose config.json describes a ChatGLM2-style model we can load."""
    try:
        read_chatglm_config(path)
        return True
    except ModelError:
        return False


def glm_config_from_chatglm(cfg: dict[str, Any]):
    """The `transformers.GlmConfig` equivalent to a ChatGLM2 config.json dict."""
    from transformers import GlmConfig

    heads = int(cfg["num_attention_heads"])
    groups = int(cfg["multi_query_group_num"]) if cfg.get("multi_query_attention") else heads
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    rope_ratio = float(cfg.get("rope_ratio", 1) or 1)
    if rope_ratio != 1:
        # upstream chatglm2-6b-32k computes angles for position / rope_ratio: linear position interpolation
        rope.update(rope_type="linear", factor=rope_ratio)
    eos = cfg.get("eos_token_id", EOS_ID)
    config = GlmConfig(
        vocab_size=int(cfg["padded_vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["ffn_hidden_size"]),
        num_hidden_layers=int(cfg["num_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=groups,
        head_dim=int(cfg["kv_channels"]),
        hidden_act="silu",
        max_position_embeddings=int(cfg.get("seq_length", 8192)),
        rms_norm_eps=float(cfg.get("layernorm_epsilon", 1e-5)),
        attention_bias=bool(cfg.get("add_qkv_bias", True)),
        attention_dropout=0.0,
        tie_word_embeddings=False,
        pad_token_id=int(cfg.get("pad_token_id", 0) or 0),
        eos_token_id=eos if eos is not None else EOS_ID,
        rope_parameters=rope,
    )
    config._attn_implementation = "sdpa"
    return config


def count_params(cfg: dict[str, Any]) -> int:
    """Parameters of a ChatGLM2 model from its config (weights only, no norms/biases: close enough to size it)."""
    h, f, v, n = (int(cfg[k]) for k in ("hidden_size", "ffn_hidden_size", "padded_vocab_size", "num_layers"))
    heads, hd = int(cfg["num_attention_heads"]), int(cfg["kv_channels"])
    groups = int(cfg.get("multi_query_group_num", heads)) if cfg.get("multi_query_attention") else heads
    per_layer = h * (heads + 2 * groups) * hd + heads * hd * h + 3 * h * f
    return 2 * v * h + n * per_layer


# -- weights ----------------------------------------------------------------------------------------------------

_LAYER = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",  # upstream chunks it [gate; up] like GLM does
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP_RENAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
#: upstream buffers we recompute ourselves
_IGNORED = {"transformer.rotary_pos_emb.inv_freq"}


def convert_tensor(name: str, tensor, config) -> list[tuple[str, Any]]:
    """ChatGLM2 tensor -> GlmForCausalLM (name, tensor) pairs; the fused query_key_value splits into q/k/v."""
    if name in _IGNORED:
        return []
    if name in _TOP_RENAMES:
        return [(_TOP_RENAMES[name], tensor)]
    m = _LAYER.match(name)
    if m:
        prefix, rest = f"model.layers.{m.group(1)}.", m.group(2)
        if rest in _LAYER_RENAMES:
            return [(prefix + _LAYER_RENAMES[rest], tensor)]
        if rest in ("self_attention.query_key_value.weight", "self_attention.query_key_value.bias"):
            kind = rest.rsplit(".", 1)[1]
            q = config.num_attention_heads * config.head_dim
            kv = config.num_key_value_heads * config.head_dim
            if tensor.shape[0] != q + 2 * kv:
                raise ModelError(f"{name} has {tensor.shape[0]} rows, expected {q + 2 * kv} (q {q} + k {kv} + v {kv})")
            parts = tensor.split([q, kv, kv], dim=0)
            return [(f"{prefix}self_attn.{p}_proj.{kind}", t) for p, t in zip("qkv", parts)]
    raise ModelError(f"unexpected tensor {name!r} in the checkpoint: not a ChatGLM2 layout docqa can load "
                     "(pre-quantised or modified checkpoints are not supported)")


def _weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files in load order; safetensors preferred over .bin when both exist."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
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
                    raise ModelError(f"{folder} is incomplete: shard {n} listed in {index_name} is missing "
                                     "(re-download the model)")
                files.append(shard)
            return files
        if (folder / single).is_file():
            return [folder / single]
    raise ModelError(f"no weights in {folder}: expected *.safetensors or pytorch_model*.bin "
                     "(with their index json when sharded)")


def iter_checkpoint_tensors(folder: str | Path) -> Iterator[tuple[str, Any]]:
    """(name, tensor) for every tensor of a checkpoint, one shard at a time, without executing anything."""
    import torch

    for file in _weight_files(Path(folder)):
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
            raise ModelError(f"cannot read weight file {file}: {type(exc).__name__}: {exc} "
                             "(the file is truncated, corrupt or not a plain weights file; re-download it)") from exc
        if not isinstance(state, dict):
            raise ModelError(f"{file} does not hold a dict of tensors")
        for key in list(state):
            tensor = state.pop(key)
            if not isinstance(tensor, torch.Tensor):
                raise ModelError(f"{file}: entry {key!r} is not a tensor")
            yield key, tensor
        del state


# -- quantised linear layers (CPU) -----------------------------------------------------------------------------


def _make_int8_linear():
    import torch
    from torch import nn

    class Int8WeightOnlyLinear(nn.Module):
        """y = x @ (int8 W * per-row scale).T + b, activations in bf16.

        Decoding (a few rows) uses the fused int8 kernel; long prefills dequantise the weight once per call,
        which beats the int8 kernel above ~200 rows on x86 (measured: benchmarks/generate.py).
        """

        def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, act_dtype=torch.bfloat16):
            super().__init__()
            w = weight.float()
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
            self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scales", scale.to(act_dtype))
            self.register_buffer("bias", None if bias is None else bias.to(act_dtype))
            self.in_features, self.out_features = weight.shape[1], weight.shape[0]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape, dtype = x.shape, x.dtype
            x2 = x.reshape(-1, self.in_features).to(self.scales.dtype)
            # the fused kernel crashes (segfault) when in_features is not a multiple of 16: only tiny test models
            if x2.shape[0] >= _INT8_DEQUANT_MIN_ROWS or self.in_features % 16:
                y = nn.functional.linear(x2, self.qweight.to(x2.dtype) * self.scales[:, None])
            else:
                y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scales)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*shape[:-1], self.out_features).to(dtype)

    return Int8WeightOnlyLinear


def _make_int4_linear():
    import torch
    from torch import nn

    class Int4WeightOnlyLinear(nn.Module):
        """4-bit asymmetric weights in groups of `group_size` along the input, bf16 activations (x86 CPU kernel)."""

        def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group_size: int = 128,
                     act_dtype=torch.bfloat16):
            super().__init__()
            n, k = weight.shape
            # the packed kernel wants groups of 32..256 dividing in_features; tiny test shapes fall back to unpacked
            self.packed = k % 32 == 0
            group_size = next((g for g in (group_size, 64, 32) if k % g == 0), math.gcd(k, 32))
            w = weight.float().reshape(n, k // group_size, group_size)
            lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
            scale = ((hi - lo) / 15).clamp(min=1e-8)
            q = torch.round((w - lo) / scale).clamp(0, 15).to(torch.int32).reshape(n, k)
            # the kernel computes (q - 8) * scale + zero, so zero is the value of q == 8
            zero = lo + 8 * scale
            if self.packed:
                sz = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1).transpose(0, 1).contiguous()
                self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
                self.register_buffer("scales_zeros", sz.to(act_dtype))
            else:
                deq = (q.reshape(w.shape) - 8) * scale + zero
                self.register_buffer("qweight", deq.reshape(n, k).to(act_dtype))
                self.register_buffer("scales_zeros", torch.empty(0, dtype=act_dtype))
            self.register_buffer("bias", None if bias is None else bias.to(act_dtype))
            self.group_size, self.in_features, self.out_features = group_size, k, n

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape, dtype = x.shape, x.dtype
            x2 = x.reshape(-1, self.in_features).to(self.scales_zeros.dtype).contiguous()
            if self.packed:
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.qweight, self.group_size, self.scales_zeros)
            else:
                y = nn.functional.linear(x2, self.qweight)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*shape[:-1], self.out_features).to(dtype)

    return Int4WeightOnlyLinear


def _quantized_linear(linear, quantize: str):
    cls = _make_int8_linear() if quantize == "int8" else _make_int4_linear()
    return cls(linear.weight.data, None if linear.bias is None else linear.bias.data)


def _quantize_linears(module, quantize: str) -> None:
    """Replace every nn.Linear under `module` (weights already loaded) by its CPU int8/int4 version."""
    from torch import nn

    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, _quantized_linear(child, quantize))
        else:
            _quantize_linears(child, quantize)


# -- loading ----------------------------------------------------------------------------------------------------


def _resolve_device_dtype(device: str, dtype: str, quantize: str | None, n_params: int):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but PyTorch sees no CUDA GPU (use --device cpu)")
    quantize = None if quantize in (None, "", "none", "no") else quantize
    if quantize not in (None, "int8", "int4"):
        raise ModelError(f"unknown quantisation {quantize!r}: use none, int8 or int4")
    on_gpu = device.startswith("cuda")
    if dtype == "auto":
        if on_gpu:
            name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        elif n_params > BIG_MODEL_PARAMS:
            name = "bfloat16"
            quantize = quantize or "int8"
        else:
            name = "float32"
    elif dtype in _DTYPES:
        name = _DTYPES[dtype]
    else:
        raise ModelError(f"unknown dtype {dtype!r}: use auto, bf16, fp16 or fp32")
    if quantize and not on_gpu and name != "bfloat16":
        name = "bfloat16"  # the CPU int8/int4 kernels take bf16 activations
    return torch.device(device), getattr(torch, name), quantize


def _gpu_quantize(model, quantize: str) -> None:
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise ModelError(f"--quantize {quantize} on GPU needs the torchao package (pip install torchao), "
                         "or run without quantisation (bf16/fp16)") from None
    quantize_(model, Int8WeightOnlyConfig() if quantize == "int8" else Int4WeightOnlyConfig())


def _quantised(name: str) -> bool:
    return name.startswith("model.layers.") or name == "lm_head.weight"


def load_model(path: str | Path, device: str = "auto", dtype: str = "auto", quantize: str | None = None):
    """The GlmForCausalLM (eval mode) for the ChatGLM2 checkpoint folder `path`; see `load`."""
    folder = Path(path).expanduser()
    cfg = read_chatglm_config(folder)
    return build_model(cfg, iter_checkpoint_tensors(folder), str(folder), device, dtype, quantize)


def build_model(cfg: dict[str, Any], tensors: Iterable[tuple[str, Any]], source: str = "the checkpoint",
                device: str = "auto", dtype: str = "auto", quantize: str | None = None):
    """GlmForCausalLM from a ChatGLM2 config dict and its (upstream name, tensor) pairs, consumed one by one.

    Each decoder layer is quantised (CPU int8/int4) as soon as its last tensor arrives. `benchmarks/generate.py`
    feeds random tensors through here to time the real loading path without a 12 GB download.
    """
    import torch
    from transformers import GlmForCausalLM
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    config = glm_config_from_chatglm(cfg)
    dev, torch_dtype, quantize = _resolve_device_dtype(device, dtype, quantize, count_params(cfg))
    cpu_quant = quantize if (quantize and dev.type == "cpu") else None

    with torch.device("meta"):
        model = GlmForCausalLM(config)
    expected = {n: p.shape for n, p in model.named_parameters()}
    layer_todo = {i: {n for n in expected if n.startswith(f"model.layers.{i}.")}
                  for i in range(config.num_hidden_layers)}
    loaded: set[str] = set()

    def assign(name: str, tensor: torch.Tensor) -> None:
        if name not in expected:
            raise ModelError(f"checkpoint tensor maps to unknown parameter {name}")
        if name in loaded:
            raise ModelError(f"parameter {name} appears twice in the checkpoint")
        if tuple(tensor.shape) != tuple(expected[name]):
            raise ModelError(f"{name}: checkpoint shape {tuple(tensor.shape)} does not match the config's "
                             f"{tuple(expected[name])}")
        if not tensor.is_floating_point():
            raise ModelError(f"{name} has dtype {tensor.dtype}: packed/quantised checkpoints are not supported")
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        # quantised layers are built from fp32 copies so rounding happens once, from the original values
        value = tensor.to(device=dev, dtype=torch.float32 if cpu_quant and _quantised(name) else torch_dtype)
        setattr(owner, attr, torch.nn.Parameter(value.clone() if value is tensor else value, requires_grad=False))
        loaded.add(name)

    with torch.inference_mode():
        for raw_name, raw in tensors:
            for name, tensor in convert_tensor(raw_name, raw, config):
                assign(name, tensor)
                m = re.match(r"model\.layers\.(\d+)\.", name)
                if cpu_quant and name == "lm_head.weight":
                    model.lm_head = _quantized_linear(model.lm_head, cpu_quant)
                if m and cpu_quant:
                    todo = layer_todo[int(m.group(1))]
                    todo.discard(name)
                    if not todo:  # layer complete: quantise it now so only one layer is ever held in fp32
                        layer = model.model.layers[int(m.group(1))]
                        _quantize_linears(layer, cpu_quant)
                        layer.to(torch_dtype)
            del raw
    missing = sorted(set(expected) - loaded)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelError(f"{source} is incomplete: missing weights for {shown}")
    # non-persistent buffers were created on the meta device: rebuild the rotary tables for real
    model.model.rotary_emb = GlmRotaryEmbedding(config).to(dev)
    if not cpu_quant:
        model.to(torch_dtype)
    if quantize and dev.type != "cpu":
        _gpu_quantize(model, quantize)
    model.eval()
    model.config.use_cache = True
    return model


def load(path: str | Path, device: str = "auto", dtype: str = "auto", quantize: str | None = None):
    """(model, tokenizer) for a ChatGLM2 checkpoint: a local folder, or a hub id resolved via `resolve_model_path`.

    The tokenizer is None when the folder has no tokenizer.model (e.g. the tiny test checkpoints).
    """
    folder = resolve_model_path(path)
    model = load_model(folder, device=device, dtype=dtype, quantize=quantize)
    tok = ChatGLM2Tokenizer.from_dir(folder) if (folder / "tokenizer.model").is_file() else None
    return model, tok


# -- finding checkpoints ----------------------------------------------------------------------------------------


def _looks_like_hub_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not text.startswith((".", "/", "~"))


def resolve_model_path(path: str | Path) -> Path:
    """A local checkpoint folder for `path`: the folder itself, or a hub snapshot when `path` is a repo id."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    text = str(path)
    if not _looks_like_hub_id(text):
        raise ModelError(f"model folder not found: {path}")
    use_modelscope = os.environ.get("DOCQA_MODEL_HUB", "").lower() == "modelscope" or text.startswith("ZhipuAI/")
    if use_modelscope:
        try:
            from modelscope import snapshot_download as ms_download
        except ImportError:
            raise ModelError(f"{text} is a ModelScope id but the modelscope package is not installed "
                             "(pip install modelscope), or download the model and pass its folder") from None
        try:
            return Path(ms_download(text))
        except Exception as exc:
            raise ModelError(f"cannot download {text} from ModelScope: {exc}") from exc
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelError(f"{text} is not a local folder and huggingface_hub is not installed") from None
    try:
        return Path(snapshot_download(text, local_files_only=offline,
                                      allow_patterns=["*.json", "*.safetensors", "*.bin", "tokenizer.model"]))
    except Exception as exc:
        how = ("HF_HUB_OFFLINE is set and the model is not in the local cache" if offline
               else f"download failed ({type(exc).__name__}: {exc})")
        raise ModelError(f"cannot get {text}: {how}. Download it (e.g. `huggingface-cli download {text}`) or set "
                         "DOCQA_CHATGLM2_PATH to a local chatglm2-6b folder.") from exc


def find_local_checkpoint() -> Path | None:
    """A ChatGLM2-6B folder from $DOCQA_CHATGLM2_PATH or the Hugging Face cache, else None."""
    env = os.environ.get("DOCQA_CHATGLM2_PATH")
    if env:
        p = Path(env).expanduser()
        return p if is_chatglm2_checkpoint(p) else None
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    hub = hub.expanduser()
    for snap in sorted(hub.glob("models--THUDM--chatglm2-6b*/snapshots/*"), reverse=True):
        if snap.is_dir() and is_chatglm2_checkpoint(snap) and (snap / "tokenizer.model").is_file():
            try:
                _weight_files(snap)
            except ModelError:
                continue
            return snap
    return None


# -- generator --------------------------------------------------------------------------------------------------


def messages_to_query_history(messages: Sequence[Message]) -> tuple[str, list[tuple[str, str]]]:
    """Chat messages -> (query, [(question, answer), ...]) for ChatGLM2's round format.

    ChatGLM2 has no system role, so system text is prepended to the next user turn; consecutive user turns are
    joined, an assistant turn without a question gets an empty one.
    """
    history: list[tuple[str, str]] = []
    pending: list[str] = []
    for m in messages:
        role, content = m["role"], m["content"]
        if role in ("system", "user"):
            pending.append(content)
        elif role == "assistant":
            history.append(("\n\n".join(pending), content))
            pending = []
        else:
            raise ModelError(f"unknown chat role {role!r}")
    return "\n\n".join(pending), history


class ChatGLM2Generator(Generator):
    """ChatGLM2-6B (or -32k) run locally through transformers' GlmForCausalLM."""

    is_chat_model = True

    def __init__(self, path: str | Path, device: str = "auto", dtype: str = "auto", max_context: int = 0,
                 quantize: str | None = None):
        folder = resolve_model_path(path)
        cfg = read_chatglm_config(folder)
        self.model, tok = load(folder, device=device, dtype=dtype, quantize=quantize)
        if tok is None:
            raise ModelError(f"{folder} has no tokenizer.model (copy it from THUDM/chatglm2-6b)")
        self.tokenizer: ChatGLM2Tokenizer = tok
        self.name = f"chatglm2:{folder.name}"
        # chatglm2-6b's config says seq_length 32768 but it was tuned at 8K; the 32k variant sets rope_ratio
        native = 32768 if float(cfg.get("rope_ratio", 1) or 1) > 1 else 8192
        self.context_length = int(max_context) if max_context and max_context > 0 else native

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count_tokens(text)

    def render(self, messages: Sequence[Message]) -> str:
        query, history = messages_to_query_history(messages)
        return self.tokenizer.build_chat_prompt(query, history)

    def stream(self, prompt: Prompt, options: GenerationOptions | None = None) -> Iterator[str]:
        options = options or GenerationOptions()
        text = prompt if isinstance(prompt, str) else self.render(prompt)
        ids = self.tokenizer.encode(text)
        yield from stream_text(self.model, ids, options, [self.tokenizer.eos_id], self.tokenizer.decode,
                               self.context_length)  # fmt: skip
