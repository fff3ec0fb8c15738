"""The real server, through the official `openai` client and raw HTTP: both endpoints streamed and
not, sessions (continue, fork, delete), authentication, owners, and OpenAI-style errors."""

from __future__ import annotations

import time

import openai
import pytest

from tests.serve.server_process import KEYS

MODEL = "tiny"
GREEDY = {"temperature": 0, "max_tokens": 24}


def chat(client, text, session_id=None, **kw):
    extra = {"session_id": session_id} if session_id else None
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], extra_body=extra, **{**GREEDY, **kw}
    )
    return r


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list().data] == [MODEL]
    with server.http(key=None) as h:  # /health needs no key
        body = h.get("/health").json()
    assert body["status"] == "ok" and body["model"] == MODEL


def test_completions_stream_and_not_agree(server):
    c = server.client()
    whole = c.completions.create(model=MODEL, prompt="The state of", **GREEDY)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage.prompt_tokens == len("The state of") and whole.usage.completion_tokens == 24
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 24
    chunks = list(
        c.completions.create(
            model=MODEL, prompt="The state of", stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == whole.choices[0].text and len(text) == 24
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].text) > 1  # streamed, not one piece
    assert chunks[-1].usage.completion_tokens == 24
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"


def test_chat_stream_and_not_agree(server):
    c = server.client()
    whole = chat(c, "Hello there")
    msg = whole.choices[0].message
    assert whole.object == "chat.completion" and msg.role == "assistant" and msg.content
    rendered = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"  # the default template
    assert whole.usage.prompt_tokens == len(rendered)
    stream = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}], stream=True, **GREEDY
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == msg.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_sampling_options(server):
    c = server.client()
    a = c.completions.create(model=MODEL, prompt="abc", max_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    b = c.completions.create(model=MODEL, prompt="abc", max_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    assert a.choices[0].text == b.choices[0].text  # a seed fixes the draw
    greedy = c.completions.create(model=MODEL, prompt="abc", max_tokens=16, temperature=0).choices[0].text
    stop = greedy[5:7]
    cut = c.completions.create(model=MODEL, prompt="abc", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == greedy[: greedy.index(stop)]


def test_session_continues_and_uses_its_state(server):
    c = server.client()
    sid = c.post("/sessions", cast_to=object, body={})["id"]
    first = chat(c, "My name is Ada.", sid)
    second = chat(c, "What is my name?", sid)
    alone = chat(c, "What is my name?")
    assert second.choices[0].message.content != alone.choices[0].message.content  # the state is used
    # the second turn read only what the template adds after the first reply, not the history
    assert second.usage.prompt_tokens < alone.usage.prompt_tokens + first.usage.total_tokens
    assert second.usage.prompt_tokens == len(
        "\n<|im_start|>user\nWhat is my name?<|im_end|>\n<|im_start|>assistant\n"
    ) + len("<|im_end|>")
    info = c.get(f"/sessions/{sid}", cast_to=object)
    assert info["turns"] == 2
    assert info["tokens"] == first.usage.total_tokens + second.usage.total_tokens
    assert [m["role"] for m in info["messages"]] == ["user", "assistant", "user", "assistant"]
    assert info["messages"][3]["content"] == second.choices[0].message.content
    assert 0 < info["state_bytes"] < info["transformer_kv_cache_bytes"]


def test_completion_session_matches_one_long_prompt(server):
    """Two completion turns in a session give what one call on the whole transcript gives (greedy)."""
    c = server.client()
    sid = c.post("/sessions", cast_to=object, body={})["id"]
    one = c.completions.create(model=MODEL, prompt="abc", extra_body={"session_id": sid}, **GREEDY)
    two = c.completions.create(model=MODEL, prompt="xyz", extra_body={"session_id": sid}, **GREEDY)
    assert two.usage.prompt_tokens == 3  # only the new text is read
    whole = c.completions.create(model=MODEL, prompt="abc" + one.choices[0].text + "xyz", **GREEDY)
    assert two.choices[0].text == whole.choices[0].text


def test_fork_copies_then_diverges(server):
    c = server.client()
    sid = c.post("/sessions", cast_to=object, body={})["id"]
    chat(c, "Once upon a time", sid)
    fork = c.post(f"/sessions/{sid}/fork", cast_to=object, body={})
    assert fork["id"] != sid and fork["parent"] == sid and fork["turns"] == 1
    same_a = chat(c, "and then", sid).choices[0].message.content
    same_b = chat(c, "and then", fork["id"]).choices[0].message.content
    assert same_a == same_b  # a fork is an exact copy of the state
    fork2 = c.post(f"/sessions/{sid}/fork", cast_to=object, body={})
    a = chat(c, "the dragon slept", sid).choices[0].message.content
    b = chat(c, "the knight sang", fork2["id"]).choices[0].message.content
    assert a != b
    assert c.get(f"/sessions/{sid}", cast_to=object)["turns"] == 3
    assert c.get(f"/sessions/{fork2['id']}", cast_to=object)["turns"] == 3  # forked at 2
    listed = {s["id"] for s in c.get("/sessions", cast_to=object)["data"]}
    assert {sid, fork["id"], fork2["id"]} <= listed


def test_session_delete(server):
    c = server.client()
    sid = c.post("/sessions", cast_to=object, body={})["id"]
    assert c.delete(f"/sessions/{sid}", cast_to=object)["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        c.get(f"/sessions/{sid}", cast_to=object)


def test_401_without_the_key(server):
    for key in (None, "wrong-key"):
        with pytest.raises(openai.AuthenticationError):
            server.client(key=key).models.list()
        with server.http(key=key) as h:
            r = h.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_404_for_another_keys_session(server):
    owner, other = server.client(KEYS[0]), server.client(KEYS[1])
    sid = owner.post("/sessions", cast_to=object, body={})["id"]
    chat(owner, "private", sid)
    with pytest.raises(openai.NotFoundError):
        other.get(f"/sessions/{sid}", cast_to=object)
    with pytest.raises(openai.NotFoundError):
        chat(other, "let me in", sid)
    with pytest.raises(openai.NotFoundError):
        other.post(f"/sessions/{sid}/fork", cast_to=object, body={})
    with pytest.raises(openai.NotFoundError):
        other.delete(f"/sessions/{sid}", cast_to=object)
    assert sid not in {s["id"] for s in other.get("/sessions", cast_to=object)["data"]}
    assert owner.get(f"/sessions/{sid}", cast_to=object)["turns"] == 1  # untouched
    with pytest.raises(openai.NotFoundError):
        owner.get("/sessions/sess_doesnotexist", cast_to=object)


def test_400_on_bad_json_and_bad_fields(server):
    with server.http() as h:
        r = h.post(
            "/v1/completions",
            content=b'{"model": "tiny", "prompt": ',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and "JSON" in err["message"]
        r = h.post("/v1/chat/completions", content=b"[1, 2]")
        assert r.status_code == 400 and "object" in r.json()["error"]["message"]
        bad_fields = [
            ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
            ({"prompt": "x", "max_tokens": 10**6}, "max_tokens"),
            ({"prompt": "x", "temperature": "hot"}, "temperature"),
            ({"prompt": "x", "top_p": 0}, "top_p"),
            ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
            ({"prompt": "x", "n": 2}, "n"),
            ({"prompt": ""}, "prompt"),
            ({"prompt": "x", "stream": "yes"}, "stream"),
            ({"prompt": "x" * 3001}, "prompt"),  # the test server reads at most 3000 tokens
        ]
        for fields, param in bad_fields:
            r = h.post("/v1/completions", json={"model": MODEL, **fields})
            assert r.status_code == 400, (fields, r.text)
            assert r.json()["error"]["param"] == param, r.text
        r = h.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        r = h.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = h.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 200_000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_one_turn_at_a_time_and_a_disconnect_frees_the_slot_and_leaves_the_session(server):
    c = server.client()
    sid = c.post("/sessions", cast_to=object, body={})["id"]
    chat(c, "hello", sid)
    with server.http() as h:
        before = h.get("/health").json()["engine"]["tokens_generated"]
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "go on"}],
            "max_tokens": 2000,
            "temperature": 0,
            "stream": True,
            "session_id": sid,
        }
        with h.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            again = h.post("/v1/chat/completions", json={**body, "stream": False})
            assert again.status_code == 409 and again.json()["error"]["code"] == "session_busy"
        assert any('"content"' in line for line in got)
        deadline = time.monotonic() + 20
        while (engine := h.get("/health").json()["engine"])["decoding"] and time.monotonic() < deadline:
            time.sleep(0.05)
    assert engine["decoding"] == 0 and engine["prefilling"] == 0
    assert engine["tokens_generated"] - before < 1500  # stopped long before its 2000 tokens
    info = c.get(f"/sessions/{sid}", cast_to=object)
    assert info["turns"] == 1  # the interrupted turn was not applied
    assert chat(c, "again", sid).choices[0].message.content  # and the session is free again
