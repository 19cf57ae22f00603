"""LoRA and QLoRA on the native GlmForCausalLM (ChatGLM2/ChatGLM3), with peft.

    >>> pairs = {"model.layers.0.self_attn.q_proj.lora_A": "A", "model.layers.0.self_attn.q_proj.lora_B": "B"}
    >>> sorted(pairs) == sorted(native_names("base_model.model.model.layers.0.self_attn.q_proj", "A", "B"))
    True

LoRA adapters go on the attention projections (q, k, v, o: the fused upstream `query_key_value` is split into
q/k/v in the native model) and the MLP (`gate_up_proj`, `down_proj`); the rest is frozen. The adapter is saved as
plain `lora_A` [r, in] / `lora_B` [out, r] tensors under the native names (docqa.generate.adapters merges them
into the upstream weights at load time, or `docqa finetune merge` writes a merged checkpoint).

QLoRA: the adapted linears of the decoder layers are replaced by bitsandbytes NF4 `Linear4bit` (double
quantisation, compute in the activations' dtype) before peft wraps them: the base is held in 4 bits, the LoRA
weights in float32. bitsandbytes >= 0.46 has a CPU backend, so QLoRA runs on CPU (slowly: each matmul
dequantises) as well as on CUDA; docqa tells you plainly when the installed bitsandbytes cannot quantise on the
chosen device. The 8-bit/paged optimisers of bitsandbytes are CUDA-only and not used.

ChatGLM-6B (v1): LoRA on its own network's `query_key_value`, `dense`, `dense_h_to_4h`, `dense_4h_to_h` (upstream
names); no QLoRA there.

Limits: no LoRA on the embedding or output layer; dropout 0 by default (deterministic resumes).
"""

from __future__ import annotations

from typing import Any

import torch

from docqa.errors import ModelError
from docqa.generate.adapters import LORA_TARGETS, LORA_TARGETS_V1


def native_names(module_name: str, a, b) -> dict[str, Any]:
    """peft's module name (`base_model.model.model.layers.0.self_attn.q_proj`) -> our tensor names."""
    name = module_name.split("base_model.model.", 1)[-1]
    return {f"{name}.lora_A": a, f"{name}.lora_B": b}


def _check_bnb(device: torch.device):
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise ModelError(f"QLoRA needs bitsandbytes (pip install bitsandbytes): {exc}") from None
    try:
        probe = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4").to(device)
        x = torch.randn(1, 64, device=device)
        bnb.matmul_4bit(x, probe.t(), quant_state=probe.quant_state)
    except Exception as exc:
        where = "on CPU (its CPU backend needs bitsandbytes >= 0.46)" if device.type == "cpu" else f"on {device}"
        raise ModelError(
            f"bitsandbytes {getattr(bnb, '__version__', '?')} cannot run 4-bit NF4 {where}: {type(exc).__name__}: "
            f"{exc}. Use --method lora (full-precision base), or a CUDA GPU for QLoRA."
        ) from None
    return bnb


def quantize_nf4(model, targets=LORA_TARGETS) -> int:
    """Replace the targeted nn.Linear of the decoder layers by NF4 Linear4bit in place; returns how many."""
    device = next(model.parameters()).device
    bnb = _check_bnb(device)
    dtype = model.model.embed_tokens.weight.dtype
    n = 0
    for layer in model.model.layers:
        for parent in layer.modules():
            for child_name, child in list(parent.named_children()):
                if child_name in targets and isinstance(child, torch.nn.Linear):
                    q = bnb.nn.Linear4bit(
                        child.in_features,
                        child.out_features,
                        bias=child.bias is not None,
                        compute_dtype=dtype,
                        compress_statistics=True,
                        quant_type="nf4",
                    )
                    q.weight = bnb.nn.Params4bit(
                        child.weight.data.detach().to("cpu", torch.float32).contiguous(),
                        requires_grad=False,
                        quant_type="nf4",
                        compress_statistics=True,
                    )
                    if child.bias is not None:
                        q.bias = torch.nn.Parameter(child.bias.data.detach().clone(), requires_grad=False)
                    setattr(parent, child_name, q.to(device))
                    n += 1
    return n


class LoRA:
    """The LoRA (or, with `qlora=True`, QLoRA) method for `docqa.finetune.train`."""

    def __init__(self, model, r: int = 8, alpha: float = 16.0, dropout: float = 0.0, qlora: bool = False):
        from peft import LoraConfig, get_peft_model

        self.name = "qlora" if qlora else "lora"
        self.r, self.alpha, self.dropout = int(r), float(alpha), float(dropout)
        #: ChatGLM-6B (v1): docqa's own network, upstream module names, logits_to_keep takes only an int
        self.v1 = not hasattr(model, "model")
        self.targets = LORA_TARGETS_V1 if self.v1 else LORA_TARGETS
        if qlora:
            if self.v1:
                raise ModelError("QLoRA on ChatGLM-6B (v1) is not supported: use --method lora")
            quantize_nf4(model)
        for p in model.parameters():
            p.requires_grad_(False)
        config = LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=list(self.targets), bias="none"
        )
        self.model = get_peft_model(model, config)
        self._modules = {
            name: mod
            for name, mod in self.model.named_modules()
            if hasattr(mod, "lora_A") and isinstance(mod.lora_A, torch.nn.ModuleDict) and "default" in mod.lora_A
        }
        if not self._modules:
            raise ModelError("peft found none of the LoRA target projections in the model")

    def parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def logits(self, input_ids: torch.Tensor, keep: Any = 0) -> torch.Tensor:
        if self.v1:
            logits = self.model(input_ids=input_ids, use_cache=False).logits
            return logits if isinstance(keep, int) else logits[:, keep]
        return self.model(input_ids=input_ids, use_cache=False, logits_to_keep=keep).logits

    def state(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, mod in self._modules.items():
            a = mod.lora_A["default"].weight.detach().float().cpu().clone()
            b = mod.lora_B["default"].weight.detach().float().cpu().clone()
            out.update(native_names(name, a, b))
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, mod in self._modules.items():
                ours = native_names(name, None, None)
                ka, kb = list(ours)
                mod.lora_A["default"].weight.copy_(tensors[ka])
                mod.lora_B["default"].weight.copy_(tensors[kb])

    def meta(self) -> dict[str, Any]:
        return {"lora": {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets)}}
