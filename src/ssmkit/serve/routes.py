"""HTTP routes: OpenAI-compatible completions (streamed as server-sent events), sessions, the page.

    GET  /                          the chat page          GET  /health, /v1/models
    POST /v1/completions            POST /v1/chat/completions      ("session_id" continues a session)
    POST /v1/sessions               GET /v1/sessions               GET|DELETE /v1/sessions/{id}
    POST /v1/sessions/{id}/fork

A turn in a session reads only what is new (the prompt, or what the chat template adds to the
conversation), and its state is stored before the response ends: the final SSE event (or the JSON
body) is sent after the store's transaction has committed. A client that goes away mid-turn frees
its slot at the next step and leaves the session as it was.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ssmkit.serve.chat import TemplateError
from ssmkit.serve.engine import Done, EngineBusy, Failed, Job, Token
from ssmkit.serve.protocol import (
    APIError,
    CompletionRequest,
    bad,
    choice,
    decode_json,
    envelope,
    new_id,
    parse_completion,
    sse,
    usage,
)
from ssmkit.serve.sessions import Busy, NotFound, Turn
from ssmkit.serve.store import ChecksumError, Conflict


def _server(request: Request):
    return request.app.state.server


def _owner(request: Request) -> str:
    return request.state.owner


async def in_store_thread(server, fn, *args):
    """Run a store call (SQLite, state <-> bytes) on the server's few store threads, off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(server.store_threads, fn, *args)


