"""What one server process holds: its configuration, the knowledge bases it serves, pooled retrievers, the
embedder, the generator and its queue (a semaphore per loaded model).

Knowledge bases: every folder under `root` that holds a knowledge base (kb.sqlite), by folder name, or exactly
the `indexes` given (`docqa serve --index A --index B`, each by its folder name). New ones made through the API
go under `root`. A knowledge base's uploaded originals live in its own folder, under `files/<upload id>/NAME`.

Retrievers: a KnowledgeBase has one SQLite connection, usable by one thread at a time, so each knowledge base
keeps a small pool of Retrievers; a search or an answer borrows one for its duration (`with state.retriever(kb)`).
Readers never wait for the writer (WAL snapshots, docqa/store/): an ingest running meanwhile is seen whole or
not at all. The generator is loaded once, on first use, and shared; generation runs in worker threads, at most
`generation_slots` at a time per model (the queue), so searches and listings never wait behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import DocQAError
from ..store import DB_NAME
from .errors import BadRequest, Conflict, NotFound

if TYPE_CHECKING:
    from ..embed import Embedder
    from ..generate.base import Generator
    from ..retrieve import Retriever

_KB_NAME = re.compile(r"^[\w\-][\w.\-]{0,63}$")
FILES_DIR = "files"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServerConfig:
    settings: Settings
    root: Path  # where knowledge bases are found and created
    indexes: list[Path] = field(default_factory=list)  # when given: exactly these knowledge bases
    state_dir: Path | None = None  # server.sqlite; default root/.docqa-server
    host: str = "127.0.0.1"
    port: int = 8000
    auth: bool = False  # True: every route but /healthz needs a key
    api_keys: list[tuple[str, str]] = field(default_factory=list)  # (sha256 of key, scope) from --api-key
    cors_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)  # extra Host names (besides loopback and the bind host)
    max_upload_mb: float = 0  # 0 = settings.max_file_mb
    generation_slots: int = 1
    retriever_pool: int = 4

    @property
    def upload_limit(self) -> int:
        mb = self.max_upload_mb or self.settings.max_file_mb
        return int(mb * 1024 * 1024)

    @property
    def db_path(self) -> Path:
        return (self.state_dir or self.root / ".docqa-server") / "server.sqlite"


class KBHandle:
    """One served knowledge base: its folder and a pool of retrievers over it."""

    def __init__(self, name: str, path: Path):
        self.name = name
        self.path = path
        self._pool: queue.LifoQueue[Retriever] = queue.LifoQueue()
        self._made = 0
        self._lock = threading.Lock()

    @property
    def exists(self) -> bool:
        return (self.path / DB_NAME).exists()

    @property
    def files_dir(self) -> Path:
        return self.path / FILES_DIR

    def close(self) -> None:
        while True:
            try:
                r = self._pool.get_nowait()
            except queue.Empty:
                return
            r.kb.close()


class ServerState:
    def __init__(self, config: ServerConfig, generator: Generator | None = None, embedder: Embedder | None = None):
        from .db import ServerDB

        self.config = config
        self.settings = config.settings
        self.db = ServerDB(config.db_path)
        self._kbs: dict[str, KBHandle] = {}
        self._kb_lock = threading.Lock()
        self._embedder = embedder
        self._ingest_embedder: Embedder | None = None
        self._generator = generator
        self._gen_lock = threading.RLock()
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self.discover()

    # ------------------------------------------------------------------ knowledge bases
    def discover(self) -> None:
        found: dict[str, Path] = {}
        if self.config.indexes:
            for p in self.config.indexes:
                found[p.name] = p
        elif self.config.root.is_dir():
            for p in sorted(self.config.root.iterdir()):
                if p.is_dir() and (p / DB_NAME).exists() and _KB_NAME.match(p.name):
                    found[p.name] = p
        with self._kb_lock:
            for name, path in found.items():
                self._kbs.setdefault(name, KBHandle(name, path))

    def kb_names(self) -> list[str]:
        with self._kb_lock:
            return sorted(n for n, h in self._kbs.items())

    def kb(self, name: str) -> KBHandle:
        with self._kb_lock:
            h = self._kbs.get(name)
        if h is None:  # made by `docqa ingest` since the server started?
            self.discover()
            with self._kb_lock:
                h = self._kbs.get(name)
        if h is None:
            raise NotFound(f"no knowledge base named {name!r}")
        return h

    def create_kb(self, name: str) -> KBHandle:
        from ..ingest import new_vector_text
        from ..store import KnowledgeBase, store_options

        if not _KB_NAME.match(name or ""):
            raise BadRequest(f"knowledge base name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        with self._kb_lock:
            if name in self._kbs:
                raise Conflict(f"a knowledge base named {name!r} exists already")
            path = self.config.root / name
            if path.exists():
                raise Conflict(f"{path} exists already")
            emb = self.embedder
            KnowledgeBase.open(
                path,
                create=True,
                writable=True,
                embed_model=self.settings.embed_model,
                dim=emb.dim,
                vector_text=new_vector_text(emb),
                **store_options(self.settings),
            ).close()
            h = self._kbs[name] = KBHandle(name, path)
        return h

    def drop_kb(self, name: str) -> None:
        h = self.kb(name)
        with self._kb_lock:
            self._kbs.pop(name, None)
        h.close()
        shutil.rmtree(h.path, ignore_errors=True)

    def settings_for(self, h: KBHandle) -> Settings:
        return self.settings.replace(index=h.path)

    @contextlib.contextmanager
    def retriever(self, name: str) -> Iterator[Retriever]:
        """Borrow one of the knowledge base's retrievers (opened on demand, at most `retriever_pool` kept)."""
        from ..retrieve import Retriever
        from ..store import KnowledgeBase, store_options

        h = self.kb(name)
        try:
            r = h._pool.get_nowait()
        except queue.Empty:
            r = Retriever(
                KnowledgeBase.open(h.path, **store_options(self.settings)), self.embedder, self.settings_for(h)
            )
        try:
            yield r
        finally:
            if h._pool.qsize() < self.config.retriever_pool and self._kbs.get(name) is h:
                h._pool.put(r)
            else:
                r.kb.close()

    # ------------------------------------------------------------------ models
    @property
    def embedder(self) -> Embedder:
        """The search embedder, loaded once (the server loads it at start-up: first imports are not thread-safe)."""
        if self._embedder is None:
            with self._gen_lock:
                if self._embedder is None:
                    from .. import embed

                    s = self.settings
                    e = embed.get_embedder(
                        s.embed_model,
                        s.embed_device,
                        s.embed_precision,
                        s.embed_languages,
                        backend=s.embed_backend,
                        cache=s.cache,
                    )
                    e.encode_query("warm-up")  # loads the model itself, not only its tokenizer
                    self._embedder = e
        return self._embedder

    @property
    def ingest_embedder(self) -> Embedder:
        """The ingest workers' own embedder: a tokenizer is not safe to share between threads that run at once."""
        if self._ingest_embedder is None:
            from ..embed import SentenceTransformerEmbedder

            e = self.embedder
            if isinstance(e, SentenceTransformerEmbedder):
                s = self.settings
                e = SentenceTransformerEmbedder(s.embed_model, s.embed_device, s.embed_precision, s.embed_languages)
            self._ingest_embedder = e
        return self._ingest_embedder

    def generator(self, retriever: Retriever) -> Generator:
        with self._gen_lock:  # held while a model loads: one load, and no import racing a search
            if self._generator is None:
                from ..generate import get_generator  # (answer.open_generator is gone: no retriever needed)

                self._generator = get_generator(self.settings)
            return self._generator

    def preload_generator(self) -> None:
        """Load the generator now (a background thread at start-up), so the first question does not wait."""
        names = [n for n in self.kb_names() if self.kb(n).exists]
        if self._generator is not None or not names:
            return
        try:
            with self.retriever(names[0]) as r:
                self.generator(r)
        except DocQAError as e:  # the first question reports it again, as an error event
            import logging

            logging.getLogger("docqa.server").warning("cannot load the generator: %s", e)

    def generator_name(self) -> str:
        if self._generator is not None:
            return getattr(self._generator, "name", "generator")
        try:
            from ..generate import resolve_generator

            kind, spec = resolve_generator(self.settings)
            return spec if kind != "chatglm2" else Path(spec).name
        except DocQAError:
            return "unknown"

    def slot(self, model: str) -> asyncio.Semaphore:
        """The generation queue of `model` (created in the event loop's thread)."""
        sem = self._semaphores.get(model)
        if sem is None:
            sem = self._semaphores[model] = asyncio.Semaphore(self.config.generation_slots)
        return sem

    def close(self) -> None:
        with self._kb_lock:
            for h in self._kbs.values():
                h.close()
        self.db.close()


def public_source(h: Any) -> str:
    """The name a user knows a document by: the uploaded file's name, else the file's own name."""
    return Path(str(h)).name
