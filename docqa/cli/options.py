"""Options shared between commands, so each flag is spelled and explained once and means one thing everywhere.

    @app.command("ask")
    @answer_options
    def ask_command(question: Annotated[str, typer.Argument()], flags: AnswerFlags) -> None:
        settings = load_settings(**flags.settings())

`-k/--top-k` is "how many passages" in every command: the passages `search` shows, and at most the passages
`ask`/`chat` give the model (the setting `max_passages`; the prompt budget may hold fewer). `--max-passages`,
its old name in ask/chat, is the same option. Every flag defaults to None = "not given", so the config file and
DOCQA_* variables decide (docqa/config.py: defaults < file < environment < flags).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import LLM_QUANTIZE, MODEL_FAMILIES, OCR_MODES

IndexOpt = Annotated[Path | None, typer.Option("--index", help=r"Knowledge-base folder \[env: DOCQA_INDEX]")]
EmbedOpt = Annotated[str | None, typer.Option("--embed-model", help="sentence-transformers model name or path")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output")]
ModeOpt = Annotated[str | None, typer.Option("--mode", help="dense | bm25 | hybrid")]
TopKOpt = Annotated[int | None, typer.Option("-k", "--top-k", help="How many passages")]

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "--llm", help="auto | demo | chatglm2 | openai[:MODEL] | a ChatGLM2 folder or hub id"),
]
AdapterOpt = Annotated[
    str | None, typer.Option("--adapter", help="A fine-tuned adapter folder (docqa finetune, or official P-Tuning v2)")
]
LlmUrlOpt = Annotated[str | None, typer.Option("--llm-url", help="Base URL of an OpenAI-compatible server")]
MaxContextOpt = Annotated[int | None, typer.Option("--max-context", help="Context tokens to use (0 = the model's own)")]
AnswerTopKOpt = Annotated[
    int | None,
    typer.Option(
        "-k", "--top-k", "--max-passages", help="At most this many passages go into the answer (0 = as many as fit)"
    ),
]
TemperatureOpt = Annotated[float | None, typer.Option("--temperature", help="Sampling temperature (0 = greedy)")]
# an enum so `--help` lists the choices and a typo is a usage error; its values are config's, not a copy
Quantize = StrEnum("Quantize", {v: v for v in LLM_QUANTIZE})
QuantizeOpt = Annotated[
    Quantize | None,
    typer.Option("--quantize", help="Weight quantisation of the local model (auto = int8 for big models on CPU)"),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="Where the local model runs: auto | cpu | cuda | cuda:N")
]
Family = StrEnum("Family", {v: v for v in MODEL_FAMILIES})
FamilyOpt = Annotated[
    Family | None,
    typer.Option("--model-family", help="Which ChatGLM a folder holds, when its files leave it ambiguous"),
]
Ocr = StrEnum("Ocr", {v: v for v in OCR_MODES})
OcrOpt = Annotated[
    Ocr | None,
    typer.Option("--ocr", help="OCR scanned pages and images: auto (pages without usable text) | always | never"),
]
ExpandOpt = Annotated[
    str | None,
    typer.Option(
        "--expand",
        help="Query expansion by the chat model before retrieval: off (default) | auto (only on a GPU or a served "
        "model) | keywords,translate,hyde",
    ),
]
NoAbstainOpt = Annotated[bool, typer.Option("--no-abstain", help="Answer even when nothing relevant was found")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show the rewritten question, prompt budget and timings")
]


@dataclass(frozen=True)
class AnswerFlags:
    """The flags `docqa ask` and `docqa chat` share, as given on the command line (None = not given)."""

    model: str | None = None
    llm_url: str | None = None
    max_context: int | None = None
    top_k: int | None = None
    mode: str | None = None
    temperature: float | None = None
    quantize: str | None = None
    device: str | None = None
    model_family: str | None = None
    adapter: str | None = None
    expand: str | None = None
    index: Path | None = None
    no_abstain: bool = False
    verbose: bool = False
    as_json: bool = False

    def settings(self) -> dict[str, Any]:
        """The flags as `load_settings` keywords (the setting names differ from some flag names)."""
        return dict(
            index=self.index,
            llm=self.model,
            llm_url=self.llm_url,
            max_context=self.max_context,
            max_passages=self.top_k,
            mode=self.mode,
            temperature=self.temperature,
            llm_quantize=None if self.quantize is None else str(self.quantize),
            llm_device=self.device,
            model_family=None if self.model_family is None else str(self.model_family),
            adapter=self.adapter,
            query_expansion=self.expand,
        )


# the ask/chat flags in the order `--help` lists them; names are AnswerFlags' fields
_ANSWER_OPTIONS = {
    "model": ModelOpt,
    "llm_url": LlmUrlOpt,
    "max_context": MaxContextOpt,
    "top_k": AnswerTopKOpt,
    "mode": ModeOpt,
    "temperature": TemperatureOpt,
    "quantize": QuantizeOpt,
    "device": DeviceOpt,
    "model_family": FamilyOpt,
    "adapter": AdapterOpt,
    "expand": ExpandOpt,
    "index": IndexOpt,
    "no_abstain": NoAbstainOpt,
    "verbose": VerboseOpt,
    "as_json": JsonOpt,
}
_DEFAULTS = asdict(AnswerFlags())


def answer_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give `command` the ask/chat flags; it receives them as one `flags: AnswerFlags` keyword argument.

    Typer reads a command's parameters from `inspect.signature`, which honours `__signature__`: the wrapper
    advertises the command's own parameters (minus `flags`) followed by the shared ones, and folds the shared ones
    back into an AnswerFlags when called. Limits: `command` must take `flags` by keyword and use no name of
    `_ANSWER_OPTIONS` itself.
    """
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "flags"]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=_DEFAULTS[name], annotation=annotation)
        for name, annotation in _ANSWER_OPTIONS.items()
    ]
    clash = {p.name for p in own} & set(_ANSWER_OPTIONS)
    if clash:
        raise TypeError(f"{command.__name__}: parameters {sorted(clash)} clash with the shared ask/chat options")

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        flags = AnswerFlags(**{name: kwargs.pop(name) for name in _ANSWER_OPTIONS})
        return command(**kwargs, flags=flags)

    wrapper.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    return wrapper
