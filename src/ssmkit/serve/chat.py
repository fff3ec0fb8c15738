"""Chat messages -> prompt text, with the checkpoint's chat template or a documented default.

The template comes from the model directory: `chat_template.jinja`, else the "chat_template" key of
`tokenizer_config.json` (a string, or a list of {"name", "template"} of which "default" is taken),
as Hugging Face checkpoints ship it; it is rendered with jinja2's sandbox, as transformers does.
Without one, the default is ChatML:

    <|im_start|>system\\nYou are terse.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n

and replies stop at "<|im_end|>". A checkpoint's template stops at its `eos_token`.

A session's state has consumed some text already; a new turn feeds only what the rendered
conversation adds after it (`continuation`), so a turn costs its new tokens, whatever the history.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

DEFAULT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DEFAULT_STOP = "<|im_end|>"
ROLES = ("system", "developer", "user", "assistant", "tool")


class TemplateError(ValueError):
    """The chat template refused the messages (e.g. roles that do not alternate)."""


def _token_text(value) -> str:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content", "")
    return value if isinstance(value, str) else ""


@dataclass
class ChatFormat:
    template: str = DEFAULT_TEMPLATE
    bos_token: str = ""
    eos_token: str = ""
    stop: tuple[str, ...] = (DEFAULT_STOP,)
    source: str = "default (ChatML)"

    def __post_init__(self):
        from jinja2.exceptions import TemplateError as JinjaError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        self._jinja_error = JinjaError
        self._compiled = env.from_string(self.template)

    @classmethod
    def from_model_dir(cls, directory: str | os.PathLike) -> ChatFormat:
        """The checkpoint's template if it ships one, else the default."""
        directory = os.fspath(directory)
        cfg = {}
        cfg_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
        template, source = cfg.get("chat_template"), cfg_path
        jinja_path = os.path.join(directory, "chat_template.jinja")
        if os.path.isfile(jinja_path):
            with open(jinja_path) as f:
                template, source = f.read(), jinja_path
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if not isinstance(template, str) or not template:
            return cls()
        eos = _token_text(cfg.get("eos_token"))
        return cls(template, _token_text(cfg.get("bos_token")), eos, (eos,) if eos else (), source)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        try:
            return self._compiled.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError:
            raise
        except self._jinja_error as e:
            raise TemplateError(f"the chat template failed on these messages: {e}") from e

    def continuation(self, consumed: str, history: list[dict], new: list[dict]) -> str:
        """The text to feed after `consumed` so the state reads the rendered history + new messages.

        Where the rendering departs from what was consumed (a reply cut by a stop string the
        template does not write), the state keeps what it read and the rest of the rendering follows.
        """
        full = self.render(history + new, add_generation_prompt=True)
        n = 0
        for a, b in zip(full, consumed):
            if a != b:
                break
            n += 1
        return full[n:]


def normalize_messages(messages) -> list[dict]:
    """OpenAI chat messages -> [{"role", "content": str}]; a ValueError names the bad field."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {list(ROLES)}, got {role!r}")
        if isinstance(content, list):  # content parts: only text is supported
            parts = []
            for j, p in enumerate(content):
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise ValueError(
                        f"messages[{i}].content[{j}] must be a text part {{type: text, text: str}}"
                    )
                parts.append(p["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string or a list of text parts")
        out.append({"role": role, "content": content})
    return out
