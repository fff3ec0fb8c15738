"""A server killed with SIGKILL and restarted continues every session where its last completed turn
left it, with exactly the text an uninterrupted server gives; a turn cut by the kill is not applied."""

from __future__ import annotations

import sqlite3

import httpx

from tests.serve.server_process import ServerProcess
from tests.serve.test_server import MODEL, chat

FIRST, SECOND = "Remember the number 42.", "Which number?"


def test_sigkill_between_turns_then_exactly_the_uninterrupted_text(model_dir, server, tmp_path):
    ref = server.client()  # the uninterrupted server
    ref_sid = ref.post("/sessions", cast_to=object, body={})["id"]
    want_first = chat(ref, FIRST, ref_sid).choices[0].message.content
    want_second = chat(ref, SECOND, ref_sid).choices[0].message.content

    db = str(tmp_path / "sessions.db")
    proc = ServerProcess(model_dir, db).start()
    try:
        c = proc.client()
        sid = c.post("/sessions", cast_to=object, body={})["id"]
        first = chat(c, FIRST, sid)
        assert first.choices[0].message.content == want_first
        # kill it while a second turn is streaming
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": SECOND}],
            "max_tokens": 2000,
            "temperature": 0,
            "stream": True,
            "session_id": sid,
        }
        try:
            with proc.http() as h, h.stream("POST", "/v1/chat/completions", json=body) as r:
                lines = r.iter_lines()
                assert any('"content"' in next(lines) for _ in range(4))
                proc.kill()
        except httpx.HTTPError:
            pass
        with sqlite3.connect(db) as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

        proc.start()  # the same database
        c = proc.client()
        info = c.get(f"/sessions/{sid}", cast_to=object)
        assert info["turns"] == 1 and info["tokens"] == first.usage.total_tokens  # not half applied
        assert [m["content"] for m in info["messages"]] == [FIRST, want_first]
        assert chat(c, SECOND, sid).choices[0].message.content == want_second
    finally:
        proc.stop()
