"""The whole ChatGLM family behind one loader, without remote code: ChatGLM-6B (v1, docqa's own network in
chatglm6b.py), ChatGLM2-6B and ChatGLM3-6B (transformers' native GlmForCausalLM, chatglm2.py).

    >>> model, tok = load("tests/data/chatglm6b/tiny-chatglm6b", device="cpu")    # doctest: +SKIP
    >>> model(input_ids=torch.tensor([ids])).logits                               # doctest: +SKIP
    >>> model.generate(input_ids=torch.tensor([ids]), max_new_tokens=16, do_sample=False)   # doctest: +SKIP
    >>> gen = ChatGLMGenerator.open("~/models/chatglm3-6b")                      # doctest: +SKIP
    >>> "".join(gen.stream([{"role": "system", "content": "Answer from the passages."},
    ...                     {"role": "user", "content": "dpkg -L 是做什么的？"}]))   # doctest: +SKIP

Which member a folder holds comes from its config files (checkpoints.detect_family): v1 by its layout, v3 by
the names or chat template in config.json / tokenizer_config.json, else v2; the `model_family` setting
(DOCQA_MODEL_FAMILY) settles an ambiguous folder. The tokenizers: chatglm6b_tokenizer.py (v1),
chatglm2_tokenizer.py (v2), chatglm3_tokenizer.py (v3). Prompt builders: `build_prompt(query, history)` -> str for
v1/v2, `build_chat_input(query, history, role)` -> ids for v3.

Each Generator speaks its member's chat format and stops on its stop tokens:

| member | prompt | system text | stops on | context |
| --- | --- | --- | --- | --- |
| ChatGLM-6B | the query, or `[Round 0]` 问/答 blocks, then `[gMASK]<sop>` | joined to the next question | `<eop>` | 2,048 |
| ChatGLM2-6B | `[Round 1]` 问/答 blocks (chatglm2.py) | joined to the next question | eos | 8K / 32K |
| ChatGLM3-6B | `<|system|>` `<|user|>` `<|assistant|>` | the `<|system|>` slot | eos `<|user|>` `<|observation|>` | 8K / 32K |

`find_models(settings)` (catalog.py) lists the checkpoints on this machine with how each would run.

Limits: the pre-quantised `-int4`/`-int8` repos are refused (docqa quantises full weights itself); ChatGLM3 tool
calls are not run (the generator streams the reply text). A string prompt (instead of messages) goes to the model
as the rendered v1/v2 prompt, or as one user turn for v3.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from docqa.errors import ModelError
from docqa.generate.base import GenerationOptions, Generator, Message, Prompt, runs_on_accelerator, stream_text
from docqa.generate.catalog import ModelInfo, find_models  # noqa: F401  (`docqa models`; re-exported here)
from docqa.generate.checkpoints import TOKENIZER_FILES, detect_family, read_config_json, resolve_model_path

#: docqa.config.LLM_DTYPES names for torch dtypes a library caller may pass instead of a string
_DTYPE_NAMES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}
#: ChatGLM-6B was trained on 2,048-token sequences (config.json's max_sequence_length)
V1_CONTEXT = 2048


def _settings_family() -> str:
    from docqa.config import load_settings

    return load_settings().model_family


def family_of(path: str | Path, family: str | None = None) -> str:
    """The member a local folder holds; `family` None reads the `model_family` setting (auto by default)."""
    return detect_family(path, _settings_family() if family is None else family)


def load_tokenizer(folder: Path, family: str):
    """The member's tokenizer for `folder`, or None when its tokenizer file is absent (tiny test checkpoints)."""
    file = folder / TOKENIZER_FILES[family]
    if not file.is_file():
        return None
    if family == "chatglm":
        from docqa.generate.chatglm6b_tokenizer import ChatGLM6BTokenizer

        return ChatGLM6BTokenizer(file)
    if family == "chatglm3":
        from docqa.generate.chatglm3_tokenizer import ChatGLM3Tokenizer

        return ChatGLM3Tokenizer(file)
    from docqa.generate.chatglm2_tokenizer import ChatGLM2Tokenizer

    return ChatGLM2Tokenizer(file)


