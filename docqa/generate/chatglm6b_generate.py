"""`generate()` for docqa's own ChatGLM-6B network, shaped like transformers' (greedy or sampling, KV cache).

    >>> out = model.generate(input_ids=ids, max_new_tokens=16, do_sample=False,          # doctest: +SKIP
    ...                      return_dict_in_generate=True, output_scores=True)
    >>> out.sequences.shape, len(out.scores)                                              # doctest: +SKIP
    (torch.Size([1, 23]), 16)

Like transformers: `sequences` holds the prompt and the new tokens; generation stops at an eos token (included)
or after `max_new_tokens` (default: up to `max_length`, 20, like a default GenerationConfig); finished rows of a
batch are padded with `pad_token_id`; `scores` are the processed scores that chose each token (the raw logits
when greedy), `logits` the raw ones. Sampling applies temperature, then top-k (default 50 as transformers), then
top-p.

`model_output` / `output_cache` put and find the cache under the name the installed transformers uses (`cache` in
5.x, `past_key_values` in 4.x), so docqa's ChatGLM-6B outputs look like transformers' own.

Limits: no beam search, no logits processors or stopping criteria objects, no streamer; the other keyword
arguments transformers accepts are ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


def model_output(cls, cache=None, **fields):
    """A transformers output dataclass with the cache under whichever name this transformers version uses."""
    names = {f.name for f in dataclasses.fields(cls)}
    fields["cache" if "cache" in names else "past_key_values"] = cache
    return cls(**fields)


def output_cache(out):
    """The cache of a model output, from transformers 5 (`cache`) or 4.x (`past_key_values`)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _sample(scores: torch.Tensor, temperature: float, top_k: int, top_p: float, generator):
    """(processed scores, sampled ids), as transformers' temperature, top-k and top-p warpers do in that order."""
    if temperature and temperature != 1.0:
        scores = scores / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_s, order = torch.sort(scores, descending=False, dim=-1)
        cum = sorted_s.softmax(-1).cumsum(-1)
        drop = cum <= 1 - top_p
        drop[..., -1:] = False  # always keep the best token
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return scores, torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class GenerateMixin:
    """Adds `generate` to a module whose forward takes (input_ids, cache, use_cache, logits_to_keep) and returns
    `.logits` and the cache."""

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 50,
        top_p: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        return_dict_in_generate: bool = False,
        output_scores: bool = False,
        output_logits: bool = False,
        generator=None,
        **_ignored: Any,
    ):
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        config = self.config
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device)
        if ids.dim() == 1:
            ids = ids[None]
        if max_new_tokens is None:
            max_new_tokens = max(0, (max_length or 20) - ids.shape[1])
        eos = config.eos_token_id if eos_token_id is None else eos_token_id
        eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=ids.device)
        pad = config.pad_token_id if pad_token_id is None else pad_token_id
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        scores, raw = [], []
        cache, step = None, ids
        for _ in range(max_new_tokens):
            out = self(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1)
            cache = output_cache(out)
            logits = out.logits[:, -1].float()
            if do_sample:
                processed, nxt = _sample(logits, temperature, top_k, top_p, generator)
            else:
                processed, nxt = logits, logits.argmax(-1)
            if pad is not None:
                nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            scores.append(processed)
            raw.append(logits)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done = done | torch.isin(nxt, eos_ids)
            if bool(done.all()):
                break
            step = nxt[:, None]
        if not return_dict_in_generate:
            return ids
        return model_output(
            GenerateDecoderOnlyOutput,
            sequences=ids,
            scores=tuple(scores) if output_scores else None,
            logits=tuple(raw) if output_logits else None,
            cache=cache,
        )
