"""Fine-tuned adapters at inference: LoRA merged into the weights as they load, P-Tuning v2 prefixes attended by
every token. Written by `docqa finetune` (docqa/finetune/), or an official ChatGLM2 P-Tuning v2 checkpoint folder.

    >>> gen = open_adapted("~/models/chatglm2-6b", "runs/faq-lora")            # doctest: +SKIP
    >>> gen.generate([{"role": "user", "content": "dpkg -L 是做什么的？"}])     # doctest: +SKIP
    >>> layers = prefix_layout(torch.zeros(128, 28 * 2 * 2 * 128), 28, 2, 128)  # doctest: +SKIP
    >>> layers[0][0].shape                                                     # doctest: +SKIP
    torch.Size([1, 2, 128, 128])

An adapter folder holds `adapter.json` (method, base model identity, data hash, steps, losses, hyperparameters)
and `adapter.safetensors`: LoRA as `model.layers.N.<proj>.lora_A|lora_B` (native GlmForCausalLM names), or the
P-Tuning v2 prefix encoder under upstream's names (`transformer.prefix_encoder.embedding.weight`, with projection
`transformer.prefix_encoder.trans.0|2.weight|bias`). An official P-Tuning v2 checkpoint folder (THUDM/ChatGLM2-6B
`ptuning/main.py` output: `pytorch_model.bin` with only the prefix encoder, `config.json` with `pre_seq_len` and
`prefix_projection`) works as it is; whether it has the projection is read from its tensors, so a config that
says otherwise (upstream's `Missing key(s) trans.0.weight`) does not matter.

LoRA: W += (alpha / r) * B @ A is added to each full-precision upstream tensor as it streams out of the
checkpoint (the fused `query_key_value` gets q/k/v's deltas on its row blocks), before docqa's own CPU int8/int4
quantisation, so an adapted model runs exactly as fast as the base. P-Tuning v2: the prefix encoder runs once at
load time and gives `generator.prefix_kv`, one (key, value) pair per layer, each [1, kv_groups, pre_seq_len,
head_dim] in the model's dtype; the real tokens keep their RoPE positions from 0 (ChatGLM2's convention) and
attend to the whole prefix. The generators decode with glm_runtime's sessions, which honour `prefix_kv`;
`prefix_sample_tokens` is the same loop over transformers' own forward and DynamicCache (used when a model has no
session), `prefix_logits` the batched full forward (what training differentiates through) and `greedy_no_cache`
the reference every cached path is tested against (tests/test_finetune.py).

Limits: P-Tuning on ChatGLM2 and ChatGLM3 only; ChatGLM-6B (v1) takes LoRA adapters (its modules keep upstream's
names, so the delta lands on the fused tensor as it is) but no prefix; one adapter at a time; the base
must be the model the adapter was trained on (its identity: a hash of config.json and the tokenizer file), else
ModelError. Official P-Tuning folders carry no identity: their shapes and config are checked instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docqa.errors import ModelError
from docqa.generate.base import GenerationOptions, Message, Prompt, cache_kwarg, sample_dynamic, stream_text
from docqa.generate.chatglm import ChatGLM3Generator, ChatGLM6BGenerator, ChatGLMGenerator

ADAPTER_JSON = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_FORMAT = "docqa-adapter"
METHODS = ("lora", "qlora", "ptuning")
#: the native GlmForCausalLM projections LoRA adapts (attention q/k/v/o and the MLP)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
#: the same for ChatGLM-6B (v1), whose modules keep upstream's names (fused query_key_value)
LORA_TARGETS_V1 = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
_V1_MODULE = re.compile(r"^(transformer\.layers\.\d+\.(?:attention|mlp)\.\w+)\.lora_([AB])$")
PREFIX = "transformer.prefix_encoder."
#: config.json keys that do not change what the weights mean (left out of the base identity)
_IDENTITY_SKIP = {
    "transformers_version",
    "torch_dtype",
    "auto_map",
    "architectures",
    "use_cache",
    "pre_seq_len",
    "prefix_projection",
}


# -- identity -----------------------------------------------------------------------------------------------------


def base_identity(folder: str | Path, family: str | None = None) -> str:
    """sha256 of a checkpoint's config.json (less bookkeeping keys) and its tokenizer file: which base an adapter
    belongs to. Weights are not hashed (12 GB); a merged checkpoint records its adapter in config.json, so it
    has an identity of its own."""
    from docqa.generate.checkpoints import TOKENIZER_FILES, read_config_json

    folder = Path(folder).expanduser()
    cfg = {k: v for k, v in read_config_json(folder).items() if k not in _IDENTITY_SKIP}
    h = hashlib.sha256(json.dumps([family or "", cfg], sort_keys=True).encode())
    for name in dict.fromkeys([TOKENIZER_FILES.get(family or "", "tokenizer.model"), "ice_text.model"]):
        file = folder / name
        if file.is_file():
            h.update(name.encode() + b"\x00" + file.read_bytes())
            break
    return h.hexdigest()


# -- reading ------------------------------------------------------------------------------------------------------


@dataclass
class Adapter:
    """An adapter folder read into memory (its tensors are small: a few MB)."""

    path: Path
    method: str
    tensors: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    official: bool = False  # an upstream P-Tuning v2 checkpoint (no adapter.json)

    @property
    def pre_seq_len(self) -> int:
        return int(self.tensors[PREFIX + "embedding.weight"].shape[0])

    @property
    def prefix_projection(self) -> bool:
        return PREFIX + "trans.0.weight" in self.tensors

    @property
    def lora_scale(self) -> float:
        lora = self.meta.get("lora") or {}
        return float(lora.get("alpha", 16)) / float(lora.get("r", 8))


def _load_tensors(file: Path) -> dict[str, Any]:
    import torch

    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: one clear message
        raise ModelError(f"cannot read adapter weights {file}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{file} is not a plain dict of tensors")
    return dict(state)


def read_adapter(path: str | Path) -> Adapter:
    """The adapter in folder `path`: docqa's own (adapter.json) or an official P-Tuning v2 checkpoint."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"adapter folder not found: {folder}")
    meta_file = folder / ADAPTER_JSON
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {meta_file}: {exc}") from exc
        method = meta.get("method")
        if meta.get("format") != ADAPTER_FORMAT or method not in METHODS:
            raise ModelError(f"{meta_file} is not a docqa adapter (format/method missing)")
        weights = folder / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise ModelError(f"{folder} has {ADAPTER_JSON} but no {ADAPTER_WEIGHTS} (an unfinished run?)")
        return Adapter(folder, method, _load_tensors(weights), meta)
    for name in ("pytorch_model.bin", "model.safetensors", ADAPTER_WEIGHTS):
        file = folder / name
        if file.is_file():
            break
    else:
        raise ModelError(
            f"{folder} is not an adapter: expected {ADAPTER_JSON} (docqa finetune) or an official P-Tuning v2 "
            "checkpoint (pytorch_model.bin with transformer.prefix_encoder.* and config.json)"
        )
    tensors = {k: v for k, v in _load_tensors(file).items() if k.startswith(PREFIX)}
    if PREFIX + "embedding.weight" not in tensors:
        raise ModelError(
            f"{file} holds no {PREFIX}embedding.weight: not a P-Tuning v2 checkpoint (a full model? use it as --model)"
        )
    cfg: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        try:
            cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {folder / 'config.json'}: {exc}") from exc
    adapter = Adapter(folder, "ptuning", tensors, {"config": cfg}, official=True)
    if cfg.get("pre_seq_len") not in (None, adapter.pre_seq_len):
        raise ModelError(
            f"{folder}: config.json says pre_seq_len {cfg['pre_seq_len']} but the prefix encoder has "
            f"{adapter.pre_seq_len} rows"
        )
    return adapter


