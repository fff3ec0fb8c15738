"""Sessions: conversations whose whole memory is one saved State.

    turn = sessions.begin(session_id, owner)        # the state to continue; the session is busy
    ... run the turn from turn.state ...
    sessions.commit(turn, state, text, tokens, messages)   # one store transaction, then not busy
    sessions.abort(turn)                            # the turn failed or the client left: nothing changes

Every turn is written through to the store before its response ends, so a killed server loses no
completed turn, and the states of recently used sessions also stay in memory (LRU, bounded in
bytes): evicting one loses nothing. A session is visible only to the owner (the API key) that created
it; to anyone else it does not exist. A session runs one turn at a time (`Busy` otherwise).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from ssmkit.inference.state import State
from ssmkit.serve.store import SessionRecord, SessionStore


class NotFound(Exception):
    """No such session for this owner."""


class Busy(Exception):
    """The session is running a turn already."""


def new_session_id() -> str:
    return "sess_" + secrets.token_urlsafe(24)  # 192 random bits


@dataclass
class Turn:
    record: SessionRecord  # as it was when the turn began (no state bytes)
    state: State | None  # None = the empty state (first turn)
    done: bool = False


class Sessions:
    def __init__(self, store: SessionStore, cache_bytes: int):
        self.store, self.cache_bytes = store, cache_bytes
        self._hot: OrderedDict[str, tuple[int, State]] = OrderedDict()  # id -> (version, state)
        self._hot_bytes = 0
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    # ---- one session --------------------------------------------------------------------------
    def create(self, owner: str) -> SessionRecord:
        record = SessionRecord(id=new_session_id(), owner=owner)
        self.store.put(record)
        return record

    def get(self, session_id: str, owner: str) -> SessionRecord:
        record = self.store.get(session_id, with_state=False) if isinstance(session_id, str) else None
        if record is None or record.owner != owner:
            raise NotFound(f"no session {session_id!r}")
        return record

    def begin(self, session_id: str, owner: str) -> Turn:
        record = self.get(session_id, owner)
        with self._lock:
            if session_id in self._busy:
                raise Busy(f"session {session_id} is running a turn; wait for it to end")
            self._busy.add(session_id)
            hot = self._hot.get(session_id)
        try:
            if hot is not None and hot[0] == record.version:
                return Turn(record, hot[1])
            full = self.store.get(session_id)  # another process may have moved it on: read it
            if full is None or full.owner != owner:
                raise NotFound(f"no session {session_id!r}")
            state = None if full.state is None else State.from_bytes(full.state)
            return Turn(full.without_state(), state)
        except BaseException:
            self._release(session_id)
            raise

    def commit(self, turn: Turn, state: State, text: str, tokens: int, messages: list[dict]) -> SessionRecord:
        """Store the turn (the state after it, what it read and wrote) in one transaction."""
        old = turn.record
        new = replace(
            old,
            updated=time.time(),
            version=old.version + 1,
            tokens=old.tokens + tokens,
            text=old.text + text,
            messages=old.messages + messages,
            state=state.to_bytes(),
            state_nbytes=state.nbytes,
        )
        try:
            self.store.put(new, expected_version=old.version)
        finally:
            turn.done = True
            self._release(old.id)
        self._remember(old.id, new.version, state)
        return new.without_state()

    def abort(self, turn: Turn) -> None:
        if not turn.done:
            turn.done = True
            self._release(turn.record.id)

    def fork(self, session_id: str, owner: str) -> SessionRecord:
        """A new session holding a copy of this one's last stored turn (one state copy)."""
        source = self.store.get(session_id)
        if source is None or source.owner != owner:
            raise NotFound(f"no session {session_id!r}")
        now = time.time()
        child = replace(source, id=new_session_id(), created=now, updated=now, parent=session_id)
        self.store.put(child)
        return child.without_state()

    def delete(self, session_id: str, owner: str) -> None:
        self.get(session_id, owner)
        self.store.delete(session_id)
        with self._lock:
            self._forget(session_id)

    def list(self, owner: str, limit: int) -> list[SessionRecord]:
        return self.store.list(owner, limit)

    @property
    def hot_bytes(self) -> int:
        return self._hot_bytes

    # ---- memory -------------------------------------------------------------------------------
    def _release(self, session_id: str) -> None:
        with self._lock:
            self._busy.discard(session_id)

    def _remember(self, session_id: str, version: int, state: State) -> None:
        with self._lock:
            self._forget(session_id)
            if state.nbytes > self.cache_bytes:
                return
            self._hot[session_id] = (version, state)
            self._hot_bytes += state.nbytes
            while self._hot_bytes > self.cache_bytes:
                _, (_, old) = self._hot.popitem(last=False)
                self._hot_bytes -= old.nbytes

    def _forget(self, session_id: str) -> None:
        old = self._hot.pop(session_id, None)
        if old is not None:
            self._hot_bytes -= old[1].nbytes
