"""A generator that streams from any OpenAI-compatible chat server (vLLM, llama.cpp server, Ollama, LM Studio...).

    >>> gen = OpenAIGenerator("http://127.0.0.1:8000", model="chatglm2-6b")   # with or without the /v1  # doctest: +SKIP
    >>> for piece in gen.stream([{"role": "user", "content": "Hi"}], GenerationOptions(max_new_tokens=16)):  # doctest: +SKIP
    ...     print(piece, end="")

It sends `POST {url}/v1/chat/completions` with `"stream": true` and reads the server-sent events (`data: {...}`
lines, ending with `data: [DONE]`). Messages go as they are; a string prompt becomes one user message. With no
`model`, it asks `GET /v1/models` once and uses the first one listed (vLLM rejects requests without it; most
single-model servers ignore it).

Limits: `count_tokens` is an estimate (the server's tokenizer is not available), so keep `context_length` a
little under the server's real context. `cancel` is checked between received chunks: a server that sends
nothing for a long time is only interrupted by `timeout` (seconds between bytes) or Ctrl-C.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx

from ..errors import ModelError
from .base import GenerationOptions, Generator, Prompt


def chat_completions_url(url: str) -> str:
    """`http://h:8000`, `http://h:8000/v1/` and `.../v1/chat/completions` all give `http://h:8000/v1/chat/completions`."""
    base = url.strip().rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if not base.endswith("/v1"):
        base += "/v1"
    return base + "/chat/completions"


class OpenAIGenerator(Generator):
    """Streams chat completions from an OpenAI-compatible HTTP server; see the module docstring."""

    is_chat_model = True
    cheap_generation = True  # a served model: a short extra request, not minutes of local CPU

    def __init__(
        self,
        url: str,
        model: str = "",
        api_key: str = "",
        context_length: int = 8192,
        timeout: float = 120.0,
    ):
        if not url.startswith(("http://", "https://")):
            raise ModelError(f"the model server URL must start with http:// or https://, got {url!r}")
        self.url = url
        self.endpoint = chat_completions_url(url)
        self.model = model
        self.api_key = api_key
        self.context_length = context_length
        self.timeout = timeout
        self.name = f"openai:{model or self.endpoint}"

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))

    def _discover_model(self) -> str:
        """The first model `GET /v1/models` lists, or "" when the server does not say."""
        models_url = self.endpoint.removesuffix("/chat/completions") + "/models"
        try:
            r = httpx.get(models_url, headers=self._headers(), timeout=self._timeout())
            if r.status_code != 200:
                return ""
            data = r.json().get("data") or []
            return str(data[0].get("id", "")) if data else ""
        except (httpx.HTTPError, ValueError, AttributeError, TypeError):
            return ""  # the chat request below reports a dead server properly

    def stream(self, prompt: Prompt, options: GenerationOptions | None = None) -> Iterator[str]:
        options = options or GenerationOptions()
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        if not self.model:
            self.model = self._discover_model()
        body: dict = {
            "messages": messages,
            "stream": True,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "max_tokens": options.max_new_tokens,
        }
        if self.model:
            body["model"] = self.model
        if options.seed is not None:
            body["seed"] = options.seed
        if options.repetition_penalty != 1.0:
            # not in OpenAI's API, but vLLM and llama.cpp accept it; others ignore unknown fields
            body["repetition_penalty"] = options.repetition_penalty
        try:
            with httpx.Client(timeout=self._timeout()) as client:
                with client.stream("POST", self.endpoint, json=body, headers=self._headers()) as resp:
                    if resp.status_code >= 400:
                        detail = resp.read().decode("utf-8", "replace").strip()[:300]
                        raise ModelError(
                            f"model server {self.endpoint} answered HTTP {resp.status_code}"
                            + (f": {detail}" if detail else "")
                        )
                    for line in resp.iter_lines():
                        if options.cancel is not None and options.cancel.is_set():
                            return  # leaving the `with` closes the connection, which stops most servers
                        piece = self._parse_event(line)
                        if piece is None:
                            return
                        if piece:
                            yield piece
        except httpx.HTTPError as e:
            raise ModelError(f"cannot reach the model server at {self.endpoint}: {type(e).__name__}: {e}") from None

    def _parse_event(self, line: str) -> str | None:
        """The text in one SSE line: "" for lines without text, None at the end of the stream."""
        if not line.startswith("data:"):
            return ""  # blank separators, ": keep-alive" comments, "event:" lines
        data = line[5:].strip()
        if data == "[DONE]":
            return None
        if not data:
            return ""
        try:
            event = json.loads(data)
        except ValueError:
            raise ModelError(f"model server {self.endpoint} sent a malformed event: {data[:200]!r}") from None
        if not isinstance(event, dict):
            return ""
        if event.get("error"):
            err = event["error"]
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise ModelError(f"model server {self.endpoint} reported an error: {msg}")
        choices = event.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return ""
        delta = choices[0].get("delta") or {}
        return str(delta.get("content") or "")
