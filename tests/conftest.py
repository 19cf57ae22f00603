"""Shared fixtures. Models are loaded once per session; everything else lives in tmp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Rich wraps console output at the terminal width (80 when there is none): a long tmp path (pytest-xdist adds
# popen-gwN to every one) would be cut by a line break in the middle of the text tests look for
os.environ.setdefault("COLUMNS", "400")

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def embedder():
    """The real embedded all-MiniLM-L6-v2 (small: loads in about two seconds)."""
    from docqa.embed import get_embedder

    return get_embedder()


@pytest.fixture
def settings(tmp_path):
    from docqa.config import Settings

    return Settings(index=tmp_path / "kb", file_timeout=30, sessions_dir=tmp_path / "sessions")


EN_VENV = """# Virtual environments

Python applications often need packages that are not part of the standard library.

## Creating virtual environments

The module used to create and manage virtual environments is called venv. To create one, decide on a directory
and run `python3 -m venv tutorial-env`. This creates the tutorial-env directory with a copy of the interpreter.

## Managing packages with pip

You can install, upgrade, and remove packages using a program called pip. Run `python -m pip install novas` to
install the latest version of a package.
"""

ZH_TAR = """tar 命令

tar 是一个归档工具，可以把许多文件保存到一个归档文件中，也可以从归档中还原文件。

解压文件：使用 tar -xzvf archive.tar.gz 可以解压一个用 gzip 压缩的归档。选项 -x 表示提取，-z 表示通过 gzip 过滤。

创建归档：tar -cf archive.tar foo bar 会把 foo 和 bar 打包成 archive.tar。
"""

ZH_FSTAB = """文件系统表

