"""The `ssmkit` command as a user runs it (a real process), and tiny run and model directories."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """`python -m ssmkit ARGS` in a subprocess; text output captured."""
    return subprocess.run(
        [sys.executable, "-m", "ssmkit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kw,
    )


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The error of a run that must fail as a user's mistake: exit 2, one line on stderr, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    return r.stderr.strip()


def tiny_corpus(path) -> str:
    os.makedirs(path, exist_ok=True)
    for i in range(6):
        with open(os.path.join(path, f"f{i}.py"), "w") as f:
            f.write("def add(a, b):\n    return a + b\n" * (10 + i))
    return str(path)


def train_args(tmp_path, out: str, **over) -> list[str]:
    """`ssmkit train` arguments for a 1-layer attention model on a tiny corpus (seconds per run)."""
    settings = {
        "corpus": tiny_corpus(tmp_path / "corpus"),
        "cache_dir": str(tmp_path / "cache"),
        "model.layers": "attention",
        "model.d_model": 32,
        "model.n_layer": 1,
        "model.n_head": 2,
        "max_steps": 4,
        "seq_len": 32,
        "batch_size": 4,
        "eval_windows": 2,
        "val_fraction": 0.3,
        "device": "cpu",
        **over,
    }
    args = ["train", "--out", out]
    for k, v in settings.items():
        args += ["--set", f"{k}={v}"]
    return args


def tiny_model_dir(
    path, vocab_size: int = 256, layers: str = "attention", tokenizer: bool = True, **kw
) -> str:
    """A saved SSMForCausalLM (random weights), with the byte tokenizer saved beside it when asked."""
    from ssmkit import SSMConfig, SSMForCausalLM
    from ssmkit.training.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    cfg = SSMConfig(d_model=32, n_layer=1, vocab_size=vocab_size, layers=layers, n_head=2, **kw)
    SSMForCausalLM(cfg).save_pretrained(path)
    if tokenizer:
        ByteTokenizer().save(path)
    return str(path)
