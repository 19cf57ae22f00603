"""`create_app(config)`: the FastAPI application (routes, error mapping, auth, static UI, job recovery).

    app = create_app(ServerConfig(settings=load_settings(), root=Path("indexes")))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Errors: every DocQAError a route raises becomes `status_for(error)` (docqa/server/errors.py, the one table) with
the body `{"error": {"message", "type", "code"}}`; request-validation errors are 400 with the same body.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import DocQAError
from .auth import check_host_and_origin
from .errors import BadRequest, error_body, status_for
from .state import ServerConfig, ServerState

if TYPE_CHECKING:
    from ..embed import Embedder
    from ..generate.base import Generator
    from .jobs import JobManager

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("docqa.server")

#: what the web UI may load: only this server (no CDN, no inline script)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def create_app(config: ServerConfig, generator: Generator | None = None, embedder: Embedder | None = None) -> FastAPI:
    """The app over `config`; `generator` / `embedder` replace the configured ones (tests)."""
    from . import routes_api, routes_openai
    from .jobs import JobManager

    state = ServerState(config, generator=generator, embedder=embedder)
    jobs = JobManager(state)
    app = FastAPI(
        title="docqa",
        version="1",
        lifespan=_lifespan(state, jobs),
        dependencies=[Depends(check_host_and_origin)],
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.docqa = state
    app.state.jobs = jobs
    if config.cors_origins:  # off unless an allowlist is configured; never a wildcard
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=[o for o in config.cors_origins if o != "*"],
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    _add_error_handlers(app)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "knowledge_bases": len(state.kb_names())}

    app.include_router(routes_openai.router)
    for r in routes_api.routers:
        app.include_router(r)
    _add_ui(app)
    return app


def _lifespan(state: ServerState, jobs: JobManager):
    """The app's lifespan: load the embedder, start loading the generator, recover jobs; stop them at the end."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        import asyncio

        await asyncio.to_thread(lambda: state.embedder)  # before the first request: imports are not thread-safe
        import threading

        threading.Thread(target=state.preload_generator, name="docqa-load-generator", daemon=True).start()
        jobs.recover()
        try:
            yield
        finally:
            jobs.stop()
            state.close()

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    """None; maps DocQAError, unexpected exceptions, validation and HTTP errors to the `{"error": ...}` body."""

    @app.exception_handler(DocQAError)
    async def docqa_error(request: Request, exc: DocQAError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(error_body(exc), status_code=status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        body = {
            "error": {
                "message": f"internal error: {type(exc).__name__}: {exc}",
                "type": "internal_error",
                "code": "internal_error",
            }
        }
        return JSONResponse(body, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse(error_body(BadRequest(msg or "invalid request")), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {"error": {"message": str(exc.detail), "type": "http_error", "code": exc.status_code}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _add_ui(app: FastAPI) -> None:
    """None; serves the web UI: `/` (index.html under the CSP), the favicon and /static."""

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(
            STATIC / "index.html",
            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
