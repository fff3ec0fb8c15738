"""ServeConfig: every limit and knob of `ssmkit serve`, as data with safe defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class ServeConfig:
    """Settings of one server process. The command line sets the first five; the rest are limits."""

    model_dir: str = ""
    """Model directory (config.json, model.safetensors, tokenizer files)."""
    host: str = "127.0.0.1"
    """Address to bind; loopback by default."""
    port: int = 8000
    """TCP port (0 = any free port)."""
    db: str = "ssmkit-sessions.db"
    """SQLite file holding sessions (and persisted prefix states)."""
    api_keys: list[str] = field(default_factory=list)
    """Accepted bearer keys; empty = no authentication (then every client is one owner)."""

    max_body_bytes: int = 1 << 20
    """Largest request body (413 beyond)."""
    max_prompt_tokens: int = 16384
    """Most new tokens one request may run through the model (400 beyond)."""
    max_tokens_limit: int = 2048
    """Largest `max_tokens` a request may ask for (400 beyond)."""
    default_max_tokens: int = 256
    """`max_tokens` of a chat request that names none (completions default to 16, as OpenAI's)."""
    max_batch: int = 64
    """Sequences decoded together in one step; more wait in a queue."""
    max_queue: int = 512
    """Requests waiting for a slot beyond `max_batch` (503 beyond)."""
    prefill_chunk: int = 128
    """Prompts run in chunks of this many tokens; prefix-cache boundaries are multiples of it."""
    prefill_budget: int = 256
    """Prompt tokens run between two decode steps (keeps decoding smooth while prompts arrive)."""
    prefix_cache_mb: float = 256.0
    """Memory for cached prefix states (LRU); 0 turns the prefix cache off."""
    persist_prefixes: bool = False
    """Also keep prefix states in the store, so they outlive a restart."""
    session_cache_mb: float = 256.0
    """Memory for the states of recently used sessions (LRU); the rest are read from the store."""
    max_sessions_listed: int = 100
    """Most sessions `GET /v1/sessions` returns."""
    model_name: str = ""
    """Id served in /v1/models (default: the model directory's name)."""
    threads: int = 0
    """CPU threads of the engine's kernels (torch and numba); 0 = half the cores, at least 1 (the
    other half serve HTTP; many threads on tiny per-token ops mostly wait for each other)."""
    sqlite_synchronous: str = "FULL"
    """SQLite `synchronous` pragma: FULL survives power loss; NORMAL survives a killed process."""

    def __post_init__(self):
        for name in (
            "max_body_bytes",
            "max_prompt_tokens",
            "max_tokens_limit",
            "default_max_tokens",
            "max_batch",
            "max_queue",
            "prefill_chunk",
            "prefill_budget",
            "max_sessions_listed",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"ServeConfig.{name} must be a positive int, got {v!r}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"ServeConfig.threads must be an int >= 0, got {self.threads!r}")
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise ValueError(f"ServeConfig.port must be an int in [0, 65536), got {self.port!r}")
        for name in ("prefix_cache_mb", "session_cache_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"ServeConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.sqlite_synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError(
                f"ServeConfig.sqlite_synchronous must be FULL or NORMAL, got {self.sqlite_synchronous!r}"
            )
        if any(not isinstance(k, str) or not k for k in self.api_keys):
            raise ValueError("ServeConfig.api_keys must be non-empty strings")

    def with_overrides(self, items: list[str]) -> ServeConfig:
        """A copy with KEY=VALUE settings applied, each VALUE read as its field's type."""
        known = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        changes = {}
        for item in items:
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or key not in known or isinstance(known[key], list):
                settable = sorted(k for k, v in known.items() if not isinstance(v, list))
                raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {settable}")
            kind = type(known[key])
            try:
                if kind is bool:
                    if value.lower() not in ("true", "false", "1", "0"):
                        raise ValueError(value)
                    changes[key] = value.lower() in ("true", "1")
                else:
                    changes[key] = kind(value)
            except ValueError:
                raise ValueError(f"--set {item!r}: {key} takes a {kind.__name__}, got {value!r}") from None
        return dataclasses.replace(self, **changes)
