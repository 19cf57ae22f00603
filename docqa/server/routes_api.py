"""The native API under /api/v1: knowledge bases, documents and uploads, search, ingest jobs, conversations, keys.

Plain `def` routes run in FastAPI's thread pool (they touch SQLite); the upload, chat and job-progress routes are
`async` because they stream. Server-sent events are `event: NAME` + `data: JSON` pairs: a chat streams
`sources` (before the first token), `delta` ({"text"}), then `done` (the answer and its validated citations) or
`error`; a job streams `progress` until `done`.

The routes live in one module per resource (routes_kbs, routes_search, routes_jobs, routes_conversations,
routes_keys), all on the three scoped routers of routes_common; importing them here, in this order, registers
every route in the order it always had.
"""

from __future__ import annotations

# isort: off
# importing a route module registers its routes: this order is the order they are matched and documented in
from . import routes_kbs, routes_search, routes_jobs, routes_conversations, routes_keys  # noqa: F401

# isort: on
from .routes_common import SSE_HEADERS, admin, ingest, read, sse
from .routes_kbs import ACTIVE_TYPES, page_text

routers = (read, ingest, admin)

__all__ = ["ACTIVE_TYPES", "SSE_HEADERS", "admin", "ingest", "page_text", "read", "routers", "sse"]
