"""Ctrl-C during `ssmkit train` leaves a checkpoint and says where; the same command resumes from it
(saying so, with no metrics row twice); once finished, it says so and trains nothing (issue 16 item 12)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import torch

from ssmkit.cli import main
from ssmkit.training.progress import read_metrics
from tests.cli.cli_process import ROOT, train_args


def _train_steps(path) -> list[int]:
    return [r["step"] for r in read_metrics(path) if r["split"] == "train"]


def _interrupt_a_run(tmp_path, out) -> tuple[int, str]:
    """Start a long run as a real process, Ctrl-C it once it has logged a few steps: (exit code, stderr)."""
    args = train_args(tmp_path, str(out), max_steps=100_000, log_every=1, eval_every=0, save_every=0)
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ssmkit", *args], stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT
        )
        metrics, deadline = out / "metrics.jsonl", time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    return proc.returncode, (tmp_path / "stderr.txt").read_text()


def test_ctrl_c_checkpoints_then_the_same_command_resumes_then_says_finished(tmp_path, capsys):
    out = tmp_path / "run"
    ckpt = out / "checkpoint.pt"
    code, stderr = _interrupt_a_run(tmp_path, out)
    assert code == 130 and "Traceback" not in stderr, stderr
    m = re.search(r"ssmkit train: SIGINT at step (\d+): stopped; checkpoint written to (\S+);", stderr)
    assert m, stderr
    step = int(m[1])
    assert m[2] == str(ckpt) and torch.load(ckpt, weights_only=True)["step"] == step >= 3
    assert _train_steps(out / "metrics.jsonl") == list(range(1, step + 1))

    resume = train_args(tmp_path, str(out), max_steps=step + 3, log_every=1, eval_every=0, save_every=0)
    assert main(resume) == 0
    captured = capsys.readouterr()
    assert f"resuming from step {step} (checkpoint {ckpt})" in captured.err
    assert f"to step {step + 3} (max_steps)" in captured.out
    assert _train_steps(out / "metrics.jsonl") == list(range(1, step + 4))  # each step once

    before = (os.path.getmtime(ckpt), (out / "metrics.jsonl").read_text())
    assert main(resume) == 0
    captured = capsys.readouterr()
    assert f"this run is finished (step {step + 3} of max_steps {step + 3}" in captured.out
    assert "resuming" not in captured.err and "--no-resume" in captured.out
    assert (os.path.getmtime(ckpt), (out / "metrics.jsonl").read_text()) == before
