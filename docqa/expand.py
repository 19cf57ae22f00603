"""Query expansion: the chat model turns a question into extra search queries, each fused into the search.

A question asked the way users ask ("my script in /etc/cron.daily never runs") often shares few words with the
passage that answers it ("file names must conform to run-parts' requirements"), and a Chinese question over
English documents shares only its commands and options with them, which the English-only embedder cannot bridge.
A capable chat model can: it knows the likely vocabulary, the command names, the other language.

    >>> from docqa.config import Settings
    >>> from docqa.generate.extractive import ExtractiveAnswerer
    >>> expansion_kinds(Settings(query_expansion="auto"), ExtractiveAnswerer())  # no model to ask
    ()
    >>> clean_expansion("Keywords: cron, run-parts, /etc/cron.daily\\n", "Why does my cron job not run?", "keywords")
    'cron, run-parts, /etc/cron.daily'
    >>> clean_expansion("英文：How do I unpack a tar.gz file?", "怎么解压 tar.gz 文件？", "translate")
    'How do I unpack a tar.gz file?'

Kinds (the `query_expansion` setting, comma-separated; config.QUERY_EXPANSIONS):
  * keywords  -- 3-8 search terms: the words a passage that answers would use, synonyms, likely commands,
    options, files or packages;
  * translate -- the question in the other language (Chinese <-> English), technical terms kept as written: the
    bridge to documents in the other language, and an English query the English-only embedder can read;
  * hyde      -- a short hypothetical answer passage (Gao et al., 2022, "Precise Zero-Shot Dense Retrieval
    without Relevance Labels"): right or wrong, it is written in the documents' words.

It is off by default: nothing on the development machine could measure whether it helps (see Limits), and a
default must have earned its place. `query_expansion = "auto"` asks for keywords and a translation only when one
more short generation is cheap (`Generator.cheap_generation`: a model on a GPU, or a served one; a local model on
the CPU would spend tens of seconds); naming the kinds ("keywords,translate,hyde") asks for them anyway. docqa/retrieve.py searches each expansion like the
question (dense + BM25) and fuses its lists at `fusion.EXPANSION_WEIGHT` of the question's own weights, so where the
question's own lists agree they stay ahead.

Safety: what the model writes is only ever searched for -- one line (hyde: a few), clipped, with the model's
labels ("Keywords:", "英文：") removed; an error, an empty answer, an echo of the question or an absurdly long
one drops that expansion and the search runs on the question alone. Nothing is evaluated.

Limits: not measured on the development machine, which has no capable model (ChatGLM weights are the user's;
the demo model is a base model that cannot follow the instruction): `EXPANSION_WEIGHT` is a conservative
choice, not a tuned one; measure it on your own questions with `docqa eval QA.jsonl --expand --llm ...`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .config import QUERY_EXPANSIONS, Settings
from .errors import DocQAError
from .generate.base import GenerationOptions, Generator
from .text import detect_language

__all__ = ["clean_expansion", "expand_query", "expansion_kinds", "expansion_prompt", "greedy_reply", "reply_line"]

#: new tokens per expansion: keywords and a translation are one line; a hypothetical passage a few sentences
MAX_TOKENS = {"keywords": 48, "translate": 96, "hyde": 160}
AUTO_KINDS = ("keywords", "translate")

_PROMPTS = {
    ("keywords", "en"): (
        "List 3 to 8 search keywords for finding the passage of a technical manual that answers the question "
        "below: the words such a passage would use, their synonyms, and the names of the likely commands, "
        "options, files or packages. Output only the keywords, separated by commas.\n\n"
        "Question: {question}\nKeywords:"
    ),
    ("keywords", "zh"): (
        "为下面的问题列出 3 到 8 个搜索关键词，用来在技术手册中找到回答它的段落：这类段落会用的词、它们的同义词，"
        "以及可能涉及的命令、选项、文件或软件包名。只输出关键词，用逗号分隔。\n\n问题：{question}\n关键词："
    ),
    ("translate", "en"): (
        "Translate the question below into Simplified Chinese. Keep commands, options, file names, paths and "
        "package names exactly as written. Output only the translation.\n\nQuestion: {question}\nChinese:"
    ),
    ("translate", "zh"): (
        "把下面的问题翻译成英文。命令、选项、文件名、路径和软件包名保持原样。只输出译文。\n\n问题：{question}\n英文："
    ),
    ("hyde", "en"): (
        "Write a short passage (two or three sentences) of a technical manual that answers the question below, "
        "naming the commands, options or files it would use. Output only the passage.\n\n"
        "Question: {question}\nPassage:"
    ),
    ("hyde", "zh"): (
        "写一段技术手册中回答下面问题的短文（两三句话），写出会用到的命令、选项或文件。只输出这段短文。\n\n"
        "问题：{question}\n短文："
    ),
}
# the labels a model tends to repeat before its answer
_LABEL = re.compile(
    r"^\s*(?:keywords?|search keywords|translation|english|chinese|passage|answer|关键词|搜索关键词|译文|翻译|英文|"
    r"中文|短文|答案|回答)\s*[:：]\s*",
    re.IGNORECASE,
)


_QUOTES = "\"'“”「」"


def greedy_reply(generator: Generator, messages: list[dict[str, str]], max_new_tokens: int) -> str | None:
    """The model's short greedy answer to `messages`, or None when generation failed (the caller then does
    without it). Shared by query expansion and chat's follow-up rewrite."""
    opts = GenerationOptions(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.0)
    try:
        return generator.generate(messages, opts)
    except DocQAError:
        return None


