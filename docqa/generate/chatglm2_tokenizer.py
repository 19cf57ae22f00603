"""ChatGLM2's tokenizer, reimplemented over `sentencepiece` (no transformers remote code).

ChatGLM2-6B ships a SentencePiece model (`tokenizer.model`, 64,789 pieces) plus five special tokens appended
after it; every prompt starts with `[gMASK]` `sop`:

    >>> tok = ChatGLM2Tokenizer.from_dir("tests/data/chatglm2")     # or ~/models/chatglm2-6b
    >>> tok.encode("你好")
    [64790, 64792, 36474, 54591]
    >>> tok.decode([36474, 54591])
    '你好'
    >>> tok.build_prompt("那 dpkg -S 呢？", [("What is APT?", "APT is Debian's package manager.")])
    "[Round 1]\\n\\n问：What is APT?\\n\\n答：APT is Debian's package manager.\\n\\n[Round 2]\\n\\n问：那 dpkg -S 呢？\\n\\n答："

Behaviour matches THUDM's `tokenization_chatglm.py` (checked token for token in tests/test_chatglm2_tokenizer.py):
`decode` turns special, eos, bos and pad ids into nothing, like upstream's `convert_id_to_token`, and does no
"clean-up" of spaces before punctuation (upstream sets `clean_up_tokenization_spaces=False`).

Limits: one difference from upstream on purpose: ids beyond the vocabulary (the model's output layer is padded to
65,024 rows, so a badly trained or random model can emit 64,794..65,023) decode to nothing instead of raising.
No batching, padding or attention masks: docqa feeds one sequence at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from docqa.errors import ModelError

#: the special tokens upstream appends after the SentencePiece vocabulary, in this order
SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")


class ChatGLM2Tokenizer:
    """Encode/decode text for ChatGLM2 exactly as upstream does, plus its `[Round n]` chat prompt."""

    #: special tokens after the SentencePiece vocabulary (ChatGLM3's subclass adds its role tokens)
    SPECIAL_TOKENS: tuple[str, ...] = SPECIAL_TOKENS

    def __init__(self, model_file: str | Path):
        import sentencepiece as spm

        path = Path(model_file)
        if not path.is_file():
            raise ModelError(f"ChatGLM2 tokenizer not found: {path} (expected the tokenizer.model of chatglm2-6b)")
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as exc:
            raise ModelError(f"{path} is not a valid SentencePiece model: {exc}") from exc
        self.sp_vocab_size: int = self._sp.vocab_size()
        self.special_ids: dict[str, int] = {t: self.sp_vocab_size + i for i, t in enumerate(self.SPECIAL_TOKENS)}
        self.vocab_size: int = self.sp_vocab_size + len(self.SPECIAL_TOKENS)
        self.bos_id: int = self._sp.bos_id()
        self.eos_id: int = self._sp.eos_id()
        # upstream pads with the unk id (SentencePiece's own pad id is -1 in this model)
        self.pad_id: int = self._sp.unk_id()
        self.gmask_id = self.special_ids["[gMASK]"]
        self.sop_id = self.special_ids["sop"]
        # ids decode() renders as "" (upstream's convert_id_to_token returns "" for these)
        self._silent = set(self.special_ids.values()) | {self.eos_id, self.bos_id, self.pad_id}

    @classmethod
    def from_dir(cls, path: str | Path) -> ChatGLM2Tokenizer:
        return cls(Path(path).expanduser() / "tokenizer.model")

    # -- encoding -------------------------------------------------------------------------------------------

    def prefix_tokens(self) -> list[int]:
        return [self.gmask_id, self.sop_id]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = list(self._sp.encode(text))
        return self.prefix_tokens() + ids if add_special_tokens else ids

    def count_tokens(self, text: str) -> int:
        """Tokens `text` adds to a prompt (without the two prefix tokens)."""
        return len(self._sp.encode(text))

    # -- decoding -------------------------------------------------------------------------------------------

    def id_to_piece(self, index: int) -> str:
        if index in self._silent or index < 0 or index >= self.sp_vocab_size:
            return ""
        return self._sp.id_to_piece(index)

    def decode(self, ids: Sequence[int]) -> str:
        # Decoding pieces (not ids) is what upstream does: special ids become "" pieces, which vanish, and
        # byte-fallback pieces are reassembled into UTF-8 characters (or U+FFFD while incomplete).
        return self._sp.decode_pieces([self.id_to_piece(int(i)) for i in ids])

    # -- chat -----------------------------------------------------------------------------------------------

    @staticmethod
    def build_prompt(query: str, history: Sequence[tuple[str, str]] = ()) -> str:
        """The prompt ChatGLM2-6B was tuned on: numbered rounds of 问/答, ending with an open 答."""
        prompt = ""
        for i, (old_query, response) in enumerate(history):
            prompt += f"[Round {i + 1}]\n\n问：{old_query}\n\n答：{response}\n\n"
        prompt += f"[Round {len(history) + 1}]\n\n问：{query}\n\n答："
        return prompt

    #: the name this method had before the family shared `build_prompt`
    build_chat_prompt = build_prompt

    def build_chat_input(self, query: str, history: Sequence[tuple[str, str]] = ()) -> list[int]:
        return self.encode(self.build_prompt(query, history))
