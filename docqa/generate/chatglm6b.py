"""ChatGLM-6B (v1) in plain torch: transformers has no native class for it, and its remote code is not run.

The network is THUDM's `modeling_chatglm.py` (revision 8b7d335) re-derived, including where that code differs
from the GLM paper, because each difference changes the logits (tests/data/chatglm6b/README.md lists them):

- post-LayerNorm blocks whose residual carries the *normalised* input, scaled by alpha = sqrt(2 * 28) whatever
  `num_layers` says (upstream builds GLMBlock without it, so its default of 28 stays);
- a fused QKV Linear laid out per head (q|k|v of head 0, then head 1, ...), with biases;
- 2-D rotary positions: the first half of each head turns with the position ids, the second with the block
  position ids, NeoX-style, with `inv_freq` rounded to fp16 as upstream stores it;
- the tanh GeLU, and the `[gMASK]`/`[MASK]`/`<sop>` rules for positions and the attention mask.

    >>> model = ChatGLM6BForCausalLM.from_folder("tests/data/chatglm6b/tiny-chatglm6b")   # doctest: +SKIP
    >>> model(input_ids=torch.tensor([[516, 586, 1001, 1004]])).logits.shape             # doctest: +SKIP
    torch.Size([1, 4, 1100])
    >>> model.generate(input_ids=ids, max_new_tokens=16, do_sample=False)                # doctest: +SKIP

The KV cache is a transformers `DynamicCache` (so `docqa.generate.base.sample_tokens` drives this model like any
other); the prompt's `<sop>` and mask positions are kept on it, because every later step's position ids depend on
them. Weights stream in and are quantised per layer on CPU exactly as for ChatGLM2 (weights.py, quantize.py).

Limits: one sequence, or a batch without padding (left-padded batches are not supported); P-tuning v2 prefixes
(`pre_seq_len`) and the pre-quantised `-int4`/`-int8` repos are refused; an input without `<sop>` or without
any `[gMASK]`/`[MASK]` is a ModelError (upstream fails there too). Generation lives in chatglm6b_generate.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from docqa.errors import ModelError
from docqa.generate.chatglm6b_generate import GenerateMixin, model_output

#: upstream's GLMBlock keeps its default num_layers=28 for the residual scale, whatever the config says
RESIDUAL_ALPHA = math.sqrt(2 * 28)
#: upstream's masked score (then scaled by layer_id + 1); unlike -inf it turns a fully masked row uniform
MASKED_SCORE = -10000.0


class ChatGLM6BConfig(PretrainedConfig):
    """A ChatGLM-6B config.json, as a PretrainedConfig so transformers' caches and outputs accept it.

    The defaults are upstream's class defaults, which predate the "slim" vocabulary (150,528 rows, special ids from
    150,000): a config.json without its token ids gets what upstream would give it. The released config sets all.
    """

    model_type = "docqa_chatglm6b"

    def __init__(
        self,
        vocab_size: int = 150528,
        hidden_size: int = 4096,
        num_layers: int = 28,
        num_attention_heads: int = 32,
        inner_hidden_size: int = 16384,
        layernorm_epsilon: float = 1e-5,
        position_encoding_2d: bool = True,
        max_sequence_length: int = 2048,
        bos_token_id: int = 150004,
        eos_token_id: int = 150005,
        mask_token_id: int = 150000,
        gmask_token_id: int = 150001,
        pad_token_id: int = 0,
        use_cache: bool = True,
        **kwargs,
    ):
        self.use_cache = use_cache
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.num_hidden_layers = num_layers  # the name transformers' caches read
        self.num_attention_heads, self.inner_hidden_size = num_attention_heads, inner_hidden_size
        self.layernorm_epsilon, self.position_encoding_2d = layernorm_epsilon, position_encoding_2d
        self.max_sequence_length = max_sequence_length
        self.mask_token_id, self.gmask_token_id = mask_token_id, gmask_token_id
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)

    @classmethod
    def from_chatglm(cls, cfg: dict[str, Any]) -> ChatGLM6BConfig:
        """From a config.json dict; keys the network does not read (auto_map, architectures...) are dropped."""
        if cfg.get("pre_seq_len"):
            raise ModelError("this ChatGLM-6B checkpoint carries a P-tuning v2 prefix (pre_seq_len): not supported")
        keys = (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_attention_heads",
            "inner_hidden_size",
            "layernorm_epsilon",
            "position_encoding_2d",
            "max_sequence_length",
            "bos_token_id",
            "eos_token_id",
            "mask_token_id",
            "gmask_token_id",
            "pad_token_id",
        )
        missing = [k for k in keys[:5] if k not in cfg]
        if missing:
            raise ModelError(f"config.json lacks {', '.join(missing)}: not a ChatGLM-6B (v1) config")
        return cls(**{k: cfg[k] for k in keys if cfg.get(k) is not None})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def count_params(cfg: dict[str, Any]) -> int:
    """Parameters of a ChatGLM-6B model from its config.json (weights only: close enough to size it)."""
    h, f, v, n = (int(cfg[k]) for k in ("hidden_size", "inner_hidden_size", "vocab_size", "num_layers"))
    return 2 * v * h + n * (4 * h * h + 2 * h * f)


# -- positions and mask -------------------------------------------------------------------------------------------


@dataclass
class Prefix:
    """Where each row's `<sop>` (`ctx`, the bidirectional prefix's length) and mask token (`mp`) are."""

    ctx: torch.Tensor  # [b] long
    mp: torch.Tensor  # [b] long
    gmask: torch.Tensor  # [b] bool: the mask token is [gMASK] (else [MASK])

    @classmethod
    def of(cls, input_ids: torch.Tensor, config: ChatGLM6BConfig) -> Prefix:
        ctx, mp, gmask = [], [], []
        for row in input_ids.tolist():
            if config.bos_token_id not in row:
                raise ModelError(
                    f"ChatGLM-6B input needs <sop> (id {config.bos_token_id}): the tokenizer's "
                    "encode() ends every prompt with [gMASK] <sop>"
                )
            mask = config.gmask_token_id if config.gmask_token_id in row else config.mask_token_id
            if mask not in row:
                raise ModelError(
                    f"ChatGLM-6B input needs [gMASK] (id {config.gmask_token_id}) or [MASK] "
                    f"(id {config.mask_token_id}) before <sop>"
                )
            ctx.append(row.index(config.bos_token_id))
            mp.append(row.index(mask))
            gmask.append(mask == config.gmask_token_id)
        device = input_ids.device
        return cls(
            torch.tensor(ctx, device=device), torch.tensor(mp, device=device), torch.tensor(gmask, device=device)
        )

    def position_ids(self, start: int, length: int, two_d: bool) -> torch.Tensor:
        """Upstream's ids for absolute positions start..start+length-1: [b, 2, n] (2-D) or [b, n]."""
        i = torch.arange(start, start + length, device=self.ctx.device)[None, :]
        ctx, mp = self.ctx[:, None], self.mp[:, None]
        after = i >= ctx
        if two_d:
            pos = torch.where(after, mp, i)
            block = torch.where(after, i - ctx + 1, torch.zeros_like(i))
            return torch.stack([pos, block], dim=1)
        # 1-D (unused by the released model), as upstream: the prompt moves to mp after <sop> only for [MASK];
        # every cached step sits at mp
        if start:
            return mp.expand(-1, length)
        return torch.where(after & ~self.gmask[:, None], mp, i.expand_as(after))

    def mask(self, start: int, length: int, total: int) -> torch.Tensor:
        """[b, 1, n, total] bool, True = masked: causal, except that every row sees the whole prefix (< ctx)."""
        rows = torch.arange(start, start + length, device=self.ctx.device)[:, None]
        cols = torch.arange(total, device=self.ctx.device)[None, :]
        masked = (cols > rows)[None] & (cols[None] >= self.ctx[:, None, None])
        return masked[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary:
    """cos/sin for given position ids, from upstream's fp16-rounded `inv_freq` (the rounding shows at 1e-4)."""

    def __init__(self, dim: int, device):
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device).float() / dim))
        self.inv_freq = inv.half().float()

    def __call__(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq.to(positions.device)  # [b, n, dim/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]  # [b, n, 1, dim]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


# -- the network ----------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, config: ChatGLM6BConfig, layer_id: int):
        super().__init__()
        h = config.hidden_size
        self.layer_id, self.heads, self.head_dim = layer_id, config.num_attention_heads, config.head_dim
        self.two_d = config.position_encoding_2d
        self.query_key_value = nn.Linear(h, 3 * h)
        self.dense = nn.Linear(h, h)

    def _rotate(self, x: torch.Tensor, rope: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        if not self.two_d:
            return _apply_rotary(x, *rope[0])
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([_apply_rotary(x1, *rope[0]), _apply_rotary(x2, *rope[1])], dim=-1)

    def forward(self, x, rope, mask, cache: DynamicCache | None) -> torch.Tensor:
        b, n, _ = x.shape
        # per-head fused layout: [b, n, heads, q|k|v]
        q, k, v = self.query_key_value(x).view(b, n, self.heads, 3 * self.head_dim).chunk(3, dim=-1)
        q, k = self._rotate(q, rope), self._rotate(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, heads, n, hd]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_id)
        # upstream's fp16 guard: divide q by (layer_id + 1) too and multiply the fp32 scores back
        coeff = float(self.layer_id + 1)
        scores = torch.matmul(q / (math.sqrt(self.head_dim) * coeff), k.transpose(-1, -2))
        if mask is not None:
            scores = scores.masked_fill(mask, MASKED_SCORE)
        probs = torch.softmax(scores.float() * coeff, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.dense(out)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Upstream's tanh GeLU, written as upstream writes it (erf GeLU is ~5e-4 off)."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


class MLP(nn.Module):
    """Upstream calls it GLU, but it is not gated."""

    def __init__(self, config: ChatGLM6BConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.inner_hidden_size)
        self.dense_4h_to_h = nn.Linear(config.inner_hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(gelu(self.dense_h_to_4h(x)))


class GLMBlock(nn.Module):
    def __init__(self, config: ChatGLM6BConfig, layer_id: int):
        super().__init__()
        h, eps = config.hidden_size, config.layernorm_epsilon
        self.input_layernorm = nn.LayerNorm(h, eps=eps)
        self.attention = SelfAttention(config, layer_id)
        self.post_attention_layernorm = nn.LayerNorm(h, eps=eps)
        self.mlp = MLP(config)

    def forward(self, x, rope, mask, cache):
        a = self.input_layernorm(x)
        h = a * RESIDUAL_ALPHA + self.attention(a, rope, mask, cache)
        m = self.post_attention_layernorm(h)
        return m * RESIDUAL_ALPHA + self.mlp(m)


class ChatGLM6BTransformer(nn.Module):
    """Upstream's `transformer` submodule; parameter names match the checkpoint's, so nothing is renamed."""

    def __init__(self, config: ChatGLM6BConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GLMBlock(config, i) for i in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


class ChatGLM6BForCausalLM(GenerateMixin, nn.Module):
    """ChatGLM-6B: `__call__(input_ids=...)` -> `.logits` (and the cache), `generate(...)` with the KV cache
    (chatglm6b_generate.py)."""

    def __init__(self, config: ChatGLM6BConfig):
        super().__init__()
        self.config = config
        self.transformer = ChatGLM6BTransformer(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.init_rotary()

    def init_rotary(self, device=None) -> None:
        """(Re)build the rotary table; needed after building on the meta device."""
        two_d = self.config.position_encoding_2d
        self.rotary = Rotary(self.config.head_dim // (2 if two_d else 1), device)

    @property
    def device(self) -> torch.device:
        return self.transformer.final_layernorm.weight.device

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values: DynamicCache | None = None,
        **_ignored,
    ) -> CausalLMOutputWithPast:
        """Logits for `input_ids` [b, n]. Position ids and mask follow upstream's rules unless given
        (`position_ids` [b, 2, n]; `attention_mask` bool [b, 1, n, total], True = masked, as upstream's).
        `cache` (transformers 5's name) and `past_key_values` (4.x's) are the same argument."""
        use_cache = self.config.use_cache if use_cache is None else use_cache
        cache = cache if cache is not None else past_key_values
        if cache is None and use_cache:
            cache = DynamicCache()
        start = cache.get_seq_length() if cache is not None else 0
        prefix = getattr(cache, "glm_prefix", None) if start else None
        if prefix is None:
            if start:
                raise ModelError("this cache was not filled by a ChatGLM-6B prompt")
            prefix = Prefix.of(input_ids, self.config)
            if cache is not None:
                cache.glm_prefix = prefix  # later steps take their positions from the prompt's <sop>/mask
        n = input_ids.shape[1]
        if position_ids is None:
            position_ids = prefix.position_ids(start, n, self.config.position_encoding_2d)
        if attention_mask is None or attention_mask.dtype != torch.bool or attention_mask.dim() != 4:
            attention_mask = prefix.mask(start, n, start + n)
        x = self.transformer.word_embeddings(input_ids)
        pos = position_ids.to(x.device)
        rope = (
            [self.rotary(pos[:, 0], x.dtype), self.rotary(pos[:, 1], x.dtype)]
            if pos.dim() == 3
            else [self.rotary(pos, x.dtype)]
        )
        mask = attention_mask.to(x.device) if bool(attention_mask.any()) else None
        for layer in self.transformer.layers:
            x = layer(x, rope, mask, cache)
        x = self.transformer.final_layernorm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(x).float()
        return model_output(CausalLMOutputWithPast, logits=logits, cache=cache if use_cache else None)


# -- loading --------------------------------------------------------------------------------------------------


def build_model(
    cfg: dict[str, Any],
    tensors,
    source: str = "the checkpoint",
    device: str = "auto",
    dtype: str = "auto",
    quantize: str | None = None,
) -> ChatGLM6BForCausalLM:
    """ChatGLM6BForCausalLM from a config.json dict and its (upstream name, tensor) pairs, consumed one by one;
    each layer is quantised (CPU int8/int4) as soon as its last tensor is in. See chatglm2.build_model."""
    from docqa.generate.weights import WeightLoader, resolve_device_dtype

    config = ChatGLM6BConfig.from_chatglm(cfg)
    dev, torch_dtype, quantize = resolve_device_dtype(device, dtype, quantize, count_params(cfg))
    cpu_quant = quantize if (quantize and dev.type == "cpu") else None
    with torch.device("meta"):
        model = ChatGLM6BForCausalLM(config)
    loader = WeightLoader(
        model,
        layer_prefix="transformer.layers.",
        layers=model.transformer.layers,
        head="lm_head",
        device=dev,
        dtype=torch_dtype,
        cpu_quant=cpu_quant,
    )
    embedding = None
    with torch.inference_mode():
        for name, tensor in tensors:
            if name.endswith("attention.rotary_emb.inv_freq"):
                continue  # upstream ignores it on load too and recomputes it
            if name not in loader.expected:
                raise ModelError(
                    f"unexpected tensor {name!r} in the checkpoint: not a ChatGLM-6B layout docqa "
                    "can load (pre-quantised or modified checkpoints are not supported)"
                )
            if name == "transformer.word_embeddings.weight":
                embedding = tensor
            loader.assign(name, tensor)
        if "lm_head.weight" not in loader.loaded and embedding is not None:
            loader.assign("lm_head.weight", embedding)  # tied: upstream's from_pretrained shares the two
    loader.raise_if_incomplete(source)
    model.init_rotary(dev)
    if not cpu_quant:
        model.to(torch_dtype)
    if quantize and dev.type != "cpu":
        from docqa.generate.quantize import gpu_quantize

        gpu_quantize(model, quantize)
    model.eval()
    return model


def load_model(path, device: str = "auto", dtype: str = "auto", quantize: str | None = None):
    """The ChatGLM6BForCausalLM (eval mode) for a ChatGLM-6B checkpoint folder; nothing in it is executed."""
    from pathlib import Path

    from docqa.generate.checkpoints import iter_checkpoint_tensors, read_config_json

    folder = Path(path).expanduser()
    cfg = read_config_json(folder)
    return build_model(cfg, iter_checkpoint_tensors(folder), str(folder), device, dtype, quantize)
