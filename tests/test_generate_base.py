"""docqa.generate.base: StreamDecoder on a real (small, built-here) SentencePiece-style tokenizer, pick_next,
and the sample_tokens KV-cache loop against transformers' own greedy `generate` on tiny random models."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")

from docqa.generate.base import GenerationOptions, StreamDecoder, pick_next, sample_tokens  # noqa: E402

# -- StreamDecoder ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_tokenizer():
    """A Llama/Gemma-like tokenizer: "▁" for spaces, byte fallback for characters outside the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["▁", "你", "。", ".", ","] + list("abcdefghijklmnopqrstuvwxyzHTW"):
        vocab[piece] = len(vocab)
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tok


@pytest.mark.parametrize(
    "text",
    [
        "the cat sat on the mat.",
        "你好，世界。",  # 好 ， 世 界 are not in the vocabulary: three byte-fallback tokens each
        "hello 😀 world",  # a four-byte character
        "When the 中文 text, then.",
    ],
)
def test_stream_decoder_matches_full_decode(sp_tokenizer, text):
    ids = sp_tokenizer.encode(text).ids
    dec = StreamDecoder(sp_tokenizer.decode)
    pieces = [dec.push(i) for i in ids]
    tail = dec.flush()
    assert "".join(pieces) + tail == sp_tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces + [tail])  # never half a character


def test_stream_decoder_waits_for_all_bytes_of_a_character(sp_tokenizer):
    ids = sp_tokenizer.encode("好").ids
    assert len(ids) == 4  # "▁" + three UTF-8 bytes
    dec = StreamDecoder(sp_tokenizer.decode)
    assert [dec.push(i) for i in ids] == ["", "", "", "好"]


def test_stream_decoder_keeps_spaces_between_words(sp_tokenizer):
    ids = sp_tokenizer.encode("the cat").ids
    dec = StreamDecoder(sp_tokenizer.decode)
    pieces = [p for p in (dec.push(i) for i in ids) if p]
    assert pieces[0] == "the" and " " in "".join(pieces)
    assert "".join(pieces) == "the cat"


# -- pick_next ----------------------------------------------------------------------------------------------------


def test_pick_next_greedy():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert pick_next(logits, GenerationOptions(temperature=0), torch.tensor([], dtype=torch.long)) == 1


def test_pick_next_repetition_penalty_demotes_seen_tokens():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    opts = GenerationOptions(temperature=0, repetition_penalty=1.2)
    assert pick_next(logits, opts, torch.tensor([1])) == 2  # 3.0 / 1.2 = 2.5 < 2.9
    # negative logits are multiplied, i.e. pushed further down, never up
    neg = torch.tensor([-1.0, -1.1])
    assert pick_next(neg, opts, torch.tensor([0])) == 1  # -1.2 < -1.1
    # penalty 1.0 changes nothing
    assert pick_next(logits, GenerationOptions(temperature=0), torch.tensor([1])) == 1