def load(
    path: str | Path, device: Any = "auto", dtype: Any = "auto", quantize: str | None = None, family: str | None = None
):
    """(model, tokenizer) for any ChatGLM checkpoint folder (or hub id), the member decided from its files.

    `device`/`dtype` take docqa's names ("cpu", "cuda:0", "bf16", ...) or torch objects; `quantize` as in
    chatglm2.load; `family` overrides detection (None: the `model_family` setting). The tokenizer is None when
    the folder lacks the member's tokenizer file. The model answers `model(input_ids=...)` with `.logits` and
    `model.generate(input_ids=..., max_new_tokens=..., do_sample=False)` with the KV cache.
    """
    folder = resolve_model_path(path)
    fam = family_of(folder, family)
    device, dtype = str(device), _DTYPE_NAMES.get(str(dtype), str(dtype))
    if fam == "chatglm":
        from docqa.generate.chatglm6b import load_model as load_v1

        model = load_v1(folder, device=device, dtype=dtype, quantize=quantize)
    else:
        from docqa.generate.chatglm2 import load_model as load_v2

        model = load_v2(folder, device=device, dtype=dtype, quantize=quantize, family=fam)
    return model, load_tokenizer(folder, fam)


def context_length(cfg: dict[str, Any], family: str) -> int:
    """The context a member was tuned for: v1 2,048; v2 8K (32K with rope_ratio); v3 its `seq_length`."""
    if family == "chatglm":
        return int(cfg.get("max_sequence_length") or V1_CONTEXT)
    if family == "chatglm3":
        return int(cfg.get("seq_length") or 8192)
    # chatglm2-6b's config says seq_length 32768 but it was tuned at 8K; the 32k variant sets rope_ratio
    return 32768 if float(cfg.get("rope_ratio", 1) or 1) > 1 else 8192


# -- generators -------------------------------------------------------------------------------------------------


def messages_to_chatglm3(messages: Sequence[Message]) -> tuple[str, list[dict[str, str]]]:
    """Chat messages -> (query, history items) for ChatGLM3's `build_chat_input`: system messages keep their
    own slot (so the RAG instruction lands in `<|system|>`), the last user message is the query.

        >>> messages_to_chatglm3([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
        ('Q', [{'role': 'system', 'content': 'S'}])
    """
    items = [{"role": m["role"], "content": m["content"]} for m in messages]
    for item in items:
        if item["role"] not in ("system", "user", "assistant", "observation"):
            raise ModelError(f"unknown chat role {item['role']!r}")
    if items and items[-1]["role"] == "user":
        return items[-1]["content"], items[:-1]
    return "", items


