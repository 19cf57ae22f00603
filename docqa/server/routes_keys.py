"""/api/v1/keys: create (shown once), list and delete API keys."""

from __future__ import annotations

from typing import Any

from fastapi import Body, Request

from .auth import SCOPES, create_key
from .errors import BadRequest, NotFound
from .routes_common import admin, state_of


# ---------------------------------------------------------------------- keys
@admin.post("/keys", status_code=201)
def add_key(request: Request, body: dict = Body(...)) -> dict[str, Any]:
    """`{name, scope}` -> `{name, scope, key}`: the key is shown this once (only its SHA-256 is kept)."""
    state = state_of(request)
    name, scope = str(body.get("name") or "").strip(), body.get("scope", "read")
    if not name or scope not in SCOPES:
        raise BadRequest(f"name is required and scope one of {', '.join(SCOPES)}")
    if state.db.row("SELECT 1 AS x FROM api_keys WHERE name = ?", (name,)):
        from .errors import Conflict

        raise Conflict(f"a key named {name!r} exists")
    return {"name": name, "scope": scope, "key": create_key(state, name, scope)}


@admin.get("/keys")
def list_keys(request: Request) -> dict[str, Any]:
    return {"keys": state_of(request).db.rows("SELECT name, scope, created FROM api_keys ORDER BY name")}


@admin.delete("/keys/{name}")
def delete_key(request: Request, name: str) -> dict[str, Any]:
    if not state_of(request).db.execute("DELETE FROM api_keys WHERE name = ?", (name,)):
        raise NotFound(f"no key {name!r}")
    return {"deleted": name}
