"""README.md stays true: its Python example runs, and its two commands are the Makefile's targets."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_python_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", _readme(), flags=re.S)
    assert blocks, "README.md has no Python example"
    code = blocks[0].replace("/tmp/chat.safetensors", str(tmp_path / "chat.safetensors"))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["y"].shape == scope["x"].shape
    assert scope["out"].shape == (1, 20) and scope["more"].shape == (1, 9)
    # the resumed state continued the transcript: same tokens as reading it all afresh
    torch = scope["torch"]
    whole = torch.cat([scope["first"], torch.tensor([[10]])], 1)
    again = scope["model"].generate(whole, max_new_tokens=8)
    assert torch.equal(again[:, whole.shape[1]:], scope["more"][:, 1:])


def test_two_commands_are_make_targets_and_ci_runs_the_test_one():
    text = _readme()
    assert "make demo" in text and "make test" in text
    with open(os.path.join(ROOT, "Makefile")) as f:
        make = f.read()
    assert re.search(r"^demo:", make, flags=re.M) and re.search(r"^test:", make, flags=re.M)
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert "make test" in f.read()
