"""`docqa serve`: the HTTP API (native and OpenAI-compatible) and the web UI (docqa/server/).

    $ docqa serve                                   # http://127.0.0.1:8000, every knowledge base under indexes/
    $ docqa serve --index indexes/work --port 9000
    $ docqa serve --host 0.0.0.0 --api-key "$KEY"   # another address needs keys (or --insecure)

On a loopback address no key is needed. Any other address without a key (--api-key, or one created through
POST /api/v1/keys) is refused at once, before anything loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .app import app
from .render import err

if TYPE_CHECKING:
    from ..server.state import ServerConfig


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback needs no key)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to bind")] = 8000,
    index: Annotated[
        list[Path] | None,
        typer.Option("--index", help="Serve this knowledge base (repeatable); default: every one under --root"),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option("--root", help="Folder of knowledge bases (default: the folder of the configured index)"),
    ] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option("--api-key", help="KEY or KEY:read|ingest|admin (repeatable; default scope admin)"),
    ] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback address without any key")] = False,
    cors_origin: Annotated[
        list[str] | None, typer.Option("--cors-origin", help="Allow this browser origin (CORS)")
    ] = None,
    allow_host: Annotated[list[str] | None, typer.Option("--allow-host", help="Accept this Host name too")] = None,
    max_upload_mb: Annotated[
        float | None, typer.Option("--max-upload-mb", help="Largest file an upload may hold")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="auto | extractive | demo | chatglm2 | a folder")] = None,
    llm_url: Annotated[str | None, typer.Option("--llm-url", help="Base URL of an OpenAI-compatible server")] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Where server.sqlite lives")] = None,
) -> None:
    """Serve the knowledge bases over HTTP: an OpenAI-compatible API, the native API and the web UI."""
    from ..config import load_settings

    s = load_settings(llm=model, llm_url=llm_url)
    config = _server_config(
        s, host, port, index, root, api_key, state_dir, list(cors_origin or []), list(allow_host or []), max_upload_mb
    )
    loopback = _check_auth(config, host, insecure)
    import uvicorn

    from ..server.app import create_app

    web = create_app(config)
    shown = f"[{host}]" if ":" in host else host
    err.print(
        f"docqa serving {len(web.state.docqa.kb_names())} knowledge base(s) from {config.root} on http://{shown}:{port}/"
        + ("" if loopback else f" ({'API keys required' if config.auth else 'INSECURE: no authentication'})")
    )
    uvicorn.run(web, host=host, port=port, log_level="info", access_log=True, timeout_graceful_shutdown=5)


def _server_config(
    s: Any,
    host: str,
    port: int,
    index: list[Path] | None,
    root: Path | None,
    api_key: list[str] | None,
    state_dir: Path | None,
    cors_origins: list[str],
    allowed_hosts: list[str],
    max_upload_mb: float | None,
) -> ServerConfig:
    """The ServerConfig of the command's options (every --index must hold a knowledge base)."""
    from ..errors import ConfigError
    from ..server.auth import parse_key_option
    from ..server.state import ServerConfig
    from ..store import DB_NAME

    indexes = [p.expanduser() for p in index or []]
    for p in indexes:
        if not (p / DB_NAME).exists():
            raise ConfigError(f"no knowledge base at {p} (run `docqa ingest DIR --index {p}` first)")
    root = (root or (indexes[0].parent if indexes else Path(s.index).parent)).expanduser()
    keys = [parse_key_option(k) for k in api_key or []]
    return ServerConfig(
        settings=s,
        root=root,
        indexes=indexes,
        state_dir=state_dir,
        host=host,
        port=port,
        api_keys=keys,
        cors_origins=cors_origins,
        allowed_hosts=allowed_hosts,
        max_upload_mb=max_upload_mb or 0,
    )


def _check_auth(config: ServerConfig, host: str, insecure: bool) -> bool:
    """Whether `host` is a loopback address; off loopback, refuses to serve without keys unless --insecure."""
    from ..errors import ConfigError
    from ..server.state import is_loopback

    keys = config.api_keys
    loopback = is_loopback(host)
    if not loopback:
        stored = _stored_keys(config.db_path)
        if not keys and not stored and not insecure:
            raise ConfigError(
                f"refusing to serve on {host} without authentication: pass --api-key KEY (repeatable, KEY[:scope]) "
                "or, if this network is trusted, --insecure"
            )
        config.auth = bool(keys or stored)
    return loopback


def _stored_keys(db_path: Path) -> bool:
    import sqlite3

    if not db_path.exists():
        return False
    try:
        with sqlite3.connect(db_path) as c:
            return c.execute("SELECT count(*) FROM api_keys").fetchone()[0] > 0
    except sqlite3.DatabaseError:
        return False