def reply_line(raw: str, label: re.Pattern[str], max_lines: int = 3) -> str | None:
    """The first line of a one-line reply, the model's `label` ("Keywords:") and quotes removed; None when the
    reply is empty or runs over `max_lines` lines (a list or an essay: not what was asked).

        >>> reply_line('Keywords: "tar, gzip"\\n', _LABEL)
        'tar, gzip'
    """
    lines = [ln for ln in raw.strip().splitlines() if ln.strip()]
    if not lines or len(lines) > max_lines:
        return None
    return label.sub("", lines[0], count=1).strip().strip(_QUOTES).strip()


def expansion_kinds(settings: Settings, generator: Generator) -> tuple[str, ...]:
    """The expansions to ask `generator` for under `settings.query_expansion` (() = none)."""
    value = settings.query_expansion.strip()
    if value == "off" or not generator.is_chat_model:
        return ()  # the extractive answerer and the base demo model cannot follow the instruction
    if value == "auto":
        return AUTO_KINDS if generator.cheap_generation else ()
    return tuple(k for k in dict.fromkeys(p.strip() for p in value.split(",")) if k in QUERY_EXPANSIONS)


def expansion_prompt(question: str, kind: str) -> list[dict[str, str]]:
    """The one-message chat prompt that asks for expansion `kind` of `question`, in the question's language."""
    lang = "zh" if detect_language(question) == "zh" else "en"
    return [{"role": "user", "content": _PROMPTS[(kind, lang)].format(question=question.strip())}]


def clean_expansion(raw: str, question: str, kind: str) -> str | None:
    """The search query in the model's output `raw`, or None when it is unusable (empty, the question again,
    too long, or more lines than the kind allows)."""
    if kind == "hyde":
        lines = [ln.strip() for ln in raw.strip().splitlines() if ln.strip()]
        text = " ".join(_LABEL.sub("", ln, count=1) for ln in lines[:6]).strip().strip(_QUOTES)
        limit = 800
    else:
        text = reply_line(raw, _LABEL) or ""
        limit = max(200, 4 * len(question))
    text = " ".join(text.split())
    if not text or len(text) > limit or text.casefold() == question.strip().casefold():
        return None
    return text


def expand_query(question: str, generator: Generator, kinds: Sequence[str]) -> list[str]:
    """One search query per kind in `kinds` that the model answered usably, greedy and short."""
    out: list[str] = []
    for kind in kinds:
        raw = greedy_reply(generator, expansion_prompt(question, kind), MAX_TOKENS[kind])
        if raw is None:
            continue  # the question alone still searches
        text = clean_expansion(raw, question, kind)
        if text and text not in out:
            out.append(text)
    return out
