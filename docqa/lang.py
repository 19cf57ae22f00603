"""Which language a question is in: all docqa needs to pick an instruction, fusion weights or an abstain message.

    >>> detect_language("grep 的 -w 选项是什么意思？"), detect_language("How do I use tar?")
    ('zh', 'en')

Limits: two answers only; text with at least as many Chinese characters as Latin words counts as Chinese.
"""

from __future__ import annotations

import re

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


def detect_language(text: str) -> str:
    """'zh' when the text has at least as many Chinese characters as Latin words, else 'en'."""
    cjk = len(_CJK.findall(text))
    return "zh" if cjk and cjk >= len(_LATIN_WORD.findall(text)) else "en"
