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
`chatglm2_path` or the Hugging Face cache `hf_cache`); a checkpoint folder of any ChatGLM member (ChatGLM-6B,
ChatGLM2-6B, ChatGLM3-6B: the kind says which, from its config files or the `model_family` setting); or a hub id
such as THUDM/chatglm2-6b (taken from the local cache, or downloaded from `model_hub` unless `offline`). Otherwise
`llm_url` set means the OpenAI-compatible server, and "auto" means ChatGLM2-6B when a local checkpoint is found,
else the extractive answerer: a tiny base model answers worse than quoting its own sources.

Limits: importing this package stays light (no torch); the model modules load when `get_generator` runs.
"""

from __future__ import annotations

from collections.abc import Callable
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


#: resolve_generator's kinds for the ChatGLM members (ChatGLM-6B v1, ChatGLM2-6B, ChatGLM3-6B)
CHATGLM_KINDS = ("chatglm", "chatglm2", "chatglm3")
#: `llm` names that mean "the local checkpoint of that member" ("chatglm2" keeps its own branch; plain "chatglm"
#: names the whole family, so it stays an unknown name)
_MEMBER_NAMES = {"chatglm-6b": "chatglm", "chatglm3": "chatglm3", "chatglm3-6b": "chatglm3"}


def _chatglm_kind(spec: str, settings: Settings) -> str:
    """The member a folder (from its config files) or hub id (from its name) holds; `model_family` wins when
    set. A folder whose files cannot be read counts as chatglm2: its loader then says what is wrong."""
    from ..errors import ModelError
    from .checkpoints import detect_family

    family = settings.model_family
    path = Path(spec).expanduser()
    if path.is_dir():
        try:
            return detect_family(path, family)
        except ModelError:
            return "chatglm2" if family == "auto" else family
    if family != "auto":
        return family
    name = spec.lower().rsplit("/", 1)[-1]
    return "chatglm3" if "chatglm3" in name else "chatglm" if name.startswith("chatglm-") else "chatglm2"


def resolve_generator(settings: Settings) -> tuple[str, str]:
    """(kind, spec) for the configured model, without loading anything: ("demo", "gemma-3-270m"),
    ("openai", url) or (a CHATGLM_KINDS member, folder or hub id). ConfigError for names that mean nothing."""
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
        if found is None:
            return "extractive", EXTRACTIVE_SPEC
        return _chatglm_kind(str(found), settings), str(found)
    if low in ("chatglm2", "chatglm2-6b"):
        # chatglm2_path is taken whatever member it holds, as always; in the cache only ChatGLM2 snapshots count
        only = None if str(settings.chatglm2_path) else "chatglm2"
        found = find_local_checkpoint(settings.chatglm2_path, settings.hf_cache, family=only)
        if found is None:
            raise ConfigError(
                "no local ChatGLM2-6B checkpoint found (looked at chatglm2_path / DOCQA_CHATGLM2_PATH and the Hugging "
                f"Face cache {settings.hf_cache}): "
                "pass its folder with --model /path/to/chatglm2-6b or DOCQA_LLM"
            )
        return _chatglm_kind(str(found), settings), str(found)
    if low in _MEMBER_NAMES:
        family = _MEMBER_NAMES[low]
        found = find_local_checkpoint(settings.chatglm2_path, settings.hf_cache, family=family)
        if found is None:
            raise ConfigError(
                f"no local {low} checkpoint found (looked at chatglm2_path / DOCQA_CHATGLM2_PATH and the Hugging Face "
                f"cache {settings.hf_cache}): pass its folder with --model /path/to/{low} or DOCQA_LLM"
            )
        return family, str(found)
    path = Path(llm).expanduser()
    if path.is_dir():
        return _chatglm_kind(str(path), settings), str(path)
    if path.exists():
        raise ConfigError(f"model {llm!r} is a file; pass the checkpoint's folder (the one with config.json)")
    if looks_like_hub_id(llm):
        return _chatglm_kind(llm, settings), llm
    if "/" in llm or "\\" in llm or llm.startswith(("~", ".")):
        raise ConfigError(f"model folder not found: {llm}")
    raise ConfigError(
        f"unknown model {llm!r}: use auto, extractive, demo, chatglm-6b, chatglm2, chatglm3, openai[:MODEL] (with "
        "llm_url), a checkpoint folder or a hub id such as THUDM/chatglm2-6b"
    )


def get_generator(settings: Settings, progress: Callable[[str], None] | None = None) -> Generator:
    """Load the model `resolve_generator` picks. `progress` hears about slow first-time steps (a one-line message).

    The extractive answerer is built without the embedder's similarity: on the dev set's reporting half it
    changed nothing measurable (English 0.36 -> 0.38 without it) and cost 15-25 s per answer on 2 busy cores."""
    kind, spec = resolve_generator(settings)
    if settings.adapter.strip() and kind not in CHATGLM_KINDS:
        raise ConfigError(f"an adapter ({settings.adapter}) needs a local ChatGLM model, not {kind}: pass --model PATH")
    if kind == "extractive":
        from .extractive import ExtractiveAnswerer

        return ExtractiveAnswerer()
    if kind == "demo":
        from .demo import DemoGenerator, default_cache_dir

        return DemoGenerator(
            cache_dir=default_cache_dir(settings.cache), progress=progress, max_context=settings.max_context
        )
    if kind == "openai":
        from .openai import OpenAIGenerator

        kwargs = {"context_length": settings.max_context} if settings.max_context > 0 else {}
        return OpenAIGenerator(spec, model=_openai_model(settings.llm.strip()), api_key=settings.llm_api_key, **kwargs)
    from .chatglm import ChatGLMGenerator
    from .checkpoints import resolve_model_path

    # a local folder runs as the member resolve_generator named; a download is judged by its files once here
    family = kind if Path(spec).expanduser().is_dir() else settings.model_family
    folder = resolve_model_path(spec, model_hub=settings.model_hub, offline=settings.offline)
    load_kw = dict(
        device=settings.llm_device,
        dtype=settings.llm_dtype,
        quantize=settings.llm_quantize,
        max_context=settings.max_context,
        family=family,
        first_token_s=settings.first_token_s,
        cache_dir=settings.cache,
    )
    if settings.adapter.strip():  # LoRA merged as the weights load, or a P-Tuning prefix (adapters.py)
        from .adapters import open_adapted

        gen = open_adapted(folder, settings.adapter.strip(), **load_kw)
    else:
        gen = ChatGLMGenerator.open(folder, **load_kw)
    budget = getattr(gen, "context_budget", None)
    if progress and budget is not None and budget.limited:
        progress(budget.message())  # once per load: the CPU latency rule shrank the context
    return gen
