"""Hostile and broken files beside good ones: the ingest finishes, names each bad file with a reason, and every good
file is searchable. Parsing runs in the sandbox under its time and memory caps (tests/hostile.py builds the folder).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile import build_hostile_folder

from docqa.config import Settings
from docqa.errors import LoadError
from docqa.ingest import ingest
from docqa.load.sandbox import LoaderSandbox
from docqa.retrieve import Retriever
from docqa.store import KnowledgeBase

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return root / "docs", build_hostile_folder(root / "docs")


def test_hostile_folder_ingest(hostile, tmp_path, embedder):
    folder, cases = hostile
    s = Settings(
        index=tmp_path / "kb", file_timeout=20, file_memory_mb=1024, max_file_mb=100, sessions_dir=tmp_path / "sessions"
    )
    t = time.perf_counter()
    report = ingest([folder], s, embedder)
    took = time.perf_counter() - t
    outcome = {os.path.basename(p): ("failed", r) for p, r in report.failed}
    outcome.update({os.path.basename(p): ("skipped", r) for p, r in report.skipped})
    with KnowledgeBase.open(s.index) as kb:
        for d in kb.documents():
            if d.status == "ok":
                outcome[os.path.basename(d.path)] = ("ok", "")
        assert kb.verify() == []
    lines = [f"{name:18} {got[0]:8} {got[1]}" for name, got in sorted(outcome.items())]
    print(f"hostile folder ingested in {took:.1f}s\n" + "\n".join(lines))
    assert set(outcome) == set(cases), set(outcome) ^ set(cases)
    for name, case in cases.items():
        got, reason = outcome[name]
        assert got == case.outcome, (name, got, reason)
        assert re.search(case.reason, reason), (name, reason)
    assert report.added == sum(c.outcome == "ok" for c in cases.values())

    with KnowledgeBase.open(s.index) as kb:
        r = Retriever(kb, embedder, s.replace(mode="bm25"))
        for name, case in cases.items():
            if case.outcome == "ok":
                hits = r.search(case.marker, k=3)
                assert hits and os.path.basename(hits[0].source) == name, (name, [h.source for h in hits])
        assert not r.search("outsidesecretmarker", k=3)  # the symlink out of the folder was not followed
    # failed files are recorded, so an unchanged bad file is not parsed again on the next run
    again = ingest([folder], s, embedder)
    assert again.failed == [] and again.added == 0


def test_flate_bomb_hits_the_memory_cap_not_the_machine(hostile):
    folder, _ = hostile
    with LoaderSandbox(timeout=30, memory_mb=1024) as sb:
        t = time.perf_counter()
        with pytest.raises(LoadError, match=r"out of memory|too much memory"):
            sb.load(folder / "flatebomb.pdf")
        assert time.perf_counter() - t < 20
        assert sb.load(folder / "good.pdf").text.startswith("Page 1")  # a fresh worker carries on


def _drop_dac_capabilities() -> None:
    """In a child before exec: remove CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so the
    program it runs is bound by file permissions even as root (a uid 0 process gets the bounding set at exec)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _can_drop() -> bool:
    r = subprocess.run(
        [sys.executable, "-c", "import sys; sys.exit(0)"], preexec_fn=_drop_dac_capabilities, capture_output=True
    )
    return r.returncode == 0


@pytest.mark.skipif(sys.platform != "linux", reason="Linux capabilities")
def test_unreadable_file_is_reported_not_fatal(tmp_path):
    """chmod 000 means nothing to root (these tests run as root), so the ingest runs in a child process without the
    capabilities that let root ignore file permissions. (Dropping to `nobody` does not work here: the interpreter
    lives under /root, mode 700.)"""
    drop = None
    if os.geteuid() == 0:
        if not _can_drop():
            pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE (no prctl permission)")
        drop = _drop_dac_capabilities
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "readable.txt").write_text("The readablemarker file is fine.\n")
    (docs / "secret.txt").write_text("not for you\n")
    os.chmod(docs / "secret.txt", 0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "1000"}
    r = subprocess.run(
        [sys.executable, str(TESTS / "fakeembed.py"), "ingest", str(docs), "--index", str(tmp_path / "kb"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        preexec_fn=drop,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["added"] == 1
    assert [(os.path.basename(f["path"]), f["reason"]) for f in rep["failed"]] in (
        [("secret.txt", "permission denied")],
        [("secret.txt", "cannot read: Permission denied")],
    )
    os.chmod(docs / "secret.txt", 0o644)


@pytest.mark.slow
def test_200mb_text_file_at_default_limits(tmp_path):
    """With the default max_file_mb (512) a 200 MB text file is parsed: what that costs in the worker."""
    import threading

    import psutil

    p = tmp_path / "big.txt"
    line = b"The quick brown fox jumps over the lazy dog while the kernel mounts a filesystem.\n"
    p.write_bytes(line * ((200 << 20) // len(line)))
    peak = 0
    with LoaderSandbox(
        timeout=Settings.file_timeout, memory_mb=Settings.file_memory_mb, max_file_mb=Settings.max_file_mb
    ) as sb:
        stop = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                pid = sb.worker_pid
                if pid:
                    try:
                        peak = max(peak, psutil.Process(pid).memory_info().rss)
                    except psutil.Error:
                        pass
                time.sleep(0.05)

        th = threading.Thread(target=watch)
        th.start()
        t = time.perf_counter()
        try:
            doc = sb.load(p)
            outcome = f"parsed: {len(doc.text) >> 20} MB of text"
        except LoadError as e:
            outcome = f"LoadError: {e}"
        finally:
            stop.set()
            th.join()
    print(
        f"200 MB text at default limits: {outcome} in {time.perf_counter() - t:.1f}s, worker peak RSS {peak >> 20} MB"
    )
    assert peak < Settings.file_memory_mb << 20
