"""Weight-only quantised linear layers for CPU inference (int8 per output channel, int4 in groups), and GPU
quantisation through torchao.

    >>> lin = torch.nn.Linear(256, 512)
    >>> q = quantized_linear(lin, "int8")             # Int8WeightOnlyLinear: 1 byte per weight + a bf16 scale per row
    >>> q(torch.randn(3, 256)).shape
    torch.Size([3, 512])

`quantize_linears` replaces every nn.Linear under a module, in place:

    >>> quantize_linears(model.model.layers[0], "int4")  # doctest: +SKIP

Both layers take bf16 activations (the x86 CPU kernels `_weight_int8pack_mm` / `_weight_int4pack_mm_for_cpu`)
and return the caller's dtype. Limits: CPU only (on a GPU use `gpu_quantize`, which needs torchao); weights are
quantised from the values given, so pass fp32 copies to round once from the original; int4 error is ~10x int8's.
Importing this module imports torch: it is loaded only when a model is built.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import nn

from docqa.errors import ModelError

#: rows of activations above which the int8 layer dequantises its weight instead (faster for long prefills)
INT8_DEQUANT_MIN_ROWS = 192
#: CPU quantisation schemes these layers implement (a subset of docqa.config.LLM_QUANTIZE)
SCHEMES = ("int8", "int4")


_workspace = threading.local()


def _buffer(numel: int, dtype: torch.dtype, device) -> torch.Tensor:
    """`numel` elements of the per-thread workspace (a fresh tensor when autograd is on: backward keeps it)."""
    if torch.is_grad_enabled():
        return torch.empty(numel, dtype=dtype, device=device)
    buf = getattr(_workspace, "buf", None)
    if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
        buf = torch.empty(max(numel, 0 if buf is None else buf.numel()), dtype=dtype, device=device)
        _workspace.buf = buf
    return buf[:numel]


def as_float(qweight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`qweight` in `dtype`, written into one reused per-thread buffer: measured 6x faster than a fresh
    `qweight.to(dtype)` (no new 200 MB allocation to fault in per layer), which made the dequantisation cost 40%
    of a 512-token prefill's GEMM. The result is valid until the next call in this thread; with autograd on, a
    fresh tensor (the backward pass keeps it)."""
    return _buffer(qweight.numel(), dtype, qweight.device).view(qweight.shape).copy_(qweight)


class Int8WeightOnlyLinear(nn.Module):
    """y = x @ (int8 W * per-row scale).T + b, activations in bf16.

    Decoding (a few rows) uses the fused int8 kernel; long prefills dequantise the weight once per call,
    which beats the int8 kernel above ~200 rows on x86 (measured: benchmarks/generate.py).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, act_dtype: torch.dtype = torch.bfloat16):
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
        if x2.shape[0] >= INT8_DEQUANT_MIN_ROWS or self.in_features % 16:
            # the integer weights are exact in bf16: scaling the output rows instead of the weight saves a pass
            # over the weight (measured: the weight's mul_ was 6% of a 512-token prefill on 2 cores)
            y = nn.functional.linear(x2, as_float(self.qweight, x2.dtype)) * self.scales
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(dtype)


class Int4WeightOnlyLinear(nn.Module):
    """4-bit asymmetric weights in groups of `group_size` along the input, bf16 activations (x86 CPU kernel)."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        group_size: int = 128,
        act_dtype: torch.dtype = torch.bfloat16,
    ):
        super().__init__()
        n, k = weight.shape
        # the packed kernel wants groups of 32..256 dividing in_features and out_features in multiples of 16;
        # tiny test shapes (ChatGLM-6B's 1,100-word test vocabulary) fall back to unpacked
        self.packed = k % 32 == 0 and n % 16 == 0
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
        unpack = self.out_features % _INT4_BLOCK_N == 0 and x2.shape[0] >= INT4_DEQUANT_MIN_ROWS
        if self.packed and unpack and int4_layout_known():
            y = nn.functional.linear(x2, self.dequantised())
        elif self.packed:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.qweight, self.group_size, self.scales_zeros)
        else:
            y = nn.functional.linear(x2, self.qweight)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(dtype)

    def dequantised(self) -> torch.Tensor:
        """The weight [out, in] in bf16, unpacked from the CPU kernel's layout into the per-thread workspace
        (valid until the next dequantisation in this thread; a fresh tensor with autograd on)."""
        n, k, dtype = self.out_features, self.in_features, self.scales_zeros.dtype
        b = self.qweight.view(n // _INT4_BLOCK_N, k, _INT4_BLOCK_N // 2)
        w = _buffer(n * k, dtype, b.device).view(n // _INT4_BLOCK_N, 2, _INT4_BLOCK_N // 2, k)
        # byte j of a block's row kk holds rows j (low nibble) and j + 32 (high nibble) of column kk
        w[:, 0].copy_((b & 15).transpose(1, 2))
        w[:, 1].copy_((b >> 4).transpose(1, 2))
        scale, zero = self.scales_zeros[..., 0].t(), self.scales_zeros[..., 1].t()  # [out, groups]
        w = w.view(n, k // self.group_size, self.group_size)
        # the kernel's (q - 8) * scale + zero, with the 8 folded into the offset
        w.mul_(scale[:, :, None]).add_((zero - 8 * scale)[:, :, None])
        return w.view(n, k)


#: rows of activations above which the int4 layer unpacks its weight to bf16 for one GEMM (the packed kernel ran
#: 2.5x slower than a bf16 GEMM at 512 rows on this machine's 2 cores)
INT4_DEQUANT_MIN_ROWS = 192
#: the x86 CPU int4 layout: blocks of 64 output rows, each [in_features, 32] bytes
_INT4_BLOCK_N = 64
_INT4_LAYOUT: list[bool] = []


def int4_layout_known() -> bool:
    """True when this torch packs int4 weights the way `Int4WeightOnlyLinear.dequantised` unpacks them (checked
    once on a small random matrix; another layout keeps the packed kernel for every call)."""
    if not _INT4_LAYOUT:
        try:
            g = torch.Generator().manual_seed(0)
            q = torch.randint(0, 16, (128, 256), generator=g, dtype=torch.int32)
            b = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1).contiguous().view(2, 256, 32)
            got = torch.stack([b & 15, b >> 4], dim=2).permute(0, 2, 3, 1).reshape(128, 256)
            _INT4_LAYOUT.append(bool(torch.equal(got.to(torch.int32), q)))
        except (RuntimeError, ValueError):
            _INT4_LAYOUT.append(False)
    return _INT4_LAYOUT[0]


_LAYERS = {"int8": Int8WeightOnlyLinear, "int4": Int4WeightOnlyLinear}


def quantized_linear(linear: nn.Linear, scheme: str) -> nn.Module:
    """The `scheme` ("int8" | "int4") CPU version of a loaded nn.Linear."""
    return _LAYERS[scheme](linear.weight.data, None if linear.bias is None else linear.bias.data)


def quantize_linears(module: nn.Module, scheme: str) -> None:
    """Replace every nn.Linear under `module` (weights already loaded) by its CPU int8/int4 version, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, quantized_linear(child, scheme))
        else:
            quantize_linears(child, scheme)


def gpu_quantize(model: nn.Module, scheme: str) -> None:
    """Weight-only int8/int4 on a CUDA model through torchao (ModelError when torchao is missing)."""
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise ModelError(
            f"--quantize {scheme} on GPU needs the torchao package (pip install torchao), "
            "or run without quantisation (--quantize none: bf16/fp16)"
        ) from None
    quantize_(model, Int8WeightOnlyConfig() if scheme == "int8" else Int4WeightOnlyConfig())
