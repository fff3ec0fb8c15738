"""State <-> bytes, the SQLite store (WAL, compare-and-set turns, checksums, prefixes) and Sessions
(owners, one turn at a time, write-through, memory bound, fork)."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from ssmkit.inference.state import State
from ssmkit.serve.sessions import Busy, NotFound, Sessions
from ssmkit.serve.store import ChecksumError, Conflict, SessionRecord, SQLiteStore
from tests.serve.server_process import tiny_model


def states_equal(a: State, b: State) -> bool:
    return (
        a.layout == b.layout
        and a.config_hash == b.config_hash
        and all(
            x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
            for x, y in zip(a.layers, b.layers)
        )
    )


def used_state(model, text: bytes = b"some history") -> State:
    st = model.init_state(1)
    model(torch.tensor([list(text)]), state=st)
    return st


@pytest.mark.parametrize("layers", ["mamba2", "mamba2,attention"])
def test_state_bytes_round_trip_bit_exact(layers):
    model = tiny_model(layers=layers)
    st = used_state(model)
    back = State.from_bytes(st.to_bytes())
    assert states_equal(back, st)
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(model(ids, state=back).logits, model(ids, state=st).logits, rtol=0, atol=0)


def test_state_bytes_refuse_damage():
    data = used_state(tiny_model()).to_bytes()
    with pytest.raises(ValueError, match="truncated"):
        State.from_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        State.from_bytes(b"xy")
    from safetensors.torch import save

    with pytest.raises(ValueError, match="not an ssmkit State"):
        State.from_bytes(save({"x": torch.zeros(2)}))


def test_sqlite_store_basics(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    assert store.journal_mode == "wal"
    a = SessionRecord(
        "a", owner="o1", messages=[{"role": "user", "content": "hi"}], state=b"abc", state_nbytes=3
    )
    store.put(a)
    store.put(SessionRecord("b", owner="o2"))
    store.put(SessionRecord("c", owner="o1", updated=a.updated + 1))
    got = store.get("a")
    assert got.state == b"abc" and got.messages == a.messages and got.version == 0
    assert store.get("a", with_state=False).state is None
    assert [r.id for r in store.list("o1")] == ["c", "a"]  # most recently used first
    assert store.get("nope") is None
    assert store.delete("b") and not store.delete("b") and store.list("o2") == []
    with pytest.raises(sqlite3.IntegrityError):  # ids are never reused
        store.put(SessionRecord("a", owner="o1"))


def test_sqlite_store_put_is_compare_and_set(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    store.put(SessionRecord("a", owner="o", state=b"v0"))
    rec = store.get("a")
    rec.version, rec.state = 1, b"v1"
    store.put(rec, expected_version=0)
    stale = store.get("a")
    stale.version, stale.state = 2, b"stale"
    with pytest.raises(Conflict):
        store.put(stale, expected_version=0)  # another turn won first
    assert store.get("a").state == b"v1"  # the failed turn left nothing behind
    store.delete("a")
    with pytest.raises(Conflict):
        store.put(stale, expected_version=1)


def test_sqlite_store_detects_damaged_state(tmp_path):
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    store.put(SessionRecord("a", owner="o", state=b"state bytes"))
    with sqlite3.connect(path) as con:
        con.execute("UPDATE sessions SET state = ? WHERE id = 'a'", (b"state bytez",))
    with pytest.raises(ChecksumError):
        store.get("a")
    assert store.get("a", with_state=False).id == "a"


def test_sqlite_store_prefixes_bounded(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    for i in range(5):
        store.put_prefix(f"k{i}", bytes(100), max_bytes=300)
    assert [store.get_prefix(f"k{i}") is not None for i in range(5)] == [False, False, True, True, True]


def test_sessions_turns_owners_and_fork(tmp_path):
    model = tiny_model()
    sessions = Sessions(SQLiteStore(tmp_path / "s.db"), cache_bytes=1 << 20)
    rec = sessions.create("alice")
    assert rec.id.startswith("sess_") and len(rec.id) > 30
    with pytest.raises(NotFound):
        sessions.begin(rec.id, "bob")
    turn = sessions.begin(rec.id, "alice")
    assert turn.state is None  # the empty state
    with pytest.raises(Busy):
        sessions.begin(rec.id, "alice")
    st = used_state(model)
    after = sessions.commit(turn, st, "some history", 12, [{"role": "user", "content": "x"}])
    assert after.version == 1 and after.tokens == 12 and after.state_nbytes == st.nbytes

    turn = sessions.begin(rec.id, "alice")  # free again; the state comes back bit for bit
    assert states_equal(turn.state, st)
    sessions.abort(turn)
    fork = sessions.fork(rec.id, "alice")
    assert fork.parent == rec.id and fork.version == 1
    assert states_equal(sessions.begin(fork.id, "alice").state, st)
    with pytest.raises(NotFound):
        sessions.fork(rec.id, "bob")
    with pytest.raises(NotFound):
        sessions.delete(rec.id, "bob")
    sessions.delete(rec.id, "alice")
    with pytest.raises(NotFound):
        sessions.get(rec.id, "alice")


def test_sessions_memory_is_bounded_and_the_store_is_the_truth(tmp_path):
    model = tiny_model()
    st = used_state(model)
    store = SQLiteStore(tmp_path / "s.db")
    sessions = Sessions(store, cache_bytes=3 * st.nbytes)
    ids = []
    for i in range(10):
        rec = sessions.create("o")
        sessions.commit(sessions.begin(rec.id, "o"), used_state(model, b"history %d" % i), "h", 9, [])
        ids.append(rec.id)
        assert sessions.hot_bytes <= 3 * st.nbytes
    for i, sid in enumerate(ids):  # evicted or not, every state reads back as committed
        turn = sessions.begin(sid, "o")
        assert states_equal(turn.state, used_state(model, b"history %d" % i))
        sessions.abort(turn)
    # another process (a second Sessions on the same file) moves a session on: this one sees it
    other = Sessions(SQLiteStore(tmp_path / "s.db"), cache_bytes=1 << 20)
    newer = used_state(model, b"moved on elsewhere")
    other.commit(other.begin(ids[-1], "o"), newer, "m", 18, [])
    assert states_equal(sessions.begin(ids[-1], "o").state, newer)
