"""The embedder: offline default model, normalised vectors, token counting, precision."""

import numpy as np
import pytest

from docqa.embed import SentenceTransformerEmbedder, get_embedder, model_languages
from docqa.errors import ConfigError


def test_embedded_model_offline_and_normalised(embedder):
    v = embedder.encode(["hello world", "你好，世界", ""])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert embedder.max_tokens == 256 and embedder.dim == 384
    assert embedder.count_tokens("hello world") == 2


def test_encode_rejects_a_bare_string(embedder):
    with pytest.raises(TypeError):
        embedder.encode("not a list")


def test_bf16_matches_fp32_rankings():
    fp32 = get_embedder(precision="fp32")
    bf16 = SentenceTransformerEmbedder(precision="bf16")
    docs = [
        "The venv module creates virtual environments.",
        "tar -xzf extracts a gzip archive.",
        "dpkg -L lists the files of a package.",
        "Logging levels: DEBUG, INFO, WARNING.",
    ]
    a, b = fp32.encode(docs), bf16.encode(docs)
    assert float(np.min(np.sum(a * b, axis=1))) > 0.999
    q = "how do I list package files"
    assert np.argmax(a @ fp32.encode_query(q)) == np.argmax(b @ bf16.encode_query(q)) == 2


def test_bad_precision_and_languages():
    with pytest.raises(ConfigError):
        SentenceTransformerEmbedder(precision="int3")
    assert model_languages("all-MiniLM-L6-v2") == {"en"}
    assert "zh" in model_languages("BAAI/bge-small-zh-v1.5")
