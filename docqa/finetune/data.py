"""Training data for `docqa finetune`: the record formats people already have -> token ids with loss masks.

    >>> recs = parse_lines(['{"content": "类型#裤", "summary": "宽松的裤子"}',
    ...                     '{"instruction": "Name a tool", "input": "", "output": "tar"}'], "d.jsonl")
    >>> [(r.query, r.answer, r.line) for r in recs]
    [('类型#裤', '宽松的裤子', 1), ('Name a tool', 'tar', 2)]
    >>> parse_lines(['{"text": "x"}'], "d.jsonl")
    Traceback (most recent call last):
    ...
    docqa.errors.LoadError: d.jsonl:1: unknown record format (keys: text); expected one of: content/summary (ADGEN), prompt/response[/history], instruction/input/output (alpaca), conversations (sharegpt), question/answer

Formats (one record per JSON object; a file is JSONL, or one JSON array of records):

| format | fields | becomes |
| --- | --- | --- |
| ADGEN | `content`, `summary` | query, answer |
| official multi-turn | `prompt`, `response`, `history: [[q, a], ...]` | query, answer, history |
| alpaca | `instruction`, `input`, `output` | instruction + "\\n" + input, answer |
| sharegpt | `conversations: [{"from": "human"/"gpt"/"system", "value"}]` | one record per `gpt` turn |
| plain | `question`/`answer` (or `query`/`response`) | query, answer |

`encode` builds the prompt in the model's own chat format (ChatGLM2 `[Round n]` 问/答 via `build_prompt`,
ChatGLM3 role tokens via `build_chat_input`, ChatGLM-6B v1 with its `[gMASK]<sop>` suffix) and sets the labels to
-100 everywhere except on the answer tokens and the end token after them, as upstream's P-Tuning scripts do.
`split` keeps a held-out set chosen by a hash of each record, so it does not change when records are added.

Limits: no packing; sequences longer than `max_tokens` lose the start of their prompt (the answer is kept up to
half the budget). sharegpt `system` turns are joined to the next question (ChatGLM2 has no system role).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docqa.errors import LoadError
from docqa.store.files import sha256_file

IGNORE = -100
_FORMATS = (
    "content/summary (ADGEN), prompt/response[/history], instruction/input/output (alpaca), "
    "conversations (sharegpt), question/answer"
)


@dataclass
class Record:
    """One training pair: the question, the wanted answer and the earlier rounds, with where it came from."""

    query: str
    answer: str
    history: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""
    line: int = 0


@dataclass
class Example:
    """A tokenised record: `labels[i]` is the id the model should predict at position i-1's output (-100: no
    loss), the usual causal-LM convention (the model shifts them)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def answer_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _text(value: Any, where: str, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise LoadError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _history(value: Any, where: str) -> list[tuple[str, str]]:
    if value in (None, ""):
        return []
    if not isinstance(value, list):
        raise LoadError(f"{where}: 'history' must be a list of [question, answer] pairs")
    out = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise LoadError(f"{where}: history[{i}] must be a [question, answer] pair of strings")
        out.append((pair[0], pair[1]))
    return out


def _sharegpt(turns: Any, where: str, source: str, line: int) -> list[Record]:
    if not isinstance(turns, list) or not turns:
        raise LoadError(f"{where}: 'conversations' must be a non-empty list of {{from, value}} turns")
    out: list[Record] = []
    history: list[tuple[str, str]] = []
    pending: list[str] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "value" not in turn:
            raise LoadError(f"{where}: conversations[{i}] must be an object with 'from' and 'value'")
        who = str(turn.get("from", turn.get("role", ""))).lower()
        value = _text(turn["value"], where, f"conversations[{i}].value")
        if who in ("human", "user", "system"):
            pending.append(value)
        elif who in ("gpt", "assistant", "bot", "chatgpt"):
            query = "\n\n".join(pending)
            out.append(Record(query, value, list(history), source, line))
            history.append((query, value))
            pending = []
        else:
            raise LoadError(f"{where}: conversations[{i}] has unknown 'from' {who!r} (use human, gpt or system)")
    if not out:
        raise LoadError(f"{where}: the conversation has no 'gpt' turn to learn from")
    return out


def parse_record(obj: Any, source: str = "", line: int = 0) -> list[Record]:
    """The Record(s) of one JSON object (a sharegpt conversation gives one per answer); LoadError naming
    `source:line` for anything else."""
    where = f"{source}:{line}"
    if not isinstance(obj, dict):
        raise LoadError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    if "conversations" in obj:
        return _sharegpt(obj["conversations"], where, source, line)
    if "content" in obj and "summary" in obj:
        q, a, h = obj["content"], obj["summary"], None
        keys = ("content", "summary")
    elif "prompt" in obj and "response" in obj:
        q, a, h = obj["prompt"], obj["response"], obj.get("history")
        keys = ("prompt", "response")
    elif "instruction" in obj and "output" in obj:
        inp = _text(obj.get("input"), where, "input")
        q = _text(obj["instruction"], where, "instruction") + (f"\n{inp}" if inp else "")
        a, h = obj["output"], obj.get("history")
        keys = ("instruction", "output")
    elif "question" in obj and "answer" in obj:
        q, a, h = obj["question"], obj["answer"], obj.get("history")
        keys = ("question", "answer")
    elif "query" in obj and "response" in obj:
        q, a, h = obj["query"], obj["response"], obj.get("history")
        keys = ("query", "response")
    else:
        got = ", ".join(sorted(map(str, obj))) or "none"
        raise LoadError(f"{where}: unknown record format (keys: {got}); expected one of: {_FORMATS}")
    query, answer = _text(q, where, keys[0]), _text(a, where, keys[1])
    if not answer.strip():
        raise LoadError(f"{where}: {keys[1]!r} is empty: nothing to learn")
    return [Record(query, answer, _history(h, where), source, line)]


def parse_lines(lines: Iterable[str], source: str = "") -> list[Record]:
    """Records from JSONL lines (blank lines skipped)."""
    out: list[Record] = []
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise LoadError(f"{source}:{n}: not valid JSON: {exc}") from None
        out.extend(parse_record(obj, source, n))
    return out


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def read_records(path: str | Path) -> list[Record]:
    """All records of a JSON (an array, or one object) or JSONL file; LoadError with the file and line."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LoadError(f"training data not found: {file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadError(f"cannot read {file}: {exc}") from None
    stripped = text.lstrip()
    records: list[Record]
    if stripped.startswith("["):
        decoder = json.JSONDecoder()
        try:
            data, _ = decoder.raw_decode(stripped)
        except ValueError as exc:
            raise LoadError(f"{file}:{_line_of(stripped, getattr(exc, 'pos', 0))}: not valid JSON: {exc}") from None
        records = []
        # each element's line, for error messages: re-scan the array element by element
        pos = stripped.index("[") + 1
        for obj in data:
            while pos < len(stripped) and stripped[pos] in " \t\r\n,":
                pos += 1
            line = _line_of(text, len(text) - len(stripped) + pos)
            _, pos = decoder.raw_decode(stripped, pos)
            records.extend(parse_record(obj, str(file), line))
    else:
        records = parse_lines(text.splitlines(), str(file))
    if not records:
        raise LoadError(f"{file} holds no training records")
    return records


def data_hash(path: str | Path) -> str:
    """sha256 of the data file's bytes (recorded in adapter.json; a resumed run must see the same data)."""
    return sha256_file(Path(path).expanduser())


def split(records: Sequence[Record], eval_fraction: float = 0.1) -> tuple[list[Record], list[Record]]:
    """(train, held_out): a record is held out when a hash of its text falls under `eval_fraction`; at least one
    record is held out once there are 5 or more, none below that (too few to spare).

        >>> recs = [Record(f"q{i}", f"a{i}") for i in range(20)]
        >>> train, held = split(recs, 0.2); len(train) + len(held), 1 <= len(held) < 10
        (20, True)
    """
    if eval_fraction <= 0 or len(records) < 5:
        return list(records), []

    def score(r: Record) -> float:
        digest = hashlib.sha256(f"{r.query}\x00{r.answer}\x00{r.history}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    held = [r for r in records if score(r) < eval_fraction]
    if not held:
        held = [min(records, key=score)]
    if len(held) == len(records):
        held = held[:-1]
    ids = {id(r) for r in held}
    return [r for r in records if id(r) not in ids], held


def encode(record: Record, tokenizer, family: str = "chatglm2", max_tokens: int = 512) -> Example:
    """The Example for `record` in `family`'s chat format: prompt ids (label -100), then the answer ids and the
    end token (labels = the ids)."""
    if family == "chatglm3":
        hist: list[dict[str, str]] = []
        for q, a in record.history:
            hist += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        prompt = list(tokenizer.build_chat_input(record.query, hist))
        # what the model emits after <|assistant|>: the (empty) metadata line, the reply, then eos
        answer = tokenizer.build_single_message("assistant", "", record.answer)[1:] + [tokenizer.eos_id]
    else:  # ChatGLM2 and ChatGLM-6B: a text prompt (v1's encode appends its [gMASK]<sop>); v1's eos is <eop>
        prompt = tokenizer.encode(tokenizer.build_prompt(record.query, record.history))
        answer = tokenizer.encode(record.answer, add_special_tokens=False) + [tokenizer.eos_id]
    max_tokens = max(8, int(max_tokens))
    if len(prompt) + len(answer) > max_tokens:
        answer = answer[: max(max_tokens // 2, max_tokens - len(prompt))]
        keep = max_tokens - len(answer)
        # the prefix tokens ([gMASK] sop) stay; the oldest prompt text goes
        head = 2 if family != "chatglm" else 0
        prompt = prompt[:head] + prompt[len(prompt) - (keep - head) :] if keep > head else prompt[:keep]
    return Example(prompt + answer, [IGNORE] * len(prompt) + answer)


def encode_all(records: Sequence[Record], tokenizer, family: str = "chatglm2", max_tokens: int = 512) -> list[Example]:
    return [encode(r, tokenizer, family, max_tokens) for r in records]
