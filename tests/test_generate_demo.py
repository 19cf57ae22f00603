"""docqa.generate.demo: the real embedded Gemma 3 270M (integration test).

The converted model is cached in `$DOCQA_CACHE/demo-gemma3-270m`, else in the repository's git-ignored
`.cache/demo-gemma3-270m`, and kept between runs: the first run converts the GGUF (about a minute), later runs
load it in seconds. The model is loaded once for the module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from docqa.errors import ModelError
from docqa.generate import demo
from docqa.generate.base import GenerationOptions
from docqa.generate.demo import MANIFEST, DemoGenerator, cache_problem, cut_runaway

REPO = Path(__file__).resolve().parent.parent
GREEDY = GenerationOptions(max_new_tokens=12, temperature=0)


@pytest.fixture(scope="session")
def demo_cache_root() -> Path:
    root = Path(os.environ["DOCQA_CACHE"]) if os.environ.get("DOCQA_CACHE") else REPO / ".cache"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def gen(demo_cache_root) -> DemoGenerator:
    messages = []
    g = DemoGenerator(cache_dir=demo_cache_root / demo.CACHE_NAME, progress=messages.append)
    assert messages in ([], [demo.CONVERTING_MESSAGE])  # the message is only for a (first) conversion
    return g


@pytest.fixture
def scratch(demo_cache_root):
    """A folder next to the real cache (same file system, so cache files can be hard-linked, not copied)."""
    d = Path(tempfile.mkdtemp(prefix="test-demo-", dir=demo_cache_root))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_model_facts(gen):
    assert gen.is_chat_model is False
    from docqa.generate.demo import MAX_CONTEXT

    assert gen.context_length == MAX_CONTEXT == 2048  # capped: the model's own 32768 is far too slow on CPU
    assert cache_problem(gen.cache_dir) is None


def test_streams_text_for_a_completion_prompt(gen):
    pieces = list(gen.stream("The capital of France is", GREEDY))
    text = "".join(pieces)
    assert len(pieces) > 1 and text.strip()
    assert "France" in text
    assert "\n\n" not in text and text == text.strip()


def test_answers_from_a_passage_in_chat_messages(gen):
    messages = [
        {
            "role": "user",
            "content": "Passage: Paris is the capital of France.\n\nQuestion: What is the capital of France?",
        }
    ]
    prompt = gen.render(messages)
    assert prompt.endswith("Answer:") and "Question: What is the capital" in prompt
    answer = gen.generate(messages, GREEDY)
    assert "Paris" in answer
    assert "Question:" not in answer  # the runaway next Q&A pair is cut off


def test_render_labels_bare_questions_and_history(gen):
    prompt = gen.render(
        [
            {"role": "user", "content": "What is dpkg?"},
            {"role": "assistant", "content": "A package tool."},
            {"role": "user", "content": "And apt?"},
        ]
    )
    assert prompt == "Question: What is dpkg?\n\nAnswer: A package tool.\n\nQuestion: And apt?\n\nAnswer:"


def test_chinese_output_has_no_broken_characters(gen):
    text = gen.generate("中国的首都是", GenerationOptions(max_new_tokens=16, temperature=0))
    assert text and "\ufffd" not in text


def test_count_tokens_agrees_with_the_tokenizer(gen):
    for text in ["hello world", "Debian 参考手册 dpkg -L 列出软件包安装的文件。", "", "  spaces\n\nand lines "]:
        ids = gen.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert gen.count_tokens(text) == len(ids)
    assert gen.count_tokens("hello world") == 2


def test_cancel_and_max_new_tokens(gen):
    cancel = threading.Event()
    got = []
    for piece in gen.stream("Once upon a time", GenerationOptions(max_new_tokens=60, temperature=0, cancel=cancel)):
        got.append(piece)
        cancel.set()
    assert len(got) == 1
    with pytest.raises(ModelError, match="context"):
        list(gen.stream("word " * 9000, GREEDY))


def test_cut_runaway():
    assert list(cut_runaway(iter([" Paris", ".", "\n", "\nQuestion: why?"]))) == ["Paris", "."]
    assert "".join(cut_runaway(iter(["\n\n  A", " line\nmore", "\nQuest", "ion: x"]))) == "A line"
    assert "".join(cut_runaway(iter(["a\n", "b"]))) == "a"  # one sentence was asked for: a line break ends it
    # prompt markers and labels the base model echoes are never shown
    assert "".join(cut_runaway(iter(["Use venv [1]. ====", "= END PASSAGES ====="]))) == "Use venv [1]."
    assert "".join(cut_runaway(iter(["用 tar -x [1]。", "=====资料结束====="]))) == "用 tar -x [1]。"
    assert "".join(cut_runaway(iter(["Yes. Question: and", " more"]))) == "Yes."


def _fake_converter(good: Path, calls: list):
    """Stands in for the one-minute GGUF conversion: links the good cache's files into the build folder."""

    def convert(out: Path, work: Path) -> None:
        calls.append(out)
        for f in good.iterdir():
            if f.name != MANIFEST:
                try:
                    os.link(f, out / f.name)
                except OSError:
                    shutil.copy2(f, out / f.name)

    return convert


