"""Benchmark the loaders: seconds per file format over real folders, and what joining wrapped lines costs.

    .venv/bin/python benchmarks/load.py                       # corpora/sample + corpora/dev
    .venv/bin/python benchmarks/load.py /usr/share/man/zh_CN  # any folders

Each supported file is loaded in this process (no sandbox: the parser alone) `REPEAT` times with
`load/text.py`'s `join_wraps` as shipped and `REPEAT` times with it replaced by a no-op, interleaved (each first in turn), and the
medians per file are summed per format. The ratio is with / without; "joined" counts the line breaks it removed.
OCR is off (`ocr="never"`): it would dwarf everything else and does not go through join_wraps' callers twice.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docqa.load.pdf as pdf_loader  # noqa: E402
import docqa.load.text as text_loader  # noqa: E402
from benchmarks._util import machine  # noqa: E402
from docqa.errors import LoadError  # noqa: E402
from docqa.load import is_supported, load_file  # noqa: E402

REPEAT = 5
ROOT = Path(__file__).resolve().parents[1]


def _no_join(text: str) -> tuple[str, int]:
    return text, 0


def _set_join(fn) -> None:  # type: ignore[no-untyped-def]
    text_loader.join_wraps = fn  # load_text / load_markdown_text look it up in their module
    pdf_loader.join_wraps = fn


def main(folders: list[Path]) -> None:
    files = sorted(p for f in folders for p in (f.rglob("*") if f.is_dir() else [f]) if p.is_file() and is_supported(p))
    shipped = text_loader.join_wraps
    per_format: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for path in files:
        runs: dict[bool, list[float]] = {True: [], False: []}
        joined = 0
        try:
            for rep in range(REPEAT):
                for on in (True, False) if rep % 2 else (False, True):  # neither always goes first
                    _set_join(shipped if on else _no_join)
                    t = time.perf_counter()
                    doc = load_file(path, ocr="never")
                    runs[on].append(time.perf_counter() - t)
                    if on:
                        joined = int(doc.metadata.get("wrapped_lines_joined", 0))
        except LoadError:
            continue
        finally:
            _set_join(shipped)
        fmt = path.suffix.lower() or "(none)"
        per_format[fmt][0] += statistics.median(runs[True])
        per_format[fmt][1] += statistics.median(runs[False])
        per_format[fmt][2] += joined
    print(f"# loaders, {len(files)} files, median of {REPEAT} each ({machine()})")
    print(f"{'format':8s} {'with s':>8s} {'without s':>10s} {'ratio':>6s} {'joined':>7s}")
    total = [0.0, 0.0, 0]
    for fmt, (on, off, joined) in sorted(per_format.items()):
        print(f"{fmt:8s} {on:8.3f} {off:10.3f} {on / off:6.3f} {joined:7d}")
        total = [total[0] + on, total[1] + off, total[2] + joined]
    print(f"{'all':8s} {total[0]:8.3f} {total[1]:10.3f} {total[0] / total[1]:6.3f} {total[2]:7d}")


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]] or [ROOT / "corpora" / "sample", ROOT / "corpora" / "dev"]
    main(args)
