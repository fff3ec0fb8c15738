"""The server process: what it holds (`Server`), its ASGI app (`create_app`), and `serve`.

    server = Server(ServeConfig(model_dir="runs/m2/model", db="sessions.db", api_keys=["k1"]))
    app = create_app(server)            # a Starlette app; routes in ssmkit.serve.routes
    serve(cfg)                          # the same under uvicorn, until SIGINT/SIGTERM

Authentication: with API keys configured, every /v1/ request needs `Authorization: Bearer KEY`
(401 otherwise). The key's SHA-256 names the owner of the sessions it creates; the key itself is
never stored. Without keys every client is the same owner, and the server binds to loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from ssmkit.serve.config import ServeConfig
from ssmkit.serve.store import SessionRecord

log = logging.getLogger("ssmkit.serve")
STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")


def owner_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Server:
    """Everything one server process holds: model, tokenizer, chat format, engine, sessions."""

    def __init__(self, cfg: ServeConfig, model=None, tokenizer=None):
        from ssmkit.serve.chat import ChatFormat
        from ssmkit.serve.engine import Engine
        from ssmkit.serve.prefix_cache import PrefixCache
        from ssmkit.serve.sessions import Sessions
        from ssmkit.serve.store import SQLiteStore

        self.cfg = cfg
        if model is None:
            from ssmkit.models.heads import SSMForCausalLM

            model = SSMForCausalLM.from_pretrained(cfg.model_dir)
        if tokenizer is None:
            from ssmkit.training.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(cfg.model_dir)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"{cfg.model_dir}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
                f"{model.config.vocab_size}"
            )
        self.model, self.tokenizer = model.eval(), tokenizer
        self.chat = ChatFormat.from_model_dir(cfg.model_dir) if cfg.model_dir else ChatFormat()
        eos = tokenizer.encode(self.chat.eos_token) if self.chat.eos_token else []
        self.stop_ids = tuple(eos) if len(eos) == 1 else ()
        self.model_name = cfg.model_name or os.path.basename(os.path.normpath(cfg.model_dir)) or "ssmkit"
        mb = 1 << 20
        self.store = SQLiteStore(cfg.db, cfg.sqlite_synchronous)
        self.sessions = Sessions(self.store, int(cfg.session_cache_mb * mb))
        self.prefix_cache = PrefixCache(
            cfg.prefill_chunk,
            int(cfg.prefix_cache_mb * mb),
            model.config.config_hash(),
            self.store if cfg.persist_prefixes else None,
        )
        self.engine = Engine(
            model,
            tokenizer,
            self.prefix_cache,
            max_batch=cfg.max_batch,
            max_queue=cfg.max_queue,
            prefill_budget=cfg.prefill_budget,
            stop_ids=self.stop_ids,
            threads=cfg.threads or max(1, (os.cpu_count() or 2) // 2),
        )
        c = model.config
        # a Transformer as wide and as deep, keeping float32 keys and values for every token
        self.kv_bytes_per_token = 2 * c.n_layer * c.d_model * 4
        self.empty_state_nbytes = model.init_state(1).nbytes
        self.owners = {k: owner_of(k) for k in cfg.api_keys}
        # store calls run here: few threads (SQLite writes one at a time anyway), so few malloc arenas
        self.store_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ssmkit-store")

    def describe(self, record: SessionRecord, messages: bool = False) -> dict:
        """A session as the API shows it."""
        first_user = next((m["content"] for m in record.messages if m["role"] == "user"), "")
        out = {
            "id": record.id,
            "object": "session",
            "created": int(record.created),
            "last_used": int(record.updated),
            "turns": record.version,
            "tokens": record.tokens,
            "state_bytes": record.state_nbytes or self.empty_state_nbytes,
            "transformer_kv_cache_bytes": record.tokens * self.kv_bytes_per_token,
            "parent": record.parent,
            "title": first_user[:60],
        }
        if messages:
            out["messages"] = record.messages
        return out

    def close(self) -> None:
        self.engine.stop()
        self.store_threads.shutdown(wait=True)
        self.store.close()


class Auth:
    """ASGI middleware: /v1/ needs a configured bearer key (401 otherwise); sets scope state `owner`."""

    def __init__(self, app, owners: dict[str, str]):
        self.app, self.owners = app, owners

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            owner = "" if not self.owners else self._owner(scope)
            if owner is None:
                body = {
                    "error": {
                        "message": "missing or wrong API key: send `Authorization: Bearer KEY`",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                }
                await _send_json(send, 401, body)
                return
            scope.setdefault("state", {})["owner"] = owner
        await self.app(scope, receive, send)

    def _owner(self, scope) -> str | None:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        found = None
        for k, owner in self.owners.items():  # compare with every key, in constant time each
            if scheme.lower() == "bearer" and hmac.compare_digest(k.encode(), key.strip().encode()):
                found = owner
        return found


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"www-authenticate", b"Bearer"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def create_app(server: Server):
    """The Starlette app over `server` (routes: ssmkit.serve.routes)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    from ssmkit.serve.routes import exception_handlers, routes

    app = Starlette(
        routes=routes(STATIC_DIR),
        exception_handlers=exception_handlers(),
        middleware=[Middleware(Auth, owners=server.owners)],
    )
    app.state.server = server
    return app


def serve(cfg: ServeConfig) -> None:
    """Run the server under uvicorn until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise ImportError("ssmkit serve needs its extra: pip install 'ssmkit[serve]'") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = Server(cfg)
    app = create_app(server)
    n_params = sum(p.numel() for p in server.model.parameters())
    print(
        f"ssmkit serve: {server.model_name} ({n_params:,} parameters, {server.empty_state_nbytes:,} bytes of "
        f"state per conversation) on http://{cfg.host}:{cfg.port}/; sessions in {cfg.db}; "
        f"{'API keys required' if cfg.api_keys else 'no API key'}",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False, timeout_graceful_shutdown=5
    )
    try:
        uvicorn.Server(config).run()
    finally:
        server.close()
