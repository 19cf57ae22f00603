"""The one place where errors become HTTP statuses (as docqa/cli/app.py is for exit codes).

    >>> from docqa.errors import StoreLockedError
    >>> status_for(StoreLockedError("locked")), status_for(NotFound("no such job"))
    (409, 404)

Every error a route lets escape is answered with the same JSON body, which the official `openai` client also
understands: `{"error": {"message": ..., "type": ..., "code": ...}}` (`type` is the class name in snake case).
The server's own conditions (not found, too large, unauthorised...) are DocQAError subclasses in docqa/errors.py
beside every other error type; this module only decides their statuses.
"""

from __future__ import annotations

import re

from ..errors import (
    BadRequest,
    ConfigError,
    Conflict,
    DocQAError,
    Forbidden,
    LoadError,
    ModelError,
    ModelMismatchError,
    NotFound,
    PromptTooLongError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    TooLarge,
    Unauthorized,
)

__all__ = ["BadRequest", "Conflict", "Forbidden", "NotFound", "TooLarge", "Unauthorized", "status_for"]


#: the most specific class in an error's MRO wins
HTTP_STATUS: dict[type[DocQAError], int] = {
    DocQAError: 500,
    BadRequest: 400,
    ConfigError: 400,
    PromptTooLongError: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    StoreLockedError: 409,
    ModelMismatchError: 409,
    TooLarge: 413,
    LoadError: 422,
    StoreError: 500,
    StoreCorruptError: 500,
    ModelError: 503,
}


def status_for(error: DocQAError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def error_type(error: BaseException) -> str:
    """`StoreLockedError` -> `store_locked_error`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


def error_body(error: BaseException) -> dict:
    return {"error": {"message": str(error), "type": error_type(error), "code": error_type(error)}}
