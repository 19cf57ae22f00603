"""Typed errors. The CLI turns any `DocQAError` into a one-line message and exit code 1.

Library code raises these instead of printing; each message says what happened and, where there is one,
what the user can do about it (e.g. "run `docqa rebuild`").
"""


class DocQAError(Exception):
    """Base class: a failure the user can understand and act on."""


class ConfigError(DocQAError):
    """A setting, flag or config file is invalid."""


class LoadError(DocQAError):
    """A file could not be turned into a Document (unsupported, binary, encrypted, corrupt, too large...)."""


class StoreError(DocQAError):
    """The knowledge base cannot be opened, read or written."""


class StoreLockedError(StoreError):
    """Another process holds the knowledge base's write lock."""


class StoreCorruptError(StoreError):
    """A knowledge-base file failed validation; `docqa rebuild` or a re-ingest is the way out."""


class ModelMismatchError(StoreError):
    """The knowledge base was built with a different embedding model than the one configured."""


class ModelError(DocQAError):
    """A model (embedder, generator) cannot be found, loaded or run."""


class PromptTooLongError(DocQAError):
    """The instruction and the question alone do not fit in the model's context (docqa/prompt.py)."""


class WorkerGone(Exception):
    """The loader sandbox's worker closed its pipe (it died). Internal to docqa/load/sandbox.py, which turns it
    into a LoadError with the reason; deliberately not a DocQAError so it can never reach the user unexplained."""


# -- conditions of the HTTP server (docqa/server/errors.py gives each its status)


class BadRequest(DocQAError):
    """The request is malformed (a missing field, an unknown option)."""


class NotFound(DocQAError):
    """No such knowledge base, document, job, conversation or model."""


class Conflict(DocQAError):
    """The request conflicts with the current state (a knowledge base that exists already)."""


class TooLarge(DocQAError):
    """An upload exceeds the size limit."""


class Unauthorized(DocQAError):
    """No API key, or a wrong one."""


class Forbidden(DocQAError):
    """The key lacks the scope, or the Origin/Host of a request is not allowed."""


class JobCancelled(Exception):  # noqa: N818 - a signal between the job runner's loops, never shown to anyone
    """An ingest job was cancelled (DELETE /api/v1/jobs/{id}); it stops at the next file boundary."""