def _kv_size(cfg: dict[str, Any]) -> int:
    heads = int(cfg["num_attention_heads"])
    groups = int(cfg.get("multi_query_group_num", heads)) if cfg.get("multi_query_attention", True) else heads
    return int(cfg["num_layers"]) * 2 * groups * int(cfg["kv_channels"])


def check_base(adapter: Adapter, folder: str | Path, cfg: dict[str, Any], family: str) -> None:
    """ModelError unless `adapter` was made for the checkpoint in `folder` (config `cfg`, member `family`)."""
    if adapter.official:
        theirs = adapter.meta.get("config", {})
        for key in ("num_layers", "hidden_size", "kv_channels", "multi_query_group_num", "padded_vocab_size"):
            if key in theirs and key in cfg and theirs[key] != cfg[key]:
                raise ModelError(
                    f"the P-Tuning checkpoint {adapter.path} was trained on a different model ({key} {theirs[key]} "
                    f"there, {cfg[key]} in {folder})"
                )
    else:
        want = (adapter.meta.get("base") or {}).get("identity")
        have = base_identity(folder, family)
        if want != have:
            made = (adapter.meta.get("base") or {}).get("path", "another model")
            raise ModelError(
                f"the adapter {adapter.path} was trained on {made} (identity {str(want)[:12]}), not on {folder} "
                f"(identity {have[:12]}): use it with its own base model"
            )
    if adapter.method == "ptuning":
        width = int(adapter.tensors[PREFIX + "embedding.weight"].shape[1])
        if not adapter.prefix_projection and width != _kv_size(cfg):
            raise ModelError(
                f"the prefix encoder of {adapter.path} is {width} wide, but {folder} needs num_layers*2*kv_groups*"
                f"head_dim = {_kv_size(cfg)}"
            )


