"""ChatGLM2-6B without remote code: its checkpoints mapped onto transformers' native `GlmForCausalLM`.

ChatGLM2 is a GLM decoder (RMSNorm, SwiGLU, grouped-query attention with 2 key/value groups, rotary embedding on
the first half of each head with interleaved pairs), which is exactly what `GlmForCausalLM` implements, so the only
work is renaming weights and splitting the fused ones. Nothing in the checkpoint folder is executed (no
`trust_remote_code`; `.bin` shards go through `torch.load(weights_only=True)`).

    >>> model, tok = load("~/models/chatglm2-6b")      # CPU: int8 weights, ~7 GB of RAM  # doctest: +SKIP
    >>> gen = ChatGLM2Generator("~/models/chatglm2-6b")                                  # doctest: +SKIP
    >>> gen.generate([{"role": "user", "content": "dpkg -L 是做什么的？"}],                 # doctest: +SKIP
    ...              GenerationOptions(max_new_tokens=64))

Weights stream shard by shard onto a model built on the meta device, and each decoder layer is quantised as soon
as its weights are in, so peak memory stays near one copy of the (quantised) weights.

Precision on CPU: big models default to int8 weight-only quantisation (per output channel, bf16 activations,
`torch.ops.aten._weight_int8pack_mm`); `quantize="int4"` uses 4-bit groups of 128 (`_weight_int4pack_mm_for_cpu`);
`dtype="bf16"`/`"fp32"` without `quantize` keeps full weights, as does `quantize="none"` (the `llm_quantize`
setting / `--quantize` flag). Tiny (test) models default to fp32.

Limits: ChatGLM2-network layouts only (chatglm2-6b, chatglm2-6b-32k, chatglm3-6b, chatglm3-6b-32k; the ChatGLM3
chat format and generator are chatglm.py's); the pre-quantised `-int4`/`-int8` repos and ChatGLM-6B v1 are
refused here with a ModelError (chatglm.load takes v1). `rope_ratio` is mapped per member: chatglm2-6b-32k divides
positions by it (linear RoPE scaling), chatglm3-6b-32k multiplies the RoPE base by it (`rope_parameters`).
GPU int8/int4 need `torchao`.

Neighbours: checkpoints.py finds, downloads and reads checkpoint folders (its names are re-exported here);
weights.py streams tensors into the model and picks device/dtype; quantize.py holds the int8/int4 layers;
chatglm.py is the loader for the whole family; glm_runtime.py runs the loaded network (static KV cache, grouped
attention, conversation caches, P-Tuning v2 `prefix_kv`); budget.py sizes the context on CPU from the measured
prefill speed when `max_context` is 0 (`first_token_s`). This module maps the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from docqa.errors import ModelError
from docqa.generate.base import GenerationOptions, Generator, Message, Prompt, runs_on_accelerator, stream_text
from docqa.generate.chatglm2_tokenizer import ChatGLM2Tokenizer

# Checkpoint handling lives in checkpoints.py; these names are re-exported because callers (and tests) have
# always imported them from here.
from docqa.generate.checkpoints import (  # noqa: F401
    find_local_checkpoint,
    is_chatglm2_checkpoint,
    iter_checkpoint_tensors,
    read_chatglm_config,
    resolve_model_path,
)
from docqa.generate.weights import BIG_MODEL_PARAMS, WeightLoader, resolve_device_dtype  # noqa: F401

# the old private name, kept for callers (benchmarks) that used it
_resolve_device_dtype = resolve_device_dtype

EOS_ID = 2
DEFAULT_HUB_ID = "THUDM/chatglm2-6b"


# -- config -----------------------------------------------------------------------------------------------------


def rope_parameters(cfg: dict[str, Any], family: str = "chatglm2") -> dict[str, Any]:
    """GlmConfig's `rope_parameters` for a ChatGLM2/ChatGLM3 config.json: the two members read `rope_ratio`
    differently, so the family decides.

        >>> rope_parameters({"rope_ratio": 16}, "chatglm2")["factor"], rope_parameters({"rope_ratio": 50}, "chatglm3")
        (16.0, {'rope_type': 'default', 'rope_theta': 500000.0, 'partial_rotary_factor': 0.5})
    """
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    rope_ratio = float(cfg.get("rope_ratio", 1) or 1)
    if rope_ratio != 1 and family == "chatglm3":
        # upstream chatglm3-6b-32k multiplies the base (NTK-style) and keeps the positions as they are
        rope["rope_theta"] = 10000.0 * rope_ratio
    elif rope_ratio != 1:
        # upstream chatglm2-6b-32k computes angles for position / rope_ratio: linear position interpolation
        rope.update(rope_type="linear", factor=rope_ratio)
    return rope


def glm_config_from_chatglm(cfg: dict[str, Any], family: str = "chatglm2"):
    """The `transformers.GlmConfig` equivalent to a ChatGLM2 (or, with `family="chatglm3"`, ChatGLM3)
    config.json dict."""
    from transformers import GlmConfig

    heads = int(cfg["num_attention_heads"])
    groups = int(cfg["multi_query_group_num"]) if cfg.get("multi_query_attention") else heads
    rope = rope_parameters(cfg, family)
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
    raise ModelError(
        f"unexpected tensor {name!r} in the checkpoint: not a ChatGLM2 layout docqa can load "
        "(pre-quantised or modified checkpoints are not supported)"
    )


# -- loading ----------------------------------------------------------------------------------------------------


def load_model(
    path: str | Path, device: str = "auto", dtype: str = "auto", quantize: str | None = None, family: str = "chatglm2"
):
    """The GlmForCausalLM (eval mode) for the ChatGLM2/ChatGLM3 checkpoint folder `path`; see `load`."""
    folder = Path(path).expanduser()
    cfg = read_chatglm_config(folder)
    return build_model(cfg, iter_checkpoint_tensors(folder), str(folder), device, dtype, quantize, family)


def build_model(
    cfg: dict[str, Any],
    tensors: Iterable[tuple[str, Any]],
    source: str = "the checkpoint",
    device: str = "auto",
    dtype: str = "auto",
    quantize: str | None = None,
    family: str = "chatglm2",
):
    """GlmForCausalLM from a ChatGLM2 config dict and its (upstream name, tensor) pairs, consumed one by one.

    Each decoder layer is quantised (CPU int8/int4) as soon as its last tensor arrives. `benchmarks/generate.py`
    feeds random tensors through here to time the real loading path without a 12 GB download.
    """
    import torch
    from transformers import GlmForCausalLM
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    config = glm_config_from_chatglm(cfg, family)
    dev, torch_dtype, quantize = resolve_device_dtype(device, dtype, quantize, count_params(cfg))
    cpu_quant = quantize if (quantize and dev.type == "cpu") else None

    with torch.device("meta"):
        model = GlmForCausalLM(config)
    loader = WeightLoader(
        model,
        layer_prefix="model.layers.",
        layers=model.model.layers,
        head="lm_head",
        device=dev,
        dtype=torch_dtype,
        cpu_quant=cpu_quant,
    )
    with torch.inference_mode():
        for raw_name, raw in tensors:
            for name, tensor in convert_tensor(raw_name, raw, config):
                loader.assign(name, tensor)
            del raw
    loader.raise_if_incomplete(source)
    # non-persistent buffers were created on the meta device: rebuild the rotary tables for real
    model.model.rotary_emb = GlmRotaryEmbedding(config).to(dev)
    if not cpu_quant:
        model.to(torch_dtype)
    if quantize and dev.type != "cpu":
        from docqa.generate.quantize import gpu_quantize

        gpu_quantize(model, quantize)
    model.eval()
    model.config.use_cache = True
    return model


def load(
    path: str | Path, device: str = "auto", dtype: str = "auto", quantize: str | None = None, family: str | None = None
):
    """(model, tokenizer) for a ChatGLM2 (or ChatGLM3) checkpoint: a local folder, or a hub id resolved via
    `resolve_model_path`.

    `quantize`: None/"auto" (int8 for big models on CPU), "none", "int8" or "int4" (docqa.config.LLM_QUANTIZE).
    `family` "chatglm2" | "chatglm3"; None decides from the folder's files (checkpoints.v3_evidence), which
    matters for ChatGLM3's RoPE scaling and tokenizer. The tokenizer is None when the folder has no
    tokenizer.model (e.g. the tiny test checkpoints). ChatGLM-6B (v1) folders: docqa.generate.chatglm.load.
    """
    from docqa.generate.checkpoints import v3_evidence

    folder = resolve_model_path(path)
    if family is None:
        family = "chatglm3" if v3_evidence(folder) else "chatglm2"
    model = load_model(folder, device=device, dtype=dtype, quantize=quantize, family=family)
    tok = None
    if (folder / "tokenizer.model").is_file():
        if family == "chatglm3":
            from docqa.generate.chatglm3_tokenizer import ChatGLM3Tokenizer

            tok = ChatGLM3Tokenizer.from_dir(folder)
        else:
            tok = ChatGLM2Tokenizer.from_dir(folder)
    return model, tok


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
    """ChatGLM2-6B (or -32k) run locally: weights in transformers' GlmForCausalLM, run by glm_runtime."""

    is_chat_model = True
    reuses_context = True

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        max_context: int = 0,
        quantize: str | None = None,
        first_token_s: float = 0.0,
        cache_dir: Path | None = None,
    ):
        from docqa.generate.budget import pick_context
        from docqa.generate.glm_runtime import SessionPool

        folder = resolve_model_path(path)
        cfg = read_chatglm_config(folder)
        self.model, tok = load(folder, device=device, dtype=dtype, quantize=quantize, family="chatglm2")
        if tok is None:
            raise ModelError(f"{folder} has no tokenizer.model (copy it from THUDM/chatglm2-6b)")
        self.tokenizer: ChatGLM2Tokenizer = tok
        self.name = f"chatglm2:{folder.name}"
        # chatglm2-6b's config says seq_length 32768 but it was tuned at 8K; the 32k variant sets rope_ratio
        native = 32768 if float(cfg.get("rope_ratio", 1) or 1) > 1 else 8192
        #: on CPU with max_context 0, the context first_token_s allows (docqa.generate.budget), else None
        self.context_length, self.context_budget = pick_context(
            self.model, folder.name, native, max_context, first_token_s, cache_dir
        )
        #: P-Tuning v2 prefix: one (key, value) per layer, [1, groups, pre_seq_len, head_dim] (glm_runtime)
        self.prefix_kv = None
        #: conversation caches: a prompt that extends an earlier one prefills only its new tokens
        self.sessions = SessionPool(self.model)

    @property
    def cheap_generation(self) -> bool:  # type: ignore[override]
        return runs_on_accelerator(self.model)

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count_tokens(text)

    def render(self, messages: Sequence[Message]) -> str:
        query, history = messages_to_query_history(messages)
        return self.tokenizer.build_prompt(query, history)

    def stream(self, prompt: Prompt, options: GenerationOptions | None = None) -> Iterator[str]:
        options = options or GenerationOptions()
        text = prompt if isinstance(prompt, str) else self.render(prompt)
        ids = self.tokenizer.encode(text)
        session = self.sessions.acquire(ids, self.prefix_kv)
        try:
            yield from stream_text(
                self.model, ids, options, [self.tokenizer.eos_id], self.tokenizer.decode, self.context_length, session
            )
        finally:
            session.release()
