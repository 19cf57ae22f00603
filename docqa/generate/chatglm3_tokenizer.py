"""ChatGLM3-6B's tokenizer: ChatGLM2's SentencePiece model and encoding, plus four role tokens and the chat input
upstream's `build_chat_input` builds (THUDM/chatglm3-6b 456aa87; checked id for id in tests/test_chatglm3.py).

    >>> tok = ChatGLM3Tokenizer.from_dir("tests/data/chatglm2")      # the same tokenizer.model as ChatGLM2
    >>> tok.build_chat_input("你好")
    [64790, 64792, 64795, 30910, 13, 36474, 54591, 64796]
    >>> tok.decode(_)
    '[gMASK]sop<|user|> \\n 你好<|assistant|>'
    >>> tok.process_response("\\n 你好，训练于[[训练时间]]。", [])[0]
    '你好，训练于2023年。'

The chat input is `[gMASK] sop`, then for each history item `<|role|>` + sp(metadata + "\\n") + sp(content), then
the query under `role` the same way, then `<|assistant|>`: no separators, each SentencePiece call adds its own
dummy prefix. A system item is the system prompt (docqa puts its RAG instruction there). Generation stops at eos,
`<|user|>` or `<|observation|>` (`chat_eos_ids`).

Limits: a tool call in a reply is returned as `{"name", "content"}`, or, when the system item declares tools,
`{"name", "parameters"}` parsed from a literal-only `tool_call(k=v, ...)`; upstream `eval`s that code and docqa
never does (anything but literal keyword arguments keeps the raw text as `content`). Role tokens typed in text
are plain text unless `encode_special_tokens=True`, as upstream.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from copy import deepcopy
from typing import Any

from docqa.errors import ModelError
from docqa.generate.chatglm2_tokenizer import SPECIAL_TOKENS as CHATGLM2_SPECIAL
from docqa.generate.chatglm2_tokenizer import ChatGLM2Tokenizer

ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
ROLES = ("system", "user", "assistant", "observation")
_ROLE_TOKEN = re.compile("|".join(re.escape(t) for t in ROLE_TOKENS))

HistoryItem = dict[str, Any]  # {"role", "content", optional "metadata", optional "tools" (system only)}


class ChatGLM3Tokenizer(ChatGLM2Tokenizer):
    """ChatGLM2's encoding plus `<|system|>` `<|user|>` `<|assistant|>` `<|observation|>`."""

    SPECIAL_TOKENS = CHATGLM2_SPECIAL + ROLE_TOKENS

    def __init__(self, model_file):
        super().__init__(model_file)
        self.role_ids = {r: self.special_ids[f"<|{r}|>"] for r in ROLES}
        # upstream's convert_id_to_token names special ids, but eos/bos/pad still decode to nothing
        self._silent = {self.eos_id, self.bos_id, self.pad_id}
        self._names = {i: t for t, i in self.special_ids.items()}
        #: chat() stops on any of these and drops it
        self.chat_eos_ids = [self.eos_id, self.role_ids["user"], self.role_ids["observation"]]

    def encode(self, text: str, add_special_tokens: bool = True, encode_special_tokens: bool = False) -> list[int]:
        if not encode_special_tokens:
            return super().encode(text, add_special_tokens)
        ids: list[int] = []
        last = 0
        for m in _ROLE_TOKEN.finditer(text):
            if m.start() > last:
                ids += self._sp.encode(text[last : m.start()])
            ids.append(self.special_ids[m.group(0)])
            last = m.end()
        if last < len(text):
            ids += self._sp.encode(text[last:])
        return self.prefix_tokens() + ids if add_special_tokens else ids

    def id_to_piece(self, index: int) -> str:
        if index in self._names:
            return self._names[index]
        return super().id_to_piece(index)

    # -- chat -----------------------------------------------------------------------------------------------

    def build_single_message(self, role: str, metadata: str, message: str) -> list[int]:
        if role not in ROLES:
            raise ModelError(f"unknown ChatGLM3 role {role!r}: use one of {', '.join(ROLES)}")
        return [self.role_ids[role]] + self._sp.encode(f"{metadata}\n") + self._sp.encode(message)

    def build_chat_input(
        self, query: str, history: Sequence[HistoryItem] | None = None, role: str = "user", return_dict: bool = False
    ) -> list[int] | dict[str, list[int]]:
        """The ids upstream's `build_chat_input` returns (`return_dict=True`: with its all-ones `attention_mask`
        and 0..n-1 `position_ids`, as lists)."""
        ids = self.prefix_tokens()
        for item in history or ():
            content = item["content"]
            if item["role"] == "system" and "tools" in item:
                content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
            ids += self.build_single_message(item["role"], item.get("metadata", ""), content)
        ids += self.build_single_message(role, "", query)
        ids.append(self.role_ids["assistant"])
        if not return_dict:
            return ids
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "position_ids": list(range(len(ids)))}

    def process_response(self, output: str, history: Sequence[HistoryItem] = ()) -> tuple[Any, list[HistoryItem]]:
        """(reply, history + the assistant turns) as upstream's `process_response`, without its `eval`: plain
        text, or a tool call `{"name": ..., "content": ...}` (`"parameters"` when the system item has tools)."""
        content: Any = ""
        history = deepcopy(list(history))
        for response in output.split("<|assistant|>"):
            metadata, _, content = response.partition("\n")
            if not metadata.strip():
                content = content.strip()
                history.append({"role": "assistant", "metadata": metadata, "content": content})
                content = content.replace("[[训练时间]]", "2023年")
                continue
            history.append({"role": "assistant", "metadata": metadata, "content": content})
            if history[0]["role"] == "system" and "tools" in history[0]:
                code = "\n".join(content.split("\n")[1:-1])
                params = parse_tool_call(code)
                content = (
                    {"name": metadata.strip(), "parameters": params}
                    if params is not None
                    else {"name": metadata.strip(), "content": content}
                )
            else:
                content = {"name": metadata.strip(), "content": content}
        return content, history


def parse_tool_call(code: str) -> dict[str, Any] | None:
    """The keyword arguments of `tool_call(k=literal, ...)`, parsed without running anything; None otherwise.

    >>> parse_tool_call("tool_call(query='apt-get', limit=3)")
    {'query': 'apt-get', 'limit': 3}
    >>> parse_tool_call("tool_call(query=__import__('os').system('id'))") is None
    True
    """
    try:
        node = ast.parse(code.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "tool_call" and not node.args
    ):
        return None
    out: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            return None
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, SyntaxError, TypeError):
            return None
    return out