class ChatGLMGenerator(Generator):
    """A local ChatGLM member; `open` picks the subclass for a folder. The ChatGLM2 one is chatglm2.py's."""

    is_chat_model = True
    family = ""

    def __init__(
        self,
        folder: Path,
        model,
        tokenizer,
        cfg: dict[str, Any],
        max_context: int = 0,
        first_token_s: float = 0.0,
        cache_dir: Path | None = None,
    ):
        from docqa.generate.glm_runtime import SessionPool, is_glm

        self.model, self.tokenizer = model, tokenizer
        self.name = f"{self.family}:{folder.name}"
        native = context_length(cfg, self.family)
        self.context_length = int(max_context) if max_context and max_context > 0 else native
        #: on CPU with max_context 0, the context first_token_s allows (docqa.generate.budget), else None
        self.context_budget = None
        #: P-Tuning v2 prefix for ChatGLM3: one (key, value) per layer, [1, groups, pre_seq_len, head_dim]
        self.prefix_kv = None
        # ChatGLM3 runs on glm_runtime with conversation caches; ChatGLM-6B (v1) keeps its own network
        self.sessions = SessionPool(model) if is_glm(model) else None
        self.reuses_context = self.sessions is not None
        if is_glm(model):
            from docqa.generate.budget import pick_context

            self.context_length, self.context_budget = pick_context(
                model, folder.name, native, max_context, first_token_s, cache_dir
            )

    @classmethod
    def open(
        cls,
        path: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        max_context: int = 0,
        quantize: str | None = None,
        family: str | None = None,
        first_token_s: float = 0.0,
        cache_dir: Path | None = None,
    ) -> Generator:
        """The generator for a ChatGLM folder (or hub id) of any member. On CPU with `max_context` 0 and
        `first_token_s` > 0, ChatGLM2/3 size their context from a measured prefill speed (`context_budget`),
        cached in `cache_dir`."""
        folder = resolve_model_path(path)
        fam = family_of(folder, family)
        if fam == "chatglm2":
            from docqa.generate.chatglm2 import ChatGLM2Generator

            return ChatGLM2Generator(
                folder,
                device=device,
                dtype=dtype,
                max_context=max_context,
                quantize=quantize,
                first_token_s=first_token_s,
                cache_dir=cache_dir,
            )
        model, tok = load(folder, device=device, dtype=dtype, quantize=quantize, family=fam)
        if tok is None:
            raise ModelError(f"{folder} has no {TOKENIZER_FILES[fam]} (copy it from the THUDM repository)")
        sub = ChatGLM6BGenerator if fam == "chatglm" else ChatGLM3Generator
        return sub(folder, model, tok, read_config_json(folder), max_context, first_token_s, cache_dir)

    @property
    def cheap_generation(self) -> bool:  # type: ignore[override]
        return runs_on_accelerator(self.model)

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count_tokens(text)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        raise NotImplementedError

    def stop_ids(self) -> list[int]:
        return [self.tokenizer.eos_id]

    def display(self, ids: list[int]) -> str:
        """The reply text so far; a rewrite must keep what it already returned (see StreamDecoder)."""
        return self.tokenizer.decode(ids)

    def stream(self, prompt: Prompt, options: GenerationOptions | None = None) -> Iterator[str]:
        options = options or GenerationOptions()
        ids = self.prompt_ids(prompt)
        session = self.sessions.acquire(ids, self.prefix_kv) if self.sessions is not None else None
        try:
            yield from stream_text(
                self.model, ids, options, self.stop_ids(), self.display, self.context_length, session
            )
        finally:
            if session is not None:
                session.release()


class ChatGLM6BGenerator(ChatGLMGenerator):
    """ChatGLM-6B (v1): upstream chat()'s prompt, stopping at `<eop>`, 2,048 tokens of context."""

    family = "chatglm"

    def stop_ids(self) -> list[int]:
        # upstream's chat() stops at the config's eos (<eop>), as the model was trained
        return [int(self.model.config.eos_token_id)]

    def render(self, messages: Sequence[Message]) -> str:
        from docqa.generate.chatglm2 import messages_to_query_history

        query, history = messages_to_query_history(messages)
        return self.tokenizer.build_prompt(query, history)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        text = prompt if isinstance(prompt, str) else self.render(prompt)
        # passages are text: control tokens typed in a document must not become real ones
        return self.tokenizer.encode(text, split_special=False)

    def display(self, ids: list[int]) -> str:
        # upstream's process_response, less what would rewrite text already streamed: the leading strip and
        # the full-width punctuation keep lengths; the trailing strip and [[训练时间]] wait for the end
        return self.tokenizer.process_response_prefix(self.tokenizer.decode(ids))


class ChatGLM3Generator(ChatGLMGenerator):
    """ChatGLM3-6B (and -32k): role tokens, the system prompt in `<|system|>`, stops on `<|user|>` /
    `<|observation|>` as well as eos."""

    family = "chatglm3"

    def render(self, messages: Sequence[Message]) -> str:
        # the chat template's text form: role tokens count as a few text tokens each, a safe over-estimate
        body = "".join(f"<|{m['role']}|>\n {m['content']}" for m in messages)
        return f"[gMASK]sop{body}<|assistant|>"

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.build_chat_input(prompt)
        query, history = messages_to_chatglm3(prompt)
        return self.tokenizer.build_chat_input(query, history)

    def stop_ids(self) -> list[int]:
        return list(self.tokenizer.chat_eos_ids)

    def display(self, ids: list[int]) -> str:
        # the reply opens with its (empty) metadata line: "\n 你好..."
        return self.tokenizer.decode(ids).lstrip()
