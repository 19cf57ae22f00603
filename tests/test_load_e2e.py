"""End to end, with the real `docqa` command line and embedding model: a folder holding an image-only bilingual
scanned PDF, a photo-like PNG, a PPTX, an XLSX, a CSV, an EPUB and an EML is ingested (exit 0), every file is
listed "ok" with chunks, and an exact sentence from each comes back first from `docqa search --json`, with the right
page (PDF page, slide number) and section (slide title, sheet name).

The index lives where DOCQA_INDEX says (no --index flag), as a user's configuration would put it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from formatgen import cjk_font, make_eml, make_epub, make_pptx, make_xlsx, render_text_image, scanned_pdf

from docqa.load import ocr

pytestmark = [
    pytest.mark.skipif(not ocr.available(), reason="rapidocr-onnxruntime not installed"),
    pytest.mark.skipif(
        cjk_font() is None, reason="no CJK font to render the scans: apt-get install fonts-wqy-microhei"
    ),
]

SCAN_EN = "The lighthouse keeper logs the foghorn tests every Sunday morning."
SCAN_ZH = "灯塔看守人每周日早上记录雾笛测试的结果。"
PHOTO = "The greenhouse sprinklers start at six and stop when the soil sensor reads wet."
SLIDE = "Quarterly tape rotation moves the oldest cartridge to the vault."
SLIDE_TITLE = "Tape rotation policy"
SHEET_ROW = ["kestrel-07", "10.20.30.47", "archive mirror"]
CSV_ROW = ["toucan-mailer", "587", "submission relay for the newsletter"]
EPUB = "The cartographer folded the harbour chart along the old creases."
MAIL = "Please rotate the VPN certificates before the auditors arrive on Friday."

# (query, file, page, section substring) — the page/section a correct first hit carries
QUERIES = [
    (SCAN_EN, "scan.pdf", 1, None),
    (SCAN_ZH, "scan.pdf", 2, None),
    (PHOTO, "photo.png", None, None),
    (SLIDE, "deck.pptx", 2, SLIDE_TITLE),
    ("kestrel-07 10.20.30.47 archive mirror", "hosts.xlsx", None, "Mirrors"),
    ("toucan-mailer submission relay for the newsletter", "ports.csv", None, "ports.csv"),
    (EPUB, "atlas.epub", None, "The harbour"),
    (MAIL, "notice.eml", None, "Certificate rotation"),
]


def _folder(d: Path) -> None:
    d.mkdir()
    (d / "scan.pdf").write_bytes(
        scanned_pdf([("sans", "Harbour operations.\n\n" + SCAN_EN), ("cjk", "灯塔手册。\n\n" + SCAN_ZH)])
    )
    render_text_image(["Garden notes", PHOTO], cjk_font(), skew=2, noise=0.002).save(d / "photo.png")
    (d / "deck.pptx").write_bytes(
        make_pptx(
            [
                ("Backup overview", ["Nightly backups run at two in the morning."], "Mention the offsite copy."),
                (SLIDE_TITLE, [SLIDE, "Cartridges are labelled by week."], "Ask who holds the vault key."),
                ("Questions", ["Thank you."], ""),
            ]
        )
    )
    (d / "hosts.xlsx").write_bytes(
        make_xlsx(
            {
                "Web": [["host", "ip", "role"], ["heron-01", "10.20.30.11", "frontend"]],
                "Mirrors": [["host", "ip", "role"], ["osprey-02", "10.20.30.46", "package cache"], SHEET_ROW],
            }
        )
    )
    (d / "ports.csv").write_text("service,port,notes\nsmtp,25,inbound mail\n" + ",".join(CSV_ROW) + "\n")
    (d / "atlas.epub").write_bytes(
        make_epub(
            "Atlas",
            [("The harbour", EPUB + "\n\nGulls circled the pier."), ("The hills", "Sheep grazed on the slopes.")],
        )
    )
    (d / "notice.eml").write_bytes(make_eml("Certificate rotation", "Hello team,\n\n" + MAIL + "\n\nThanks."))


def _docqa(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "docqa", *args], capture_output=True, text=True, env=env, input=stdin, timeout=900
    )


def test_every_new_format_end_to_end(tmp_path):
    docs = tmp_path / "docs"
    _folder(docs)
    env = {
        **os.environ,
        "DOCQA_INDEX": str(tmp_path / "kb"),
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
        "DOCQA_CACHE": str(tmp_path / "cache"),
    }
    env.pop("DOCQA_CONFIG", None)
    r = _docqa(["ingest", str(docs)], env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    r = _docqa(["list", "--json"], env)
    assert r.returncode == 0, r.stderr[-2000:]
    listed = {os.path.basename(d["path"]): d for d in json.loads(r.stdout)}
    assert set(listed) == {p.name for p in docs.iterdir()}
    for name, d in listed.items():
        assert d["status"] == "ok" and d["chunks"] > 0, (name, d)

    r = _docqa(["search", "-", "--json", "-k", "3"], env, stdin="\n".join(q for q, *_ in QUERIES) + "\n")
    assert r.returncode == 0, r.stderr[-2000:]
    answers = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == len(QUERIES)
    for (query, name, page, section), got in zip(QUERIES, answers):
        top = got["results"][0]
        assert os.path.basename(top["source"]) == name, (query, [h["source"] for h in got["results"]])
        assert top["page"] == page, (query, top)
        if section:
            assert section in top["section"], (query, top["section"])
        words = [w for w in query.split() if len(w) > 3] or list(query)
        held = sum(w in top["text"] for w in words) / len(words)
        assert held >= 0.8, (query, top["text"])
