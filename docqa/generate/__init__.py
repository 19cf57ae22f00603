"""Language models behind `ask`/`chat`: `get_generator(settings)` picks and loads one (see base.py for the interface).

    >>> from docqa.config import Settings
    >>> resolve_generator(Settings(llm="demo"))
    ('demo', 'gemma-3-270m')
    >>> resolve_generator(Settings(llm_url="http://127.0.0.1:8000/v1"))
    ('openai', 'http://127.0.0.1:8000/v1')
    >>> gen = get_generator(Settings(), progress=print)     # ChatGLM2-6B if one is on disk, else the demo model

Choosing (`resolve_generator`): an explicit `settings.llm` wins -- "demo"; "openai" or "openai:MODEL" (needs
`llm_url`); "chatglm2" (the local checkpoint `find_local_checkpoint` finds: $DOCQA_CHATGLM2_PATH or the Hugging
Face cache); a checkpoint folder; or a hub id such as THUDM/chatglm2-6b (taken from the local cache, or downloaded
when not offline). Otherwise `llm_url` set means the OpenAI-compatible server, and "auto" means ChatGLM2-6B when a
local checkpoint is found, else the embedded demo model.

Limits: importing this package stays light (no torch); the model modules load when `get_generator` runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import GenerationOptions, Generator, Message, Prompt

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "DEMO_NOTICE",
    "GenerationOptions",
    "Generator",
    "Message",
    "Prompt",
    "get_generator",
    "resolve_generator",
]

DEMO_NOTICE = (
    "Using the built-in demo model (Gemma 3 270M, a small base model only good for trying docqa out); "
    "for real answers point docqa at ChatGLM2-6B with --model /path/to/chatglm2-6b or DOCQA_LLM=/path/to/chatglm2-6b."
)

DEMO_SPEC = "gemma-3-270m"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


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
    if low == "openai" or low.startswith("openai:"):
        if not url:
            raise ConfigError(f"llm={llm!r} needs the server's address: set llm_url (--llm-url or DOCQA_LLM_URL)")
        return "openai", url
    if low in ("auto", ""):
        if url:
            return "openai", url
        from .chatglm2 import find_local_checkpoint

        found = find_local_checkpoint()
        return ("chatglm2", str(found)) if found is not None else ("demo", DEMO_SPEC)
    if low in ("chatglm2", "chatglm2-6b"):
        from .chatglm2 import find_local_checkpoint

        found = find_local_checkpoint()
        if found is None:
            raise ConfigError(
                "no local ChatGLM2-6B checkpoint found (looked at $DOCQA_CHATGLM2_PATH and the Hugging Face cache): "
                "pass its folder with --model /path/to/chatglm2-6b or DOCQA_LLM"
            )
        return "chatglm2", str(found)
    path = Path(llm).expanduser()
    if path.is_dir():
        return "chatglm2", str(path)  # the loader says precisely what is wrong with a folder it cannot run
    if path.exists():
        raise ConfigError(f"model {llm!r} is a file; pass the checkpoint's folder (the one with config.json)")
    if _HUB_ID.fullmatch(llm) and not llm.startswith((".", "/", "~")):
        return "chatglm2", llm
    if "/" in llm or "\\" in llm or llm.startswith(("~", ".")):
        raise ConfigError(f"model folder not found: {llm}")
    raise ConfigError(
        f"unknown model {llm!r}: use auto, demo, chatglm2, openai[:MODEL] (with llm_url), "
        "a checkpoint folder or a hub id such as THUDM/chatglm2-6b"
    )


def get_generator(settings: Settings, progress: Callable[[str], None] | None = None) -> Generator:
    """Load the model `resolve_generator` picks. `progress` hears about slow first-time steps (a one-line message)."""
    kind, spec = resolve_generator(settings)
    if kind == "demo":
        from .demo import DemoGenerator

        return DemoGenerator(progress=progress, max_context=settings.max_context)
    if kind == "openai":
        from .openai import OpenAIGenerator

        kwargs = {"context_length": settings.max_context} if settings.max_context > 0 else {}
        return OpenAIGenerator(spec, model=_openai_model(settings.llm.strip()), api_key=settings.llm_api_key, **kwargs)
    from .chatglm2 import ChatGLM2Generator

    return ChatGLM2Generator(spec, device=settings.llm_device, dtype=settings.llm_dtype, max_context=settings.max_context)
