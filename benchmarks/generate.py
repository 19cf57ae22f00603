"""Benchmark ChatGLM2-6B-shaped generation: bf16 vs int8 vs int4 weights (random weights, real tokenizer).

    .venv/bin/python benchmarks/generate.py                         # full 28 layers (needs ~16 GB RAM, slow)
    .venv/bin/python benchmarks/generate.py --layers 4 --runs 3     # full width, 4 layers, scaled to 28
    .venv/bin/python benchmarks/generate.py --device cuda --modes bf16,int8

Each mode runs in its own subprocess (clean peak RSS). The model is built through the real loading path
(`docqa.generate.chatglm2.build_model`: stream tensors, quantise layer by layer) from random tensors, so
"build" is load time minus disk reads. Everything runs docqa's own generation path (glm_runtime: static KV
cache, grouped attention): prefill through `extend`, decode through `GlmSession.step` at each context length over
a cache filled with random keys/values (per-token cost depends on the cache length, not its content), and a
two-turn `docqa chat` (chat.py -> answer.py -> prompt.build_chat_turn -> the generator's session) with the
answers' own timings. Printed per mode: prefill as a share of the bf16 GEMM throughput measured in the same run
(goal >= 50%), decode ms/token at the largest context over the smallest (goal <= 1.3), int8/int4 decode beside
chatglm.cpp's q8_0 440 / q4_0 294 ms/token (measured earlier on the same 6B random model and machine), and the
chat's cached share of turn 1 (goal >= 90%) with the prefill time per new token of each turn. With `--layers N < 28`,
per-token figures are scaled to 28 layers as head + (step - head) * 28 / N, prefill throughput by N / 28 and
weight memory per layer; those figures are marked "est.28".

Limits: random weights say nothing about quality; CPU timings depend on the ISA (int8/int4 kernels need
AVX-512/AVX2 for speed) and on other load on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHATGLM2_6B = {
    "model_type": "chatglm",
    "num_layers": 28,
    "hidden_size": 4096,
    "ffn_hidden_size": 13696,
    "kv_channels": 128,
    "num_attention_heads": 32,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "padded_vocab_size": 65024,
    "seq_length": 32768,
    "layernorm_epsilon": 1e-5,
    "add_qkv_bias": True,
    "add_bias_linear": False,
    "rmsnorm": True,
    "post_layer_norm": True,
    "original_rope": True,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
TEXT = (
    "Debian 参考手册 dpkg -L 列出软件包安装的文件。怎么查看一个软件包安装了哪些文件？"
    "APT is Debian's package manager; dpkg is the low-level tool that installs .deb files.\n"
)


def random_tensors(cfg: dict, seed: int = 0):
    """(upstream name, tensor) pairs of a random ChatGLM2 checkpoint, generated one at a time."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, f, v = cfg["hidden_size"], cfg["ffn_hidden_size"], cfg["padded_vocab_size"]
    heads, hd, groups = cfg["num_attention_heads"], cfg["kv_channels"], cfg["multi_query_group_num"]
    qkv = (heads + 2 * groups) * hd

    def rnd(*shape):  # bf16 like the published checkpoints (fp16/bf16), so building does not need fp32 copies
        return torch.randn(*shape, generator=g, dtype=torch.bfloat16).mul_(0.02)

    yield "transformer.embedding.word_embeddings.weight", rnd(v, h)
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        yield p + "input_layernorm.weight", torch.ones(h)
        yield p + "self_attention.query_key_value.weight", rnd(qkv, h)
        yield p + "self_attention.query_key_value.bias", rnd(qkv)
        yield p + "self_attention.dense.weight", rnd(h, heads * hd)
        yield p + "post_attention_layernorm.weight", torch.ones(h)
        yield p + "mlp.dense_h_to_4h.weight", rnd(2 * f, h)
        yield p + "mlp.dense_4h_to_h.weight", rnd(h, f)
    yield "transformer.encoder.final_layernorm.weight", torch.ones(h)
    yield "transformer.output_layer.weight", rnd(v, h)


def _weight_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