def test_pick_next_top_p_keeps_only_the_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    seen = torch.tensor([], dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    narrow = {pick_next(logits, GenerationOptions(temperature=1.0, top_p=0.5), seen, gen) for _ in range(50)}
    assert narrow == {0}  # the top token alone reaches 0.5
    picks = [pick_next(logits, GenerationOptions(temperature=1.0, top_p=0.75), seen, gen) for _ in range(300)]
    assert set(picks) == {0, 1}
    wide = {pick_next(logits, GenerationOptions(temperature=1.0, top_p=1.0), seen, gen) for _ in range(400)}
    assert wide == {0, 1, 2, 3}


def test_pick_next_seeded_sampling_is_reproducible():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    opts = GenerationOptions(temperature=1.0, top_p=0.9)
    seen = torch.tensor([], dtype=torch.long)
    a = [pick_next(logits, opts, seen, torch.Generator().manual_seed(7)) for _ in range(5)]
    b = [pick_next(logits, opts, seen, torch.Generator().manual_seed(7)) for _ in range(5)]
    assert a == b


# -- sample_tokens ------------------------------------------------------------------------------------------------


def _tiny(kind: str):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        model = LlamaForCausalLM(cfg)
    else:
        # sliding window of 4 < prompt length: exercises the sliding-attention layers as the demo model has them
        cfg = Gemma3TextConfig(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
            max_position_embeddings=128,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # random init gives near-uniform logits; sharpen them so greedy has clear winners
        model.lm_head.weight.mul_(20)
    return model.eval()


def _reference_greedy(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


PROMPT = [1, 5, 17, 33, 8, 60, 21, 44, 9, 12]


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_sample_tokens_greedy_matches_generate(kind):
    model = _tiny(kind)
    ref = _reference_greedy(model, PROMPT, 12)
    got = list(sample_tokens(model, PROMPT, GenerationOptions(max_new_tokens=12, temperature=0), eos_ids=[]))
    assert got == ref


def test_sample_tokens_stops_at_eos_and_max_new_tokens():
    model = _tiny("llama")
    ref = _reference_greedy(model, PROMPT, 12)
    k = next(i for i, t in enumerate(ref) if i >= 2 and t not in ref[:i])  # first occurrence of a token
    got = list(sample_tokens(model, PROMPT, GenerationOptions(max_new_tokens=12, temperature=0), eos_ids=[ref[k]]))
    assert got == ref[:k]  # the eos itself is not yielded
    got = list(sample_tokens(model, PROMPT, GenerationOptions(max_new_tokens=3, temperature=0), eos_ids=[]))
    assert got == ref[:3]


def test_sample_tokens_honours_cancel():
    model = _tiny("llama")
    cancel = threading.Event()
    opts = GenerationOptions(max_new_tokens=50, temperature=0, cancel=cancel)
    got = []
    for tok in sample_tokens(model, PROMPT, opts, eos_ids=[]):
        got.append(tok)
        if len(got) == 2:
            cancel.set()
    assert len(got) == 2
    assert list(sample_tokens(model, PROMPT, opts, eos_ids=[])) == []  # already set: nothing at all


def test_sample_tokens_seeded_sampling_is_reproducible():
    model = _tiny("llama")
    opts = GenerationOptions(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=3, repetition_penalty=1.1)
    a = list(sample_tokens(model, PROMPT, opts, eos_ids=[]))
    b = list(sample_tokens(model, PROMPT, opts, eos_ids=[]))
    assert a == b and len(a) == 10


def test_sample_tokens_fills_in_the_stats_it_is_given():
    from docqa.generate.base import GenerationStats

    model = _tiny("llama")
    stats = GenerationStats()
    got = list(sample_tokens(model, PROMPT, GenerationOptions(max_new_tokens=7, temperature=0, stats=stats), []))
    assert len(got) == 7 and stats.prompt_tokens == len(PROMPT) and stats.new_tokens == 7 and stats.cached_tokens == 0
    assert stats.prefill_s > 0 and stats.decode_s > 0
    t = stats.to_timings()
    assert t["tokens_per_s"] == pytest.approx(6 / stats.decode_s) and t["new_tokens"] == 7
    # without a stats object nothing is recorded anywhere (no state left on the model or the options)
    assert list(sample_tokens(model, PROMPT, GenerationOptions(max_new_tokens=7, temperature=0), [])) == got


def test_degenerate_loops_are_detected():
    from docqa.generate.base import is_degenerate

    assert is_degenerate("答案：" + "1. " * 8)
    assert is_degenerate("see [1] " * 9)
    assert not is_degenerate("The venv module creates virtual environments [1].")
    assert not is_degenerate("1. 2. 3. 4. 5. 6. 7. 8. 9.")
    assert not is_degenerate("ab" * 7)  # seven repeats is still allowed


class _CountingSession:
    """A DecodeSession stand-in that records what the sampling loop asked of it."""

    def __init__(self):
        self.prefills = self.releases = 0

    def prefill(self, ids):
        import torch

        self.prefills += 1
        return torch.tensor([0.0, 5.0, 0.0]), 0  # greedy picks token 1

    def step(self, token):
        import torch

        return torch.tensor([0.0, 0.0, 5.0])  # then token 2, the end

    def release(self):
        self.releases += 1


@pytest.mark.parametrize("max_new, cancelled, want", [(0, False, []), (5, True, []), (5, False, [1])])
def test_a_session_is_released_exactly_once_however_sampling_ends(max_new, cancelled, want):
    from docqa.generate.base import _sample_session

    cancel = threading.Event()
    if cancelled:
        cancel.set()
    session = _CountingSession()
    opts = GenerationOptions(max_new_tokens=max_new, temperature=0.0, repetition_penalty=1.0, cancel=cancel)
    assert list(_sample_session(session, [1, 2], opts, eos_ids=[2])) == want
    assert session.releases == 1 and session.prefills == (1 if want else 0)
