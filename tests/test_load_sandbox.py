"""Tests for docqa.load.sandbox: real worker processes, with test-only loaders from tests/data/load."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from docqa.errors import LoadError
from docqa.load.sandbox import LoaderSandbox

PLUGINS = [Path(__file__).parent / "data" / "load" / "sandbox_plugins.py"]


def _file(tmp_path: Path, name: str, content: str) -> Path:
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    return p


@pytest.fixture
def sandbox():
    with LoaderSandbox(timeout=1.5, memory_mb=600, plugins=PLUGINS) as sb:
        yield sb


def test_loads_real_formats_in_worker(sandbox: LoaderSandbox, tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for word in ("Alpha", "Beta"):
        pdf.add_page()
        pdf.start_section(f"Part {word}")
        pdf.cell(text=f"{word} page text")
    pdf.output(str(tmp_path / "a.pdf"))
    doc = sandbox.load(tmp_path / "a.pdf")
    assert doc.page_at(doc.text.index("Beta page")) == 2
    assert [s.path for s in doc.sections] == [("Part Alpha",), ("Part Beta",)]
    md = sandbox.load(_file(tmp_path, "z.md", "# 标题\n中文内容\n"))
    assert md.text == "# 标题\n中文内容\n" and md.sections[0].path == ("标题",)
    assert sandbox.worker_pid is not None and sandbox.worker_pid != os.getpid()
    assert sandbox.restarts == 0


def test_load_errors_cross_the_pipe_and_worker_survives(sandbox: LoaderSandbox, tmp_path: Path) -> None:
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\x00\x01\x02\xff" * 99)
    with pytest.raises(LoadError, match="binary file"):
        sandbox.load(binary)
    pid = sandbox.worker_pid
    with pytest.raises(LoadError, match="unsupported file type"):
        sandbox.load(_file(tmp_path, "x.mp3", "x"))
    assert sandbox.load(_file(tmp_path, "ok.txt", "fine")).text == "fine"
    assert sandbox.worker_pid == pid and sandbox.restarts == 0


def test_timeout_kills_and_restarts(sandbox: LoaderSandbox, tmp_path: Path) -> None:
    sandbox.load(_file(tmp_path, "warm.txt", "warm up"))
    pid = sandbox.worker_pid
    t = time.perf_counter()
    with pytest.raises(LoadError, match=r"timed out after 1.5s"):
        sandbox.load(_file(tmp_path, "slow.sleep", "30"))
    assert time.perf_counter() - t < 5
    assert sandbox.worker_pid is None  # killed, not left running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert sandbox.load(_file(tmp_path, "next.txt", "next file")).text == "next file"
    assert sandbox.restarts == 1 and sandbox.worker_pid != pid


def test_memory_cap(sandbox: LoaderSandbox, tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"too much memory \(> 600 MB\)"):
        sandbox.load(_file(tmp_path, "big.alloc", "2000"))
    assert sandbox.load(_file(tmp_path, "small.alloc", "50")).text == f"allocated {50 * 2**20}"


def test_crash_reports_signal_and_restarts(sandbox: LoaderSandbox, tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"parser crashed \(signal 6\)"):
        sandbox.load(_file(tmp_path, "boom.abort", "1"))
    with pytest.raises(LoadError, match=r"parser crashed \(exit code 3\)"):
        sandbox.load(_file(tmp_path, "bye.exit", "3"))
    assert sandbox.load(_file(tmp_path, "after.md", "# After\ntext")).sections[0].path == ("After",)
    assert sandbox.restarts == 2


def test_max_file_size_checked_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    with big.open("wb") as f:
        f.truncate(3 * 1024 * 1024)  # sparse: size without content
    with LoaderSandbox(max_file_mb=2, timeout=5) as sb:
        with pytest.raises(LoadError, match=r"file too large \(3 MB > 2 MB\)"):
            sb.load(big)
        assert sb.worker_pid is None  # never started: nothing was parsed
        with pytest.raises(LoadError, match="file not found"):
            sb.load(tmp_path / "missing.txt")


def test_inline_mode(tmp_path: Path) -> None:
    sb = LoaderSandbox(inline=True, plugins=PLUGINS, max_file_mb=1)
    assert sb.load(_file(tmp_path, "a.md", "# A\nx")).sections[0].path == ("A",)
    assert sb.load(_file(tmp_path, "q.sleep", "0")).text == "slept"
    assert sb.worker_pid is None


def test_worker_start_is_fast(tmp_path: Path) -> None:
    t = time.perf_counter()
    with LoaderSandbox(timeout=10) as sb:
        sb.load(_file(tmp_path, "a.txt", "hello"))
    assert time.perf_counter() - t < 3


def test_real_parser_hitting_memory_cap(tmp_path: Path) -> None:
    big = tmp_path / "huge.txt"
    big.write_bytes(b"all work and no play\r\n" * 3_000_000)  # 66 MB: reading + decoding + JSON needs > 150 MB
    with LoaderSandbox(timeout=30, memory_mb=150) as sb:
        with pytest.raises(LoadError, match=r"too much memory \(> 150 MB\)"):
            sb.load(big)
        assert sb.load(_file(tmp_path, "small.txt", "small")).text == "small"
        assert sb.restarts == 1
