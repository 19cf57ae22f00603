"""A fast forward pass over a loaded `GlmForCausalLM` (ChatGLM2/ChatGLM3): a preallocated KV cache kept in the
key/value groups, grouped attention without repeated K/V, chunked prefill, the output layer on the last position
only, P-Tuning v2 prefixes, and `GlmSession`, which keeps a conversation's cache and reuses its longest common
prefix of token ids.

    >>> import torch
    >>> from docqa.generate.chatglm2 import load
    >>> model, _ = load("tests/data/chatglm2/tiny-chatglm2", device="cpu")
    >>> session = GlmSession(model)
    >>> logits, reused = session.prefill([900, 901, 10, 11, 12])
    >>> tuple(logits.shape), reused
    ((1024,), 0)
    >>> logits, reused = session.prefill([900, 901, 10, 11, 12, 13])  # extends the last prompt
    >>> reused, session.cached_ids == [900, 901, 10, 11, 12, 13]
    (5, True)
    >>> ref = forward_logits(model, [900, 901, 10, 11, 12, 13])[-1]
    >>> bool((ref - logits).abs().max() < 1e-4)
    True

Why not transformers' own forward: its DynamicCache grows by concatenation (a copy of the whole cache per token)
and its SDPA/eager paths expand 2 KV groups to 32 heads, so decode cost grew with the context (418 -> 857 ms/token
from 1K to 8K measured before); here decode reshapes the 32 query heads into their 2 groups and attends the cache
in place. The layer modules (projections, int8/int4 layers, norms, rotary tables) are the model's own, so the
numbers match transformers' to float rounding (tests/test_kvcache.py, tests/test_chatglm2.py).

P-Tuning v2: `prefix_kv` is one `(key, value)` pair per decoder layer, each `[1, groups, pre_seq_len, head_dim]`
in the model's dtype; it sits before every prompt in the cache, every token attends it, and it does not shift
positions (real tokens keep RoPE positions from 0), as upstream ChatGLM2's prefix encoder does.
`forward_logits(model, ids, prefix_kv)` is the plain reference: full-sequence logits, no cache, repeated K/V and
an explicit mask, differentiable (no inference mode), for tests and for fine-tuning.

Limits: batch size 1; ChatGLM2/3 networks (GlmForCausalLM) only -- ChatGLM-6B v1 keeps its own network and
transformers' cache (its bidirectional prompt prefix makes each turn a new prompt anyway). A session serves one
generation at a time: `SessionPool.acquire` marks it busy until `release` (concurrent requests get other caches).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

#: prompt tokens per forward pass in a long prefill: bounds the attention mask and the activations' memory while
#: keeping the GEMMs large (the int8 layers dequantise their weight once per pass)
PREFILL_CHUNK = 2048
#: the cache grows in steps of at least this many positions (25% beyond), so short prompts reserve little memory
CACHE_STEP = 512


def is_glm(model: Any) -> bool:
    """True for the models this runtime drives (transformers' GlmForCausalLM: ChatGLM2/ChatGLM3)."""
    return type(model).__name__ == "GlmForCausalLM" and hasattr(model, "model")


def check_prefix_kv(model, prefix_kv) -> int:
    """The prefix's length (0 for None); ValueError when its shape does not fit the model."""
    if prefix_kv is None:
        return 0
    cfg = model.config
    if len(prefix_kv) != cfg.num_hidden_layers:
        raise ValueError(f"prefix_kv has {len(prefix_kv)} layers, the model {cfg.num_hidden_layers}")
    length = int(prefix_kv[0][0].shape[2])
    want = (1, cfg.num_key_value_heads, length, cfg.head_dim)
    for k, v in prefix_kv:
        if tuple(k.shape) != want or tuple(v.shape) != want:
            raise ValueError(f"prefix_kv tensors must be {want}, got {tuple(k.shape)} / {tuple(v.shape)}")
    return length


class KVCache:
    """Per-layer keys/values `[1, groups, capacity, head_dim]`, written in place; `length` positions are valid
    (the prefix's first). Grows geometrically, so appending a token almost never copies the cache."""

    def __init__(self, model, prefix_kv=None):
        cfg = model.config
        self.layers, self.groups, self.head_dim = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
        ref = model.model.embed_tokens.weight
        self.dtype, self.device = ref.dtype, ref.device
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.capacity = 0
        self.prefix_len = check_prefix_kv(model, prefix_kv)
        self.length = 0
        if self.prefix_len:
            self.reserve(self.prefix_len)
            for i, (k, v) in enumerate(prefix_kv):
                self.k[i][:, :, : self.prefix_len] = k
                self.v[i][:, :, : self.prefix_len] = v
            self.length = self.prefix_len

    def reserve(self, total: int) -> None:
        if total <= self.capacity:
            return
        # room for an answer after a prompt, then +25%: an 8K prompt does not reserve 16K (2 x 230 MB for 6B)
        cap = max(total + CACHE_STEP, self.capacity + self.capacity // 4)
        cap = -(-cap // CACHE_STEP) * CACHE_STEP
        shape = (1, self.groups, cap, self.head_dim)
        for store in (self.k, self.v):
            for i in range(self.layers):
                new = torch.empty(shape, dtype=self.dtype, device=self.device)
                if i < len(store):
                    new[:, :, : self.length] = store[i][:, :, : self.length]
                    store[i] = new
                else:
                    store.append(new)
        self.capacity = cap

    def crop(self, length: int) -> None:
        """Forget everything after `length` positions (never the prefix)."""
        self.length = max(self.prefix_len, min(self.length, length))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def _rope(model, positions: torch.Tensor, like: torch.Tensor):
    return model.model.rotary_emb(like, positions[None])


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, scale: float) -> torch.Tensor:
    """q [1, heads, n, hd] for cache positions start..start+n-1 over k/v [1, groups, start+n, hd] (causal)."""
    heads, n, hd = q.shape[1], q.shape[2], q.shape[3]
    groups = k.shape[1]
    if n == 1:
        # one query: its 32 heads are 2 groups of 16 rows attending their group's keys, no mask, no copies
        out = F.scaled_dot_product_attention(q.view(1, groups, heads // groups, hd), k, v, scale=scale)
        return out.reshape(1, heads, 1, hd)
    if start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    rows = torch.arange(start, start + n, device=q.device)[:, None]
    mask = torch.arange(start + n, device=q.device)[None, :] <= rows
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


def _layer(layer, x: torch.Tensor, cos, sin, cache: KVCache, i: int, start: int) -> torch.Tensor:
    from transformers.models.glm.modeling_glm import apply_rotary_pos_emb

    attn = layer.self_attn
    n, hd = x.shape[1], attn.head_dim
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(1, n, -1, hd).transpose(1, 2)
    k = attn.k_proj(h).view(1, n, -1, hd).transpose(1, 2)
    v = attn.v_proj(h).view(1, n, -1, hd).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    cache.k[i][:, :, start : start + n] = k
    cache.v[i][:, :, start : start + n] = v
    out = _attend(q, cache.k[i][:, :, : start + n], cache.v[i][:, :, : start + n], start, attn.scaling)
    x = x + attn.o_proj(out.transpose(1, 2).reshape(1, n, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def extend(model, cache: KVCache, ids: Sequence[int], last_only: bool = True) -> torch.Tensor:
    """Run `ids` after what `cache` holds (in chunks of PREFILL_CHUNK), appending their keys/values; the logits
    (fp32) of the last position `[vocab]`, or of every position `[n, vocab]` with `last_only=False`."""
    if not ids:
        raise ValueError("extend needs at least one token")
    dev = cache.device
    cache.reserve(cache.length + len(ids))
    outs = []
    with torch.inference_mode():
        for at in range(0, len(ids), PREFILL_CHUNK):
            chunk = torch.tensor([list(ids[at : at + PREFILL_CHUNK])], dtype=torch.long, device=dev)
            start = cache.length
            x = model.model.embed_tokens(chunk)
            # RoPE positions count real tokens only: a P-Tuning prefix does not shift them
            pos = torch.arange(start - cache.prefix_len, start - cache.prefix_len + chunk.shape[1], device=dev)
            cos, sin = _rope(model, pos, x)
            for i, layer in enumerate(model.model.layers):
                x = _layer(layer, x, cos, sin, cache, i, start)
            cache.length = start + chunk.shape[1]
            if last_only:
                x = x[:, -1:]
            outs.append(model.lm_head(model.model.norm(x))[0].float())
    return outs[-1][-1] if last_only else torch.cat(outs)


def forward_logits(model, ids: Sequence[int] | torch.Tensor, prefix_kv=None) -> torch.Tensor:
    """Reference logits `[n, vocab]` (fp32) for every position of `ids`, without a cache: each layer's keys and
    values are computed for the whole sequence, the prefix's put before them and repeated to all heads, and
    attention is an explicit causal softmax (the prefix visible to every token, positions from 0). Not run in
    inference mode, so gradients reach `prefix_kv` (and any trainable weights)."""
    from transformers.models.glm.modeling_glm import apply_rotary_pos_emb, repeat_kv

    check_prefix_kv(model, prefix_kv)
    dev = model.model.embed_tokens.weight.device
    ids_t = torch.as_tensor(ids, dtype=torch.long, device=dev).reshape(1, -1)
    n = ids_t.shape[1]
    x = model.model.embed_tokens(ids_t)
    cos, sin = _rope(model, torch.arange(n, device=dev), x)
    p = 0 if prefix_kv is None else int(prefix_kv[0][0].shape[2])
    allowed = torch.arange(p + n, device=dev)[None, :] <= (torch.arange(n, device=dev)[:, None] + p)
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        hd = attn.head_dim
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(1, n, -1, hd).transpose(1, 2)
        k = attn.k_proj(h).view(1, n, -1, hd).transpose(1, 2)
        v = attn.v_proj(h).view(1, n, -1, hd).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if prefix_kv is not None:
            k = torch.cat([prefix_kv[i][0].to(k.dtype), k], dim=2)
            v = torch.cat([prefix_kv[i][1].to(v.dtype), v], dim=2)
        k, v = repeat_kv(k, attn.num_key_value_groups), repeat_kv(v, attn.num_key_value_groups)
        scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(1, n, -1)
        x = x + attn.o_proj(out)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(model.model.norm(x))[0].float()


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences.

    >>> common_prefix([1, 2, 3, 4], [1, 2, 5]), common_prefix([], [1])
    (2, 0)
    """
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class GlmSession:
    """A KV cache plus the token ids it holds. `prefill(ids)` reuses the longest common prefix of `ids` with
    what is cached and runs only the rest; `step(token)` appends one token. Whatever builds the prompts, a new
    prompt that extends the previous one (prompt + answer + next question) pays only for its new tokens."""

    def __init__(self, model, prefix_kv=None):
        self.model = model
        self.prefix_kv = prefix_kv
        self.cache = KVCache(model, prefix_kv)
        self.cached_ids: list[int] = []
        self.busy = False  # a generation is using it (SessionPool hands it to no one else meanwhile)

    def release(self) -> None:
        """The generation using this session is over (sample_tokens calls it)."""
        self.busy = False

    def matching(self, ids: Sequence[int]) -> int:
        """How many leading ids of `ids` the cache already holds."""
        return common_prefix(self.cached_ids, ids)

    def prefill(self, ids: Sequence[int]) -> tuple[torch.Tensor, int]:
        """(logits of the last prompt position [vocab] fp32, prompt tokens reused from the cache)."""
        ids = [int(i) for i in ids]
        # at least one token must run to give the next token's logits
        reuse = min(self.matching(ids), len(ids) - 1)
        self.cache.crop(self.cache.prefix_len + reuse)
        self.cached_ids = self.cached_ids[:reuse]
        logits = extend(self.model, self.cache, ids[reuse:])
        self.cached_ids = ids
        return logits, reuse

    def step(self, token: int) -> torch.Tensor:
        """Logits [vocab] after appending `token`."""
        logits = extend(self.model, self.cache, [int(token)])
        self.cached_ids.append(int(token))
        return logits

    def reset(self) -> None:
        self.cache.crop(0)
        self.cached_ids = []


class SessionPool:
    """A few GlmSessions for one model: each prompt goes to the session sharing its longest prefix (when that
    prefix is worth keeping), else to an empty or the least recently used one, so a side prompt (chat's
    question rewrite) does not evict the conversation's cache. `prefix_kv` changes start fresh sessions."""

    #: a shared prefix shorter than this (the two [gMASK] sop tokens, a common instruction start) is no match
    MIN_MATCH = 16

    def __init__(self, model, size: int = 2):
        self.model, self.size = model, size
        self.sessions: list[GlmSession] = []
        self._lock = threading.Lock()

    def acquire(self, ids: Sequence[int], prefix_kv=None) -> GlmSession:
        with self._lock:
            self.sessions = [s for s in self.sessions if s.prefix_kv is prefix_kv]
            free = [s for s in self.sessions if not s.busy]
            best = max(free, key=lambda s: s.matching(ids), default=None)
            if best is not None and best.matching(ids) >= min(self.MIN_MATCH, len(ids) - 1):
                chosen = best
            elif len(self.sessions) < self.size:
                chosen = GlmSession(self.model, prefix_kv)
                self.sessions.append(chosen)
            elif free:
                chosen = free[0]  # least recently used
            else:  # every cache is in use by another thread: a throwaway one
                chosen = GlmSession(self.model, prefix_kv)
                chosen.busy = True
                return chosen
            self.sessions.remove(chosen)
            self.sessions.append(chosen)
            chosen.busy = True
            return chosen

    def clear(self) -> None:
        with self._lock:
            self.sessions = []
