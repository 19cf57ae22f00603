"""Retrieval rule 4 (docqa/retrieve.py): hits built to MERGE_DEPTH whatever k, and evidence re-ranking."""

import pytest
from conftest import build_kb

import docqa.retrieve as retrieve
from docqa.retrieve import Retriever
from docqa.store import KnowledgeBase

GREP_MAN = """GREP(1)

OPTIONS

-c, --count
       Suppress normal output; instead print a count of matching lines for each input file.

-E, --extended-regexp
       Interpret PATTERNS as extended regular expressions.

-i, --ignore-case
       Ignore case distinctions in patterns and input data.

-x, --line-regexp
       Select only those matches that exactly match the whole line.

-v, --invert-match
       Invert the sense of matching, to select non-matching lines.

-n, --line-number
       Prefix each line of output with its 1-based line number.
"""
# passages that say "grep", "match", "whole" and "lines" often and answer nothing
CHATTY = {
    "lines1.md": "# Reading lines\n\ngrep reads its input as lines and prints the lines that match the pattern.\n",
    "lines2.md": "# Whole files\n\nA whole file is many lines; grep looks at each of the lines in turn for a match.\n",
    "lines3.md": "# Patterns\n\nA pattern can match part of a line or a whole word; grep then prints those lines.\n",
    "lines4.md": "# Output\n\nMatching lines are written to standard output, whole, with the file name before them.\n",
    "lines6.md": "# Lines again\n\nEach line grep matches is printed whole unless you ask for only the matching part of the line.\n",
    "lines7.md": "# Whole lines\n\nWhole lines of text are what grep works on: it never splits a line before trying to match it.\n",
    "lines5.md": "# Counting\n\nPeople often pipe grep into wc to learn how many lines matched in the whole tree.\n",
}
OTHER = {
    f"note{i}.md": f"# Note {i}\n\nThis note is about topic number {i}: backups, disks and users.\n" for i in range(4)
}
QUESTION = "How do I get grep to match only whole lines?"


@pytest.fixture(scope="module")
def kb_settings(tmp_path_factory, embedder):
    docs = {"grep.1.txt": GREP_MAN, **CHATTY, **OTHER}
    return build_kb(tmp_path_factory.mktemp("evidence"), docs, embedder, chunk_tokens=64, chunk_overlap=8)


@pytest.fixture
def retriever(kb_settings, embedder):
    kb = KnowledgeBase.open(kb_settings.index)
    yield Retriever(kb, embedder, kb_settings)
    kb.close()


def place_of_the_answer(hits) -> int:
    return next(i for i, h in enumerate(hits) if "--line-regexp" in h.text)


def test_the_option_entry_that_answers_moves_above_passages_that_only_repeat_the_words(retriever, monkeypatch):
    hits = retriever.search(QUESTION, k=10)
    ranked = place_of_the_answer(hits)
    assert hits[ranked].scores["evidence"] == max(h.scores["evidence"] for h in hits)
    monkeypatch.setattr(retrieve, "EVIDENCE_DEPTH", 0)  # the fused order alone
    assert place_of_the_answer(retriever.search(QUESTION, k=10)) > ranked


def test_single_signal_modes_are_not_re_ranked(retriever):
    for mode in ("bm25", "dense"):
        hits = retriever.search(QUESTION, k=3, mode=mode)
        assert all("evidence" not in h.scores for h in hits) and "evidence" not in hits.timings


@pytest.mark.parametrize("mode", ["hybrid", "bm25", "dense"])
@pytest.mark.parametrize("question", [QUESTION, "Which grep options count matches, ignore case and number lines?"])
def test_the_first_hits_do_not_depend_on_k(retriever, mode, question):
    many = retriever.search(question, k=8, mode=mode)
    for k in (1, 3):
        few = retriever.search(question, k=k, mode=mode)
        # the same hits, merged the same way (a merged hit's text covers every fragment it gathered)
        assert [(h.chunk_id, h.text) for h in few] == [(h.chunk_id, h.text) for h in many[:k]]
