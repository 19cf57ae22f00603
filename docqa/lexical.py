"""Bilingual (English/Chinese) tokenizer and a persistent BM25 index stored in the knowledge base's SQLite.

Worked example::

    >>> tokenize("用 apt-get install 安装软件包")
    ['用', 'apt-get', 'apt', 'get', 'instal', '安装', '软件', '软件包', '件包']
    >>> conn = sqlite3.connect("kb/docqa.sqlite3"); conn.executescript(LexicalIndex.SCHEMA)
    >>> idx = LexicalIndex(conn)
    >>> with conn:                       # the caller owns the transaction, together with its chunk rows
    ...     idx.add([1, 2], ["dpkg -L lists the files of a package", "编辑 /etc/fstab 挂载分区"])
    >>> idx.search("fstab", k=5)
    [(2, 0.69...)]

Tokenizer (`tokenize`; `tokenize_query` is the same function so documents and questions always agree):
  * NFKC first (full-width Ａ１，→ A1,). CJK runs (Han, kana) are segmented with jieba in "search" mode
    (rjieba, the Rust port, when installed: ~15x faster and no cache file; else pure-Python jieba, quietly, with
    its cache under ~/.cache/docqa) PLUS the character bigrams of the run that jieba did not already emit as a
    word, for recall when a question segments differently from the passage (`bigrams=False` turns them off).
    Single-character Chinese stop words (的 了 是 在 ...) and stop words such as 什么/如何 are dropped.
  * Other text is split into "code-like" runs of word characters joined by . / - + # : ~ @ \\ $ % = _ .
    A run with punctuation is emitted whole (lower-cased, unstemmed) AND as its parts (stop words dropped,
    stemmed, single ASCII characters dropped): "/etc/fstab" -> /etc/fstab, etc, fstab; "my_var" -> my_var, var;
    "python3.11" -> python3.11, python3, 11, python; "C++" -> c++; "foo.bar()" -> foo.bar, foo, bar.
    Plain words are lower-cased, stop words removed, Snowball-stemmed ("installing" -> "instal").
  * Short options keep their case and are not split: "-L" and "-l" are different terms (they are different
    options in nearly every tool); long options are lower-cased and split: "--force" -> --force, forc.

Index layout (all tables prefixed lex_; `SCHEMA` creates them; nothing here ever commits):
  lex_meta(key, value)            n_docs and total_len, kept exact by add/remove (BM25's N and avgdl)
  lex_terms(id, term, df, appends) vocabulary with exact live document frequency
  lex_postings(id, term_id, level, n, data)
                                  posting segments: data = packed little-endian records (chunk_id int64,
                                  tf uint32, doc_len uint32). Each add() writes one level-0 segment per term;
                                  after a term's 16^(L+1)-th append its level-L segments are merged into one
                                  at level L+1 (a base-16 counter), so a term has at most ~15 segments per
                                  level, O(log16 appends) levels, and each posting is rewritten O(log16) times.
  lex_docs(chunk_id, length, terms) forward index (term ids), so remove() needs no text
  lex_dead(chunk_id, terms)       removed chunks whose postings are still in segments (tombstones). Search
                                  filters them out; they are physically purged when the id is re-added, when
                                  merges meet them, or all at once when they exceed 5% of the index.
Search reads only the query terms' segments and scores exact BM25 with numpy (Lucene idf
ln(1 + (N - df + 0.5) / (df + 0.5)) and tf part tf / (tf + k1 (1 - b + b dl / avgdl)), as bm25s "lucene";
repeated query terms count once). Its cost grows with the query terms' document frequencies, ~16 bytes read
per posting, independent of the rest of the index.

Limits: chunk ids must fit in int64 (SQLite rowids always do); the tokenizer is not configurable per index, so
changing it (or switching between jieba and rjieba, which may segment rare words differently) calls for a
rebuild of the lexical tables. Not thread-safe: one LexicalIndex per connection.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sqlite3
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["tokenize", "tokenize_query", "LexicalIndex", "segmenter_name"]

# ----------------------------------------------------------------------------------------------- tokenizer

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CJK_RUN = re.compile(f"[{_CJK}]+")
_WORD = f"[^\\W{_CJK}]"  # a word character that is not CJK
_JOIN = r"[./\-+#:~@\\$%=]"
# a run of word characters joined by code punctuation, with optional leading/trailing punctuation
_RUN = re.compile(f"{_JOIN}*{_WORD}+(?:{_JOIN}+{_WORD}+)*{_JOIN}*")
_PART = re.compile(r"[^\W_]+")
_SUBRUN = re.compile(r"[^\W\d_]{2,}|\d{2,}")  # letters / digits inside a mixed word such as python3
_SHORT_OPTION = re.compile(r"-[^\W_]+")
_LEADING_JUNK = re.compile(r"^(?:[:+#@\\%=]+|\.{2,}(?!/))")
_TRAILING_JUNK = ".:/\\-~@$%="

_EN_STOP = frozenset(
    """a about above after again all am an and any are as at be been before being below between both but by
    can could did do does doing down during each few for from further had has have having he her here hers
    him his how i if in into is it its itself just me more most my no nor not of off on once only or other
    our ours out over own same she should so some such than that the their theirs them then there these they
    this those through to too under until up very was we were what when where which while who whom why will
    with would you your yours""".split()
)
_ZH_STOP = frozenset(
    """的 了 是 在 和 与 及 或 也 都 就 而 之 其 这 那 着 过 吗 呢 吧 啊 呀 么 个 把 被 让 给 对 从 向 于 以 为
    将 并 且 等 我 你 他 她 它 我们 你们 他们 她们 它们 这个 那个 这些 那些 什么 怎么 怎样 怎么样 如何 为什么
    哪个 哪些 哪里 一个 一些 可以 能够 以及 还是 或者 因为 所以 如果 但是 然后 是否 请问 有没有""".split()
)
_ZH_STOP_CHARS = frozenset(w for w in _ZH_STOP if len(w) == 1)


@lru_cache(maxsize=1)
def _stemmer():  # type: ignore[no-untyped-def]
    import Stemmer  # PyStemmer: C Snowball with its own word cache

    return Stemmer.Stemmer("english")


@lru_cache(maxsize=1)
def _segmenter() -> tuple[str, Callable[[str], list[tuple[str, int, int]]]]:
    """(name, fn) where fn(run) -> [(word, start, end)] in jieba "search" mode."""
    try:
        import rjieba

        return "rjieba", lambda s: rjieba.tokenize(s, mode="search")
    except ImportError:
        pass
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it logs dictionary loading to stderr otherwise
    tk = jieba.Tokenizer()
    # jieba caches its parsed dictionary as /tmp/jieba.cache by default: a shared, guessable path whose
    # content is loaded with marshal. Keep it in the user's own cache directory instead.
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "docqa"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tk.tmp_dir = str(cache)
    except OSError:
        pass  # unwritable home: jieba still works, it just re-parses its dictionary (~1 s) each time
    tk.initialize()
    return "jieba", lambda s: list(tk.tokenize(s, mode="search"))


def segmenter_name() -> str:
    """'rjieba' or 'jieba': which segmenter `tokenize` uses (the index should be rebuilt if it changes)."""
    return _segmenter()[0]


def _plain(word: str, out: list[str]) -> None:
    """A lower-cased word with no joiners: stop-filter, drop single ASCII characters, stem."""
    if word in _EN_STOP or (len(word) == 1 and word.isascii()):
        return
    out.append(_stemmer().stemWord(word))
    if not word.isalpha() and not word.isdigit():  # python3 -> also python; sha256 -> sha, 256
        subs = _SUBRUN.findall(word)
        if len(subs) > 1 or (subs and subs[0] != word):
            out.extend(_stemmer().stemWord(s) for s in subs if s not in _EN_STOP)


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
        if w not in _ZH_STOP:
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


# ----------------------------------------------------------------------------------------------- index

_POSTING = np.dtype([("cid", "<i8"), ("tf", "<u4"), ("dl", "<u4")])
_FANOUT = 16  # merge a term's level-L segments after its 16^(L+1)-th append
_BATCH = 500  # bound parameters per IN (...) statement
_PURGE_MIN = 256  # purge tombstones when more than max(_PURGE_MIN, _PURGE_FRACTION * N)
_PURGE_FRACTION = 0.05


def _chunks(seq: Sequence, n: int = _BATCH) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class LexicalIndex:
    """Persistent BM25 over chunk texts, kept in the caller's SQLite database and transactions."""

    SCHEMA = """
CREATE TABLE IF NOT EXISTS lex_meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO lex_meta(key, value) VALUES ('n_docs', 0), ('total_len', 0);
CREATE TABLE IF NOT EXISTS lex_terms(
    id INTEGER PRIMARY KEY, term TEXT NOT NULL UNIQUE,
    df INTEGER NOT NULL DEFAULT 0, appends INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS lex_postings(
    id INTEGER PRIMARY KEY, term_id INTEGER NOT NULL, level INTEGER NOT NULL,
    n INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS lex_postings_term ON lex_postings(term_id, level);
CREATE TABLE IF NOT EXISTS lex_docs(chunk_id INTEGER PRIMARY KEY, length INTEGER NOT NULL, terms BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS lex_dead(chunk_id INTEGER PRIMARY KEY, terms BLOB NOT NULL);
"""

    def __init__(self, conn: sqlite3.Connection, *, bigrams: bool = True) -> None:
        self.conn = conn
        self.bigrams = bigrams

    # -- small helpers

    def _meta(self) -> tuple[int, int]:
        rows = dict(self.conn.execute("SELECT key, value FROM lex_meta WHERE key IN ('n_docs', 'total_len')"))
        return int(rows.get("n_docs", 0)), int(rows.get("total_len", 0))

    def _bump_meta(self, d_docs: int, d_len: int) -> None:
        self.conn.executemany(
            "INSERT INTO lex_meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            [("n_docs", d_docs), ("total_len", d_len)],
        )

    def _select_in(self, sql: str, values: Sequence) -> list[tuple]:
        """Run `sql` (with one `{}` for the IN list) over `values` in bounded batches."""
        out: list[tuple] = []
        for part in _chunks(list(values)):
            out.extend(self.conn.execute(sql.format(_marks(len(part))), tuple(part)))
        return out

    def _dead_ids(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self.conn.execute("SELECT chunk_id FROM lex_dead")), dtype=np.int64)

    # -- public API

    def count(self) -> int:
        """Number of indexed (live) chunks."""
        return self._meta()[0]

    def chunk_ids(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT chunk_id FROM lex_docs")}

    def clear(self) -> None:
        for t in ("lex_terms", "lex_postings", "lex_docs", "lex_dead"):
            self.conn.execute(f"DELETE FROM {t}")
        self.conn.execute("UPDATE lex_meta SET value = 0 WHERE key IN ('n_docs', 'total_len')")

    def add(self, chunk_ids: Sequence[int], texts: Sequence[str]) -> None:
        """Index `texts` under `chunk_ids`; an id already indexed is replaced (update)."""
        if len(chunk_ids) != len(texts):
            raise ValueError(f"{len(chunk_ids)} chunk ids for {len(texts)} texts")
        ids = [int(c) for c in chunk_ids]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate chunk ids in one add()")
        if not ids:
            return
        present = [r[0] for r in self._select_in("SELECT chunk_id FROM lex_docs WHERE chunk_id IN ({})", ids)]
        if present:
            self.remove(present)
        reused = [r[0] for r in self._select_in("SELECT chunk_id FROM lex_dead WHERE chunk_id IN ({})", ids)]
        if reused:
            self._purge(reused)  # stale postings of a removed chunk must not be credited to its new text

        postings: dict[str, list[tuple[int, int, int]]] = {}
        docs: list[tuple[int, int, list[str]]] = []
        total = 0
        for cid, text in zip(ids, texts):
            toks = tokenize(text, bigrams=self.bigrams)
            dl = len(toks)
            total += dl
            counts = Counter(toks)
            docs.append((cid, dl, list(counts)))
            for term, tf in counts.items():
                p = postings.get(term)
                if p is None:
                    postings[term] = [(cid, tf, dl)]
                else:
                    p.append((cid, tf, dl))

        term_ids = self._term_ids(list(postings))
        self.conn.executemany(
            "INSERT INTO lex_postings(term_id, level, n, data) VALUES (?, 0, ?, ?)",
            [(term_ids[t][0], len(p), np.array(p, dtype=_POSTING).tobytes()) for t, p in postings.items()],
        )
        self.conn.executemany(
            "UPDATE lex_terms SET df = df + ?, appends = appends + 1 WHERE id = ?",
            [(len(p), term_ids[t][0]) for t, p in postings.items()],
        )
        self.conn.executemany(
            "INSERT INTO lex_docs(chunk_id, length, terms) VALUES (?, ?, ?)",
            [(cid, dl, np.array([term_ids[t][0] for t in ts], dtype="<i8").tobytes()) for cid, dl, ts in docs],
        )
        self._bump_meta(len(ids), total)

        dead: np.ndarray | None = None
        for tid, appends in term_ids.values():
            c, level = appends + 1, 0
            while c % (_FANOUT ** (level + 1)) == 0:
                if dead is None:
                    dead = self._dead_ids()
                self._merge(tid, level, dead)
                level += 1

    def remove(self, chunk_ids: Iterable[int]) -> None:
        """Un-index chunks (ids not indexed are ignored)."""
        ids = sorted({int(c) for c in chunk_ids})
        rows = self._select_in("SELECT chunk_id, length, terms FROM lex_docs WHERE chunk_id IN ({})", ids)
        if not rows:
            return
        all_terms = np.concatenate([np.frombuffer(r[2], dtype="<i8") for r in rows])
        tids, counts = np.unique(all_terms, return_counts=True)
        self.conn.executemany(
            "UPDATE lex_terms SET df = df - ? WHERE id = ?", zip(counts.tolist(), tids.tolist())
        )
        gone = [r[0] for r in rows]
        self.conn.executemany("INSERT OR REPLACE INTO lex_dead(chunk_id, terms) VALUES (?, ?)", [(r[0], r[2]) for r in rows])
        for part in _chunks(gone):
            self.conn.execute(f"DELETE FROM lex_docs WHERE chunk_id IN ({_marks(len(part))})", tuple(part))
        self._bump_meta(-len(rows), -sum(r[1] for r in rows))
        n_dead = self.conn.execute("SELECT COUNT(*) FROM lex_dead").fetchone()[0]
        if n_dead > max(_PURGE_MIN, _PURGE_FRACTION * self.count()):
            self._purge(None)

    def search(
        self, query: str, k: int, k1: float = 1.2, b: float = 0.75, code_boost: float = 1.0
    ) -> list[tuple[int, float]]:
        """Top-`k` (chunk_id, BM25 score), best first; [] when no query term is indexed.

        `code_boost` multiplies the weight of code-like query terms (`-w`, `/etc/fstab`, `apt-get`): a user who
        types an exact option or path means it more than the words around it. 1.0 is plain BM25."""
        terms = sorted(set(tokenize_query(query, bigrams=self.bigrams)))
        n_docs, total_len = self._meta()
        if k <= 0 or not terms or n_docs == 0:
            return []
        avgdl = total_len / n_docs
        idf: dict[int, float] = {}
        for tid, term, df in self._select_in("SELECT id, term, df FROM lex_terms WHERE df > 0 AND term IN ({})", terms):
            idf[tid] = math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
            if code_boost != 1.0 and is_code_term(term):
                idf[tid] *= code_boost
        if not idf:
            return []
        cids, weights = [], []
        for tid, data in self._select_in("SELECT term_id, data FROM lex_postings WHERE term_id IN ({})", list(idf)):
            p = np.frombuffer(data, dtype=_POSTING)
            tf = p["tf"].astype(np.float64)
            norm = k1 * (1.0 - b + b * (p["dl"] / avgdl))
            cids.append(p["cid"])
            weights.append(idf[tid] * tf / (tf + norm))
        cid = np.concatenate(cids)
        w = np.concatenate(weights)
        dead = self._dead_ids()
        if dead.size:
            keep = ~np.isin(cid, dead)
            cid, w = cid[keep], w[keep]
        if cid.size == 0:
            return []
        lo, hi = int(cid.min()), int(cid.max())
        if lo >= 0 and hi <= 8 * cid.size + 1_000_000:  # dense scatter-add is the fast path for compact ids
            summed = np.bincount(cid, weights=w)
            cand = np.flatnonzero(summed)
            scores = summed[cand]
        else:
            cand, inv = np.unique(cid, return_inverse=True)
            scores = np.bincount(inv, weights=w)
        if k < cand.size:
            top = np.argpartition(-scores, k - 1)[:k]
        else:
            top = np.arange(cand.size)
        # best first; ties broken by the smaller chunk id so results are deterministic
        order = top[np.lexsort((cand[top], -scores[top]))]
        return [(int(cand[i]), float(scores[i])) for i in order]

    # -- internals

    def _term_ids(self, terms: list[str]) -> dict[str, tuple[int, int]]:
        """term -> (id, appends before this add), creating missing terms."""
        sql = "SELECT term, id, appends FROM lex_terms WHERE term IN ({})"
        found = {t: (i, a) for t, i, a in self._select_in(sql, terms)}
        missing = [t for t in terms if t not in found]
        if missing:
            self.conn.executemany("INSERT INTO lex_terms(term) VALUES (?)", [(t,) for t in missing])
            found.update({t: (i, a) for t, i, a in self._select_in(sql, missing)})
        return found

    def _merge(self, term_id: int, level: int, dead: np.ndarray) -> None:
        rows = self.conn.execute(
            "SELECT id, data FROM lex_postings WHERE term_id = ? AND level = ?", (term_id, level)
        ).fetchall()
        if len(rows) < 2 and not dead.size:
            if rows:
                self.conn.execute("UPDATE lex_postings SET level = ? WHERE id = ?", (level + 1, rows[0][0]))
            return
        merged = np.concatenate([np.frombuffer(r[1], dtype=_POSTING) for r in rows]) if rows else None
        self.conn.executemany("DELETE FROM lex_postings WHERE id = ?", [(r[0],) for r in rows])
        if merged is not None and dead.size:
            merged = merged[~np.isin(merged["cid"], dead)]
        if merged is not None and merged.size:
            self.conn.execute(
                "INSERT INTO lex_postings(term_id, level, n, data) VALUES (?, ?, ?, ?)",
                (term_id, level + 1, int(merged.size), merged.tobytes()),
            )

    def _purge(self, chunk_ids: Sequence[int] | None) -> None:
        """Physically remove tombstoned chunks (all of them when `chunk_ids` is None) from their postings."""
        if chunk_ids is None:
            rows = self.conn.execute("SELECT chunk_id, terms FROM lex_dead").fetchall()
        else:
            rows = self._select_in("SELECT chunk_id, terms FROM lex_dead WHERE chunk_id IN ({})", chunk_ids)
        if not rows:
            return
        dead = np.array(sorted(r[0] for r in rows), dtype=np.int64)
        tids = np.unique(np.concatenate([np.frombuffer(r[1], dtype="<i8") for r in rows])).tolist()
        updates, deletes = [], []
        for pid, data in self._select_in("SELECT id, data FROM lex_postings WHERE term_id IN ({})", tids):
            p = np.frombuffer(data, dtype=_POSTING)
            mask = np.isin(p["cid"], dead)
            if mask.any():
                keep = p[~mask]
                if keep.size:
                    updates.append((int(keep.size), keep.tobytes(), pid))
                else:
                    deletes.append((pid,))
        self.conn.executemany("UPDATE lex_postings SET n = ?, data = ? WHERE id = ?", updates)
        self.conn.executemany("DELETE FROM lex_postings WHERE id = ?", deletes)
        for part in _chunks(dead.tolist()):
            self.conn.execute(f"DELETE FROM lex_dead WHERE chunk_id IN ({_marks(len(part))})", tuple(part))
        # forget terms no live chunk uses any more, so the vocabulary does not grow without bound
        for part in _chunks(tids):
            self.conn.execute(
                f"DELETE FROM lex_terms WHERE df <= 0 AND id IN ({_marks(len(part))}) "
                "AND NOT EXISTS (SELECT 1 FROM lex_postings WHERE term_id = lex_terms.id)",
                tuple(part),
            )