/etc/fstab 文件描述了系统启动时要挂载的文件系统。每一行包括设备、挂载点、文件系统类型和挂载选项。
修改 /etc/fstab 之后，可以运行 mount -a 挂载所有文件系统来检查配置是否正确。
"""


@pytest.fixture
def docs_dir(tmp_path) -> Path:
    """A small bilingual folder: English Markdown, Chinese UTF-8 text, Chinese GB18030 text."""
    d = tmp_path / "docs"
    d.mkdir()
    (d / "venv.md").write_text(EN_VENV, encoding="utf-8")
    (d / "tar.txt").write_text(ZH_TAR, encoding="utf-8")
    (d / "fstab.txt").write_bytes(ZH_FSTAB.encode("gb18030"))
    return d


#: an English archive how-to, an English venv note, a Chinese network page, and a Chinese question that shares
#: no word with the English passage that answers it (query expansion and dictionary-gloss tests)
MIXED_DOCS = {
    "tar.md": "# Archives\n\nTo extract the files of a compressed archive, run `tar -xzf backup.tar.gz`: -x extracts, "
    "-z filters through gzip.\n",
    "venv.md": "# Environments\n\nCreate a virtual environment with `python3 -m venv env` and activate it with "
    "`source env/bin/activate`.\n",
    "net.txt": "网络配置\n\n/etc/network/interfaces 描述了网络接口，修改之后运行 ifup eth0 启用接口。\n",
}
EXTRACT_QUESTION = "怎么把压缩包里的文件取出来？"


@pytest.fixture(scope="session")
def demo():
    """The real embedded demo model (Gemma 3 270M), loaded once for every module that answers questions."""
    from docqa.generate.demo import DemoGenerator

    return DemoGenerator()


def build_kb(root: Path, docs: dict[str, str], embedder, **settings):
    """Write `docs` (name -> text) under root/docs, ingest them into root/kb; returns the Settings used."""
    from docqa.config import Settings
    from docqa.ingest import ingest

    (root / "docs").mkdir()
    for name, text in docs.items():
        (root / "docs" / name).write_text(text, encoding="utf-8")
    s = Settings(index=root / "kb", sessions_dir=root / "sessions", **settings)
    report = ingest([root / "docs"], s, embedder=embedder)
    assert report.added == len(docs) and not report.failed, report
    return s


class OneHitRetriever:
    """A retriever that finds one apt passage for any question and records the queries it was asked."""

    def __init__(self):
        self.queries: list[str] = []

    def search(self, query, k=None, mode=None, expansions=(), cross_language=None):
        from docqa.documents import Hit

        self.queries.append(query)
        return [Hit(chunk_id=1, score=1.0, source="/d/a.md", text="apt installs packages", rank=1)]

    def is_relevant(self, query, hits, expansions=()):
        return True


def echo_generator():
    """A base-model Generator (rule-based follow-ups) that always answers "Use apt [1]."."""
    from docqa.generate.base import Generator

    class Echo(Generator):
        is_chat_model = False

        def stream(self, prompt, options=None):
            yield "Use apt [1]."

    return Echo()


def write_tiny_chatglm2(folder: Path, seed: int = 0, vocab: int = 65024) -> Path:
    """A tiny random ChatGLM2 checkpoint in the official layout with the real tokenizer: config.json in ChatGLM's
    format, upstream tensor names in one `pytorch_model.bin` (torch.save of a plain state dict), and
    tests/data/chatglm2/tokenizer.model. Hidden 64, 2 layers, 4 heads of 16, 2 key/value groups, padded vocab
    65,024 (what the real tokenizer needs)."""
    import json
    import shutil

    import torch

    hidden, layers, heads, hd, groups, ffn = 64, 2, 4, 16, 2, 128
    cfg = {
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_residual_connection_post_layernorm": False,
        "ffn_hidden_size": ffn,
        "hidden_size": hidden,
        "kv_channels": hd,
        "layernorm_epsilon": 1e-5,
        "multi_query_attention": True,
        "multi_query_group_num": groups,
        "num_attention_heads": heads,
        "num_layers": layers,
        "original_rope": True,
        "padded_vocab_size": vocab,
        "post_layer_norm": True,
        "rmsnorm": True,
        "seq_length": 32768,
        "torch_dtype": "float32",
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    state = {
        "transformer.embedding.word_embeddings.weight": rnd(vocab, hidden, std=0.5),
        "transformer.encoder.final_layernorm.weight": torch.ones(hidden),
        # wide enough that a token can be predicted with confidence (std 0.1 caps the best loss near 5 nats)
        "transformer.output_layer.weight": rnd(vocab, hidden, std=0.5),
    }
    for i in range(layers):
        p = f"transformer.encoder.layers.{i}."
        state[p + "input_layernorm.weight"] = torch.ones(hidden)
        state[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
        state[p + "self_attention.query_key_value.weight"] = rnd((heads + 2 * groups) * hd, hidden, std=0.1)
        state[p + "self_attention.query_key_value.bias"] = rnd((heads + 2 * groups) * hd)
        state[p + "self_attention.dense.weight"] = rnd(hidden, heads * hd, std=0.1)
        state[p + "mlp.dense_h_to_4h.weight"] = rnd(2 * ffn, hidden, std=0.1)
        state[p + "mlp.dense_4h_to_h.weight"] = rnd(hidden, ffn, std=0.1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    torch.save(state, folder / "pytorch_model.bin")
    shutil.copy(DATA / "chatglm2" / "tokenizer.model", folder / "tokenizer.model")
    return folder


@pytest.fixture(scope="session")
def tiny_chatglm2_real(tmp_path_factory) -> Path:
    """write_tiny_chatglm2 in a session tmp folder (treat it as read-only)."""
    return write_tiny_chatglm2(tmp_path_factory.mktemp("tiny-real") / "tiny-chatglm2-real")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """`milvus-lite server` on a free loopback port, one per session (it takes a few seconds to start); yields its
    URI, stopped by PID at the end. The same gRPC API a Milvus cluster speaks, so the client code path is the
    cluster's."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    pytest.importorskip("milvus_lite")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path_factory.mktemp("milvus-server")
    cmd = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data), "--host", "127.0.0.1"]
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"milvus-lite server did not start (exit {proc.poll()})")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    """A docqa cache folder holding the int8 ONNX export of the embedded model, exported once per session."""
    return tmp_path_factory.mktemp("docqa-cache")


@pytest.fixture(scope="session")
def onnx_embedder(onnx_cache):
    """The onnx-int8 embedder over `onnx_cache` (the export takes a few seconds: once per session)."""
    from docqa.embed_onnx import OnnxInt8Embedder

    emb = OnnxInt8Embedder("all-MiniLM-L6-v2", onnx_cache, "")
    emb.ensure_file()
    return emb