async def read_json(request: Request, limit: int) -> dict:
    """The JSON object body, at most `limit` bytes (413 beyond, 400 if not JSON)."""
    too_big = APIError(413, f"request body larger than {limit} bytes", code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > limit:
            raise too_big
    return decode_json(bytes(raw))


# ---- completions ----------------------------------------------------------------------------------
class Run:
    """One completion request in flight: its job's events become a response, its turn is stored."""

    def __init__(
        self,
        server,
        req: CompletionRequest,
        chat: bool,
        turn: Turn | None,
        prompt_text: str,
        prompt_ids: list[int],
    ):
        self.server, self.req, self.chat, self.turn = server, req, chat, turn
        self.prompt_text, self.prompt_ids = prompt_text, prompt_ids
        self.rid = new_id("chatcmpl" if chat else "cmpl")
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def emit(event):  # called from the engine thread
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, event)
            except RuntimeError:  # the loop is closed: the server is going down
                pass

        stop = req.params.stop + (server.chat.stop if chat else ())
        state = None if turn is None else turn.state
        self.job = Job(prompt_ids, state, replace(req.params, stop=stop), emit)

    def start(self) -> None:
        try:
            self.server.engine.submit(self.job)
        except EngineBusy as e:
            raise APIError(503, str(e), type="server_error", code="overloaded") from None

    def close(self) -> None:
        self.job.cancel()
        if self.turn is not None:
            self.server.sessions.abort(self.turn)

    def _envelope(self, choices: list, stream: bool, **extra) -> dict:
        if self.turn is not None:
            extra["session_id"] = self.turn.record.id
        return envelope(self.rid, self.chat, self.server.model_name, choices, stream, **extra)

    async def _finish(self, done: Done) -> dict:
        """Store the turn (if in a session); return the usage counts."""
        if self.turn is not None:
            srv = self.server
            stops = [t for t in done.ids if t in srv.engine.stop_ids]
            consumed = srv.tokenizer.decode([t for t in done.ids if t not in srv.engine.stop_ids])
            consumed += srv.chat.eos_token * len(stops)
            messages = (
                (self.req.messages + [{"role": "assistant", "content": done.text}]) if self.chat else []
            )
            await in_store_thread(
                srv,
                srv.sessions.commit,
                self.turn,
                done.state,
                self.prompt_text + consumed,
                len(self.prompt_ids) + len(done.ids),
                messages,
            )
        return usage(len(self.prompt_ids), len(done.ids), done.cached_tokens)

    async def collect(self, request: Request) -> JSONResponse:
        """The non-streaming answer; gives up (freeing the slot) if the client disconnects."""
        try:
            while True:
                try:
                    event = await asyncio.wait_for(self.queue.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return JSONResponse({}, status_code=499)
                    continue
                if isinstance(event, Failed):
                    raise APIError(500, event.message, type="server_error")
                if isinstance(event, Done):
                    use = await self._finish(event)
                    body = self._envelope(
                        [choice(self.chat, event.text, event.finish_reason, delta=False)],
                        stream=False,
                        usage=use,
                    )
                    return JSONResponse(body)
        finally:
            self.close()

    async def stream(self):
        """Server-sent events: deltas, a last chunk with finish_reason (after the turn is stored),
        usage if asked for, then [DONE]. Events that queued up while the client was being written to
        go out in one write (each still its own event)."""
        try:
            if self.chat:
                yield sse(self._envelope([choice(True, "", None, delta=True, first=True)], stream=True))
            while True:
                events = [await self.queue.get()]
                while not self.queue.empty():
                    events.append(self.queue.get_nowait())
                out = b""
                for event in events:
                    if not isinstance(event, Token):
                        yield out + await self._closing(event)
                        return
                    out += sse(self._envelope([choice(self.chat, event.text, None, delta=True)], stream=True))
                yield out
        finally:
            self.close()

    async def _closing(self, event: Done | Failed) -> bytes:
        """A stream's last events: an error, or (once the turn is stored) finish_reason, usage, [DONE]."""
        if isinstance(event, Failed):
            return sse(APIError(500, event.message, type="server_error").body())
        try:
            use = await self._finish(event)
        except (Conflict, ChecksumError) as e:
            return sse(APIError(409, f"the turn was not stored: {e}", code="session_conflict").body())
        last = choice(self.chat, None if self.chat else "", event.finish_reason, delta=True)
        out = sse(self._envelope([last], stream=True))
        if self.req.include_usage:
            out += sse(self._envelope([], stream=True, usage=use))
        return out + b"data: [DONE]\n\n"


async def _complete(request: Request, chat: bool):
    srv = _server(request)
    cfg = srv.cfg
    req = parse_completion(
        await read_json(request, cfg.max_body_bytes), chat, cfg.max_tokens_limit, cfg.default_max_tokens
    )
    if req.model != srv.model_name:
        raise APIError(
            404,
            f"model {req.model!r} is not served here; this server serves {srv.model_name!r}",
            param="model",
            code="model_not_found",
        )
    turn = (
        await in_store_thread(srv, srv.sessions.begin, req.session_id, _owner(request))
        if req.session_id
        else None
    )
    try:
        if chat:
            consumed, history = ("", []) if turn is None else (turn.record.text, turn.record.messages)
            text = srv.chat.continuation(consumed, history, req.messages)
        else:
            text = req.prompt
        ids = srv.tokenizer.encode(text)
        what = "messages" if chat else "prompt"
        if len(ids) > cfg.max_prompt_tokens:
            raise bad(
                f"the {what} add {len(ids)} tokens; this server reads at most {cfg.max_prompt_tokens} "
                "per request",
                what,
            )
        if not ids:
            raise bad(f"the {what} add no token to read", what)
        run = Run(srv, req, chat, turn, text, ids)
        run.start()
    except BaseException:
        if turn is not None:
            srv.sessions.abort(turn)
        raise
    if req.stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(run.stream(), media_type="text/event-stream", headers=headers)
    return await run.collect(request)


async def completions(request: Request):
    return await _complete(request, chat=False)


async def chat_completions(request: Request):
    return await _complete(request, chat=True)


# ---- sessions, models, health ---------------------------------------------------------------------
async def create_session(request: Request):
    srv = _server(request)
    record = await in_store_thread(srv, srv.sessions.create, _owner(request))
    return JSONResponse(srv.describe(record, messages=True))


async def list_sessions(request: Request):
    srv = _server(request)
    records = await in_store_thread(srv, srv.sessions.list, _owner(request), srv.cfg.max_sessions_listed)
    return JSONResponse({"object": "list", "data": [srv.describe(r) for r in records]})


async def _session_reply(request: Request, action: str):
    """Run Sessions.<action>(id, owner) in a thread; answer with the session it returns."""
    srv = _server(request)
    method = getattr(srv.sessions, action)
    record = await in_store_thread(srv, method, request.path_params["sid"], _owner(request))
    return JSONResponse(srv.describe(record, messages=True))


async def get_session(request: Request):
    return await _session_reply(request, "get")


async def delete_session(request: Request):
    srv = _server(request)
    sid = request.path_params["sid"]
    await in_store_thread(srv, srv.sessions.delete, sid, _owner(request))
    return JSONResponse({"id": sid, "object": "session.deleted", "deleted": True})


async def fork_session(request: Request):
    return await _session_reply(request, "fork")


async def models(request: Request):
    srv = _server(request)
    card = {"id": srv.model_name, "object": "model", "created": 0, "owned_by": "ssmkit"}
    return JSONResponse({"object": "list", "data": [card]})


async def health(request: Request):
    srv = _server(request)
    cache = srv.prefix_cache
    return JSONResponse(
        {
            "status": "ok",
            "model": srv.model_name,
            "engine": srv.engine.stats(),
            "session_states_in_memory_bytes": srv.sessions.hot_bytes,
            "prefix_cache": {
                "entries": len(cache),
                "bytes": cache.nbytes,
                "hits": cache.hits,
                "misses": cache.misses,
            },
        }
    )


def routes(static_dir: str) -> list:
    async def page(request: Request):
        return FileResponse(f"{static_dir}/index.html", headers={"Cache-Control": "no-cache"})

    return [
        Route("/", page),
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/sessions", create_session, methods=["POST"]),
        Route("/v1/sessions", list_sessions, methods=["GET"]),
        Route("/v1/sessions/{sid}", get_session, methods=["GET"]),
        Route("/v1/sessions/{sid}", delete_session, methods=["DELETE"]),
        Route("/v1/sessions/{sid}/fork", fork_session, methods=["POST"]),
        Mount("/static", StaticFiles(directory=static_dir)),
    ]


# ---- errors, OpenAI-style -------------------------------------------------------------------------
def exception_handlers() -> dict:
    def as_json(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    async def api_error(request, e):
        return as_json(e)

    async def http_error(request, e: HTTPException):
        return as_json(APIError(e.status_code, e.detail or "error", code=None))

    async def mapped(request, e):
        status, code = {
            NotFound: (404, "session_not_found"),
            Busy: (409, "session_busy"),
            Conflict: (409, "session_conflict"),
            TemplateError: (400, "chat_template_error"),
            ChecksumError: (500, "session_damaged"),
        }[type(e)]
        return as_json(
            APIError(
                status, str(e), type="server_error" if status >= 500 else "invalid_request_error", code=code
            )
        )

    handlers = {APIError: api_error, HTTPException: http_error}
    handlers.update({cls: mapped for cls in (NotFound, Busy, Conflict, TemplateError, ChecksumError)})
    return handlers
