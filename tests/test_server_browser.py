"""The web UI in a real browser: Playwright for Python driving Debian's chromium (`executable_path`; Playwright's
own browser download is not used). Upload a file by drag and drop, watch it become searchable, ask a question,
see the answer stream in with the sources shown first, open a source chip on the right passage, reload and find
the conversation still there; the page logs no console error and fetches nothing from another host. Screenshots
of each screen are taken (kept in docs/screenshots/ when DOCQA_SCREENSHOTS=docs/screenshots).

Skipped, with the reason, when playwright or chromium is missing (`apt-get install -y chromium`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import EN_VENV

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
CHROMIUM = os.environ.get("DOCQA_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
)

#: screenshots go to a temporary folder; DOCQA_SCREENSHOTS=docs/screenshots refreshes the ones in the repository
SHOTS_DIR = os.environ.get("DOCQA_SCREENSHOTS")


@pytest.fixture
def shots(tmp_path) -> Path:
    d = Path(SHOTS_DIR) if SHOTS_DIR else tmp_path / "screenshots"
    d.mkdir(parents=True, exist_ok=True)
    return d


ZH_DOC = """# 打包与压缩

tar 是一个归档工具，可以把许多文件保存到一个归档文件中。

## 解压

使用 tar -xzvf archive.tar.gz 可以解压一个用 gzip 压缩的归档。选项 -x 表示提取，-z 表示通过 gzip 过滤。

## 创建

tar -czf backup.tar.gz 目录名 会把目录打包并压缩成 backup.tar.gz。
"""


@pytest.fixture
def live(kb_root):
    from test_server_live import Server

    s = Server(kb_root, env={"DOCQA_TEST_SLOW_GEN": "0.03"})
    try:
        yield s.wait_ready()
    finally:
        s.stop()


@pytest.fixture
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            yield b
        finally:
            b.close()


def wait_text(page, selector: str, n: int, timeout: float = 30) -> str:
    """Poll until the element's text is longer than `n` (wait_for_function would need eval, which the CSP forbids)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = page.locator(selector).first.inner_text()
        if len(text) > n:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{selector} still has {text!r}")


def watch(page, base: str) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {"errors": [], "foreign": []}
    host = urlsplit(base).netloc
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["foreign"].append(r.url) if urlsplit(r.url).netloc not in (host, "") else None)
    return seen


def test_upload_ask_cite_preview_and_reload(live, browser, shots):
    ctx = browser.new_context(locale="en-US", viewport={"width": 1360, "height": 820})
    page = ctx.new_page()
    seen = watch(page, live.url)

    # knowledge bases: create one, drop a file on the drop zone, watch it become ready
    page.goto(live.url + "/#/kbs")
    page.fill("#new-kb-name", "guides")
    page.click(".new-kb button[type=submit]")
    page.wait_for_selector(".kb-head h2:text-is('guides')")
    page.evaluate(
        """([name, text]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([text], name, {type: "text/markdown"}));
            const zone = document.querySelector("#dropzone");
            for (const type of ["dragenter", "drop"]) zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true}));
        }""",
        ["venv guide 指南.md", EN_VENV],
    )
    page.wait_for_selector('#upload-list li[data-name="venv guide 指南.md"]')
    page.wait_for_selector('#docs-table tr[data-name="venv guide 指南.md"][data-status="ok"]', timeout=60_000)
    page.screenshot(path=str(shots / "knowledge-bases.png"))

    # searchable now
    r = page.request.post(live.url + "/api/v1/search", data={"query": "virtual environment venv", "kb_ids": ["guides"]})
    assert r.ok and r.json()["results"][0]["source"].endswith("venv guide 指南.md")

    # chat: ask, see the sources before the answer finishes, the text stream in, then the chips
    page.goto(live.url + "/#/chat")
    page.select_option("#kb-picker", "guides")
    page.fill("#question", "How do I create a virtual environment?")
    page.click("#send")
    page.wait_for_selector("#sources-panel li.source")
    assert page.locator(".bubble.answer.streaming").count() == 1  # sources are there while the answer streams
    wait_text(page, ".bubble.answer", 10)
    assert page.is_visible("#stop")
    page.wait_for_selector(".bubble.answer:not(.streaming) button.chip", timeout=30_000)
    page.screenshot(path=str(shots / "chat.png"))

    # the chip opens the passage it cites, highlighted, with a link to the original file
    chip = page.locator(".bubble.answer button.chip").first
    n = int(chip.get_attribute("data-n"))
    chip.click()
    page.wait_for_selector("#preview:not([hidden]) mark#cited-passage")
    marked = page.inner_text("#cited-passage")
    snippet = page.inner_text(f'#sources-panel li.source[data-n="{n}"] .snippet')
    assert marked.strip() and snippet.strip()[:40] in marked
    assert page.get_attribute("#preview-file", "href").endswith("/file?inline=true")
    assert page.inner_text("#preview-title").startswith(f"[{n}] venv guide 指南.md")
    page.screenshot(path=str(shots / "source-preview.png"))
    page.keyboard.press("Escape")

    # a refresh loses nothing: the conversation is on the server
    page.reload()
    page.wait_for_selector(".msg.user")
    assert "How do I create a virtual environment?" in page.inner_text(".msg.user")
    assert page.locator(".bubble.answer button.chip").count() >= 1
    assert page.locator(".conv-list li.active").count() == 1

    assert seen["errors"] == [], seen["errors"]
    assert seen["foreign"] == [], seen["foreign"]
    ctx.close()


