"""Shared fixtures. Models are loaded once per session; everything else lives in tmp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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

    def search(self, query, k=None, mode=None):
        from docqa.documents import Hit

        self.queries.append(query)
        return [Hit(chunk_id=1, score=1.0, source="/d/a.md", text="apt installs packages", rank=1)]

    def is_relevant(self, query, hits):
        return True


def echo_generator():
    """A base-model Generator (rule-based follow-ups) that always answers "Use apt [1]."."""
    from docqa.generate.base import Generator

    class Echo(Generator):
        is_chat_model = False

        def stream(self, prompt, options=None):
            yield "Use apt [1]."

    return Echo()
