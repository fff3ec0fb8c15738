"""`ssmkit serve`: an OpenAI-compatible server whose conversations are saved States."""

from __future__ import annotations

import os

NAME, ORDER = "serve", 70
HELP = "an OpenAI-compatible server whose conversations are saved states"
DESCRIPTION = (
    "Serve a model over HTTP: /v1/completions, /v1/chat/completions (streaming), sessions that are "
    "saved States (stored in SQLite, surviving restarts), and a chat page at /. See docs/serve.md."
)


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="run directory (holding model/) or model directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument(
        "--db", default="ssmkit-sessions.db", help="SQLite file of sessions (default: %(default)s)"
    )
    p.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="require `Authorization: Bearer KEY` (repeatable; or SSMKIT_API_KEYS=k1,k2)",
    )
    p.add_argument(
        "--set",
        "-s",
        action="append",
        metavar="KEY=VALUE",
        help="a ServeConfig limit, e.g. max_batch=32 or prefix_cache_mb=0 (repeatable)",
    )


def run(args) -> int:
    from ssmkit.cli.loading import model_dir
    from ssmkit.inference.memory import return_freed_memory
    from ssmkit.serve.app import serve
    from ssmkit.serve.config import ServeConfig

    return_freed_memory()  # an inference process: freed activations go back (ssmkit.inference.memory)

    keys = list(args.api_key or []) + [k for k in os.environ.get("SSMKIT_API_KEYS", "").split(",") if k]
    cfg = ServeConfig(
        model_dir=model_dir(args.checkpoint), host=args.host, port=args.port, db=args.db, api_keys=keys
    )
    serve(cfg.with_overrides(args.set or []))
    return 0
