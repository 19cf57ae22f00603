"""API keys, scopes, and the Host/Origin checks.

* Bound to a loopback address, the server needs no key and ignores any Authorization header (only programs on
  this machine can reach it). Binding any other address needs keys (`docqa serve --api-key KEY[:SCOPE]`, or keys
  created through `POST /api/v1/keys`) unless `--insecure` says otherwise; `docqa serve` refuses to start.
* A key is sent as `Authorization: Bearer KEY`. Only its SHA-256 is kept (in memory for --api-key, in the
  server's SQLite file for created keys); comparisons are constant-time. Scopes are ordered:
  read (search, chat, conversations, listings) < ingest (uploads, document removal, jobs) < admin (knowledge
  bases, keys). With keys, a missing or wrong key is 401 on every route except /healthz; too small a scope 403.
* Host: with no authentication (loopback), a request whose Host is not an IP address, localhost, the bound host
  or an `--allow-host` is refused (403): this stops DNS-rebinding pages (which need a domain name) from talking
  to a local server.
* Origin: a write (any method but GET/HEAD/OPTIONS) that carries an Origin must come from the server's own origin
  or an allowed CORS origin (403 otherwise). CORS itself is off unless `--cors-origin` lists origins.
Keys never appear in logs or error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from fastapi import Request

from .errors import Forbidden, Unauthorized
from .state import LOOPBACK_HOSTS, ServerState

SCOPES = ("read", "ingest", "admin")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key_option(value: str) -> tuple[str, str]:
    """`KEY` or `KEY:SCOPE` (default admin) -> (sha256, scope).

    >>> parse_key_option("s3cret-key:read")[1], parse_key_option("s3cret-key")[1]
    ('read', 'admin')
    """
    key, sep, scope = value.rpartition(":")
    if not sep or scope not in SCOPES:
        key, scope = value, "admin"
    if len(key) < 8:
        from ..errors import ConfigError

        raise ConfigError("an API key must be at least 8 characters")
    return hash_key(key), scope


def new_key() -> str:
    return "dq-" + secrets.token_urlsafe(24)


def create_key(state: ServerState, name: str, scope: str) -> str:
    key = new_key()
    state.db.insert("api_keys", {"name": name, "sha256": hash_key(key), "scope": scope, "created": time.time()})
    return key


def has_keys(state: ServerState) -> bool:
    return bool(state.config.api_keys) or state.db.row("SELECT 1 AS x FROM api_keys LIMIT 1") is not None


def scope_of(state: ServerState, header: str | None) -> str | None:
    """The scope of the Bearer key in `header`, or None when it is missing or unknown."""
    if not header:
        return None
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        return None
    digest = hash_key(token.strip())
    found = None
    for known, scope in state.config.api_keys:
        if hmac.compare_digest(known, digest):
            found = scope
    row = state.db.row("SELECT scope FROM api_keys WHERE sha256 = ?", (digest,))
    if row is not None:
        found = row["scope"]
    return found


def require(request: Request, scope: str) -> None:
    """Raise Unauthorized/Forbidden unless the request may use a route of `scope`."""
    state: ServerState = request.app.state.docqa
    if not state.config.auth:
        return
    have = scope_of(state, request.headers.get("authorization"))
    if have is None:
        raise Unauthorized("a valid API key is required: send it as 'Authorization: Bearer KEY'")
    if SCOPES.index(have) < SCOPES.index(scope):
        raise Forbidden(f"this key's scope is {have!r}; this request needs {scope!r}")


def scoped(scope: str):
    """A FastAPI dependency: `dependencies=[Depends(scoped("ingest"))]`."""

    def check(request: Request) -> None:
        require(request, scope)

    return check


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def check_host_and_origin(request: Request) -> None:
    """Host (when unauthenticated) and Origin (on writes) checks; see the module docstring."""
    state: ServerState = request.app.state.docqa
    cfg = state.config
    host = _host_name(request.headers.get("host", "")).lower()
    allowed = {*LOOPBACK_HOSTS, cfg.host.lower(), *(h.lower() for h in cfg.allowed_hosts)}
    if not cfg.auth and host and host not in allowed and not _is_ip(host):
        raise Forbidden(f"Host {host!r} is not allowed (pass --allow-host {host} to docqa serve to allow it)")
    origin = request.headers.get("origin")
    if origin and request.method not in SAFE_METHODS and origin != "null":
        o = urlsplit(origin)
        same = o.netloc.lower() == request.headers.get("host", "").lower()
        if not same and origin.rstrip("/") not in {c.rstrip("/") for c in cfg.cors_origins}:
            raise Forbidden(f"cross-origin write from {origin} refused (allow it with --cors-origin)")
    elif origin == "null" and request.method not in SAFE_METHODS:
        raise Forbidden("cross-origin write from an opaque origin refused")