# -- LoRA ---------------------------------------------------------------------------------------------------------

_NATIVE = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])$")
_UPSTREAM_OF = {
    "o_proj": "self_attention.dense.weight",
    "gate_up_proj": "mlp.dense_h_to_4h.weight",
    "down_proj": "mlp.dense_4h_to_h.weight",
}


def lora_pairs(adapter: Adapter) -> dict[tuple[int, str] | str, tuple[Any, Any]]:
    """{(layer, projection): (A [r, in], B [out, r])} of a LoRA adapter on the GLM network; for ChatGLM-6B (v1),
    whose modules carry upstream's names, {upstream weight name: (A, B)}."""
    pairs: dict[Any, dict[str, Any]] = {}
    for name, t in adapter.tensors.items():
        m = _NATIVE.match(name)
        if m:
            pairs.setdefault((int(m.group(1)), m.group(3)), {})[m.group(4)] = t
            continue
        v1 = _V1_MODULE.match(name)
        if not v1:
            raise ModelError(f"unexpected tensor {name!r} in LoRA adapter {adapter.path}")
        pairs.setdefault(v1.group(1) + ".weight", {})[v1.group(2)] = t
    out = {}
    for key, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ModelError(f"LoRA adapter {adapter.path}: {key} lacks lora_A or lora_B")
        out[key] = (ab["A"], ab["B"])
    return out


