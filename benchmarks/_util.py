"""Small helpers shared by the benchmark scripts (medians, peak RSS, a table printer)."""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections.abc import Callable

# bilingual search questions shared by search.py and scale.py (their latencies are comparable)
QUESTIONS = [
    "How do I sort a list in reverse order?",
    "How do I send log messages to a file?",
    "What does the key function do when sorting?",
    "How can I change the logging level?",
    "How do I make a stable sort by two fields?",
    "Where do log records go by default?",
    "What is a handler in logging?",
    "How do I sort strings case-insensitively?",
    "grep 怎么不区分大小写？",
    "tar 怎么解压到指定目录？",
    "怎么只显示不匹配的行？",
    "如何压缩一个目录？",
    "grep 的 -w 选项是什么意思？",
    "怎么列出归档里的文件？",
    "怎么递归搜索目录？",
    "怎么显示匹配行的行号？",
]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], object], repeat: int = 5) -> tuple[float, list[float]]:
    """Median wall seconds of `repeat` calls, and all of them."""
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), runs


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def machine() -> str:
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
