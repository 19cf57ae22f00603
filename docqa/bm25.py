"""A persistent BM25 index over chunk texts, kept in the knowledge base's SQLite file and transactions.

Worked example::

    >>> conn = sqlite3.connect("kb/docqa.sqlite3"); conn.executescript(LexicalIndex.SCHEMA)  # doctest: +SKIP
    >>> idx = LexicalIndex(conn)  # doctest: +SKIP
    >>> with conn:                       # the caller owns the transaction, together with its chunk rows  # doctest: +SKIP
    ...     idx.add([1, 2], ["dpkg -L lists the files of a package", "编辑 /etc/fstab 挂载分区"])
    >>> idx.search("fstab", k=5)  # doctest: +SKIP
    [(2, 0.69...)]
    >>> idx.document_frequencies(["fstab", "挂载", "grub"])  # doctest: +SKIP
    {'fstab': 1, '挂载': 1}

Terms come from docqa/tokenize.py (`tokenize` for passages, `tokenize_query` for questions).

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
per posting, independent of the rest of the index. Top-k selection sums per chunk with a dense bincount when the
postings are dense in the id range (else by sorting the ids), and finds the k-th best score from every 16th
chunk's sum first, so only the few chunks above it are sorted: at 1M chunks a 4-term question over 1M postings
costs ~10 ms of SQLite reads, ~8 ms of scoring and ~12 ms of selection on 2 busy cores (benchmarks/scale.py).

Limits: chunk ids must fit in int64 (SQLite rowids always do); changing the tokenizer calls for a rebuild of
the lex_ tables (`docqa rebuild`). Not thread-safe: one LexicalIndex per connection.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from .tokenize import is_code_term, query_bigrams, tokenize, tokenize_query

__all__ = ["LexicalIndex"]

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


def _count_terms(
    ids: Sequence[int], texts: Sequence[str], bigrams: bool
) -> tuple[dict[str, list[tuple[int, int, int]]], list[tuple[int, int, list[str]]], int]:
    """term -> [(chunk_id, tf, doc_len)] postings, each chunk's (id, length, distinct terms), and the total length."""
    postings: dict[str, list[tuple[int, int, int]]] = {}
    docs: list[tuple[int, int, list[str]]] = []
    total = 0
    for cid, text in zip(ids, texts):
        toks = tokenize(text, bigrams=bigrams)
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
    return postings, docs, total


def _top_k(cid: np.ndarray, w: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The `k` best (chunk_id, summed weight) of per-posting weights `w` (all > 0) of chunks `cid`, best first;
    ties broken by the smaller chunk id, also at the k-th place, so results are deterministic."""
    if cid.size == 0 or k <= 0:
        return []
    lo, hi = int(cid.min()), int(cid.max())
    # A dense scatter-add over 0..max id costs O(max id) whatever the number of postings (at 1M chunks, 3-7 ms
    # even for a query of a few hundred postings); sorting the ids costs O(n log n). Dense only when the
    # postings are at least a 16th of the id range. Both sum each chunk's weights in posting order.
    if lo >= 0 and 16 * cid.size >= hi:
        summed = np.bincount(cid, weights=w)
        sample = summed[::16]
        if np.count_nonzero(sample) > k:
            # the k-th best of every 16th chunk is at most the k-th best of all: only chunks scoring at least
            # that can be in the top k, and there are few of them (a partition of 1/16 of the range finds it)
            floor = np.partition(sample, sample.size - k)[sample.size - k]
            cand = np.flatnonzero(summed >= floor)
        else:
            cand = np.flatnonzero(summed)
        scores = summed[cand]
    else:
        cand, inv = np.unique(cid, return_inverse=True)
        scores = np.bincount(inv, weights=w)
    if k < cand.size:
        # every candidate scoring at least the k-th best: np.partition finds that value in O(n); ties with
        # it are all kept, so the id tie-break below decides them
        kth = np.partition(scores, cand.size - k)[cand.size - k]
        top = np.flatnonzero(scores >= kth)
    else:
        top = np.arange(cand.size)
    order = top[np.lexsort((cand[top], -scores[top]))][:k]
    return [(int(cand[i]), float(scores[i])) for i in order]


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

        postings, docs, total = _count_terms(ids, texts, self.bigrams)
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
        self.conn.executemany("UPDATE lex_terms SET df = df - ? WHERE id = ?", zip(counts.tolist(), tids.tolist()))
        gone = [r[0] for r in rows]
        self.conn.executemany(
            "INSERT OR REPLACE INTO lex_dead(chunk_id, terms) VALUES (?, ?)", [(r[0], r[2]) for r in rows]
        )
        for part in _chunks(gone):
            self.conn.execute(f"DELETE FROM lex_docs WHERE chunk_id IN ({_marks(len(part))})", tuple(part))
        self._bump_meta(-len(rows), -sum(r[1] for r in rows))
        n_dead = self.conn.execute("SELECT COUNT(*) FROM lex_dead").fetchone()[0]
        if n_dead > max(_PURGE_MIN, _PURGE_FRACTION * self.count()):
            self._purge(None)

    def document_frequencies(self, terms: Iterable[str]) -> dict[str, int]:
        """term -> number of live chunks containing it, for the given terms that some live chunk contains.

            >>> idx.document_frequencies(["fstab", "zzz"])  # doctest: +SKIP
            {'fstab': 1}

        Terms are matched exactly as stored (run them through `tokenize_query` first)."""
        sql = "SELECT term, df FROM lex_terms WHERE df > 0 AND term IN ({})"
        return {t: int(d) for t, d in self._select_in(sql, sorted(set(terms)))}

    def search(
        self,
        query: str,
        k: int,
        k1: float = 1.2,
        b: float = 0.75,
        code_boost: float = 1.0,
        bigram_weight: float = 1.0,
    ) -> list[tuple[int, float]]:
        """Top-`k` (chunk_id, BM25 score), best first; [] when no query term is indexed.

        `code_boost` multiplies the weight of code-like query terms (`-w`, `/etc/fstab`, `apt-get`): a user who
        types an exact option or path means it more than the words around it. `bigram_weight` multiplies that of
        the Chinese recall bigrams (character pairs jieba did not segment as a word: `tokenize.query_bigrams`),
        which are weaker evidence than words. 1.0 and 1.0 is plain BM25."""
        terms = sorted(set(tokenize_query(query, bigrams=self.bigrams)))
        weak = query_bigrams(query) if bigram_weight != 1.0 and self.bigrams else set()
        n_docs, total_len = self._meta()
        if k <= 0 or not terms or n_docs == 0:
            return []
        avgdl = total_len / n_docs
        idf: dict[int, float] = {}
        for tid, term, df in self._select_in("SELECT id, term, df FROM lex_terms WHERE df > 0 AND term IN ({})", terms):
            idf[tid] = math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
            if code_boost != 1.0 and is_code_term(term):
                idf[tid] *= code_boost
            if term in weak:
                idf[tid] *= bigram_weight
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
        return _top_k(cid, w, k)

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
