"""`docqa serve`: the HTTP API (OpenAI-compatible and native, with citations) and the web UI.

    from docqa.server import ServerConfig, create_app
    app = create_app(ServerConfig(settings=load_settings(), root=Path("indexes")))   # then uvicorn.run(app)

The server adds transport only: answers come from docqa.chat / docqa.answer (the generator that
`docqa.answer.open_generator` gives), searches from docqa.retrieve, ingest from docqa.ingest, exactly as the CLI.

| module | job |
| --- | --- |
| `app.py` | `create_app`: routers, the error handlers, start-up (embedder, job recovery), the static UI |
| `errors.py` | the server's error classes and the one table from DocQAError classes to HTTP statuses |
| `state.py` | ServerConfig; the served knowledge bases, pooled retrievers, the embedder, the generator and its queue |
| `answering.py` | one answer as events (sources, delta, done, error) from a worker thread; cancel on disconnect |
| `routes_openai.py` | `/v1/models`, `/v1/chat/completions` |
| `routes_api.py` | gathers the `/api/v1` routers, in the order the API docs list them |
| `routes_kbs.py`, `routes_search.py`, `routes_jobs.py`, `routes_conversations.py`, `routes_keys.py` | `/api/v1`: knowledge bases, documents, uploads and pages; search; ingest jobs; conversations; API keys |
| `routes_common.py` | the read / ingest / admin routers and what every route module shares |
| `uploads.py` | multipart uploads streamed to disk while hashed, the size limit, Unicode file names |
| `jobs.py` | ingest jobs: one writer thread per knowledge base, persisted, recovered after a crash |
| `auth.py` | API keys (hashed), scopes, the Host and Origin checks |
| `db.py` | the server's SQLite file: uploads, jobs, conversations, keys |
| `static/` | the web UI: index.html, ES modules (app.js, api.js, i18n.js), style.css, favicon.svg |

Nothing in docqa imports this package except docqa/cli/serve.py; importing it loads FastAPI but not torch.
"""

from .app import create_app
from .state import ServerConfig

__all__ = ["ServerConfig", "create_app"]
