"""Latency-aware context on CPU: how many prompt tokens a model reads in about `first_token_s` seconds.

On a CPU a 6B model reads a few dozen to a few hundred prompt tokens a second, so its full 8K/32K context can
mean minutes before the first word. When `max_context` is 0 and the model runs on a CPU, the generators size
their context from the measured prefill speed (one short timed prefill per model load, cached under
`settings.cache` keyed by model, precision and thread count) and report it as a `ContextBudget`:

    >>> b = ContextBudget(context=3072, native=8192, prefill_tok_s=55.0, first_token_s=60.0, measured=True)
    >>> b.message()
    'CPU: context limited to 3,072 of 8,192 tokens so the first word comes within about 60 s (prefill measured at 55 tok/s; --max-context overrides)'
    >>> choose_context(55.0, 60.0, 8192), choose_context(1000.0, 60.0, 8192), choose_context(1.0, 60.0, 8192)
    (2560, 8192, 1024)

Limits: the figure is measured on a short prompt; long prompts read a little slower (attention grows with the
context), which `SAFETY` absorbs. Other load on the machine at measurement time skews it (delete the cache file
`prefill_speed.json` to measure again). On a GPU the full context is used.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

#: the context is a multiple of this, and never below MIN_CONTEXT (a prompt needs room for a few passages)
STEP = 512
MIN_CONTEXT = 1024
#: share of the measured speed counted on: long prompts prefill slower than the short measuring one
SAFETY = 0.85
#: tokens in the timed prefill: enough rows for the int8 layers' large-GEMM path (quantize.INT8_DEQUANT_MIN_ROWS)
PROBE_TOKENS = 256
CACHE_FILE = "prefill_speed.json"


@dataclass(frozen=True)
class ContextBudget:
    """The context a generator chose on CPU and why."""

    context: int  # tokens of prompt + answer the generator now allows
    native: int  # what the model was tuned for
    prefill_tok_s: float
    first_token_s: float
    measured: bool  # False: the speed came from the cache file

    @property
    def limited(self) -> bool:
        return self.context < self.native

    def message(self) -> str:
        how = "measured" if self.measured else "measured earlier"
        return (
            f"CPU: context limited to {self.context:,} of {self.native:,} tokens so the first word comes within "
            f"about {self.first_token_s:.0f} s (prefill {how} at {self.prefill_tok_s:.0f} tok/s; "
            "--max-context overrides)"
        )


def choose_context(prefill_tok_s: float, first_token_s: float, native: int) -> int:
    """The context (a multiple of STEP, at least MIN_CONTEXT, at most `native`) read in `first_token_s`."""
    tokens = int(prefill_tok_s * first_token_s * SAFETY) // STEP * STEP
    return max(min(MIN_CONTEXT, native), min(native, tokens))


def measure_prefill(model, tokens: int = PROBE_TOKENS) -> float:
    """Prompt tokens per second of a GlmForCausalLM, from one timed prefill after a short warm-up."""
    from .glm_runtime import KVCache, extend

    vocab = int(model.config.vocab_size)
    ids = [(7 * i + 100) % vocab for i in range(tokens)]
    extend(model, KVCache(model), ids[:8])  # warm-up: kernel selection, first allocations
    t = time.perf_counter()
    extend(model, KVCache(model), ids)
    return tokens / max(time.perf_counter() - t, 1e-9)


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cpu_budget(model, key: str, native: int, first_token_s: float, cache_dir: Path | None) -> ContextBudget:
    """The ContextBudget for `model` (on CPU): the cached speed for `key` when known, else measured now and
    cached (best effort: an unwritable cache only means measuring again next time)."""
    import torch

    key = f"{key}|threads={torch.get_num_threads()}"
    path = Path(cache_dir) / CACHE_FILE if cache_dir else None
    cached = _read(path).get(key) if path else None
    measured = not isinstance(cached, (int, float)) or cached <= 0
    speed = measure_prefill(model) if measured else float(cached)
    if measured and path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = _read(path)
            data[key] = round(speed, 2)
            path.write_text(json.dumps(data, indent=1), encoding="utf-8")
        except OSError:
            pass
    return ContextBudget(choose_context(speed, first_token_s, native), native, speed, first_token_s, measured)


def model_key(name: str, model) -> str:
    """What the measured speed depends on: the checkpoint, its layer kind (int8/int4/full), dtype and depth."""
    layer = model.model.layers[0].self_attn.q_proj
    dtype = str(model.model.embed_tokens.weight.dtype).rsplit(".", 1)[-1]
    return f"{name}|{type(layer).__name__}|{dtype}|layers={len(model.model.layers)}"


def pick_context(
    model, name: str, native: int, max_context: int, first_token_s: float, cache_dir: Path | None
) -> tuple[int, ContextBudget | None]:
    """(context, the budget when the CPU rule chose it): `max_context` > 0 wins; on a CPU with `first_token_s`
    > 0, the latency budget; else the model's `native` context."""
    if max_context and max_context > 0:
        return int(max_context), None
    from .weights import BIG_MODEL_PARAMS

    on_cpu = model.model.embed_tokens.weight.device.type == "cpu"
    if not on_cpu or not first_token_s or first_token_s <= 0:
        return native, None
    if sum(t.numel() for t in model.parameters()) + sum(b.numel() for b in model.buffers()) < BIG_MODEL_PARAMS:
        return native, None  # a small (test) model reads its whole context in well under first_token_s
    budget = cpu_budget(model, model_key(name, model), native, first_token_s, cache_dir)
    return budget.context, budget
