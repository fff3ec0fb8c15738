"""`ssmkit serve`: an OpenAI-compatible server whose conversations are saved States.

    ssmkit serve MODEL_DIR [--host 127.0.0.1] [--port 8000] [--db PATH] [--api-key KEY]

Modules, each one idea:
    config        ServeConfig: every limit and knob
    store         SessionStore (get/put/delete/list) and SQLiteStore
    sessions      Sessions: owner checks, one turn at a time, hot states in memory, write-through
    prefix_cache  PrefixCache: states after chunk-aligned prompt prefixes, LRU, bounded
    engine        Engine: continuous batching on one thread (State.cat / State.select)
    textstream    TextStream: token ids -> text deltas, stop strings
    chat          ChatFormat: the checkpoint's chat template (jinja2) or the ChatML default
    protocol      OpenAI request checks, error bodies, response objects
    routes, app   the Starlette app, authentication, uvicorn
    static/       the chat page (plain HTML and JS)

Needs the `serve` extra (starlette, uvicorn, jinja2); `import ssmkit.serve` alone imports none of them.
"""

from ssmkit._lazy import lazy_exports

_EXPORTS = {
    "ServeConfig": "ssmkit.serve.config",
    "Server": "ssmkit.serve.app",
    "create_app": "ssmkit.serve.app",
    "serve": "ssmkit.serve.app",
    "SessionStore": "ssmkit.serve.store",
    "SQLiteStore": "ssmkit.serve.store",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
