"""`docqa finetune`: train a LoRA / QLoRA / P-Tuning v2 adapter on your own data, or merge one into its base.

    $ docqa finetune faq.jsonl --model ~/models/chatglm2-6b --method ptuning --out runs/faq --steps 300
    $ docqa ask "dpkg -L 是做什么的？" --model ~/models/chatglm2-6b --adapter runs/faq
    $ docqa finetune merge runs/faq-lora --out ~/models/chatglm2-6b-faq

Progress goes to stderr (a bar with loss, tokens/s and ETA on a terminal; a line every 10 steps otherwise);
`--json` prints the summary (loss_before / loss_after on the training split, eval_loss_* on the held-out split,
resumed_from_step, s_per_step, peak_memory_mb, the loss curve). Ctrl-C writes a checkpoint and exits 130; the
same command resumes. Library errors reach app.py's one error map.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ..config import FINETUNE_METHODS
from .app import EXIT_INTERRUPTED, app
from .options import DeviceOpt, JsonOpt, ModelOpt
from .render import err, out

Method = StrEnum("Method", {v: v for v in FINETUNE_METHODS})


class FinetuneProgress:
    """The train loop's progress callback: a Rich bar on a terminal, else plain lines every `every` steps."""

    def __init__(self, console: Console, enabled: bool, plain: bool = True, every: int = 10):
        self.console, self.enabled, self.plain, self.every = console, enabled, plain, every
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> FinetuneProgress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[speed]} tok/s"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._bar.__enter__()
        return self

    def __call__(self, event) -> None:
        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task("train", total=event.steps, completed=event.step, loss="-", speed="-")
            if event.kind == "step":
                self._bar.update(
                    self._task,
                    completed=event.step,
                    loss=f"{event.loss:.3f}",
                    speed=f"{event.tokens_per_s:.0f}" if event.tokens_per_s else "-",
                )
            elif event.kind in ("start", "eval"):
                self.console.print(f"{event.message}: loss {_fmt(event.loss)}" if event.loss else event.message)
            return
        if not self.plain:
            return
        if event.kind == "step" and (event.step % self.every == 0 or event.step == event.steps):
            eta = f", ETA {event.eta_s:.0f}s" if event.eta_s is not None else ""
            speed = f", {event.tokens_per_s:.0f} tok/s" if event.tokens_per_s else ""
            self.console.print(f"step {event.step}/{event.steps} loss {event.loss:.4f}{speed}{eta}", markup=False)
        elif event.kind in ("start", "eval", "done"):
            tail = f": loss {_fmt(event.loss)}" if event.loss is not None and event.kind == "eval" else ""
            self.console.print(f"{event.message}{tail}", markup=False)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _model_folder(model: str | None, device: str | None) -> tuple[str, str]:
    """(the local ChatGLM folder `--model` (or the configured model) names, the device setting)."""
    from ..config import load_settings
    from ..errors import ConfigError
    from ..generate import CHATGLM_KINDS, resolve_generator

    s = load_settings(llm=model, llm_device=device)
    kind, spec = resolve_generator(s)
    if kind not in CHATGLM_KINDS:
        raise ConfigError("fine-tuning needs a local ChatGLM checkpoint: pass its folder with --model PATH")
    return spec, s.llm_device


@app.command("finetune")
def finetune_command(
    data: Annotated[str, typer.Argument(help="Training data (JSON or JSONL), or `merge` to merge an adapter")],
    adapter: Annotated[str | None, typer.Argument(help="With `merge`: the LoRA adapter folder")] = None,
    model: ModelOpt = None,
    method: Annotated[Method | None, typer.Option("--method", help="lora (default) | qlora | ptuning")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="The adapter folder (merge: the new checkpoint)")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="Optimiser steps (checkpoints every quarter)")] = 300,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate (default: per method and size)")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Examples per step")] = None,
    pre_seq_len: Annotated[int | None, typer.Option("--pre-seq-len", help="P-Tuning: virtual tokens")] = None,
    prefix_projection: Annotated[
        bool | None, typer.Option("--prefix-projection/--no-prefix-projection", help="P-Tuning: MLP on the prefix")
    ] = None,
    lora_r: Annotated[int | None, typer.Option("--lora-r", help="LoRA rank")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Longest training sequence")] = 512,
    eval_fraction: Annotated[float, typer.Option("--eval-fraction", help="Share of records held out")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Data order and initialisation")] = 0,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune the local ChatGLM on your question/answer data (LoRA, QLoRA or P-Tuning v2); resumable."""
    if out_dir is None:
        raise typer.BadParameter("--out DIR is required", param_hint="--out")
    if data == "merge":
        if adapter is None:
            raise typer.BadParameter("usage: docqa finetune merge ADAPTER --out DIR", param_hint="ADAPTER")
        from ..finetune.merge import merge_adapter

        result = merge_adapter(adapter, out_dir, _model_folder(model, device)[0] if model else None)
        if as_json:
            print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
        else:
            out.print(
                f"merged {escape(adapter)} into {escape(result.out)} ({result.tensors} tensors, {result.shards} shard(s))"
            )
        return
    if adapter is not None:
        raise typer.BadParameter(f"unexpected extra argument {adapter!r}")
    import torch

    from ..finetune import FinetuneConfig, finetune

    torch.manual_seed(seed)
    config = FinetuneConfig(
        method=str(method or "lora"),
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        max_tokens=max_tokens,
        eval_fraction=eval_fraction,
        seed=seed,
        lora_r=lora_r,
        pre_seq_len=pre_seq_len,
        prefix_projection=prefix_projection,
    )
    folder, config.device = _model_folder(model, device)
    try:
        with FinetuneProgress(err, enabled=err.is_terminal and not as_json) as progress:
            result = finetune(data, folder, out_dir, config, progress=progress)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: a checkpoint was written; run the same command to resume")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
        return
    held = (
        f"; held-out {_fmt(result.eval_loss_before)} -> {_fmt(result.eval_loss_after)}"
        if result.eval_loss_before is not None
        else ""
    )
    resumed = f" (resumed from step {result.resumed_from_step})" if result.resumed_from_step is not None else ""
    out.print(
        f"{result.method}: {result.steps} steps{resumed}, loss {_fmt(result.loss_before)} -> "
        f"{_fmt(result.loss_after)}{held}; {result.s_per_step:.3f} s/step, peak {result.peak_memory_mb:.0f} MB",
        markup=False,
    )
    out.print(f"adapter: {escape(result.out)} (use it with --adapter)")
