"""docqa.generate.glm_runtime (static KV cache, grouped attention, prefix reuse, P-Tuning v2 prefixes), the chat
context that grows turn by turn (prompt.build_chat_turn + chat.Chat) and the CPU latency budget (budget.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from docqa.chat import Chat, Session  # noqa: E402
from docqa.config import Settings  # noqa: E402
from docqa.documents import Hit  # noqa: E402
from docqa.generate.base import GenerationOptions, GenerationStats, sample_tokens  # noqa: E402
from docqa.generate.budget import ContextBudget, choose_context, cpu_budget, pick_context  # noqa: E402
from docqa.generate.chatglm2 import ChatGLM2Generator, load  # noqa: E402
from docqa.generate.glm_runtime import (  # noqa: E402
    GlmSession,
    KVCache,
    SessionPool,
    extend,
    forward_logits,
)
from docqa.prompt import ChatContext, build_chat_turn  # noqa: E402

DATA = Path(__file__).parent / "data" / "chatglm2"


@pytest.fixture(scope="module")
def tiny():
    model, _ = load(DATA / "tiny-chatglm2", device="cpu")
    return model


@pytest.fixture(scope="module")
def tiny32k():
    model, _ = load(DATA / "tiny-chatglm2-32k", device="cpu")
    return model


def _random_prefix(model, length: int, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    shape = (1, cfg.num_key_value_heads, length, cfg.head_dim)
    return [
        (torch.randn(shape, generator=g) * scale, torch.randn(shape, generator=g) * scale)
        for _ in range(cfg.num_hidden_layers)
    ]


@pytest.mark.slow  # the chain is in the default run: test_chatglm2 (greedy through a session == upstream's),
# test_forward_logits_is_transformers_forward and the session == forward_logits tests below
@pytest.mark.parametrize("name", ["tiny-chatglm2", "tiny-chatglm2-32k"])
def test_session_logits_match_upstream(request, name):
    model = request.getfixturevalue("tiny" if name == "tiny-chatglm2" else "tiny32k")
    expected = json.loads((DATA / name / "expected.json").read_text())
    for case in expected["cases"]:  # the 2,500-token case runs in two prefill chunks
        logits, reused = GlmSession(model).prefill(case["input_ids"])
        assert reused == 0
        assert (logits - torch.tensor(case["last_logits"])).abs().max().item() <= 1e-4
    # greedy tokens through the session: tests/test_chatglm2.py (sample_tokens runs a GlmSession)


def test_forward_logits_is_transformers_forward(tiny):
    ids = list(range(10, 60))
    with torch.inference_mode():
        want = tiny(torch.tensor([ids])).logits[0]
        got = forward_logits(tiny, ids)
    assert got.shape == want.shape and (got - want).abs().max().item() < 1e-4


def test_prefix_reuse_crop_and_growth_keep_exact_logits(tiny, monkeypatch):
    import docqa.generate.glm_runtime as rt

    monkeypatch.setattr(rt, "CACHE_STEP", 8)  # force several reallocations
    monkeypatch.setattr(rt, "PREFILL_CHUNK", 7)
    ids = [(13 * i + 5) % 1000 + 3 for i in range(40)]
    with torch.inference_mode():
        ref = forward_logits(tiny, ids)
    s = GlmSession(tiny)
    logits, reused = s.prefill(ids[:25])
    assert reused == 0 and (logits - ref[24]).abs().max() < 1e-4
    logits, reused = s.prefill(ids[:40])  # extends: only 15 tokens run
    assert reused == 25 and (logits - ref[39]).abs().max() < 1e-4
    other = ids[:30] + [7, 8, 9]  # diverges at 30: the cache is cut back there
    with torch.inference_mode():
        ref2 = forward_logits(tiny, other)
    logits, reused = s.prefill(other)
    assert reused == 30 and (logits - ref2[-1]).abs().max() < 1e-4
    logits, reused = s.prefill(other)  # the same prompt again: all but its last token come from the cache
    assert reused == len(other) - 1 and (logits - ref2[-1]).abs().max() < 1e-4
    assert s.cache.capacity >= len(other) and s.cache.capacity % 8 == 0


def test_all_position_logits_of_extend(tiny):
    ids = list(range(100, 140))
    cache = KVCache(tiny)
    with torch.inference_mode():
        got = extend(tiny, cache, ids, last_only=False)
        want = forward_logits(tiny, ids)
    assert cache.length == 40 and (got - want).abs().max() < 1e-4


def test_prefix_kv_sampling_matches_a_no_cache_loop(tiny):
    prefix = _random_prefix(tiny, 6, scale=2.0)
    prompt = [900, 901, 30, 31, 32, 33, 34]

    reference, ids = [], list(prompt)
    with torch.inference_mode():
        for _ in range(12):  # no cache: the prefix is concatenated again at every step
            nxt = int(forward_logits(tiny, ids, prefix)[-1].argmax())
            reference.append(nxt)
            ids.append(nxt)
        plain = forward_logits(tiny, prompt)[-1]
        prefixed = forward_logits(tiny, prompt, prefix)[-1]
    assert (plain - prefixed).abs().max() > 1e-2  # the prefix really is attended
    session = GlmSession(tiny, prefix)
    got = list(sample_tokens(tiny, prompt, GenerationOptions(max_new_tokens=12, temperature=0), [], session))
    assert got == reference
    assert session.cache.prefix_len == 6 and session.cache.length == 6 + len(prompt) + 11


def test_prefix_kv_does_not_shift_positions(tiny):
    # the keys/values of 5 real tokens, used as a prefix: were the prompt's positions shifted by the prefix
    # length, this would be the same as putting those tokens in front of the prompt; from 0 it is not
    head, ids = [900, 901, 40, 41, 42], list(range(200, 230))
    cache = KVCache(tiny)
    extend(tiny, cache, head)
    prefix = [(cache.k[i][:, :, :5].clone(), cache.v[i][:, :, :5].clone()) for i in range(len(cache.k))]
    with torch.inference_mode():
        concatenated = forward_logits(tiny, head + ids)[-1]
        prefixed = forward_logits(tiny, ids, prefix)[-1]
        logits, _ = GlmSession(tiny, prefix).prefill(ids)
    assert (logits - prefixed).abs().max() < 1e-4
    assert (prefixed - concatenated).abs().max() > 1e-3
    # and a prefix at the first real positions really is what the tokens would give at positions 0..4:
    # the first real token then repeats position 0, so its logits differ from the concatenation's too
    with torch.inference_mode():
        shifted_rope = forward_logits(tiny, head + ids)[5]
        first = forward_logits(tiny, ids[:1], prefix)[-1]
    assert (first - shifted_rope).abs().max() > 1e-3


def test_prefix_kv_shape_is_checked(tiny):
    with pytest.raises(ValueError, match="prefix_kv"):
        GlmSession(tiny, _random_prefix(tiny, 4)[:1])


def test_pool_keeps_the_conversation_when_a_side_prompt_runs(tiny):
    pool = SessionPool(tiny, size=2)
    conv = [900, 901] + list(range(300, 360))
    a = pool.acquire(conv)
    a.prefill(conv)
    a.release()
    side = [900, 901] + list(range(500, 540))
    b = pool.acquire(side)
    assert b is not a
    b.prefill(side)
    b.release()
    assert pool.acquire(conv + [1, 2, 3]) is a and a.matching(conv + [1, 2, 3]) == len(conv)
    a.release()
    prefix = _random_prefix(tiny, 2)
    assert pool.acquire(conv, prefix) is not a  # another prefix_kv: another cache


# -- the chat context ---------------------------------------------------------------------------------------------


class ManyHits:
    """Five passages per question: the first two are the same for every question, the rest depend on it."""

    def __init__(self):
        self.queries: list[str] = []

    def search(self, query, k=None, mode=None, expansions=(), cross_language=None):
        self.queries.append(query)
        shared = [
            Hit(chunk_id=i, score=1.0, source=f"/d/s{i}.md", text=f"shared passage {i} about apt") for i in (1, 2)
        ]
        own = [
            Hit(
                chunk_id=10 * len(self.queries) + i,
                score=0.5,
                source=f"/d/q{len(self.queries)}-{i}.md",
                text=f"passage {i} for question {len(self.queries)}: " + "dpkg lists files. " * 6,
            )
            for i in range(3)
        ]
        return shared + own

    def is_relevant(self, query, hits, expansions=()):
        return True


@pytest.fixture(scope="module")
def chat_gen(tiny_chatglm2_real):
    return ChatGLM2Generator(tiny_chatglm2_real, device="cpu")


def test_chat_turn_two_reuses_turn_one_and_numbers_stay(chat_gen, tmp_path):
    s = Settings(max_new_tokens=12, temperature=0.0, max_context=4096, sessions_dir=tmp_path)
    chat = Chat(ManyHits(), chat_gen, s, Session())
    plans = []
    a1 = chat.ask("How do I list the files of a package?", on_plan=plans.append)
    a2 = chat.ask("And how do I find the package that owns a file?", on_plan=plans.append)
    t1, t2 = a1.timings, a2.timings
    assert t1["cached_tokens"] == 0 and t1["prompt_tokens"] > 100
    # turn 2 reads only its new tokens: at least 90% of turn 1's prompt + answer came from the cache
    assert t2["cached_tokens"] >= 0.9 * (t1["prompt_tokens"] + t1["new_tokens"])
    assert t2["prompt_tokens"] > t2["cached_tokens"]
    turn2 = plans[1].messages[-1]["content"]
    assert "shared passage 1" not in turn2 and "[1] [2]" in turn2  # already in the context: referred to only
    assert "[6] (q2-0.md)" in turn2 and "[3]" not in turn2.split("=====")[0]
    assert plans[1].messages[0]["content"] == plans[0].messages[-1]["content"]  # turn 1 as it was sent
    assert [h.source for h in a2.passages][:5] == [h.source for h in a1.passages]  # same numbers
    assert len(a2.passages) == 8


def test_chat_context_drops_the_oldest_round_when_full(chat_gen):
    ctx = ChatContext()
    hits = ManyHits()
    q1 = hits.search("q1")
    size = build_chat_turn("How do I list package files?", q1, chat_gen, Settings(max_new_tokens=8), ctx).total_tokens
    # room for turn 1 and a little more: not for turn 2's question plus its best new passage
    s = Settings(max_new_tokens=8, temperature=0.0, max_context=size + 12 + 60)
    first = build_chat_turn("How do I list package files?", q1, chat_gen, s, ctx)
    ctx.commit(first.turn, "Use dpkg -L [3].")
    assert first.turn.dropped_rounds == 0 and len(first.passages) >= 3
    second = build_chat_turn("Which package owns a file?", hits.search("q2"), chat_gen, s, ctx)
    assert second.total_tokens <= second.budget
    assert second.turn.dropped_rounds == 1 and second.dropped_history  # no room: round 1 dropped, not cut
    # the shared passages went with round 1: they are sent again under their old numbers
    assert "[1] (s1.md)" in second.messages[-1]["content"]
    assert len(second.messages) == 1


# -- the latency budget ---------------------------------------------------------------------------------------------


def test_choose_context_rounds_and_clamps():
    assert choose_context(100.0, 60.0, 8192) == 4608  # 100 tok/s x 60 s x 0.85 = 5,100, down to a multiple of 512
    assert choose_context(10_000.0, 60.0, 8192) == 8192
    assert choose_context(1.0, 60.0, 32768) == 1024
    b = ContextBudget(5120, 8192, 100.0, 60.0, True)
    assert b.limited and "5,120 of 8,192" in b.message() and "100 tok/s" in b.message()


def test_cpu_budget_measures_once_then_reads_the_cache(tiny, tmp_path):
    first = cpu_budget(tiny, "tiny|x", 8192, 60.0, tmp_path)
    assert first.measured and first.prefill_tok_s > 0
    data = json.loads((tmp_path / "prefill_speed.json").read_text())
    (key,) = data
    data[key] = 40.0  # as if measured on a slow machine
    (tmp_path / "prefill_speed.json").write_text(json.dumps(data))
    again = cpu_budget(tiny, "tiny|x", 8192, 60.0, tmp_path)
    assert not again.measured and again.prefill_tok_s == 40.0 and again.context == 1536


def test_pick_context_max_context_wins_and_small_models_keep_theirs(tiny, tmp_path):
    assert pick_context(tiny, "t", 8192, 1500, 60.0, tmp_path) == (1500, None)
    assert pick_context(tiny, "t", 8192, 0, 60.0, tmp_path) == (8192, None)  # tiny: no measuring
    assert not (tmp_path / "prefill_speed.json").exists()


def test_int8_dequantised_path_matches_plain_dequantisation():
    from docqa.generate.quantize import Int8WeightOnlyLinear

    lin = torch.nn.Linear(64, 48)
    q = Int8WeightOnlyLinear(lin.weight.data, lin.bias.data)
    x = torch.randn(300, 64)  # over INT8_DEQUANT_MIN_ROWS: the workspace path
    want = (torch.nn.functional.linear(x.bfloat16(), q.qweight.bfloat16()) * q.scales + q.bias).float()
    close = torch.nn.functional.linear(x, q.qweight.float() * q.scales.float()[:, None]) + q.bias.float()
    with torch.inference_mode():
        got = q(x)
    assert torch.equal(got, want) and (got - close).abs().max() < 0.05 * close.abs().max()
    x.requires_grad_(True)  # autograd: a fresh weight, not the shared workspace
    q(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_int4_unpacked_weight_matches_the_packed_kernel():
    from docqa.generate.quantize import Int4WeightOnlyLinear, int4_layout_known

    lin = torch.nn.Linear(256, 128, bias=False)
    q = Int4WeightOnlyLinear(lin.weight.data, None)
    assert q.packed and int4_layout_known()
    x = torch.randn(256, 256, dtype=torch.bfloat16)  # over INT4_DEQUANT_MIN_ROWS: the unpacked GEMM
    with torch.inference_mode():
        kernel = torch.ops.aten._weight_int4pack_mm_for_cpu(x, q.qweight, q.group_size, q.scales_zeros).float()
        got = q(x).float()
        small = q(x[:4]).float()  # few rows: the packed kernel itself
    assert (got - kernel).abs().max() <= 0.02 * kernel.abs().max()
    assert torch.equal(small, kernel[:4])


def test_generation_stats_report_cached_tokens(chat_gen):
    chat_gen.sessions.clear()
    stats = [GenerationStats(), GenerationStats()]
    prompt = [{"role": "user", "content": "What does dpkg -L do? " * 10}]
    chat_gen.generate(prompt, GenerationOptions(max_new_tokens=4, temperature=0, stats=stats[0]))
    chat_gen.generate(prompt, GenerationOptions(max_new_tokens=4, temperature=0, stats=stats[1]))
    assert stats[0].cached_tokens == 0 and stats[1].cached_tokens == stats[1].prompt_tokens - 1
    timings = stats[1].to_timings()
    assert {"prompt_tokens", "cached_tokens", "new_tokens", "prefill_s", "decode_s"} <= set(timings)


def test_generator_prefix_kv_is_honoured(chat_gen):
    cfg = chat_gen.model.config
    g = torch.Generator().manual_seed(3)
    shape = (1, cfg.num_key_value_heads, 4, cfg.head_dim)
    prefix = [(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) for _ in range(cfg.num_hidden_layers)]
    prompt = [{"role": "user", "content": "dpkg -L 是做什么的？"}]
    ids = chat_gen.tokenizer.encode(chat_gen.render(prompt))
    reference = []
    with torch.inference_mode():
        for _ in range(6):
            reference.append(int(forward_logits(chat_gen.model, ids + reference, prefix)[-1].argmax()))
    opts = GenerationOptions(max_new_tokens=6, temperature=0, stop_loops=False)
    plain = chat_gen.tokenizer.decode(reference)
    try:
        chat_gen.prefix_kv = prefix
        assert chat_gen.generate(prompt, opts) == plain
    finally:
        chat_gen.prefix_kv = None


def test_chatglm3_turns_extend_and_reuse_the_cache(tiny_chatglm2_real):
    from docqa.generate.chatglm import ChatGLMGenerator

    gen = ChatGLMGenerator.open(tiny_chatglm2_real, device="cpu", family="chatglm3")
    assert type(gen).__name__ == "ChatGLM3Generator" and gen.reuses_context
    s1, s2 = GenerationStats(), GenerationStats()
    turn1 = [{"role": "system", "content": "Answer from the passages."}, {"role": "user", "content": "dpkg -L? " * 20}]
    answer = gen.generate(turn1, GenerationOptions(max_new_tokens=6, temperature=0, stats=s1, stop_loops=False))
    turn2 = [*turn1, {"role": "assistant", "content": answer}, {"role": "user", "content": "dpkg -S?"}]
    gen.generate(turn2, GenerationOptions(max_new_tokens=6, temperature=0, stats=s2))
    assert s2.cached_tokens >= s1.prompt_tokens and s2.prompt_tokens > s1.prompt_tokens


def test_busy_sessions_are_not_shared(tiny):
    pool = SessionPool(tiny, size=2)
    ids = list(range(10, 40))
    a = pool.acquire(ids)
    a.prefill(ids)
    b = pool.acquire(ids)  # `a` is still generating (another thread): the same prompt gets another cache
    assert b is not a
    a.release()
    b.release()
    assert pool.acquire(ids + [5]) is a


def test_cpu_rule_sizes_the_context_and_says_so_once(tiny_chatglm2_real, tmp_path, monkeypatch):
    import docqa.generate.weights as weights
    from docqa.generate import get_generator

    monkeypatch.setattr(weights, "BIG_MODEL_PARAMS", 0)  # the tiny model counts as big: the rule applies
    said: list[str] = []
    s = Settings(llm=str(tiny_chatglm2_real), llm_device="cpu", first_token_s=0.001, cache=tmp_path)
    gen = get_generator(s, progress=said.append)
    assert gen.context_length == 1024 and gen.context_budget.limited and gen.context_budget.measured
    assert len(said) == 1 and "1,024 of 8,192" in said[0] and "tok/s" in said[0]
    again = get_generator(s.replace(max_context=3000), progress=said.append)
    assert again.context_length == 3000 and again.context_budget is None and len(said) == 1