def merge_lora_tensors(
    tensors: Iterable[tuple[str, Any]], adapter: Adapter, cfg: dict[str, Any], keep_dtype: bool = False
) -> Iterator[tuple[str, Any]]:
    """The checkpoint's (upstream name, tensor) stream with W += scale * B @ A added to every adapted tensor, in
    float32 (the loader rounds once, to its own dtype or int8/int4; `keep_dtype` casts back to the tensor's own
    dtype, for writing a checkpoint). Raises when a delta found no tensor."""
    import torch

    pairs = lora_pairs(adapter)
    scale = adapter.lora_scale
    rows: dict[str, tuple[int, int]] = {}
    if "kv_channels" in cfg:  # the GLM network: q/k/v are row blocks of the fused upstream tensor
        heads, hd = int(cfg["num_attention_heads"]), int(cfg["kv_channels"])
        groups = int(cfg.get("multi_query_group_num", heads)) if cfg.get("multi_query_attention") else heads
        rows = {
            "q_proj": (0, heads * hd),
            "k_proj": (heads * hd, groups * hd),
            "v_proj": ((heads + groups) * hd, groups * hd),
        }
    done: set[Any] = set()
    layer_re = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
    for name, tensor in tensors:
        m = layer_re.match(name)
        if name in pairs and tensor.is_floating_point():  # ChatGLM-6B (v1): same names, no splitting
            a, b = pairs[name]
            w = tensor.to(torch.float32) + scale * (b.to(torch.float32) @ a.to(torch.float32))
            done.add(name)
            tensor = w.to(tensor.dtype) if keep_dtype else w
        elif m and tensor.is_floating_point():
            i, rest = int(m.group(1)), m.group(2)
            todo = []
            if rest == "self_attention.query_key_value.weight":
                todo = [p for p in ("q_proj", "k_proj", "v_proj") if (i, p) in pairs]
            else:
                todo = [p for p, up in _UPSTREAM_OF.items() if up == rest and (i, p) in pairs]
            if todo:
                w = tensor.to(torch.float32).clone()
                for p in todo:
                    a, b = pairs[(i, p)]
                    delta = scale * (b.to(torch.float32) @ a.to(torch.float32))
                    if p in rows:
                        start, n = rows[p]
                        w[start : start + n] += delta
                    else:
                        w += delta
                    done.add((i, p))
                tensor = w.to(tensor.dtype) if keep_dtype else w
        yield name, tensor
    missing = sorted(set(pairs) - done)
    if missing:
        raise ModelError(f"LoRA adapter {adapter.path} adapts weights the checkpoint lacks: {missing[:3]}")


# -- P-Tuning v2 --------------------------------------------------------------------------------------------------


def prefix_layout(flat, num_layers: int, groups: int, head_dim: int) -> list[tuple[Any, Any]]:
    """The prefix encoder's output [pre_seq_len, num_layers*2*groups*head_dim] -> per layer (key, value), each
    [1, groups, pre_seq_len, head_dim]. Upstream views it as [pre, 2*num_layers, groups, head_dim] and takes
    rows 2i / 2i+1 as layer i's key / value."""
    pre = flat.shape[0]
    kv = flat.view(pre, num_layers * 2, groups, head_dim).permute(1, 2, 0, 3)  # [2L, groups, pre, hd]
    return [(kv[2 * i].unsqueeze(0), kv[2 * i + 1].unsqueeze(0)) for i in range(num_layers)]


def prefix_encoder_output(tensors: dict[str, Any]):
    """What upstream's PrefixEncoder returns for prefix tokens 0..pre_seq_len-1 (float32, no grad)."""
    import torch

    emb = tensors[PREFIX + "embedding.weight"].to(torch.float32)
    if PREFIX + "trans.0.weight" not in tensors:
        return emb
    w0, b0 = tensors[PREFIX + "trans.0.weight"].float(), tensors[PREFIX + "trans.0.bias"].float()
    w2, b2 = tensors[PREFIX + "trans.2.weight"].float(), tensors[PREFIX + "trans.2.bias"].float()
    return torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(emb, w0, b0)), w2, b2)


def prefix_from_adapter(adapter: Adapter, cfg: dict[str, Any], dtype=None, device=None) -> list[tuple[Any, Any]]:
    """`generator.prefix_kv` for a P-Tuning adapter on a model with ChatGLM config `cfg`."""
    heads, hd = int(cfg["num_attention_heads"]), int(cfg["kv_channels"])
    groups = int(cfg.get("multi_query_group_num", heads)) if cfg.get("multi_query_attention") else heads
    flat = prefix_encoder_output(adapter.tensors).to(device=device, dtype=dtype)
    if flat.shape[1] != _kv_size(cfg):
        raise ModelError(
            f"prefix encoder of {adapter.path} gives {flat.shape[1]} values per token, not {_kv_size(cfg)}"
        )
    return [(k.contiguous(), v.contiguous()) for k, v in prefix_layout(flat, int(cfg["num_layers"]), groups, hd)]


