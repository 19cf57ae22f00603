"""P-Tuning v2 (deep prefix tuning) for the ChatGLM2/ChatGLM3 network: learned keys and values in front of every
layer's attention, the model's own weights frozen.

    >>> import torch
    >>> enc = PrefixEncoder(pre_seq_len=4, kv_size=2 * 2 * 2 * 16, hidden_size=64, projection=True)
    >>> sorted(enc.upstream_state())
    ['transformer.prefix_encoder.embedding.weight', 'transformer.prefix_encoder.trans.0.bias', 'transformer.prefix_encoder.trans.0.weight', 'transformer.prefix_encoder.trans.2.bias', 'transformer.prefix_encoder.trans.2.weight']
    >>> tuple(enc().shape)
    (4, 128)

`PrefixEncoder` has upstream ChatGLM2's layout exactly: `embedding` [pre_seq_len, num_layers*2*kv_groups*
head_dim], and with `prefix_projection` a two-layer MLP `trans` (Linear(kv_size, hidden), Tanh, Linear(hidden,
kv_size)), so its state is what THUDM's `ptuning/main.py` saves and loads (`transformer.prefix_encoder.*`).
docqa.generate.adapters turns its output into per-layer (key, value) pairs in the multi-query layout and runs the
model with them (`prefix_logits`): real tokens keep RoPE positions from 0, as upstream does.

Limits: upstream's dropout (0.1) on the prefix is not applied (small data sets learn better without it in our
runs); the encoder is trained in float32 whatever the model's dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from docqa.generate.adapters import PREFIX, prefix_layout

#: the prefix embedding's initial spread
INIT_STD = 0.02


class PrefixEncoder(torch.nn.Module):
    """Upstream ChatGLM2's PrefixEncoder: prefix token ids 0..pre_seq_len-1 -> [pre_seq_len, kv_size]."""

    def __init__(self, pre_seq_len: int, kv_size: int, hidden_size: int, projection: bool = False):
        super().__init__()
        self.pre_seq_len, self.kv_size, self.projection = int(pre_seq_len), int(kv_size), bool(projection)
        self.embedding = torch.nn.Embedding(self.pre_seq_len, self.kv_size)
        if self.projection:
            self.trans = torch.nn.Sequential(
                torch.nn.Linear(self.kv_size, hidden_size), torch.nn.Tanh(), torch.nn.Linear(hidden_size, self.kv_size)
            )
        torch.nn.init.normal_(self.embedding.weight, std=INIT_STD)

    def forward(self) -> torch.Tensor:
        out = self.embedding.weight
        return self.trans(out) if self.projection else out

    def upstream_state(self) -> dict[str, torch.Tensor]:
        return {PREFIX + k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_upstream_state(self, tensors: dict[str, Any]) -> None:
        self.load_state_dict({k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)})


class PTuning:
    """The P-Tuning v2 method for `docqa.finetune.train`: a frozen GlmForCausalLM plus a PrefixEncoder."""

    name = "ptuning"

    def __init__(self, model, cfg: dict[str, Any], pre_seq_len: int = 128, projection: bool = False, hidden: int = 0):
        self.model = model
        for p in model.parameters():
            p.requires_grad_(False)
        heads, self.head_dim = int(cfg["num_attention_heads"]), int(cfg["kv_channels"])
        self.groups = int(cfg.get("multi_query_group_num", heads)) if cfg.get("multi_query_attention") else heads
        self.num_layers = int(cfg["num_layers"])
        kv_size = self.num_layers * 2 * self.groups * self.head_dim
        device = next(model.parameters()).device
        self.encoder = PrefixEncoder(pre_seq_len, kv_size, hidden or int(cfg["hidden_size"]), projection).to(device)
        self.dtype = model.model.embed_tokens.weight.dtype

    def parameters(self):
        return list(self.encoder.parameters())

    def prefix_kv(self):
        flat = self.encoder().to(self.dtype)
        return prefix_layout(flat, self.num_layers, self.groups, self.head_dim)

    def logits(self, input_ids: torch.Tensor, keep: Any = 0) -> torch.Tensor:
        from docqa.generate.adapters import prefix_logits

        return prefix_logits(self.model, input_ids, self.prefix_kv(), keep)

    def state(self) -> dict[str, torch.Tensor]:
        return self.encoder.upstream_state()

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.encoder.load_upstream_state(tensors)

    def meta(self) -> dict[str, Any]:
        return {"ptuning": {"pre_seq_len": self.encoder.pre_seq_len, "prefix_projection": self.encoder.projection}}
