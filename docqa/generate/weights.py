"""Putting a checkpoint's tensors into a model built on the meta device: device/dtype/quantisation choice and a
loader that quantises each decoder layer as soon as its last tensor is in. Shared by every ChatGLM member.

    >>> from docqa.generate.weights import resolve_device_dtype
    >>> resolve_device_dtype("cpu", "auto", None, 6_000_000_000)
    (device(type='cpu'), torch.bfloat16, 'int8')
    >>> resolve_device_dtype("cpu", "auto", None, 1_000)
    (device(type='cpu'), torch.float32, None)

    loader = WeightLoader(model, layer_prefix="model.layers.", layers=model.model.layers, head="lm_head", ...)
    for name, tensor in tensors: loader.assign(name, tensor)

Limits: the model's parameters must be plain attributes of their modules (nn.Linear, nn.LayerNorm, nn.Embedding);
buffers are not loaded (each network recomputes its own rotary tables). Importing this module is light; torch is
imported when a function runs.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from docqa.config import LLM_DTYPE_ALIASES, LLM_DTYPES, LLM_QUANTIZE, valid_device
from docqa.errors import ModelError

if TYPE_CHECKING:
    import torch

#: models with more parameters than this default to int8 on CPU (smaller ones to fp32)
BIG_MODEL_PARAMS = 1_000_000_000

#: torch dtype names for docqa.config.LLM_DTYPES (aliases are mapped onto these first)
_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def resolve_device_dtype(device: str, dtype: str, quantize: str | None, n_params: int):
    """(torch.device, torch dtype, "int8" | "int4" | None) for the requested device/dtype/quantisation.

    `quantize` None or "auto": int8 for big models on CPU with dtype auto, else none; "none": never quantise.
    """
    import torch

    if not valid_device(device):
        raise ModelError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N (--device)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but PyTorch sees no CUDA GPU (use --device cpu)")
    quantize = "auto" if quantize in (None, "") else quantize
    if quantize not in LLM_QUANTIZE:
        raise ModelError(f"unknown quantisation {quantize!r}: use {', '.join(LLM_QUANTIZE)} (--quantize)")
    dtype = LLM_DTYPE_ALIASES.get(dtype, dtype)
    if dtype not in LLM_DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}: use {', '.join(LLM_DTYPES)} (llm_dtype)")
    on_gpu = device.startswith("cuda")
    scheme = quantize if quantize in ("int8", "int4") else None
    if dtype != "auto":
        name = _TORCH_DTYPES[dtype]
    elif on_gpu:
        name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    elif n_params > BIG_MODEL_PARAMS:
        name = "bfloat16"
        scheme = scheme or ("int8" if quantize == "auto" else None)
    else:
        name = "float32"
    if scheme and not on_gpu and name != "bfloat16":
        name = "bfloat16"  # the CPU int8/int4 kernels take bf16 activations
    return torch.device(device), getattr(torch, name), scheme


class WeightLoader:
    """Puts tensors (already under the model's own names) into a meta-device model one by one, checking each
    against the model's shapes, and quantises (CPU) each decoder layer as soon as its last tensor is in, so only
    one layer is ever held in fp32.

    `layer_prefix` is the name prefix of decoder layer i without the index ("model.layers."), `layers` the
    ModuleList it names, `head` the output Linear's name (quantised too; None to leave it alone).
    """

    def __init__(self, model, *, layer_prefix: str, layers, head: str | None, device, dtype, cpu_quant: str | None):
        self.model, self.layers, self.head = model, layers, head
        self.device, self.dtype, self.cpu_quant = device, dtype, cpu_quant
        self.expected = {n: p.shape for n, p in model.named_parameters()}
        self._layer = re.compile(re.escape(layer_prefix) + r"(\d+)\.")
        self.layer_todo: dict[int, set[str]] = {}
        for n in self.expected:
            m = self._layer.match(n)
            if m:
                self.layer_todo.setdefault(int(m.group(1)), set()).add(n)
        self.loaded: set[str] = set()

    def _quantised(self, name: str) -> bool:
        return bool(self._layer.match(name)) or (self.head is not None and name == f"{self.head}.weight")

    def assign(self, name: str, tensor: torch.Tensor) -> None:
        import torch

        if name not in self.expected:
            raise ModelError(f"checkpoint tensor maps to unknown parameter {name}")
        if name in self.loaded:
            raise ModelError(f"parameter {name} appears twice in the checkpoint")
        if tuple(tensor.shape) != tuple(self.expected[name]):
            raise ModelError(
                f"{name}: checkpoint shape {tuple(tensor.shape)} does not match the config's "
                f"{tuple(self.expected[name])}"
            )
        if not tensor.is_floating_point():
            raise ModelError(f"{name} has dtype {tensor.dtype}: packed/quantised checkpoints are not supported")
        owner_name, _, attr = name.rpartition(".")
        owner = self.model.get_submodule(owner_name)
        # quantised layers are built from fp32 copies so rounding happens once, from the original values
        want = torch.float32 if self.cpu_quant and self._quantised(name) else self.dtype
        value = tensor.to(device=self.device, dtype=want)
        setattr(owner, attr, torch.nn.Parameter(value.clone() if value is tensor else value, requires_grad=False))
        self.loaded.add(name)
        if self.cpu_quant:
            self._quantise_when_complete(name)

    def _quantise_when_complete(self, name: str) -> None:
        from docqa.generate.quantize import quantize_linears, quantized_linear

        if self.head is not None and name == f"{self.head}.weight":
            parent_name, _, attr = self.head.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, attr, quantized_linear(getattr(parent, attr), self.cpu_quant))
        m = self._layer.match(name)
        if m:
            todo = self.layer_todo[int(m.group(1))]
            todo.discard(name)
            if not todo:
                layer = self.layers[int(m.group(1))]
                quantize_linears(layer, self.cpu_quant)
                layer.to(self.dtype)

    def missing(self) -> list[str]:
        return sorted(set(self.expected) - self.loaded)

    def raise_if_incomplete(self, source: str) -> None:
        missing = self.missing()
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ModelError(f"{source} is incomplete: missing weights for {shown}")