def _broken_copy(good: Path, target: Path, model_size: int | None) -> None:
    target.mkdir()
    for f in good.iterdir():
        if f.name != "model.safetensors":
            shutil.copy2(f, target / f.name)
    with open(target / "model.safetensors", "wb") as fh:
        fh.truncate(model_size if model_size is not None else (good / "model.safetensors").stat().st_size)


@pytest.mark.parametrize("damage", ["truncated", "garbage-same-size", "no-manifest"])
def test_broken_cache_is_rebuilt(gen, scratch, monkeypatch, damage):
    target = scratch / demo.CACHE_NAME
    if damage == "no-manifest":
        _broken_copy(gen.cache_dir, target, None)
        (target / MANIFEST).unlink()
    else:  # "garbage-same-size" passes the size check and only fails to load (zeroed safetensors header)
        _broken_copy(gen.cache_dir, target, 1000 if damage == "truncated" else None)
    assert (cache_problem(target) is None) == (damage == "garbage-same-size")
    calls: list = []
    monkeypatch.setattr(demo, "_convert_into", _fake_converter(gen.cache_dir, calls))
    messages: list[str] = []
    rebuilt = DemoGenerator(cache_dir=target, progress=messages.append)
    assert len(calls) == 1 and messages == [demo.CONVERTING_MESSAGE]
    assert cache_problem(target) is None
    assert rebuilt.count_tokens("hello world") == 2
    if damage == "garbage-same-size":  # the rebuilt weights are the real ones
        short = GenerationOptions(max_new_tokens=3, temperature=0)
        assert rebuilt.generate("The capital of France is", short) == gen.generate("The capital of France is", short)
    assert sorted(p.name for p in scratch.iterdir()) == [demo.CACHE_NAME]  # no build or old folders left


def test_failed_conversion_leaves_nothing_and_cleans_stale_builds(scratch, monkeypatch):
    def crash(out: Path, work: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(demo, "_convert_into", crash)
    # left by an earlier conversion whose process died (pid above Linux's pid_max: certainly not running)
    stale = scratch / f".{demo.CACHE_NAME}.build-4194305-abc123"
    (stale / "model").mkdir(parents=True)
    with pytest.raises(ModelError, match="simulated crash"):
        DemoGenerator(cache_dir=scratch / demo.CACHE_NAME)
    assert list(scratch.iterdir()) == []


def test_get_generator_demo_uses_docqa_cache(gen, demo_cache_root, monkeypatch):
    from docqa.config import load_settings
    from docqa.generate import get_generator

    monkeypatch.setenv("DOCQA_CACHE", str(demo_cache_root))  # -> settings.cache -> the generator's cache_dir
    g = get_generator(load_settings(llm="demo", max_context=2048))
    assert isinstance(g, DemoGenerator) and g.cache_dir == gen.cache_dir
    assert g.context_length == 2048
