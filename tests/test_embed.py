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


# ---------------------------------------------------------------------------------------------- onnx-int8 backend
SAMPLE_TEXTS = [
    "The venv module creates virtual environments. Run python3 -m venv tutorial-env to create one.",
    "tar -xzf archive.tar.gz extracts a gzip-compressed archive; -c creates one and -t lists its members.",
    "dpkg -L lists the files that a package installed; dpkg -S finds the package that owns a file.",
    "Logging levels, from least to most severe: DEBUG, INFO, WARNING, ERROR and CRITICAL.",
    "/etc/fstab describes the file systems mounted at boot: device, mount point, type and options.",
    "argparse turns command-line arguments into a namespace; add_argument declares each option.",
    "Use apt-get install to install a package and apt-get remove to remove it again.",
    "文件系统表 /etc/fstab 描述了系统启动时要挂载的文件系统。",
]
QUERIES = {
    "how do I list the files of a package": 2,
    "create a python virtual environment": 0,
    "extract a tar.gz archive": 1,
    "which file systems are mounted at boot": 4,
}


def test_int8_vectors_close_to_fp32(onnx_embedder):
    fp32 = get_embedder(precision="fp32")
    a, b = fp32.encode(SAMPLE_TEXTS), onnx_embedder.encode(SAMPLE_TEXTS, batch_size=3)  # several padded batches
    assert b.shape == a.shape and b.dtype == np.float32
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cos = np.sum(a * b, axis=1)
    assert float(cos.min()) >= 0.98, cos
    for q, want in QUERIES.items():
        assert int(np.argmax(a @ fp32.encode_query(q))) == int(np.argmax(b @ onnx_embedder.encode_query(q))) == want
    # same tokenizer and limits as the torch model: chunking is identical under both backends
    assert (onnx_embedder.dim, onnx_embedder.max_tokens) == (fp32.dim, fp32.max_tokens)
    assert [onnx_embedder.count_tokens(t) for t in SAMPLE_TEXTS] == [fp32.count_tokens(t) for t in SAMPLE_TEXTS]
    long = "word " * 400  # truncated at max_seq_length like the torch model, not an error
    assert float(onnx_embedder.encode([long])[0] @ fp32.encode([long])[0]) >= 0.98
    assert onnx_embedder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        onnx_embedder.encode("one string")


def test_int8_cache_reused_and_corrupt_cache_rebuilt(onnx_embedder, monkeypatch):
    import docqa.embed_onnx as eo

    path = onnx_embedder.ensure_file()
    good = path.read_bytes()
    exports = []

    def fake_export(model_dir, out):  # stands in for the seconds-long export
        exports.append(out)
        out.write_bytes(good)

    monkeypatch.setattr(eo, "export_int8", fake_export)
    again = eo.OnnxInt8Embedder("all-MiniLM-L6-v2", onnx_embedder.cache, "")
    assert again.ensure_file() == path and exports == []  # reused: same key, checksum verified
    for damage in (good[: len(good) // 2], b"not an onnx file", good[:-1] + bytes([good[-1] ^ 1])):
        path.write_bytes(damage)
        fresh = eo.OnnxInt8Embedder("all-MiniLM-L6-v2", onnx_embedder.cache, "")
        v = fresh.encode(["tar extracts archives"])  # rebuilt, never a crash
        assert np.allclose(v, onnx_embedder.encode(["tar extracts archives"]), atol=1e-6)
        assert path.read_bytes() == good
    assert len(exports) == 3
    path.with_suffix(".json").unlink()  # a missing checksum counts as damage too
    eo.OnnxInt8Embedder("all-MiniLM-L6-v2", onnx_embedder.cache, "").ensure_file()
    assert len(exports) == 4
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]  # no temp file left behind


def test_backend_names_and_choices(tmp_path):
    from docqa.embed import kb_model_name, split_model_name
    from docqa.embed_onnx import read_st_config

    assert kb_model_name("m") == "m" and split_model_name("m") == ("m", "torch")
    assert split_model_name(kb_model_name("org/m", "onnx-int8")) == ("org/m", "onnx-int8")
    with pytest.raises(ConfigError):
        kb_model_name("m", "int3")
    with pytest.raises(ConfigError):
        get_embedder("all-MiniLM-L6-v2", backend="tensorrt")
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(
        '[{"path": "", "type": "sentence_transformers.models.Transformer"},'
        ' {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]'
    )
    (tmp_path / "1_Pooling/config.json").write_text('{"pooling_mode_cls_token": true}')
    assert read_st_config(tmp_path)["pooling"] == "cls"
    (tmp_path / "1_Pooling/config.json").write_text('{"pooling_mode_weightedmean_tokens": true}')
    with pytest.raises(ConfigError, match="pooling"):
        read_st_config(tmp_path)
