"""ChatGLM-6B's (v1) tokenizer over `sentencepiece`: `ice_text.model` plus upstream's text pre/post-processing.

    >>> tok = ChatGLM6BTokenizer.from_dir("tests/data/chatglm6b")
    >>> tok.encode("你好")
    [5, 74874, 130001, 130004]
    >>> tok.decode([5, 74874])
    '你好'
    >>> tok.build_prompt("那 dpkg -S 呢？", [("What is APT?", "A package manager.")])
    '[Round 0]\\n问：What is APT?\\n答：A package manager.\\n[Round 1]\\n问：那 dpkg -S 呢？\\n答：'
    >>> tok.process_response(" 你好,我是ChatGLM!有什么可以帮你? ")
    '你好，我是ChatGLM！有什么可以帮你？'

What upstream's `tokenization_chatglm.py` (THUDM/chatglm-6b 8b7d335, run under transformers 4.33) does, and so
this does (tests/test_chatglm6b_tokenizer.py checks it id for id):

- before SentencePiece, `\\n` becomes `<n>`, a tab `<|tab|>` and each run of 2..80 spaces `<|blank_N|>`, longest
  first; SentencePiece (unigram, `nmt_nfkc`: full-width `：，！` come back ASCII) adds its dummy prefix;
- `encode` puts `[gMASK]` `<sop>` at the **end** (ChatGLM2 puts its two at the start); the tokens transformers
  registers as special (`[MASK]`, `<sop>`, `<eop>`, `<pad>`, `<unk>`; not `[gMASK]`) are split out of the text,
  eating the spaces around them, unless `split_special=False` (what docqa's generator uses for prompts, so a
  document cannot smuggle control tokens in);
- `tok(texts, padding=True)` left-pads with `<pad>` and returns upstream's boolean 4-D attention mask
  (True = masked) and `[2, L]` position ids;
- `decode` drops `<pad>`, renders control pieces as nothing and `<unk>` as ` ⁇ `, turns `<n>`/`<|tab|>`/
  `<|blank_N|>` back into whitespace, then applies transformers' default `clean_up_tokenization_spaces`
  (" ." -> ".", " ," -> ",", " 's" -> "'s", ...), which upstream's tokenizer leaves on;
- the chat prompt is the bare query without history, else `[Round i]` blocks counted **from 0**.

Limits: ids are the SentencePiece ids (`num_image_tokens: 0`, as the released tokenizer_config.json says; the
class default of 20,000 predates the "slim" checkpoint). Padding is left padding only, to the longest text, as
upstream's `_pad`; no truncation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from docqa.errors import ModelError

MAX_BLANK = 80
#: the control tokens upstream's SentencePiece model carries after its text pieces
SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>")
#: what transformers 4.33 splits out of raw text for this tokenizer (its bos/eos/unk/pad/mask tokens)
REGISTERED_SPECIAL = ("[MASK]", "<sop>", "<eop>", "<pad>", "<unk>")
_REGISTERED = re.compile("(" + "|".join(re.escape(t) for t in REGISTERED_SPECIAL) + ")")
_BLANKS = re.compile(rf" {{2,{MAX_BLANK}}}")
_BLANK_PIECE = re.compile(r"<\|blank_(\d+)\|>")
# transformers' PreTrainedTokenizerBase.clean_up_tokenization, in its order
_CLEAN_UP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)
# ASCII punctuation next to a Han character becomes full-width in chat() replies
_PUNCT = ((",", "，"), ("!", "！"), (":", "："), (";", "；"), ("?", "？"))


def _blank(match: re.Match) -> str:
    return f"<|blank_{len(match.group(0))}|>"


class ChatGLM6BTokenizer:
    """Encode/decode text for ChatGLM-6B exactly as upstream does, plus its chat prompt and reply clean-up."""

    def __init__(self, model_file: str | Path):
        import sentencepiece as spm

        path = Path(model_file)
        if not path.is_file():
            raise ModelError(f"ChatGLM-6B tokenizer not found: {path} (expected the ice_text.model of chatglm-6b)")
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as exc:
            raise ModelError(f"{path} is not a valid SentencePiece model: {exc}") from exc
        self.vocab_size: int = self._sp.vocab_size()
        self.sp_vocab_size = self.vocab_size
        ids = {t: self._sp.piece_to_id(t) for t in SPECIAL_TOKENS}
        if ids["[gMASK]"] == self._sp.unk_id():
            raise ModelError(f"{path} has no [gMASK] piece: not ChatGLM-6B's ice_text.model")
        self.special_ids: dict[str, int] = ids
        self.mask_id, self.gmask_id = ids["[MASK]"], ids["[gMASK]"]
        self.bos_id, self.eos_id = ids["<sop>"], ids["<eop>"]
        self.pad_id: int = self._sp.piece_to_id("<pad>")
        self.unk_id: int = self._sp.unk_id()
        self.end_token_id: int = self._sp.piece_to_id("</s>")

    @classmethod
    def from_dir(cls, path: str | Path) -> ChatGLM6BTokenizer:
        return cls(Path(path).expanduser() / "ice_text.model")

    # -- encoding -------------------------------------------------------------------------------------------

    @staticmethod
    def preprocess(text: str) -> str:
        """Upstream's `<n>`, `<|tab|>` and `<|blank_N|>` substitutions (runs over 80 spaces split, 80 first)."""
        text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
        return _BLANKS.sub(_blank, text)

    def suffix_tokens(self) -> list[int]:
        return [self.gmask_id, self.bos_id]

    @staticmethod
    def _segments(text: str) -> list[str]:
        """Text split around registered special tokens, the neighbours stripped as transformers 4.33 does."""
        parts = _REGISTERED.split(text)  # odd indices are the special tokens
        for i in range(1, len(parts), 2):
            parts[i - 1] = parts[i - 1].rstrip()
            parts[i + 1] = parts[i + 1].lstrip()
        return [p for p in parts if p]

    def tokenize(self, text: str, split_special: bool = True) -> list[str]:
        out: list[str] = []
        for part in self._segments(text) if split_special else [text]:
            if split_special and part in REGISTERED_SPECIAL:
                out.append(part)
            else:
                out.extend(self._sp.encode(self.preprocess(part), out_type=str))
        return out

    def encode(self, text: str, add_special_tokens: bool = True, split_special: bool = True) -> list[int]:
        ids = [self._sp.piece_to_id(p) for p in self.tokenize(text, split_special)]
        return ids + self.suffix_tokens() if add_special_tokens else ids

    def count_tokens(self, text: str) -> int:
        """Tokens `text` adds to a prompt (without the two suffix tokens)."""
        return len(self.encode(text, add_special_tokens=False, split_special=False))

    def __call__(self, texts: str | Sequence[str], padding: bool = True) -> dict[str, list]:
        """`{"input_ids", "attention_mask", "position_ids"}` for a batch, as upstream's tokenizer builds them:
        left-padded with `<pad>` to the longest, mask [b][1][L][L] (True = masked), positions [b][2][L]."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        encoded = [self.encode(t) for t in batch]
        width = max(map(len, encoded)) if padding else 0
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "position_ids": []}
        for ids in encoded:
            n, pad = len(ids), max(0, width - len(ids))
            ctx = ids.index(self.bos_id) if self.bos_id in ids else n
            # upstream's _pad prefers [MASK] here, where the model prefers [gMASK]
            mask_token = self.mask_id if self.mask_id in ids else self.gmask_id
            mp = ids.index(mask_token) if mask_token in ids else None
            pos = [i if (i < ctx or mp is None) else mp for i in range(n)]
            block = [0 if i < ctx else i - ctx + 1 for i in range(n)]
            masked = [[True] * (pad + n) for _ in range(pad)]
            masked += [[True] * pad + [j > i and j >= ctx for j in range(n)] for i in range(n)]
            out["input_ids"].append([self.pad_id] * pad + ids)
            out["attention_mask"].append([masked])
            out["position_ids"].append([[0] * pad + pos, [0] * pad + block])
        return out

    # -- decoding -------------------------------------------------------------------------------------------

    @staticmethod
    def postprocess(text: str) -> str:
        text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
        return _BLANK_PIECE.sub(
            lambda m: " " * int(m.group(1)) if 2 <= int(m.group(1)) <= MAX_BLANK else m.group(0), text
        )

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if int(i) != self.pad_id]
        # ids the model's padded embedding (130,528 rows) has but the vocabulary lacks decode to nothing
        pieces = [self._sp.id_to_piece(i) for i in ids if 0 <= i < self.vocab_size]
        text = self.postprocess(self._sp.decode_pieces(pieces))
        for old, new in _CLEAN_UP:
            text = text.replace(old, new)
        return text

    # -- chat -----------------------------------------------------------------------------------------------

    @staticmethod
    def build_prompt(query: str, history: Sequence[tuple[str, str]] = ()) -> str:
        """The prompt upstream's `chat()` builds: the bare query, or `[Round i]` blocks counted from 0."""
        if not history:
            return query
        prompt = "".join(f"[Round {i}]\n问：{q}\n答：{a}\n" for i, (q, a) in enumerate(history))
        return prompt + f"[Round {len(history)}]\n问：{query}\n答："

    build_chat_prompt = build_prompt

    def build_chat_input(self, query: str, history: Sequence[tuple[str, str]] = ()) -> list[int]:
        return self.encode(self.build_prompt(query, history))

    @staticmethod
    def process_response(response: str) -> str:
        """What `chat()` returns for the decoded reply: stripped, `[[训练时间]]` filled in, and ASCII `,!:;?`
        next to a Han character made full-width."""
        return _full_width(response.strip().replace("[[训练时间]]", "2023年"))

    @staticmethod
    def process_response_prefix(partial: str) -> str:
        """`process_response` for a reply still streaming: only the rewrites that keep the text's length
        (the leading strip, full-width punctuation), so text already shown stays valid."""
        return _full_width(partial.lstrip())


def _full_width(text: str) -> str:
    for ascii_p, wide in _PUNCT:
        p = re.escape(ascii_p)
        text = re.sub(r"([\u4e00-\u9fff])" + p, r"\1" + wide, text)
        text = re.sub(p + r"([\u4e00-\u9fff])", wide + r"\1", text)
    return text
