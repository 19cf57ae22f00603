"""The bilingual (English/Chinese) tokenizer behind the BM25 index: jieba words + bigrams, stems, code tokens.

Worked example::

    >>> tokenize("用 apt-get install 安装软件包")
    ['用', 'apt-get', 'apt', 'get', 'instal', '安装', '软件', '软件包', '装软', '件包']
    >>> tokenize("/etc/fstab -L --force"), tokenize("如何查看日志", bigrams=False)
    (['/etc/fstab', 'etc', 'fstab', '-L', '--force', 'forc'], ['查看', '日志'])

`tokenize_query` is the same function, so documents and questions always agree:
  * NFKC first (full-width Ａ１，→ A1,). CJK runs (Han, kana: docqa/text.py's `CJK`) are segmented with jieba
    in "search" mode (rjieba, the Rust port, when installed: ~15x faster and no cache file; else pure-Python
    jieba, quietly, with its cache in the `cache` setting's folder) PLUS the character bigrams of the run that
    jieba did not already emit as a word, for recall when a question segments differently from the passage
    (`bigrams=False` turns them off). docqa/text.py's ZH_STOP_WORDS (的 了 是 在 ... 什么 如何) are dropped,
    and no bigram contains a single-character stop word.
  * Other text is split into "code-like" runs of word characters joined by . / - + # : ~ @ \\ $ % = _ .
    A run with punctuation is emitted whole (lower-cased, unstemmed) AND as its parts (stop words dropped,
    stemmed, single ASCII characters dropped): "/etc/fstab" -> /etc/fstab, etc, fstab; "my_var" -> my_var, var;
    "python3.11" -> python3.11, python3, 11, python; "C++" -> c++; "foo.bar()" -> foo.bar, foo, bar.
    Plain words are lower-cased, EN_STOP_WORDS removed, Snowball-stemmed ("installing" -> "instal").
  * Short options keep their case and are not split: "-L" and "-l" are different terms (they are different
    options in nearly every tool); long options are lower-cased and split: "--force" -> --force, forc.

Limits: not configurable per index; changing it (or switching between jieba and rjieba, which may segment rare
words differently: see `segmenter_name`) calls for a rebuild of the BM25 tables (docqa/bm25.py).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from .text import CJK, EN_STOP_WORDS, ZH_STOP_WORDS

__all__ = ["is_code_term", "query_bigrams", "segmenter_name", "tokenize", "tokenize_query"]

_CJK_RUN = re.compile(f"[{CJK}]+")
_WORD = f"[^\\W{CJK}]"  # a word character that is not CJK
_JOIN = r"[./\-+#:~@\\$%=]"
# a run of word characters joined by code punctuation, with optional leading/trailing punctuation
_RUN = re.compile(f"{_JOIN}*{_WORD}+(?:{_JOIN}+{_WORD}+)*{_JOIN}*")
_PART = re.compile(r"[^\W_]+")
_SUBRUN = re.compile(r"[^\W\d_]{2,}|\d{2,}")  # letters / digits inside a mixed word such as python3
_SHORT_OPTION = re.compile(r"-[^\W_]+")
_LEADING_JUNK = re.compile(r"^(?:[:+#@\\%=]+|\.{2,}(?!/))")
_TRAILING_JUNK = ".:/\\-~@$%="

_ZH_STOP_CHARS = frozenset(w for w in ZH_STOP_WORDS if len(w) == 1)


@lru_cache(maxsize=1)
def _stemmer():  # type: ignore[no-untyped-def]
    import Stemmer  # PyStemmer: C Snowball with its own word cache

    return Stemmer.Stemmer("english")


def _docqa_cache_dir() -> Path:
    """The `cache` setting (DOCQA_CACHE, else $XDG_CACHE_HOME/docqa, else ~/.cache/docqa). Tokenizing has no
    settings at hand, so it asks config; a broken config file must not stop tokenizing, hence the fallback."""
    from .config import Settings, load_settings
    from .errors import ConfigError

    try:
        return load_settings().cache
    except ConfigError:
        return Settings().cache


@lru_cache(maxsize=1)
def _segmenter() -> tuple[str, Callable[[str], list[tuple[str, int, int]]]]:
    """(name, fn) where fn(run) -> [(word, start, end)] in jieba "search" mode."""
    name, tokenize_fn = _jieba()
    return name, lambda s: tokenize_fn(s, "search")


def words(text: str) -> list[str]:
    """`text` cut into words by jieba's accurate mode (each character in exactly one word; Latin runs whole),
    for code that wants a question's words rather than index terms (docqa/lexicon.py).

        >>> words("怎样递归复制一个目录？")
        ['怎样', '递归', '复制', '一个', '目录', '？']
    """
    return [w for w, _, _ in _jieba()[1](text, "default")]


@lru_cache(maxsize=1)
def _jieba() -> tuple[str, Callable[[str, str], list[tuple[str, int, int]]]]:
    """(name, fn) where fn(text, mode) -> [(word, start, end)], mode "search" or "default": rjieba when
    installed, else jieba."""
    try:
        import rjieba

        return "rjieba", lambda s, mode: rjieba.tokenize(s, mode=mode)
    except ImportError:
        pass
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it logs dictionary loading to stderr otherwise
    tk = jieba.Tokenizer()
    # jieba caches its parsed dictionary as /tmp/jieba.cache by default: a shared, guessable path whose
    # content is loaded with marshal. Keep it in the user's own cache directory instead.
    cache = _docqa_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tk.tmp_dir = str(cache)
    except OSError:
        pass  # unwritable home: jieba still works, it just re-parses its dictionary (~1 s) each time
    tk.initialize()
    return "jieba", lambda s, mode: list(tk.tokenize(s, mode=mode))


def segmenter_name() -> str:
    """'rjieba' or 'jieba': which segmenter `tokenize` uses (the index should be rebuilt if it changes)."""
    return _segmenter()[0]


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _stemmer().stemWord(word)  # a document repeats its words: stemming each once is most of the saving


def _plain(word: str, out: list[str]) -> None:
    """A lower-cased word with no joiners: stop-filter, drop single ASCII characters, stem."""
    if word in EN_STOP_WORDS or (len(word) == 1 and word.isascii()):
        return
    out.append(_stem(word))
    if not word.isalpha() and not word.isdigit():  # python3 -> also python; sha256 -> sha, 256
        subs = _SUBRUN.findall(word)
        if len(subs) > 1 or (subs and subs[0] != word):
            out.extend(_stem(s) for s in subs if s not in EN_STOP_WORDS)


def _code_run(run: str, out: list[str]) -> None:
    run = _LEADING_JUNK.sub("", run).rstrip(_TRAILING_JUNK)
    if not run:
        return
    if _SHORT_OPTION.fullmatch(run):
        out.append(run)  # -L, -xzvf, -5: case matters, parts are meaningless
        return
    low = run.lower()
    parts = _PART.findall(low)
    if len(parts) == 1 and parts[0] == low:
        _plain(low, out)
        return
    out.append(low)
    for p in parts:
        _plain(p, out)


def _cjk_run(run: str, out: list[str], bigrams: bool) -> None:
    words = _segmenter()[1](run)
    covered = set()
    for w, start, end in words:
        covered.add((start, end))
        if w not in ZH_STOP_WORDS:
            out.append(w)
    if bigrams:
        for i in range(len(run) - 1):
            if (i, i + 2) not in covered and run[i] not in _ZH_STOP_CHARS and run[i + 1] not in _ZH_STOP_CHARS:
                out.append(run[i : i + 2])


def is_code_term(term: str) -> bool:
    """A token kept whole because it looks like code: an option, path, dotted or hyphenated name (not CJK)."""
    return not term.isalnum() and not _CJK_RUN.search(term) and any(ch.isalnum() for ch in term)


def tokenize(text: str, *, bigrams: bool = True) -> list[str]:
    """Terms of `text` in reading order (repeats kept: they are term frequencies)."""
    text = unicodedata.normalize("NFKC", text)
    out: list[str] = []
    pos = 0
    for m in _CJK_RUN.finditer(text):
        for r in _RUN.findall(text, pos, m.start()):
            _code_run(r, out)
        _cjk_run(m.group(), out, bigrams)
        pos = m.end()
    for r in _RUN.findall(text, pos):
        _code_run(r, out)
    return out


def tokenize_query(text: str, *, bigrams: bool = True) -> list[str]:
    """Terms of a question; identical to `tokenize` so that questions and passages always agree."""
    return tokenize(text, bigrams=bigrams)


def query_bigrams(text: str) -> set[str]:
    """The terms of `tokenize_query(text)` that are only recall bigrams: character pairs that jieba did not emit
    as a word anywhere in the text (BM25 may weigh them less than words).

        >>> sorted(query_bigrams("如何查看日志"))      # jieba: 如何 查看 日志
        ['何查', '看日']
    """
    text = unicodedata.normalize("NFKC", text)
    words: list[str] = []
    pairs: list[str] = []
    for m in _CJK_RUN.finditer(text):
        _cjk_run(m.group(), words, bigrams=False)
        _cjk_run(m.group(), pairs, bigrams=True)
    return set(pairs) - set(words)
