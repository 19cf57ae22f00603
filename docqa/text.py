"""Shared text facts: which characters are CJK, the stop words, and which language a question is in.

    >>> detect_language("grep 的 -w 选项是什么意思？"), detect_language("How do I use tar?")
    ('zh', 'en')
    >>> re.findall(f"[{HAN}]+", "用apt-get安装𠀀")
    ['用', '安装𠀀']
    >>> "the" in EN_STOP_WORDS, "如何" in ZH_STOP_WORDS, "use" in EN_STOP_WORDS, "use" in EN_FILLER_WORDS
    (True, True, False, True)

The ranges are regex character-class bodies (use them inside `[...]`), so every module builds its patterns from
the same definition:

- `HAN`: Chinese characters: CJK Unified Ideographs, Extension A, Compatibility Ideographs and the supplementary
  ideographic planes (Extensions B-F, Compatibility Supplement);
- `KANA`: hiragana and katakana; `CJK` = KANA + HAN: what the BM25 tokenizer segments with jieba;
- `CJK_PUNCT`: CJK symbols and punctuation (ideographic space, 。、「」); `FULLWIDTH`: half- and full-width forms
  (，！？（）Ａ１).

Stop words: `EN_STOP_WORDS` / `ZH_STOP_WORDS` are dropped by the BM25 tokenizer; `EN_FILLER_WORDS` /
`ZH_FILLER_WORDS` are words of how a question is asked ("please tell", 使用, 需要) that carry no topic, dropped on
top of the stop words where only the topic matters (docqa/chat.py's follow-up rewriting). BM25 keeps them: a
passage that says "use" or 使用 is not worse for it, and changing the BM25 list changes every ranking.

Limits: Hangul, bopomofo and the other CJK blocks are not in any range (they count as ordinary letters); language
detection has two answers only and counts Han characters, not kana, as Chinese.
"""

from __future__ import annotations

import re

__all__ = [
    "CITATION",
    "CJK",
    "CJK_PUNCT",
    "EN_FILLER_WORDS",
    "EN_STOP_WORDS",
    "FULLWIDTH",
    "HAN",
    "KANA",
    "ZH_FILLER_WORDS",
    "ZH_STOP_WORDS",
    "detect_language",
]

HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
KANA = "\u3040-\u30ff"
CJK = KANA + HAN
CJK_PUNCT = "\u3000-\u303f"
FULLWIDTH = "\uff00-\uffef"

EN_STOP_WORDS = frozenset(
    """a about above after again all am an and any are as at be been before being below between both but by
    can could did do does doing down during each few for from further had has have having he her here hers
    him his how i if in into is it its itself just me more most my no nor not of off on once only or other
    our ours out over own same she should so some such than that the their theirs them then there these they
    this those through to too under until up very was we were what when where which while who whom why will
    with would you your yours""".split()
)
ZH_STOP_WORDS = frozenset(
    """的 了 是 在 和 与 及 或 也 都 就 而 之 其 这 那 着 过 吗 呢 吧 啊 呀 么 个 把 被 让 给 对 从 向 于 以 为
    将 并 且 等 我 你 他 她 它 我们 你们 他们 她们 它们 这个 那个 这些 那些 什么 怎么 怎样 怎么样 如何 为什么
    哪个 哪些 哪里 一个 一些 可以 能够 以及 还是 或者 因为 所以 如果 但是 然后 是否 请问 有没有""".split()
)
#: Chinese question words: they say what kind of answer is wanted, never what it is about (answer scoring, glosses)
ZH_QUESTION_WORDS = frozenset(
    """怎么 怎样 怎么样 如何 哪个 哪些 哪里 哪儿 什么 为什么 为何 是否 能否 能不能 可不可以 可以 应该 怎么办
    怎么做 干什么 做什么 请问 有没有 是不是 一下 一个 指的是 的话 要改""".split()
)
EN_FILLER_WORDS = frozenset("also else instead one ones please tell know use used using way ways get".split())
ZH_FILLER_WORDS = frozenset("应该 需要 要 用 使用 有 会 能 在哪 哪儿 多少 几 哪 谁".split())

#: a citation marker as answers write them: [1], [1,2], [2-4], 【1】, 【1，2】 (not array[1]: a word character before)
CITATION = re.compile(r"(?<![A-Za-z0-9_])[\[【]\s*(\d{1,4}(?:\s*[,，、\-–]\s*\d{1,4})*)\s*[\]】]")

_HAN_CHAR = re.compile(f"[{HAN}]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


def has_chinese(text: str, share: float = 0.05) -> bool:
    """Whether Han characters make up at least `share` of `text`'s characters (a Chinese page, however many
    options and commands it quotes; an English page that cites a Chinese word or two is not one).

        >>> has_chinese("-n, --line-number 在输出的每行前面加上行号")
        True
        >>> has_chinese("A directory (目录) holds files; `ls -l` lists them with their sizes, owners and dates.")
        False
    """
    return len(_HAN_CHAR.findall(text)) >= share * max(len(text), 1) > 0


def detect_language(text: str) -> str:
    """'zh' when the text has at least as many Han characters as Latin words, else 'en' (also for "")."""
    cjk = len(_HAN_CHAR.findall(text))
    return "zh" if cjk and cjk >= len(_LATIN_WORD.findall(text)) else "en"
