"""The `docqa finetune` training loop: one loop for LoRA, QLoRA and P-Tuning v2, resumable, with progress events.

    >>> defaults("lora", 8_000_000)["lr"], defaults("lora", 6e9)["lr"], defaults("ptuning", 8e6)["lr"], defaults("ptuning", 6e9)["lr"]
    (0.005, 0.0002, 0.1, 0.02)

    result = finetune("faq.jsonl", "~/models/chatglm2-6b", "runs/faq", FinetuneConfig(method="lora", steps=300),
                      progress=print)   # TrainEvent(kind="step", step=10, loss=2.31, tokens_per_s=..., eta_s=...)
    result.loss_before, result.loss_after, result.resumed_from_step

What happens: read and tokenise the data (docqa.finetune.data) in the model's chat format, hold out a split,
load the base in full precision (QLoRA: NF4), attach the method, measure the loss on both splits, train
`steps` steps of AdamW (linear warm-up, then linear decay to a tenth), measure again, and write the adapter
(`adapter.safetensors` + `adapter.json`, docqa.generate.adapters reads them). A checkpoint
(`checkpoint.safetensors`: trainable tensors, optimiser moments, step and loss history in its metadata) is written
atomically (temporary file + rename) at least every quarter of the steps and on Ctrl-C; running the same command
again resumes from it (`resumed_from_step`) if the method, data, base and hyperparameters match, else refuses.
Batches come from a permutation seeded by (seed, epoch), so a resumed run sees the batches the lost one would have.

Defaults (`defaults`): see the README's "Fine-tuning" section for the measurements behind them.

Limits: one process, one device; no gradient accumulation or mixed precision (the base is float32 on CPU,
bfloat16 on a GPU); peak memory is the process's maximum resident set (plus CUDA's peak when on a GPU).
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from docqa.errors import ConfigError, ModelError
from docqa.finetune.data import IGNORE, Example, data_hash, encode_all, read_records, split
from docqa.generate.adapters import ADAPTER_FORMAT, ADAPTER_JSON, ADAPTER_WEIGHTS, METHODS, base_identity

CHECKPOINT = "checkpoint.safetensors"
#: models above this many parameters get the "big model" defaults (ChatGLM2-6B has 6.2e9)
BIG = 1_000_000_000


def defaults(method: str, n_params: float) -> dict[str, Any]:
    """Default hyperparameters for `method` on a model of `n_params` parameters (see the README for why)."""
    big = n_params > BIG
    if method in ("lora", "qlora"):
        return {"lr": 2e-4 if big else 5e-3, "lora_r": 8, "lora_alpha": 16.0, "batch_size": 1 if big else 4}
    if method == "ptuning":
        return {
            "lr": 2e-2 if big else 1e-1,
            "pre_seq_len": 128,
            "prefix_projection": False,
            "batch_size": 1 if big else 4,
        }
    raise ConfigError(f"unknown fine-tuning method {method!r}: use {', '.join(METHODS)}")


@dataclass
class FinetuneConfig:
    """What to train; None fields take `defaults(method, model size)`."""

    method: str = "lora"
    steps: int = 300
    lr: float | None = None
    batch_size: int | None = None
    max_tokens: int = 512
    eval_fraction: float = 0.1
    seed: int = 0
    lora_r: int | None = None
    lora_alpha: float | None = None
    pre_seq_len: int | None = None
    prefix_projection: bool | None = None
    device: str = "auto"
    family: str | None = None
    #: checkpoint every this many steps (0 = a quarter of `steps`; never more than a quarter)
    checkpoint_every: int = 0
    #: examples the before/after losses are measured on (per split)
    eval_examples: int = 64


@dataclass
class TrainEvent:
    """A progress event: kind "start" | "step" | "checkpoint" | "eval" | "done"."""

    kind: str
    step: int = 0
    steps: int = 0
    loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    message: str = ""


@dataclass
class FinetuneResult:
    out: str
    method: str
    steps: int
    loss_before: float
    loss_after: float
    eval_loss_before: float | None
    eval_loss_after: float | None
    resumed_from_step: int | None
    train_examples: int
    eval_examples: int
    seconds: float
    s_per_step: float
    tokens_per_s: float
    peak_memory_mb: float
    curve: list[tuple[int, float]] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["curve"] = [list(x) for x in self.curve]
        return d


# -- helpers ------------------------------------------------------------------------------------------------------


def _peak_mb(device) -> float:
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if device.type == "cuda":
        rss += torch.cuda.max_memory_allocated(device) / 2**20
    return round(rss, 1)


def _batch(examples: list[Example], device):
    """Right-padded ids and labels: causal attention never lets a real token see the padding after it, so no
    attention mask is needed."""
    import torch

    n = max(len(e.input_ids) for e in examples)
    ids = torch.zeros(len(examples), n, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    return ids.to(device), labels.to(device)


def _answer_loss(method, ids, labels):
    """Mean cross-entropy over the answer tokens. Logits are computed only where some row of the batch predicts
    an answer token: with a 65K vocabulary the output layer over the prompt positions would cost most of a step."""
    import torch

    keep = torch.nonzero((labels[:, 1:] != IGNORE).any(dim=0)).flatten()
    logits = method.logits(ids, keep)
    target = labels[:, keep + 1]
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE
    )


def mean_loss(method, examples: list[Example], device, batch_size: int = 4) -> float | None:
    """Token-weighted mean loss over `examples` (no grad); None for no examples."""
    import torch

    if not examples:
        return None
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            ids, labels = _batch(chunk, device)
            n = int((labels[:, 1:] != IGNORE).sum())
            total += float(_answer_loss(method, ids, labels)) * n
            tokens += n
    return total / max(tokens, 1)


def _order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """The examples of 0-based step `step`: consecutive slices of per-epoch permutations."""
    out = []
    start = step * batch_size
    for k in range(start, start + batch_size):
        epoch, pos = divmod(k, n)
        out.append(_order(n, seed, epoch)[pos])
    return out


def _lr_at(step: int, steps: int, lr: float) -> float:
    warm = max(1, min(10, steps // 20))
    if step < warm:
        return lr * (step + 1) / warm
    return lr * (1.0 - 0.9 * (step - warm) / max(1, steps - warm))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    _atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def _load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("docqa", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ModelError(f"cannot read the checkpoint {path}: {exc} (delete it to start over)") from exc
    return meta, tensors


def load_training_model(model_path: Path, family: str, device: str, need_tokenizer: bool = True):
    """(model with ordinary, trainable-capable parameters, config dict, tokenizer, parameter count) for training:
    GlmForCausalLM for ChatGLM2/3, docqa's ChatGLM6BForCausalLM for v1."""
    import torch

    from docqa.generate.chatglm import load_tokenizer
    from docqa.generate.checkpoints import read_chatglm_config, read_config_json

    if family == "chatglm":
        from docqa.generate.chatglm6b import count_params
        from docqa.generate.chatglm6b import load_model as load_v1

        cfg = read_config_json(model_path)
    else:
        from docqa.generate.chatglm2 import count_params, load_model

        cfg = read_chatglm_config(model_path)
    big = count_params(cfg) > BIG
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    dtype = "bf16" if dev.startswith("cuda") and big else "fp32"
    if family == "chatglm":
        model = load_v1(model_path, device=dev, dtype=dtype, quantize="none")
    else:
        model = load_model(model_path, device=dev, dtype=dtype, quantize="none", family=family)
    # the loader fills parameters under inference_mode; autograd refuses to save such tensors for backward
    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
            for name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[name] = b.clone()
    model.train()
    tok = load_tokenizer(model_path, family)
    if tok is None and need_tokenizer:
        raise ModelError(f"{model_path} has no tokenizer file: fine-tuning needs the model's own tokenizer")
    return model, cfg, tok, count_params(cfg)


