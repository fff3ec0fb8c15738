"""The OpenAI wire format: request checks (400 naming the field), error bodies, response objects.

Errors look like OpenAI's, so its clients raise their usual exceptions:
    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field

from ssmkit.serve.chat import normalize_messages
from ssmkit.serve.engine import SamplingParams

MAX_STOPS, MAX_STOP_CHARS = 4, 256


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def decode_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


@dataclass
class CompletionRequest:
    model: str
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    session_id: str | None = None
    prompt: str = ""  # /v1/completions
    messages: list[dict] = field(default_factory=list)  # /v1/chat/completions


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad(f"{name} must be a number, got {json.dumps(v)}", name)
    if not (lo < v if lo_open else lo <= v) or v > hi:
        raise bad(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}", name)
    return float(v)


def _int(body: dict, name: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"{name} must be an integer, got {json.dumps(v)}", name)
    if not lo <= v <= hi:
        raise bad(f"{name} must be in [{lo}, {hi}], got {v}", name)
    return v


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops)
    ):
        raise bad(
            f"stop must be a non-empty string or a list of at most {MAX_STOPS} such strings "
            f"(each at most {MAX_STOP_CHARS} characters)",
            "stop",
        )
    return tuple(stops)


def parse_completion(
    body: dict, chat: bool, max_tokens_limit: int, default_max_tokens: int
) -> CompletionRequest:
    """Check a /v1/completions (chat=False) or /v1/chat/completions body; APIError(400) names the field."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model is required (a string; see GET /v1/models)", "model")
    for name in ("n", "best_of"):
        if body.get(name) not in (None, 1):
            raise bad(f"{name} must be 1: this server returns one choice per request", name)
    for name in ("logprobs", "top_logprobs", "echo", "suffix", "tools", "functions"):
        if body.get(name) not in (None, False):
            raise bad(f"{name} is not supported by this server", name)
    limit_name = (
        "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    )
    max_tokens = _int(body, limit_name, default_max_tokens if chat else 16, 1, max_tokens_limit)
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        seed=_int(body, "seed", None, -(2**63), 2**63 - 1),
        stop=_stop(body),
    )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options")
    session_id = body.get("session_id")
    if session_id is not None and (not isinstance(session_id, str) or not session_id):
        raise bad("session_id must be a session's id (a string from POST /v1/sessions)", "session_id")
    req = CompletionRequest(model, params, stream, bool(options.get("include_usage")), session_id)
    if chat:
        try:
            req.messages = normalize_messages(body.get("messages"))
        except ValueError as e:
            raise bad(str(e), "messages") from None
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise bad("prompt must be a non-empty string (one prompt per request)", "prompt")
        req.prompt = prompt
    return req


# ---- response objects -------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18)}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def choice(chat: bool, text: str | None, finish_reason: str | None, delta: bool, first: bool = False) -> dict:
    """One entry of `choices`: a whole message, a streamed delta, or a completion's text."""
    if not chat:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
    if not delta:
        return {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
    d = {} if text is None else {"content": text}
    if first:
        d["role"] = "assistant"
    return {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish_reason}


def envelope(rid: str, chat: bool, model: str, choices: list, stream: bool, **extra) -> dict:
    kind = ("chat.completion.chunk" if stream else "chat.completion") if chat else "text_completion"
    return {
        "id": rid,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
