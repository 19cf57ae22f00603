"""Language models behind `ask`/`chat`: `get_generator(settings)` picks and loads one (see base.py for the interface).

    >>> from docqa.config import Settings
    >>> resolve_generator(Settings(llm="demo"))
    ('demo', 'gemma-3-270m')
    >>> resolve_generator(Settings(llm_url="http://127.0.0.1:8000/v1"))
    ('openai', 'http://127.0.0.1:8000/v1')
    >>> resolve_generator(Settings(llm="extractive"))
    ('extractive', 'extractive')

    gen = get_generator(Settings(), progress=print)   # ChatGLM2-6B if one is on disk, else the extractive answerer

Choosing (`resolve_generator`): an explicit `settings.llm` wins -- "extractive" (quotes the passages, no model);
"demo" (the embedded Gemma 3 270M, a tiny base model for trying the generative path); "openai" or
"openai:MODEL" (needs `llm_url`); "chatglm2" (the local checkpoint `find_local_checkpoint` finds:
`chatglm2_path` or the Hugging Face cache `hf_cache`); a checkpoint folder; or a hub id such as
THUDM/chatglm2-6b (taken from the local cache, or downloaded from `model_hub` unless `offline`). Otherwise
`llm_url` set means the OpenAI-compatible server, and "auto" means ChatGLM2-6B when a local checkpoint is found,
else the extractive answerer: a tiny base model answers worse than quoting its own sources.

Limits: importing this package stays light (no torch); the model modules load when `get_generator` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import GenerationOptions, Generator, Message, Prompt
from .checkpoints import find_local_checkpoint, looks_like_hub_id

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "DEMO_NOTICE",
    "NOTICES",
    "notice",
    "GenerationOptions",
    "Generator",
    "Message",
    "Prompt",
    "get_generator",
    "resolve_generator",
]

#: the one line said when no real model answers (see `notice`)
NOTICES = {
    "extractive": (
        "No language model configured: answers quote the passages that match best. For written answers pass "
        "--model /path/to/chatglm2-6b (or set DOCQA_LLM), or --llm-url http://host:port/v1 for a served model."
    ),
    "demo": (
        "Using the demo model (Gemma 3 270M, a tiny base model for trying the generative path; its answers are "
        "often wrong). For real answers pass --model /path/to/chatglm2-6b or --llm-url http://host:port/v1."
    ),
}
DEMO_NOTICE = NOTICES["demo"]

DEMO_SPEC = "gemma-3-270m"
EXTRACTIVE_SPEC = "extractive"


def notice(settings: Settings) -> str | None:
    """The line to tell the user when `settings` give them no real language model, else None.

    >>> from docqa.config import Settings
    >>> notice(Settings(llm="extractive")) is None, notice(Settings(llm="demo")) == NOTICES["demo"]
    (True, True)
    """
    kind, _ = resolve_generator(settings)
    if kind == "extractive" and settings.llm.strip().lower() == "extractive":
        return None  # asked for by name: nothing to explain
    return NOTICES.get(kind)


def _openai_model(llm: str) -> str:
    """MODEL from "openai:MODEL" ("" for plain "openai")."""
    return llm.partition(":")[2].strip() if llm.lower().startswith("openai:") else ""


def resolve_generator(settings: Settings) -> tuple[str, str]:
    """(kind, spec) for the configured model, without loading anything: ("demo", "gemma-3-270m"),
    ("openai", url) or ("chatglm2", folder or hub id). ConfigError for names that mean nothing."""
    llm = settings.llm.strip()
    low = llm.lower()
    url = settings.llm_url.strip()
    if low == "demo":
        return "demo", DEMO_SPEC
    if low == "extractive":
        return "extractive", EXTRACTIVE_SPEC
    if low == "openai" or low.startswith("openai:"):
        if not url:
            raise ConfigError(f"llm={llm!r} needs the server's address: set llm_url (--llm-url or DOCQA_LLM_URL)")
        return "openai", url
    if low in ("auto", ""):
        if url:
            return "openai", url
        found = find_local_checkpoint(settings.chatglm2_path, settings.hf_cache)
        return ("chatglm2", str(found)) if found is not None else ("extractive", EXTRACTIVE_SPEC)
    if low in ("chatglm2", "chatglm2-6b"):
        found = find_local_checkpoint(settings.chatglm2_path, settings.hf_cache)
        if found is None:
            raise ConfigError(
                "no local ChatGLM2-6B checkpoint found (looked at chatglm2_path / DOCQA_CHATGLM2_PATH and the Hugging "
                f"Face cache {settings.hf_cache}): "
                "pass its folder with --model /path/to/chatglm2-6b or DOCQA_LLM"
            )
        return "chatglm2", str(found)
    path = Path(llm).expanduser()
    if path.is_dir():
        return "chatglm2", str(path)  # the loader says precisely what is wrong with a folder it cannot run
    if path.exists():
        raise ConfigError(f"model {llm!r} is a file; pass the checkpoint's folder (the one with config.json)")
    if looks_like_hub_id(llm):
        return "chatglm2", llm
    if "/" in llm or "\\" in llm or llm.startswith(("~", ".")):
        raise ConfigError(f"model folder not found: {llm}")
    raise ConfigError(
        f"unknown model {llm!r}: use auto, extractive, demo, chatglm2, openai[:MODEL] (with llm_url), "
        "a checkpoint folder or a hub id such as THUDM/chatglm2-6b"
    )


def get_generator(
    settings: Settings,
    progress: Callable[[str], None] | None = None,
    *,
    similarity: Callable[[str, Sequence[str]], Sequence[float]] | None = None,
    covered_languages: frozenset[str] = frozenset(),
) -> Generator:
    """Load the model `resolve_generator` picks. `progress` hears about slow first-time steps (a one-line message).

    `similarity(question, texts) -> cosines` is the embedder's, for the extractive answerer to use on questions in
    `covered_languages` (docqa.answer.open_generator passes the retriever's)."""
    kind, spec = resolve_generator(settings)
    if kind == "extractive":
        from .extractive import ExtractiveAnswerer

        return ExtractiveAnswerer(similarity=similarity, covered_languages=covered_languages)
    if kind == "demo":
        from .demo import DemoGenerator, default_cache_dir

        return DemoGenerator(cache_dir=default_cache_dir(settings.cache), progress=progress,
                             max_context=settings.max_context)
    if kind == "openai":
        from .openai import OpenAIGenerator

        kwargs = {"context_length": settings.max_context} if settings.max_context > 0 else {}
        return OpenAIGenerator(spec, model=_openai_model(settings.llm.strip()), api_key=settings.llm_api_key, **kwargs)
    from .chatglm2 import ChatGLM2Generator
    from .checkpoints import resolve_model_path

    folder = resolve_model_path(spec, model_hub=settings.model_hub, offline=settings.offline)
    return ChatGLM2Generator(folder, device=settings.llm_device, dtype=settings.llm_dtype,
                             quantize=settings.llm_quantize, max_context=settings.max_context)