def prefix_cache(model, prefix_kv: Sequence[tuple[Any, Any]], batch: int = 1):
    """A DynamicCache holding the prefix for every layer (expanded to `batch`); differentiable."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:
        cache = DynamicCache()
    for i, (k, v) in enumerate(prefix_kv):
        cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)
    return cache


def prefix_logits(model, input_ids, prefix_kv: Sequence[tuple[Any, Any]] | None, logits_to_keep: Any = 0):
    """Logits [batch, seq, vocab] of a full forward over `input_ids` (a LongTensor [batch, seq]) with the prefix
    in front: positions 0..seq-1, every token attends to the whole prefix. No cache is kept. `logits_to_keep`
    as in transformers (0 = all positions; a LongTensor of positions = only those)."""
    import torch

    if not prefix_kv:
        return model(input_ids=input_ids, use_cache=False, logits_to_keep=logits_to_keep).logits
    b, s = input_ids.shape
    pre = prefix_kv[0][0].shape[2]
    pos = torch.arange(s, device=input_ids.device).unsqueeze(0).expand(b, s)
    mask = torch.ones(b, pre + s, dtype=torch.long, device=input_ids.device)
    kw = {cache_kwarg(model): prefix_cache(model, prefix_kv, b)}
    out = model(
        input_ids=input_ids, position_ids=pos, attention_mask=mask, use_cache=True, logits_to_keep=logits_to_keep, **kw
    )
    return out.logits


def prefix_sample_tokens(
    model, input_ids: Sequence[int], options: GenerationOptions, eos_ids: Iterable[int], prefix_kv
) -> Iterator[int]:
    """base.sample_tokens with a P-Tuning prefix in the cache: prefill, then one token per step; positions count
    from 0 at the first real token."""
    import torch

    with torch.inference_mode():
        cache = prefix_cache(model, prefix_kv)
    return sample_dynamic(model, input_ids, options, eos_ids, cache=cache, prefix_len=prefix_kv[0][0].shape[2])


def greedy_no_cache(model, input_ids: Sequence[int], max_new_tokens: int, eos_ids: Iterable[int], prefix_kv=None):
    """Greedy decoding by a full forward per token (no KV cache): the reference `prefix_sample_tokens` must
    match. Slow (quadratic); for tests."""
    import torch

    eos = {int(e) for e in eos_ids}
    ids = list(input_ids)
    out: list[int] = []
    device = prefix_kv[0][0].device if prefix_kv else next(model.parameters()).device
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = prefix_logits(model, torch.tensor([ids], device=device), prefix_kv)
            nxt = int(torch.argmax(logits[0, -1].float()))
            if nxt in eos:
                break
            out.append(nxt)
            ids.append(nxt)
    return out


def prefix_stream_text(
    model,
    input_ids: Sequence[int],
    options: GenerationOptions,
    eos_ids: Iterable[int],
    decode: Callable[[list[int]], str],
    context_length: int,
    prefix_kv,
) -> Iterator[str]:
    """base.stream_text over `prefix_sample_tokens`."""

    def sampler(model, ids, opts, eos):
        return prefix_sample_tokens(model, ids, opts, eos, prefix_kv)

    return stream_text(model, input_ids, options, eos_ids, decode, context_length, sampler=sampler)


# -- generators ---------------------------------------------------------------------------------------------------


class _PrefixStream:
    """The base generator's stream (glm_runtime sessions honour `prefix_kv`); a model without sessions (not a
    GlmForCausalLM) with a prefix streams through `prefix_stream_text` instead."""

    prefix_kv: list[tuple[Any, Any]] | None = None

    def stream(self, prompt: Prompt, options: GenerationOptions | None = None) -> Iterator[str]:
        if not self.prefix_kv or getattr(self, "sessions", None) is not None:
            return super().stream(prompt, options)  # type: ignore[misc]
        return prefix_stream_text(
            self.model,  # type: ignore[attr-defined]
            self.prompt_ids(prompt),  # type: ignore[attr-defined]
            options or GenerationOptions(),
            self.stop_ids(),  # type: ignore[attr-defined]
            self.display,  # type: ignore[attr-defined]
            self.context_length,  # type: ignore[attr-defined]
            self.prefix_kv,
        )


class AdaptedChatGLM2(_PrefixStream, ChatGLMGenerator):
    """ChatGLM2-6B with an adapter: chatglm2.ChatGLM2Generator's prompt, over a model built here."""

    family = "chatglm2"

    def render(self, messages: Sequence[Message]) -> str:
        from docqa.generate.chatglm2 import messages_to_query_history

        query, history = messages_to_query_history(messages)
        return self.tokenizer.build_prompt(query, history)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        return self.tokenizer.encode(prompt if isinstance(prompt, str) else self.render(prompt))


