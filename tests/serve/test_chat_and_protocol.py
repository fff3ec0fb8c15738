"""Chat templates (default, from tokenizer_config.json, chat_template.jinja), what a session's turn
feeds, request checks naming the field, ServeConfig overrides and the `serve` command line."""

from __future__ import annotations

import json

import pytest

from ssmkit.cli import main
from ssmkit.serve.chat import DEFAULT_STOP, ChatFormat, TemplateError, normalize_messages
from ssmkit.serve.config import ServeConfig
from ssmkit.serve.protocol import APIError, parse_completion

HF_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
    "{% endif %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def test_default_template_is_chatml():
    fmt = ChatFormat()
    text = fmt.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert fmt.stop == (DEFAULT_STOP,)


def test_template_from_the_checkpoint(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "kind": "bytes",
                "chat_template": HF_TEMPLATE,
                "bos_token": "<s>",
                "eos_token": {"content": "</s>"},
            }
        )
    )
    fmt = ChatFormat.from_model_dir(tmp_path)
    assert fmt.render([{"role": "user", "content": "Hi"}]) == "<s>[user] Hi</s>[assistant] "
    assert fmt.stop == ("</s>",) and fmt.source.endswith("tokenizer_config.json")
    with pytest.raises(TemplateError, match="no system"):
        fmt.render([{"role": "system", "content": "x"}])
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ messages|length }}"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert ChatFormat.from_model_dir(tmp_path).render([{"role": "user", "content": "x"}]) == "D1"
    (tmp_path / "chat_template.jinja").write_text("J{{ messages[0]['content'] }}")
    assert ChatFormat.from_model_dir(tmp_path).render([{"role": "user", "content": "x"}]) == "Jx"
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"kind": "bytes"}))
    assert ChatFormat.from_model_dir(tmp_path).template == ChatFormat().template


def test_continuation_feeds_only_what_is_new():
    fmt = ChatFormat()
    first = [{"role": "user", "content": "Hi"}]
    consumed = fmt.render(first) + "Hello!" + DEFAULT_STOP  # the reply stopped at <|im_end|>, consumed too
    history = first + [{"role": "assistant", "content": "Hello!"}]
    new = [{"role": "user", "content": "Bye"}]
    delta = fmt.continuation(consumed, history, new)
    assert delta == "\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    assert consumed + delta == fmt.render(history + new)
    cut = fmt.render(first) + "Hel"  # a reply cut by max_tokens: the template closes it
    delta = fmt.continuation(cut, first + [{"role": "assistant", "content": "Hel"}], new)
    assert delta.startswith("<|im_end|>\n<|im_start|>user")
    assert fmt.continuation("", [], new) == fmt.render(new)  # a new session reads everything


def test_messages_are_checked():
    assert normalize_messages(
        [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    ) == [{"role": "user", "content": "ab"}]
    for bad, word in [
        ([], "non-empty"),
        ([{"role": "cat", "content": "x"}], "role"),
        ([{"role": "user", "content": 3}], "content"),
        (["hi"], "object"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "text part"),
    ]:
        with pytest.raises(ValueError, match=word):
            normalize_messages(bad)


def test_completion_request_checks_name_the_field():
    ok = parse_completion(
        {
            "model": "m",
            "prompt": "x",
            "max_tokens": 5,
            "temperature": 0,
            "top_p": 0.5,
            "stop": "\n",
            "seed": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
            "session_id": "sess_1",
            "user": "ignored",
        },
        chat=False,
        max_tokens_limit=100,
        default_max_tokens=50,
    )
    assert (ok.params.max_tokens, ok.params.temperature, ok.params.top_p, ok.params.stop, ok.params.seed) == (
        5,
        0.0,
        0.5,
        ("\n",),
        3,
    )
    assert ok.stream and ok.include_usage and ok.session_id == "sess_1"
    chat = parse_completion(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 7},
        chat=True,
        max_tokens_limit=100,
        default_max_tokens=50,
    )
    assert chat.params.max_tokens == 7
    assert (
        parse_completion(
            {"model": "m", "messages": [{"role": "user", "content": "x"}]},
            chat=True,
            max_tokens_limit=100,
            default_max_tokens=50,
        ).params.max_tokens
        == 50
    )
    for body, param in [
        ({"prompt": "x"}, "model"),
        ({"model": "m", "prompt": "x", "max_tokens": 101}, "max_tokens"),
        ({"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"model": "m", "prompt": "x", "temperature": 2.5}, "temperature"),
        ({"model": "m", "prompt": "x", "seed": 1.5}, "seed"),
        ({"model": "m", "prompt": "x", "stop": [""]}, "stop"),
        ({"model": "m", "prompt": "x", "logprobs": 2}, "logprobs"),
        ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
        ({"model": "m", "prompt": "x", "session_id": 5}, "session_id"),
    ]:
        with pytest.raises(APIError) as e:
            parse_completion(body, chat=False, max_tokens_limit=100, default_max_tokens=50)
        assert e.value.status == 400 and e.value.param == param


def test_serve_config_overrides():
    cfg = ServeConfig().with_overrides(["max_batch=8", "prefix_cache_mb=0", "persist_prefixes=true"])
    assert (cfg.max_batch, cfg.prefix_cache_mb, cfg.persist_prefixes) == (8, 0.0, True)
    for bad in (["max_batch"], ["nope=1"], ["max_batch=x"], ["persist_prefixes=maybe"], ["api_keys=a"]):
        with pytest.raises(ValueError, match="--set"):
            ServeConfig().with_overrides(bad)
    with pytest.raises(ValueError, match="max_batch"):
        ServeConfig(max_batch=0)


def test_serve_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0 and "--api-key" in capsys.readouterr().out
    assert main(["serve", str(tmp_path / "none")]) == 2
    assert "no such directory" in capsys.readouterr().err