def test_stop_button_and_chinese_ui(live, browser, shots):
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1360, "height": 820})
    page = ctx.new_page()
    seen = watch(page, live.url)
    page.goto(live.url + "/#/kbs/docs")
    page.wait_for_selector("#dropzone")
    assert page.inner_text("#nav-chat") == "问答" and page.inner_text("#nav-kbs") == "知识库"
    page.set_input_files(
        "#file-input", files=[{"name": "压缩指南.md", "mimeType": "text/markdown", "buffer": ZH_DOC.encode()}]
    )
    page.wait_for_selector('#docs-table tr[data-name="压缩指南.md"][data-status="ok"]', timeout=60_000)
    assert "就绪" in page.inner_text('#docs-table tr[data-name="压缩指南.md"]')
    page.screenshot(path=str(shots / "knowledge-bases-zh.png"))
    page.goto(live.url + "/#/chat")
    page.fill("#question", "怎么解压 tar.gz 文件？")
    page.click("#send")
    page.wait_for_selector("#sources-panel li.source")
    wait_text(page, ".bubble.answer", 3)
    page.click("#stop")
    page.wait_for_selector(".bubble.answer:not(.streaming)")
    assert "已停止" in page.inner_text(".bubble.answer")
    page.wait_for_selector("#send:not([hidden])")
    page.fill("#question", "怎么解压 tar.gz 文件？")
    page.click("#send")
    second = page.locator(".msg.assistant").nth(1)
    second.locator(".bubble.answer:not(.streaming) button.chip").first.wait_for(timeout=30_000)
    page.reload()  # the stopped answer was kept as far as it got, and the full one after it
    page.locator(".msg.assistant").nth(1).wait_for()
    assert page.locator(".msg.user").count() == 2
    page.screenshot(path=str(shots / "chat-zh.png"))
    assert seen["errors"] == [], seen["errors"]
    assert seen["foreign"] == [], seen["foreign"]
    ctx.close()


def test_an_older_knowledge_base_is_rebuilt_from_its_page(live, kb_root, browser):
    from docqa.store import KnowledgeBase

    with KnowledgeBase.open(kb_root / "docs", writable=True) as kb:  # as an older docqa made it: no document names
        kb.conn.execute("DELETE FROM meta WHERE key = 'lexical_text'")
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1360, "height": 820})
    page = ctx.new_page()
    seen = watch(page, live.url)
    page.goto(live.url + "/#/kbs/docs")
    page.wait_for_selector("#kb-upgrades.notice")
    assert "重建索引只需几秒" in page.inner_text("#kb-upgrades") and page.inner_text("#rebuild") == "重建索引"
    page.click("#rebuild")
    page.wait_for_selector("#kb-upgrades[hidden]", state="attached")  # the page, drawn again, has nothing to say
    with KnowledgeBase.open(kb_root / "docs") as kb:
        assert kb.lexical_text == "names"
    assert seen["errors"] == [], seen["errors"]
    ctx.close()


@pytest.fixture
def kb_root(tmp_path, docs_dir) -> Path:
    from test_server import make_kb

    root = tmp_path / "indexes"
    make_kb(root, "docs", docs_dir)
    return root