class AdaptedChatGLM3(_PrefixStream, ChatGLM3Generator):
    """ChatGLM3-6B with an adapter."""


def open_adapted(
    path: str | Path,
    adapter_path: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str | None = None,
    max_context: int = 0,
    family: str | None = None,
    first_token_s: float = 0.0,
    cache_dir: Path | None = None,
):
    """The generator for ChatGLM checkpoint `path` with the adapter in `adapter_path` applied (see the module
    docstring); ModelError for a wrong base, a v1 model, or a damaged adapter."""
    from docqa.generate.chatglm import family_of, load_tokenizer
    from docqa.generate.chatglm2 import build_model
    from docqa.generate.checkpoints import (
        TOKENIZER_FILES,
        iter_checkpoint_tensors,
        read_chatglm_config,
        read_config_json,
        resolve_model_path,
    )

    folder = resolve_model_path(path)
    fam = family_of(folder, family)
    adapter = read_adapter(adapter_path)
    if fam == "chatglm":
        if adapter.method == "ptuning":
            raise ModelError("P-Tuning adapters for ChatGLM-6B (v1) are not supported: use a LoRA adapter")
        cfg = read_config_json(folder)
    else:
        cfg = read_chatglm_config(folder)
    check_base(adapter, folder, cfg, fam)
    tensors: Iterable[tuple[str, Any]] = iter_checkpoint_tensors(folder)
    if adapter.method in ("lora", "qlora"):
        tensors = merge_lora_tensors(tensors, adapter, cfg)
    if fam == "chatglm":
        from docqa.generate.chatglm6b import build_model as build_v1

        model = build_v1(cfg, tensors, str(folder), device, dtype, quantize)
    else:
        model = build_model(cfg, tensors, str(folder), device, dtype, quantize, fam)
    tok = load_tokenizer(folder, fam)
    if tok is None:
        raise ModelError(f"{folder} has no {TOKENIZER_FILES[fam]} (copy it from the THUDM repository)")
    cls = {"chatglm3": AdaptedChatGLM3, "chatglm": ChatGLM6BGenerator}.get(fam, AdaptedChatGLM2)
    gen = cls(folder, model, tok, cfg, max_context, first_token_s=first_token_s, cache_dir=cache_dir)
    gen.name = f"{gen.name}+{adapter.method}:{adapter.path.name}"
    if adapter.method == "ptuning":  # (refused for v1 above)
        emb = model.model.embed_tokens.weight
        gen.prefix_kv = prefix_from_adapter(adapter, cfg, dtype=emb.dtype, device=emb.device)
    return gen
