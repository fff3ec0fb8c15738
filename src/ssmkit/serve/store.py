"""Where sessions live: a small interface (get/put/delete/list) and its SQLite implementation.

A session is one row: metadata, the transcript, and the model's State as bytes (`State.to_bytes`)
with a SHA-256 checksum that is verified on every read. `put` is one transaction, so a turn is
either wholly stored or not at all, and `expected_version` makes it a compare-and-set: two server
processes that continue the same session at once cannot both win (the loser gets `Conflict`).
That is all a shared store for many processes needs (docs/serve.md): a PostgreSQL or Redis store is
one class with these five methods.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field, replace


class StoreError(Exception):
    """The store cannot serve a request."""


class ChecksumError(StoreError):
    """A stored state's bytes do not match their checksum (damaged storage)."""


class Conflict(StoreError):
    """The session changed (another turn, a delete) since it was read."""


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class SessionRecord:
    """One conversation. `state` is None until the first turn (an empty State)."""

    id: str
    owner: str
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    version: int = 0  # completed turns; every put bumps it
    tokens: int = 0  # tokens the state has consumed
    text: str = ""  # the text the state has consumed, as decoded
    messages: list[dict] = field(default_factory=list)  # chat transcript (role, content)
    state: bytes | None = None
    state_nbytes: int = 0  # bytes of the State's tensors (not of the blob)
    parent: str | None = None  # the session this one was forked from

    def without_state(self) -> SessionRecord:
        return replace(self, state=None)


class SessionStore(ABC):
    """Sessions by id; every method is safe to call from several threads."""

    @abstractmethod
    def get(self, session_id: str, with_state: bool = True) -> SessionRecord | None:
        """The record, or None. Raises ChecksumError if the state's bytes are damaged."""

    @abstractmethod
    def put(self, record: SessionRecord, expected_version: int | None = None) -> None:
        """Create (expected_version None) or update a session in one transaction. An update applies
        only if the stored version is still `expected_version`, else raises Conflict."""

    @abstractmethod
    def delete(self, session_id: str) -> bool:
        """Remove a session; False if there was none."""

    @abstractmethod
    def list(self, owner: str, limit: int = 100) -> list[SessionRecord]:
        """The owner's sessions, most recently used first, without their states."""

    def get_prefix(self, key: str) -> bytes | None:
        """A persisted prefix state (optional: stores that keep none return None)."""
        return None

    def put_prefix(self, key: str, data: bytes, max_bytes: int) -> None:  # noqa: B027 (optional)
        """Persist a prefix state, keeping at most `max_bytes` of them (least recently used go)."""

    def close(self) -> None:  # noqa: B027 (optional)
        """Release connections."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    version INTEGER NOT NULL, tokens INTEGER NOT NULL, text TEXT NOT NULL, messages TEXT NOT NULL,
    state BLOB, state_sha256 TEXT, state_nbytes INTEGER NOT NULL, parent TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_owner ON sessions (owner, updated);
CREATE TABLE IF NOT EXISTS prefixes (
    key TEXT PRIMARY KEY, state BLOB NOT NULL, state_sha256 TEXT NOT NULL, nbytes INTEGER NOT NULL,
    used REAL NOT NULL
);
"""
_META = "id, owner, created, updated, version, tokens, text, messages, state_nbytes, parent"


class SQLiteStore(SessionStore):
    """Sessions in one SQLite file: WAL journal (readers never wait for the writer), one transaction
    per `put`, `synchronous` FULL by default (a committed turn survives a power cut, not only a kill)."""

    def __init__(self, path: str | os.PathLike, synchronous: str = "FULL"):
        self.path = os.fspath(path)
        if os.path.dirname(self.path):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self):
        """One write transaction (BEGIN IMMEDIATE takes the write lock up front: no upgrade deadlock)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @property
    def journal_mode(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA journal_mode").fetchone()[0]

    def _row(self, row, with_state: bool) -> SessionRecord:
        sid, owner, created, updated, version, tokens, text, messages, nbytes, parent = row[:10]
        state = None
        if with_state and row[10] is not None:
            state = bytes(row[10])
            if checksum(state) != row[11]:
                raise ChecksumError(f"session {sid}: stored state fails its SHA-256 check (damaged storage)")
        return SessionRecord(
            sid, owner, created, updated, version, tokens, text, json.loads(messages), state, nbytes, parent
        )

    def get(self, session_id: str, with_state: bool = True) -> SessionRecord | None:
        cols = _META + (", state, state_sha256" if with_state else "")
        with self._lock:
            row = self._db.execute(f"SELECT {cols} FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return None if row is None else self._row(row, with_state)

    def put(self, record: SessionRecord, expected_version: int | None = None) -> None:
        r = record
        sha = None if r.state is None else checksum(r.state)
        values = (
            r.owner,
            r.created,
            r.updated,
            r.version,
            r.tokens,
            r.text,
            json.dumps(r.messages),
            r.state,
            sha,
            r.state_nbytes,
            r.parent,
        )
        with self._transaction() as db:
            if expected_version is None:
                db.execute(
                    "INSERT INTO sessions (owner, created, updated, version, tokens, text, messages, "
                    "state, state_sha256, state_nbytes, parent, id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (*values, r.id),
                )
            else:
                cur = db.execute(
                    "UPDATE sessions SET owner=?, created=?, updated=?, version=?, tokens=?, text=?, "
                    "messages=?, state=?, state_sha256=?, state_nbytes=?, parent=? "
                    "WHERE id = ? AND version = ?",
                    (*values, r.id, expected_version),
                )
                if cur.rowcount != 1:
                    raise Conflict(f"session {r.id} changed since version {expected_version} (or is gone)")

    def delete(self, session_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0

    def list(self, owner: str, limit: int = 100) -> list[SessionRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_META} FROM sessions WHERE owner = ? ORDER BY updated DESC LIMIT ?", (owner, limit)
            ).fetchall()
        return [self._row(r, with_state=False) for r in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]

    def get_prefix(self, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT state, state_sha256 FROM prefixes WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE prefixes SET used = ? WHERE key = ?", (time.time(), key))
        data = bytes(row[0])
        return data if checksum(data) == row[1] else None  # a damaged prefix is only a cache miss

    def put_prefix(self, key: str, data: bytes, max_bytes: int) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO prefixes (key, state, state_sha256, nbytes, used) VALUES (?,?,?,?,?)",
                (key, data, checksum(data), len(data), time.time()),
            )
            # drop the least recently used beyond max_bytes (a running sum, newest first)
            db.execute(
                "DELETE FROM prefixes WHERE key IN (SELECT key FROM (SELECT key, SUM(nbytes) OVER "
                "(ORDER BY used DESC) AS total FROM prefixes) WHERE total > ?)",
                (max_bytes,),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
