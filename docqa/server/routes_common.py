"""What the /api/v1 route modules share: the three scoped routers, the request's state and job manager, SSE."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request

from .auth import scoped
from .jobs import JobManager
from .state import ServerState

read = APIRouter(prefix="/api/v1", dependencies=[Depends(scoped("read"))])
ingest = APIRouter(prefix="/api/v1", dependencies=[Depends(scoped("ingest"))])
admin = APIRouter(prefix="/api/v1", dependencies=[Depends(scoped("admin"))])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def state_of(request: Request) -> ServerState:
    """The server state of the app serving `request`."""
    return request.app.state.docqa


def jobs_of(request: Request) -> JobManager:
    """The job manager of the app serving `request`."""
    return request.app.state.jobs


def sse(event: str, data: Any) -> str:
    """One server-sent event: `event: NAME` and `data: JSON`."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