class _Passages:
    """A retriever for the two-turn chat: 5 passages per question, the first 3 shared by both questions."""

    def __init__(self, words: int):
        self.n = 0
        self.words = words

    def search(self, query, k=None, mode=None):
        from docqa.documents import Hit

        self.n += 1
        body = (TEXT * (self.words // len(TEXT) + 1))[: self.words]

        def hit(name, i):
            return Hit(chunk_id=i, score=1.0, source=f"/kb/{name}.md", text=f"{name}: {body}", rank=i)

        return [hit(f"shared-{i}", i) for i in range(3)] + [hit(f"q{self.n}-{i}", 10 * self.n + i) for i in range(2)]

    def is_relevant(self, query, hits):
        return True


def _chat(model, tok, args) -> dict:
    """Two turns of `docqa chat`'s real path (chat.py -> answer.py -> prompt.build_chat_turn -> the generator's
    session) on the built model; the timings are the answers' own."""
    from docqa.chat import Chat, Session
    from docqa.config import Settings
    from docqa.generate.chatglm2 import ChatGLM2Generator
    from docqa.generate.glm_runtime import SessionPool

    gen = ChatGLM2Generator.__new__(ChatGLM2Generator)  # the generator around an already built model
    gen.model, gen.tokenizer, gen.name = model, tok, "chatglm2:random"
    gen.context_length, gen.context_budget, gen.prefix_kv = 8192, None, None
    gen.sessions = SessionPool(model)
    s = Settings(max_new_tokens=32, temperature=0.0, max_context=args.chat_context, max_passages=5)
    chat = Chat(_Passages(args.chat_chars), gen, s, Session(), abstain=False)
    t1 = chat.ask("怎么查看一个软件包安装了哪些文件？").timings
    t2 = chat.ask("那怎么知道一个文件属于哪个软件包？").timings
    return {"turn1": t1, "turn2": t2}


def worker(args) -> dict:
    import torch

    from docqa.generate.chatglm2 import build_model
    from docqa.generate.chatglm2_tokenizer import ChatGLM2Tokenizer
    from docqa.generate.glm_runtime import GlmSession, KVCache, extend

    cuda = args.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    cfg = dict(CHATGLM2_6B, num_layers=args.layers)
    mode = args.worker
    dtype, quantize = ("bf16", None) if mode == "bf16" else ("auto", mode)
    t0 = time.perf_counter()
    model = build_model(cfg, random_tensors(cfg), "random", device=args.device, dtype=dtype, quantize=quantize)
    sync()
    build_s = time.perf_counter() - t0
    dev = model.model.embed_tokens.weight.device
    act = model.model.embed_tokens.weight.dtype
    tok = ChatGLM2Tokenizer(args.tokenizer)
    text_ids = tok.encode(TEXT, add_special_tokens=False)
    ids_for = lambda n: (tok.prefix_tokens() + text_ids * (n // len(text_ids) + 1))[:n]  # noqa: E731

    out: dict = {
        "mode": mode,
        "layers": args.layers,
        "build_s": build_s,
        "act_dtype": str(act).split(".")[-1],
        "weights_gb": _weight_bytes(model) / 1e9,
    }
    layer_bytes = _weight_bytes(model.model.layers[0])
    out["weights_gb_est28"] = (_weight_bytes(model) + (28 - args.layers) * layer_bytes) / 1e9
    h, f, heads, hd, groups = (
        cfg[k]
        for k in ("hidden_size", "ffn_hidden_size", "num_attention_heads", "kv_channels", "multi_query_group_num")
    )
    layer_params = h * (heads + 2 * groups) * hd + heads * hd * h + 3 * h * f

    def timed(fn, runs):
        ts = []
        for _ in range(runs):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    with torch.inference_mode():
        # the machine's bf16 GEMM throughput, measured here so the prefill share compares like with like
        a = torch.randn(512, h, dtype=torch.bfloat16, device=dev)
        b = torch.randn(h, f, dtype=torch.bfloat16, device=dev)
        torch.matmul(a, b)
        out["gemm_tflops"] = 2 * 512 * h * f / timed(lambda: torch.matmul(a, b), 3) / 1e12

        # streaming memory bandwidth, the bound of a decode step (it reads every weight once): a 1 GB reduction
        big = torch.ones(2**29, dtype=torch.bfloat16, device=dev)
        big.sum()
        out["stream_gb_s"] = big.numel() * 2 / timed(lambda: big.sum(), 3) / 1e9
        big = None  # free the 1 GB

        # the output head's share of a decode step, so per-token times can be scaled to 28 layers
        hidden = torch.randn(1, 1, h, dtype=act, device=dev)
        head_s = timed(lambda: model.lm_head(model.model.norm(hidden)), 5)
        out["head_ms"] = head_s * 1e3

        extend(model, KVCache(model), ids_for(8))  # warm-up: lazy initialisation and kernel selection

        # prefill: the runtime's path (chunked, int8 weights dequantised per layer, head on the last position)
        n = args.prefill
        pre = timed(lambda: extend(model, KVCache(model), ids_for(n)), args.runs)
        out["prefill_tokens"] = n
        out["prefill_tok_s"] = n / pre
        # per token: 2 FLOP per weight of each layer, plus attention over n/2 keys on average (causal)
        flops = args.layers * (2 * layer_params + 4 * heads * hd * n / 2)
        out["prefill_gemm_share"] = out["prefill_tok_s"] * flops / (out["gemm_tflops"] * 1e12)

        # decode per token at each context length, over a cache of random keys/values (the cost depends on the
        # cache's length, not its content)
        for ctx in args.contexts:
            session = GlmSession(model)
            cache = session.cache
            cache.reserve(ctx + args.tokens + 1)
            for i in range(args.layers):
                cache.k[i][:, :, :ctx].normal_()
                cache.v[i][:, :, :ctx].normal_()
            nxt = ids_for(ctx + 1)[-1]
            steps = []
            for _ in range(args.runs):
                cache.length = ctx
                for _ in range(args.tokens):
                    sync()
                    t = time.perf_counter()
                    logits = session.step(nxt)
                    sync()
                    steps.append(time.perf_counter() - t)
                    nxt = int(logits.argmax())
            step = statistics.median(steps)
            out[f"decode_ms@{ctx}"] = step * 1e3
            out[f"decode_ms@{ctx}_est28"] = (head_s + (step - head_s) * 28 / args.layers) * 1e3
            del session, cache
    if args.chat_context:
        out["chat"] = _chat(model, tok, args)
    out["prefill_tok_s_est28"] = out["prefill_tok_s"] * args.layers / 28
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    if cuda:
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=28, help="decoder layers to build (28 = the real 6B)")
    ap.add_argument("--contexts", default="1024,8192", help="comma-separated KV-cache lengths for decode timing")
    ap.add_argument("--modes", default="bf16,int8,int4", help="bf16, int8 and/or int4")
    ap.add_argument("--prefill", type=int, default=1024, help="prompt length for the prefill timing")
    ap.add_argument("--chat-context", type=int, default=4096, help="max_context of the two-turn chat (0: skip it)")
    ap.add_argument("--chat-chars", type=int, default=600, help="characters per passage in the two-turn chat")
    ap.add_argument("--tokens", type=int, default=4, help="decode steps per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokenizer", default=str(ROOT / "tests/data/chatglm2/tokenizer.model"))
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.contexts = [int(c) for c in args.contexts.split(",") if c]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0

    import torch

    print(
        f"# ChatGLM2-6B shape, {args.layers}/28 layers, device={args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; medians of {args.runs} runs x {args.tokens} tokens"
    )
    results = []
    for mode in args.modes.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            mode,
            "--layers",
            str(args.layers),
            "--contexts",
            ",".join(map(str, args.contexts)),
            "--prefill",
            str(args.prefill),
            "--tokens",
            str(args.tokens),
            "--runs",
            str(args.runs),
            "--device",
            args.device,
            "--tokenizer",
            args.tokenizer,
            "--chat-context",
            str(args.chat_context),
            "--chat-chars",
            str(args.chat_chars),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{mode}: failed (rc={proc.returncode})\n{proc.stderr[-2000:]}")
            continue
        results.append(json.loads(lines[-1][7:]))
        r = results[-1]
        print(
            f"{mode}: build {r['build_s']:.1f}s, weights {r['weights_gb']:.2f} GB (est.28 {r['weights_gb_est28']:.2f}), "
            f"peak RSS {r['peak_rss_gb']:.2f} GB, prefill {r['prefill_tok_s']:.1f} tok/s "
            f"(est.28 {r['prefill_tok_s_est28']:.1f}), head {r['head_ms']:.1f} ms",
            flush=True,
        )
        print(
            f"    prefill share: {r['prefill_tok_s']:.1f} tok/s x {r['layers']} layers' FLOP/token = "
            f"{r['prefill_gemm_share']:.0%} of the bf16 GEMM's {r['gemm_tflops']:.2f} TFLOPS measured in this run "
            "(goal >= 50%)",
            flush=True,
        )
        for ctx in args.contexts:
            print(
                f"    decode @{ctx}: {r[f'decode_ms@{ctx}']:.1f} ms/token measured, "
                f"est.28 {r[f'decode_ms@{ctx}_est28']:.0f} ms/token",
                flush=True,
            )
        lo, hi = min(args.contexts), max(args.contexts)
        if lo != hi:
            ratio = r[f"decode_ms@{hi}"] / r[f"decode_ms@{lo}"]
            print(f"    decode {hi}/{lo} = {ratio:.2f} (goal <= 1.3)", flush=True)
        step_gb = r["weights_gb"] - 65024 * 4096 * 2 / 1e9  # all weights but the embedding table are read
        print(
            f"    decode @{lo} reads {step_gb:.2f} GB of weights: {step_gb / (r[f'decode_ms@{lo}'] / 1e3):.1f} GB/s = "
            f"{step_gb / (r[f'decode_ms@{lo}'] / 1e3) / r['stream_gb_s']:.0%} of the {r['stream_gb_s']:.1f} GB/s "
            "streaming bandwidth measured in this run",
            flush=True,
        )
        cpp = {"int8": ("q8_0", 440), "int4": ("q4_0", 294)}.get(mode)
        if cpp:
            print(
                f"    vs chatglm.cpp {cpp[0]} {cpp[1]} ms/token: est.28 decode @{lo} "
                f"{r[f'decode_ms@{lo}_est28']:.0f} ms/token ({r[f'decode_ms@{lo}_est28'] / cpp[1]:.2f}x)",
                flush=True,
            )
        if "chat" in r:
            t1, t2 = r["chat"]["turn1"], r["chat"]["turn2"]
            before = t1["prompt_tokens"] + t1["new_tokens"]
            new1 = t1["prompt_tokens"] - t1["cached_tokens"]
            new2 = t2["prompt_tokens"] - t2["cached_tokens"]
            print(
                f"    chat: turn 1 prompt {t1['prompt_tokens']:.0f} + answer {t1['new_tokens']:.0f} tokens; turn 2 "
                f"prompt {t2['prompt_tokens']:.0f}, cached {t2['cached_tokens']:.0f} = "
                f"{t2['cached_tokens'] / before:.0%} of turn 1's prompt + answer (goal >= 90%); prefill per new "
                f"token: turn 1 {t1['prefill_s'] / new1 * 1e3:.1f} ms ({new1:.0f} new), turn 2 "
                f"{t2['prefill_s'] / max(new2, 1) * 1e3:.1f} ms ({new2:.0f} new)",
                flush=True,
            )
    base = next((r for r in results if r["mode"] == "bf16"), None)
    if base:
        print("# ratios vs bf16 (est.28 figures; <1 = faster / smaller)")
        for r in results:
            parts = [
                f"weights {r['weights_gb_est28'] / base['weights_gb_est28']:.2f}",
                f"prefill speed {r['prefill_tok_s'] / base['prefill_tok_s']:.2f}x",
            ]
            parts += [
                f"decode@{c} {r[f'decode_ms@{c}_est28'] / base[f'decode_ms@{c}_est28']:.2f}" for c in args.contexts
            ]
            print(f"{r['mode']}: " + ", ".join(parts))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
