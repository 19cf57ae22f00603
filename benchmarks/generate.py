"""Benchmark ChatGLM2-6B-shaped generation: bf16 vs int8 vs int4 weights (random weights, real tokenizer).

    .venv/bin/python benchmarks/generate.py                         # full 28 layers (needs ~16 GB RAM, slow)
    .venv/bin/python benchmarks/generate.py --layers 4 --runs 3     # full width, 4 layers, scaled to 28
    .venv/bin/python benchmarks/generate.py --device cuda --modes bf16,int8

Each mode runs in its own subprocess (clean peak RSS). The model is built through the real loading path
(`docqa.generate.chatglm2.build_model`: stream tensors, quantise layer by layer) from random tensors, so
"build" is load time minus disk reads. Decode is timed at each context length with a KV cache pre-filled with
random keys/values (per-token cost depends on the cache length, not its content). With `--layers N < 28`,
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


def worker(args) -> dict:
    import torch
    from transformers import DynamicCache

    from docqa.generate.chatglm2 import build_model
    from docqa.generate.chatglm2_tokenizer import ChatGLM2Tokenizer

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
    dev = next(model.parameters()).device
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

    with torch.inference_mode():
        # the output head's share of a decode step, so per-token times can be scaled to 28 layers
        hidden = torch.randn(1, 1, cfg["hidden_size"], dtype=act, device=dev)
        head = []
        for _ in range(5):
            sync()
            t = time.perf_counter()
            model.lm_head(model.model.norm(hidden))
            sync()
            head.append(time.perf_counter() - t)
        head_s = statistics.median(head)
        out["head_ms"] = head_s * 1e3

        # warm-up: first calls pay for lazy initialisation and kernel selection
        for n in (8, 1):
            model(input_ids=torch.tensor([ids_for(n)], device=dev), cache=DynamicCache(), use_cache=True)

        # prefill throughput
        pre = []
        for _ in range(args.runs):
            ids = torch.tensor([ids_for(args.prefill)], device=dev)
            sync()
            t = time.perf_counter()
            model(input_ids=ids, cache=DynamicCache(), use_cache=True, logits_to_keep=1)
            sync()
            pre.append(time.perf_counter() - t)
        out["prefill_tokens"] = args.prefill
        out["prefill_tok_s"] = args.prefill / statistics.median(pre)

        # decode per token at each context length, over a KV cache of random keys/values
        groups, hd = cfg["multi_query_group_num"], cfg["kv_channels"]
        for ctx in args.contexts:
            cache = DynamicCache()
            for i in range(args.layers):
                kv = torch.randn(1, groups, ctx, hd, dtype=act, device=dev)
                cache.update(kv, kv.clone(), i)
            steps = []
            warm = torch.tensor([[5]], device=dev)
            model(input_ids=warm, cache=cache, use_cache=True, logits_to_keep=1)
            cache.crop(-1)
            nxt = torch.tensor([[ids_for(ctx + 1)[-1]]], device=dev)
            for _ in range(args.runs):
                for _ in range(args.tokens):
                    sync()
                    t = time.perf_counter()
                    logits = model(input_ids=nxt, cache=cache, use_cache=True, logits_to_keep=1).logits
                    sync()
                    steps.append(time.perf_counter() - t)
                    nxt = logits[:, -1].argmax(-1, keepdim=True)
                    cache.crop(-1)  # back to exactly ctx cached tokens
            step = statistics.median(steps)
            out[f"decode_ms@{ctx}"] = step * 1e3
            out[f"decode_ms@{ctx}_est28"] = (head_s + (step - head_s) * 28 / args.layers) * 1e3
            del cache
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
    ap.add_argument("--prefill", type=int, default=512, help="prompt length for the prefill timing")
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
        for ctx in args.contexts:
            print(
                f"    decode @{ctx}: {r[f'decode_ms@{ctx}']:.1f} ms/token measured, "
                f"est.28 {r[f'decode_ms@{ctx}_est28']:.0f} ms/token",
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
