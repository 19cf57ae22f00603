"""The Generator contract, checked against every implementation docqa has and the fakes the other tests use.

Each case is a factory fixture: the embedded demo model (the session `demo` fixture), the tiny random ChatGLM2
checkpoint, OpenAIGenerator against a stub SSE server on a free loopback port, and the scripted fakes of
test_answer.py / test_chat.py. What every one must do:

- `stream` yields str pieces whose concatenation is `generate()` for the same (deterministic) options;
- `count_tokens` is > 0 for text and grows with it; `context_length` > 0;
- no more than `max_new_tokens` pieces (a piece is at least one token);
- a `cancel` event set after the first piece stops it within one more piece;
- closing the stream early works, and the generator still answers afterwards.

Limits: "tokens" are counted as pieces, since only the generator knows its tokens; test_prompt.py's GLMFormat
is left out (it only counts and renders, its `stream` raises by design).
"""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from docqa.generate.base import GenerationOptions, Generator

DATA = Path(__file__).parent / "data" / "chatglm2"
PROMPT = "The capital of France is"
# greedy and loop-tolerant, so two runs give the same text and max_new_tokens is what ends a long answer
GREEDY = dict(temperature=0.0, stop_loops=False, seed=0)


class StubServer:
    """An OpenAI-compatible /v1/chat/completions that streams "w0 w1 ..." honouring max_tokens (at most 40)."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for i in range(min(int(body.get("max_tokens") or 40), 40)):
                        chunk = {"choices": [{"index": 0, "delta": {"content": f"w{i} "}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client closed the stream early: what the tests below do on purpose

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def openai_gen():
    from docqa.generate.openai import OpenAIGenerator

    server = StubServer()
    yield OpenAIGenerator(server.url, model="stub", context_length=4096)
    server.close()


@pytest.fixture(scope="module")
def chatglm2_gen(tmp_path_factory):
    pytest.importorskip("torch")
    from docqa.generate.chatglm2 import ChatGLM2Generator

    ck = tmp_path_factory.mktemp("contract") / "tiny-chatglm2"
    shutil.copytree(DATA / "tiny-chatglm2", ck)
    shutil.copy(DATA / "tokenizer.model", ck)
    gen = ChatGLM2Generator(ck, device="cpu", max_context=256)
    # the tiny model embeds only 1,024 ids while the real tokenizer makes ids up to 65k: fold them into range
    real_encode = gen.tokenizer.encode
    gen.tokenizer.encode = lambda text, add_special_tokens=True: [
        i % 1024 for i in real_encode(text, add_special_tokens)
    ]
    return gen


@pytest.fixture
def scripted_gen():
    from test_answer import Scripted

    return Scripted([f"piece{i} " for i in range(30)])


@pytest.fixture
def echo_gen():
    from conftest import echo_generator

    return echo_generator()


@pytest.fixture
def rewriter_gen():
    from test_chat import Rewriter

    return Rewriter("独立问题：nginx 的配置文件在哪里？")


CASES = ["demo", "chatglm2_gen", "openai_gen", "scripted_gen", "echo_gen", "rewriter_gen"]


@pytest.fixture(params=CASES)
def gen(request) -> Generator:
    return request.getfixturevalue(request.param)


def test_stream_pieces_concatenate_to_generate(gen):
    opts = GenerationOptions(max_new_tokens=8, **GREEDY)
    pieces = list(gen.stream(PROMPT, opts))
    assert pieces and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == gen.generate(PROMPT, GenerationOptions(max_new_tokens=8, **GREEDY))
    messages = [{"role": "user", "content": PROMPT}]  # chat messages work too
    assert isinstance(gen.generate(messages, GenerationOptions(max_new_tokens=4, **GREEDY)), str)


def test_counts_and_context(gen):
    short, long = "How do I list files?", "How do I list files? " * 20 + "怎么解压 tar.gz 文件？" * 5
    assert gen.count_tokens(short) > 0 and gen.count_tokens("文件") > 0
    assert gen.count_tokens(long) > gen.count_tokens(short)
    assert gen.count_tokens(short + " and directories") >= gen.count_tokens(short)
    assert isinstance(gen.context_length, int) and gen.context_length > 0


def test_max_new_tokens_is_respected(gen):
    few = list(gen.stream(PROMPT, GenerationOptions(max_new_tokens=3, **GREEDY)))
    assert len(few) <= 3
    more = "".join(gen.stream(PROMPT, GenerationOptions(max_new_tokens=12, **GREEDY)))
    assert more.startswith("".join(few))  # fewer tokens is a prefix of the same greedy answer


def test_cancel_event_stops_the_stream(gen):
    cancel = threading.Event()
    got = []
    for piece in gen.stream(PROMPT, GenerationOptions(max_new_tokens=24, cancel=cancel, **GREEDY)):
        got.append(piece)
        cancel.set()
    assert 1 <= len(got) <= 2


def test_closing_the_stream_early(gen):
    it = gen.stream(PROMPT, GenerationOptions(max_new_tokens=24, **GREEDY))
    first = next(it)
    it.close()
    assert isinstance(first, str)
    with pytest.raises(StopIteration):
        next(it)
    assert gen.generate(PROMPT, GenerationOptions(max_new_tokens=4, **GREEDY))  # still usable afterwards
