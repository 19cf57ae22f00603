"""Optional second stage: a cross-encoder reads (question, passage) pairs and reorders the fused candidates.

    >>> rr = CrossEncoderReranker("cross-encoder/ms-marco-MiniLM-L-6-v2", "cpu")   # a local path or cached id  # doctest: +SKIP
    >>> hits = rr.rerank("How do I make a virtual environment?", hits)  # doctest: +SKIP
    >>> hits[0].scores["rerank"]  # doctest: +SKIP
    7.31

Off by default (`reranker = ""`); set `reranker` in docqa.toml or DOCQA_RERANKER to a sentence-transformers
CrossEncoder folder or cached name. `Retriever` hands it the fused top max(k, 20) and keeps the best k.
Each hit's `score` becomes the cross-encoder's score and `scores["rerank"]` keeps it; ties keep the fused order.

Limits: a cross-encoder costs one transformer pass per candidate (about 10 ms each for a MiniLM on CPU), and the
common English ms-marco models do not read Chinese; the model is never downloaded (HF_HUB_OFFLINE is respected).
"""

from __future__ import annotations

from collections.abc import Sequence

from .documents import Hit
from .errors import ModelError


class CrossEncoderReranker:
    """Reorders hits by a sentence-transformers CrossEncoder's relevance score (higher is better)."""

    def __init__(self, name_or_path: str, device: str = "cpu", *, batch_size: int = 16, max_length: int = 512):
        self.name = name_or_path
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self._model = None

    @property
    def model(self):
        """The CrossEncoder, loaded on first use (importing torch takes seconds)."""
        if self._model is None:
            from sentence_transformers import CrossEncoder

            try:
                self._model = CrossEncoder(
                    self.name, device=self.device, max_length=self.max_length, trust_remote_code=False
                )
            except Exception as e:
                raise ModelError(
                    f"cannot load reranker {self.name!r}: {e}. Use a local folder or a model already in your "
                    "Hugging Face cache (docqa never downloads models)."
                ) from None
            # never feed more positions than the model has (a small model may have fewer than max_length)
            limit = getattr(getattr(self._model, "config", None), "max_position_embeddings", None)
            attr = "max_seq_length" if hasattr(type(self._model), "max_seq_length") else "max_length"
            current = getattr(self._model, attr, None)
            if limit and (current is None or current > limit):
                setattr(self._model, attr, int(limit))
        return self._model

    def scores(self, query: str, texts: Sequence[str]) -> list[float]:
        """The cross-encoder's score for each (query, text) pair."""
        if not texts:
            return []
        out = self.model.predict(
            [(query, t) for t in texts], batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True
        )
        return [float(x) for x in out.reshape(len(texts), -1)[:, -1]]  # a 2-class head: the positive logit

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        """`hits` sorted by the cross-encoder's score, best first (stable: equal scores keep their order)."""
        if not hits:
            return []
        scored = self.scores(query, [f"{h.section}\n{h.text}" if h.section else h.text for h in hits])
        for h, s in zip(hits, scored):
            h.scores["rerank"] = s
            h.score = s
        order = sorted(range(len(hits)), key=lambda i: -scored[i])
        out = [hits[i] for i in order]
        for i, h in enumerate(out, 1):
            h.rank = i
        return out
