"""docqa.generate.openai against a real local HTTP server (http.server in a thread speaking the SSE protocol)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from docqa.errors import ModelError
from docqa.generate.base import GenerationOptions
from docqa.generate.openai import OpenAIGenerator, chat_completions_url


class FakeServer:
    """Records each request; answers /v1/chat/completions with `pieces` as SSE chunks (or `status` if >= 400)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.pieces = ["Hello", ", ", "世界", "!"]
        self.status = 200
        self.models = ["served-model"]
        self.sent = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                server.requests.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
                body = json.dumps({"object": "list", "data": [{"id": m} for m in server.models]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                server.requests.append(
                    {
                        "method": "POST",
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                if server.status >= 400:
                    body = b'{"error": {"message": "model exploded"}}'
                    self.send_response(server.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    self.wfile.write(b": keep-alive comment\n\n")
                    first = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
                    self.wfile.write(f"data: {json.dumps(first)}\n\n".encode())
                    for p in server.pieces:
                        chunk = {"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
                        self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
                        self.wfile.flush()
                        server.sent += 1
                    self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n')
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.write(b'data: {"choices": [{"delta": {"content": "AFTER DONE"}}]}\n\n')
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def test_url_forms():
    for url in (
        "http://h:8000",
        "http://h:8000/",
        "http://h:8000/v1",
        "http://h:8000/v1/",
        "http://h:8000/v1/chat/completions",
    ):
        assert chat_completions_url(url) == "http://h:8000/v1/chat/completions"


def test_streams_pieces_and_sends_the_request_as_given(server):
    gen = OpenAIGenerator(server.url + "/v1", model="chatglm2-6b", api_key="sk-test", context_length=4096)
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "你好"},
    ]
    opts = GenerationOptions(max_new_tokens=42, temperature=0.7, top_p=0.9)
    pieces = list(gen.stream(messages, opts))
    assert pieces == ["Hello", ", ", "世界", "!"]  # role-only and empty deltas skipped, nothing after [DONE]
    assert gen.context_length == 4096
    (req,) = server.requests
    assert req["method"] == "POST" and req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["body"]
    assert body["messages"] == messages
    assert body["model"] == "chatglm2-6b"
    assert body["stream"] is True
    assert body["max_tokens"] == 42 and body["temperature"] == 0.7 and body["top_p"] == 0.9


def test_string_prompt_becomes_one_user_message_and_model_is_discovered(server):
    gen = OpenAIGenerator(server.url)  # no /v1, no model, no key
    assert gen.generate("What is dpkg?") == "Hello, 世界!"
    get, post = server.requests
    assert get["path"] == "/v1/models"
    assert post["body"]["messages"] == [{"role": "user", "content": "What is dpkg?"}]
    assert post["body"]["model"] == "served-model"
    assert "Authorization" not in post["headers"]


def test_cancel_between_chunks(server):
    server.pieces = [f"p{i} " for i in range(200)]
    cancel = threading.Event()
    gen = OpenAIGenerator(server.url, model="m")
    got = []
    for piece in gen.stream("go", GenerationOptions(cancel=cancel)):
        got.append(piece)
        if len(got) == 3:
            cancel.set()
    assert got == ["p0 ", "p1 ", "p2 "]


def test_http_error_becomes_model_error_with_url_and_status(server):
    server.status = 500
    gen = OpenAIGenerator(server.url, model="m")
    with pytest.raises(ModelError) as err:
        list(gen.stream("hi"))
    msg = str(err.value)
    assert "500" in msg and server.url in msg and "model exploded" in msg


def test_refused_connection_becomes_model_error():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    gen = OpenAIGenerator(url, model="m", timeout=5)
    with pytest.raises(ModelError) as err:
        list(gen.stream("hi"))
    assert url in str(err.value)


def test_error_event_and_malformed_event():
    gen = OpenAIGenerator("http://127.0.0.1:9/v1", model="m")
    # an error object inside the stream (some servers report overload this way)
    with pytest.raises(ModelError, match="overloaded"):
        gen._parse_event('data: {"error": {"message": "overloaded"}}')
    with pytest.raises(ModelError, match="malformed"):
        gen._parse_event("data: {not json")


def test_bad_url_is_refused():
    with pytest.raises(ModelError):
        OpenAIGenerator("localhost:8000")
