"""docqa.text: language detection and what the shared character ranges hold."""

import re

from docqa.text import CJK, FULLWIDTH, HAN, detect_language


def test_detect_language():
    assert detect_language("怎么解压 tar.gz 文件？") == "zh"
    assert detect_language("grep 的 -w 选项是什么意思？") == "zh"  # Chinese words around code still Chinese
    assert detect_language("How do I use tar -xzf?") == "en"
    assert detect_language("") == "en"


def test_ranges_separate_han_kana_and_punctuation():
    han, cjk = re.compile(f"[{HAN}]"), re.compile(f"[{CJK}]")
    # Extension A, the basic block, a compatibility ideograph and Extension B are all Han
    assert all(han.fullmatch(ch) for ch in "㐀中豈𠀀")
    assert cjk.fullmatch("か") and not han.fullmatch("か")  # kana is segmented, but is not Chinese
    assert not any(cjk.fullmatch(ch) for ch in "，。Ａa한")  # punctuation, full-width Latin, Hangul: none
    assert re.fullmatch(f"[{FULLWIDTH}]+", "，Ａ")
