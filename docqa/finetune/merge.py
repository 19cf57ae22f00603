"""`docqa finetune merge`: a LoRA/QLoRA adapter folded into its base, written as a checkpoint in the official layout.

    result = merge_adapter("runs/faq-lora", "models/chatglm2-6b-faq")                 # doctest: +SKIP
    # models/chatglm2-6b-faq: config.json, tokenizer files, model-0000N-of-0000M.safetensors + index

The merged folder loads anywhere a ChatGLM2 checkpoint does (docqa `--model`, or upstream's own code): tensors keep
their upstream names and dtype, and W + (alpha / r) * B @ A is computed in float32 from the full-precision base.
config.json gains `docqa_merged_adapter` (the adapter's method and a hash of its weights), so the merged model has
an identity of its own and the same adapter is not applied to it a second time by mistake.

Limits: P-Tuning adapters are refused (they change no weight; use `--adapter`), and so is a base whose weights
are not floating point (a pre-quantised 4-bit/8-bit checkpoint: merging into packed integers would lose the
adapter). Shards of about 2 GB; the output folder must not exist yet (it is written under a temporary name and
renamed when complete).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from docqa.errors import ModelError
from docqa.generate.adapters import ADAPTER_WEIGHTS, check_base, merge_lora_tensors, read_adapter

SHARD_BYTES = 2 * 1024**3
_WEIGHT_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth")


@dataclass
class MergeResult:
    out: str
    base: str
    method: str
    tensors: int
    bytes: int
    shards: int

    def to_json(self) -> dict:
        return dict(vars(self))


def merge_adapter(adapter_path: str | Path, out: str | Path, model_path: str | Path | None = None) -> MergeResult:
    """Write base + LoRA adapter as a full checkpoint into `out` (see the module docstring)."""
    from safetensors.torch import save_file

    from docqa.generate.chatglm import family_of
    from docqa.generate.checkpoints import (
        iter_checkpoint_tensors,
        read_chatglm_config,
        read_config_json,
        resolve_model_path,
    )

    adapter = read_adapter(adapter_path)
    if adapter.method == "ptuning":
        raise ModelError(
            f"{adapter.path} is a P-Tuning v2 adapter: it changes no weight, so there is nothing to merge; "
            "use it with --adapter"
        )
    base = model_path or (adapter.meta.get("base") or {}).get("path")
    if not base:
        raise ModelError(f"{adapter.path}/adapter.json names no base model: pass it with --model")
    folder = resolve_model_path(base)
    family = family_of(folder, adapter.meta.get("family"))
    # both refuse pre-quantised (quantization_bit) checkpoints
    cfg = read_config_json(folder) if family == "chatglm" else read_chatglm_config(folder)
    check_base(adapter, folder, cfg, family)
    dest = Path(out).expanduser()
    if dest.exists() and any(dest.iterdir()):
        raise ModelError(f"{dest} exists and is not empty: choose a new --out folder")
    tmp = dest.with_name(f".{dest.name}.merging-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shard: dict = {}
        shard_bytes, names, weight_map, total, count = 0, [], {}, 0, 0

        def flush() -> None:
            nonlocal shard, shard_bytes
            if shard:
                name = f"part-{len(names) + 1:05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                names.append((name, list(shard)))
                shard, shard_bytes = {}, 0

        for name, tensor in merge_lora_tensors(iter_checkpoint_tensors(folder), adapter, cfg, keep_dtype=True):
            if not tensor.is_floating_point():
                raise ModelError(
                    f"{folder}: {name} is {tensor.dtype}, a quantised base; merging is refused (the adapter would be "
                    "lost in the rounding): merge into the full-precision checkpoint"
                )
            size = tensor.numel() * tensor.element_size()
            if shard and shard_bytes + size > SHARD_BYTES:
                flush()
            shard[name] = tensor.contiguous()
            shard_bytes += size
            total += size
            count += 1
        flush()
        n = len(names)
        for k, (name, keys) in enumerate(names, 1):
            final = f"model-{k:05d}-of-{n:05d}.safetensors" if n > 1 else "model.safetensors"
            os.replace(tmp / name, tmp / final)
            weight_map.update({key: final for key in keys})
        if n > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        digest = hashlib.sha256((adapter.path / ADAPTER_WEIGHTS).read_bytes()).hexdigest()
        config["docqa_merged_adapter"] = {"method": adapter.method, "sha256": digest}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
        for item in folder.iterdir():
            if (
                item.is_file()
                and item.name != "config.json"
                and not item.name.endswith(_WEIGHT_SUFFIXES + (".index.json",))
            ):
                shutil.copy2(item, tmp / item.name)
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MergeResult(str(dest), str(folder), adapter.method, count, total, n)