# -- the loop -----------------------------------------------------------------------------------------------------


def finetune(
    data: str | Path,
    model_path: str | Path,
    out: str | Path,
    config: FinetuneConfig | None = None,
    progress: Callable[[TrainEvent], None] | None = None,
) -> FinetuneResult:
    """Train an adapter on `data` for the ChatGLM checkpoint `model_path` into folder `out` (see the module
    docstring). Ctrl-C writes a checkpoint and re-raises KeyboardInterrupt."""
    import torch

    from docqa.generate.chatglm import family_of
    from docqa.generate.checkpoints import resolve_model_path

    config = config or FinetuneConfig()
    emit = progress or (lambda e: None)
    if config.method not in METHODS:
        raise ConfigError(f"unknown fine-tuning method {config.method!r}: use {', '.join(METHODS)}")
    if config.steps < 1:
        raise ConfigError("--steps must be at least 1")
    t0 = time.perf_counter()
    folder = resolve_model_path(model_path)
    family = family_of(folder, config.family)
    if family == "chatglm" and config.method != "lora":
        raise ModelError(f"ChatGLM-6B (v1) takes --method lora only ({config.method} needs ChatGLM2-6B or ChatGLM3-6B)")
    records = read_records(data)
    train_recs, held_recs = split(records, config.eval_fraction)
    model, cfg, tok, n_params = load_training_model(folder, family, config.device)
    device = next(model.parameters()).device
    hp = {**defaults(config.method, n_params), **{k: v for k, v in asdict(config).items() if v is not None}}
    hp.pop("device", None)
    hp.pop("family", None)
    train_ex = encode_all(train_recs, tok, family, config.max_tokens)
    held_ex = encode_all(held_recs, tok, family, config.max_tokens)
    torch.manual_seed(config.seed)  # the adapter's initialisation: a rerun (or an uninterrupted twin) starts alike
    if config.method == "ptuning":
        from docqa.finetune.ptuning import PTuning

        method: Any = PTuning(model, cfg, int(hp["pre_seq_len"]), bool(hp["prefix_projection"]))
    else:
        from docqa.finetune.lora import LoRA

        method = LoRA(model, int(hp["lora_r"]), float(hp["lora_alpha"]), qlora=config.method == "qlora")
    params = method.parameters()
    optimizer = torch.optim.AdamW(params, lr=float(hp["lr"]), weight_decay=0.0)

    out_dir = Path(out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = base_identity(folder, family)
    dhash = data_hash(data)
    # what must match for a checkpoint to be resumed (steps may grow)
    run_key = {
        "method": config.method,
        "base": identity,
        "data": dhash,
        **{k: v for k, v in hp.items() if k != "steps"},
    }
    steps, bs = int(config.steps), int(hp["batch_size"])
    every = max(1, min(config.checkpoint_every or steps, math.ceil(steps / 4)))
    start, resumed, curve = 0, None, []
    sample_train = train_ex[: config.eval_examples]
    sample_held = held_ex[: config.eval_examples]
    ckpt = out_dir / CHECKPOINT
    if ckpt.is_file():
        meta, tensors = _load_checkpoint(ckpt)
        if meta.get("run") != run_key:
            diff = sorted(
                k for k in set(run_key) | set(meta.get("run", {})) if run_key.get(k) != meta.get("run", {}).get(k)
            )
            raise ModelError(
                f"{out_dir} holds a checkpoint of a different run (differs in: {', '.join(diff)}): use another --out "
                f"or delete {ckpt} to start over"
            )
        method.load_state({k[3:]: v for k, v in tensors.items() if k.startswith("ad.")})
        for i, p in enumerate(params):
            st = optimizer.state[p]
            if f"m1.{i}" in tensors:
                st["exp_avg"], st["exp_avg_sq"] = tensors[f"m1.{i}"].to(device), tensors[f"m2.{i}"].to(device)
                st["step"] = torch.tensor(float(meta["step"]))
        start = resumed = int(meta["step"])
        curve = [tuple(x) for x in meta.get("curve", [])]
        loss_before, eval_before = meta["loss_before"], meta.get("eval_loss_before")
        emit(TrainEvent("start", start, steps, message=f"resumed from step {start}"))
    else:
        loss_before = mean_loss(method, sample_train, device, bs)
        eval_before = mean_loss(method, sample_held, device, bs)
        emit(TrainEvent("eval", 0, steps, loss_before, message="before training"))

    def save_checkpoint(step: int) -> None:
        tensors = {f"ad.{k}": v for k, v in method.state().items()}
        for i, p in enumerate(params):
            st = optimizer.state.get(p) or {}
            if "exp_avg" in st:
                tensors[f"m1.{i}"], tensors[f"m2.{i}"] = st["exp_avg"].cpu(), st["exp_avg_sq"].cpu()
        meta = {
            "run": run_key,
            "step": step,
            "curve": curve,
            "loss_before": loss_before,
            "eval_loss_before": eval_before,
        }
        _save_tensors(ckpt, tensors, {"docqa": json.dumps(meta)})
        emit(TrainEvent("checkpoint", step, steps, message=str(ckpt)))

    t_loop, tokens_seen = time.perf_counter(), 0
    completed = start
    try:
        for step in range(start, steps):
            lr = _lr_at(step, steps, float(hp["lr"]))
            for g in optimizer.param_groups:
                g["lr"] = lr
            batch = [train_ex[i] for i in _batch_indices(step, len(train_ex), bs, config.seed)]
            ids, labels = _batch(batch, device)
            loss = _answer_loss(method, ids, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            completed = step + 1
            tokens_seen += int(ids.numel())
            elapsed = time.perf_counter() - t_loop
            done = step + 1 - start
            value = float(loss.detach())
            if step % 10 == 0 or step + 1 == steps:
                curve.append((step + 1, round(value, 4)))
            emit(
                TrainEvent(
                    "step",
                    step + 1,
                    steps,
                    value,
                    lr,
                    tokens_seen / elapsed if elapsed > 0 else None,
                    elapsed / done * (steps - step - 1),
                )
            )
            if (step + 1) % every == 0 and step + 1 < steps:
                save_checkpoint(step + 1)
    except KeyboardInterrupt:
        save_checkpoint(completed)
        raise
    save_checkpoint(steps)
    loop_s = time.perf_counter() - t_loop
    loss_after = mean_loss(method, sample_train, device, bs)
    eval_after = mean_loss(method, sample_held, device, bs)
    emit(TrainEvent("eval", steps, steps, loss_after, message="after training"))
    result = FinetuneResult(
        out=str(out_dir),
        method=config.method,
        steps=steps,
        loss_before=round(float(loss_before), 4),
        loss_after=round(float(loss_after), 4),
        eval_loss_before=None if eval_before is None else round(float(eval_before), 4),
        eval_loss_after=None if eval_after is None else round(float(eval_after), 4),
        resumed_from_step=resumed,
        train_examples=len(train_ex),
        eval_examples=len(held_ex),
        seconds=round(time.perf_counter() - t0, 2),
        s_per_step=round(loop_s / max(1, steps - start), 4),
        tokens_per_s=round(tokens_seen / loop_s, 1) if loop_s > 0 else 0.0,
        peak_memory_mb=_peak_mb(device),
        curve=curve,
        hyperparameters=hp,
    )
    meta = {
        "format": ADAPTER_FORMAT,
        "version": 1,
        "method": config.method,
        "family": family,
        "base": {"identity": identity, "path": str(folder), "name": folder.name},
        "data": {"path": str(Path(data).expanduser()), "sha256": dhash, "records": len(records)},
        "steps": steps,
        "losses": {
            "train_before": result.loss_before,
            "train_after": result.loss_after,
            "eval_before": result.eval_loss_before,
            "eval_after": result.eval_loss_after,
            "curve": [list(x) for x in curve],
        },
        "hyperparameters": hp,
        **method.meta(),
    }
    _save_tensors(out_dir / ADAPTER_WEIGHTS, method.state(), {"format": ADAPTER_FORMAT, "method": config.method})
    _atomic_write_bytes(out_dir / ADAPTER_JSON, json.dumps(meta, indent=2, ensure_ascii=False).encode())
    emit(TrainEvent("done", steps, steps, loss_after, message=str(out_dir)))
    return result
