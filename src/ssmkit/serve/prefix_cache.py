"""Prefix-state cache: prompts that start alike are read once.

A prompt read from the empty state is cut at multiples of `chunk` tokens (always, cached or not,
so a cached start gives the same numbers as a cold one). The State after the first j * chunk tokens
is kept under a hash chain over those tokens, h_j = sha256(h_{j-1} || tokens of chunk j), seeded with
the model's config hash; a later prompt starts from its longest cached boundary that leaves at least
one token to read (the last token's logits are needed to sample). Entries are bounded in bytes and
evicted least recently used first; with a store, they are also persisted and outlive a restart.

States are immutable (layers return new tensors, never write into a state they were given), so an
entry is shared, not copied: handing it out costs nothing.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from ssmkit.inference.state import State


def share(state: State) -> State:
    """A new State object over the same tensors (a model replaces its State's layers, never the tensors)."""
    return State(list(state.layers), state.layout, state.config_hash)


class PrefixCache:
    """chunk: boundary spacing in tokens; max_bytes: memory bound; salt: the model's config hash;
    store: optional SessionStore with get_prefix/put_prefix (persistence)."""

    def __init__(self, chunk: int, max_bytes: int, salt: str, store=None):
        self.chunk, self.max_bytes, self.salt, self.store = chunk, max_bytes, salt, store
        self._entries: OrderedDict[str, State] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self, tokens: list[int]) -> list[str]:
        """keys[j - 1] names the State after tokens[: j * chunk], for every whole chunk of `tokens`."""
        h = hashlib.sha256(self.salt.encode()).digest()
        out = []
        for a in range(0, len(tokens) - self.chunk + 1, self.chunk):
            h = hashlib.sha256(h + array("q", tokens[a : a + self.chunk]).tobytes()).digest()
            out.append(h.hex())
        return out

    def lookup(self, tokens: list[int], keys: list[str]) -> tuple[int, State | None]:
        """(n, state): the State after tokens[:n] for the longest cached n < len(tokens), or (0, None)."""
        if not self.enabled:
            return 0, None
        usable = (len(tokens) - 1) // self.chunk
        for j in range(min(usable, len(keys)), 0, -1):
            state = self._get(keys[j - 1])
            if state is not None:
                self.hits += 1
                return j * self.chunk, share(state)
        self.misses += 1
        return 0, None

    def _get(self, key: str) -> State | None:
        state = self._entries.get(key)
        if state is not None:
            self._entries.move_to_end(key)
            return state
        if self.store is None:
            return None
        data = self.store.get_prefix(key)
        if data is None:
            return None
        state = State.from_bytes(data)
        self._remember(key, state)
        return state

    def insert(self, key: str, state: State) -> None:
        """Keep the State after a boundary (a no-op if it is already there or the cache is off)."""
        if not self.enabled or key in self._entries:
            return
        state = share(state)
        self._remember(key, state)
        if self.store is not None:
            self.store.put_prefix(key, state.to_bytes(), max_bytes=4 * self.max_bytes)

    def _remember(self, key: str, state: State) -> None:
        size = state.nbytes
        if size > self.max_bytes:
            return
        self._entries[key] = state
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes
