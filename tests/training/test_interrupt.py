"""Stopping a run: SIGTERM / SIGINT finish the step and checkpoint; a second signal stops at once; a
finished run trains nothing; resuming another model is refused; metrics rows are never logged twice."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from ssmkit.training.checkpoint import CHECKPOINT_NAME, ResumeMismatch
from ssmkit.training.data import LMBatches
from ssmkit.training.interrupt import TrainingInterrupted
from ssmkit.training.loop import train
from ssmkit.training.progress import read_metrics, truncate_metrics
from tests.training.test_training import TinyLM, periodic_tokens, tiny_cfg


def _train_signalled_at_step_3(tmp_path, *signums: int, **cfg):
    """Train TinyLM in tmp_path, sending this process `signums` at the end of step 3."""

    def on_step(step, loss):
        if step == 3:
            for s in signums:
                os.kill(os.getpid(), s)

    batches = LMBatches(periodic_tokens(), 16, 4)
    return train(
        TinyLM(), batches, tiny_cfg(max_steps=50, save_every=0, **cfg), out_dir=str(tmp_path), on_step=on_step
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_and_writes_a_checkpoint(tmp_path, signum):
    before = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as e:
        _train_signalled_at_step_3(tmp_path, signum, log_every=1)
    path = str(tmp_path / CHECKPOINT_NAME)
    assert (e.value.step, e.value.checkpoint, e.value.exit_code) == (3, path, 128 + signum)
    assert f"at step 3: stopped; checkpoint written to {path}" in str(e.value)
    assert torch.load(path, weights_only=True)["step"] == 3
    assert [r["step"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [1, 2, 3]
    assert signal.getsignal(signum) is before  # the handlers are the caller's again


def test_a_second_signal_stops_at_once(tmp_path):
    with pytest.raises(KeyboardInterrupt) as e:
        _train_signalled_at_step_3(tmp_path, signal.SIGINT, signal.SIGINT)
    assert not isinstance(e.value, TrainingInterrupted)
    assert not os.path.exists(tmp_path / CHECKPOINT_NAME)


def test_a_finished_run_trains_nothing(tmp_path):
    data = periodic_tokens()
    first = train(TinyLM(), LMBatches(data, 16, 4), tiny_cfg(max_steps=4), out_dir=str(tmp_path))
    assert first.stopped == "max_steps" and first.step == 4
    again = train(TinyLM(), LMBatches(data, 16, 4), tiny_cfg(max_steps=4), out_dir=str(tmp_path))
    assert again.stopped == "finished" and again.step == 4 and again.train_losses == [] and again.evals == []


def test_resuming_another_model_is_refused_before_loading(tmp_path):
    data = periodic_tokens()
    train(TinyLM(d_model=32), LMBatches(data, 16, 4), tiny_cfg(max_steps=4), out_dir=str(tmp_path))
    with pytest.raises(
        ResumeMismatch, match=r"cannot resume from .*parameter .*\(32,\) -> \(16,\).*--no-resume"
    ):
        train(TinyLM(d_model=16), LMBatches(data, 16, 4), tiny_cfg(max_steps=8), out_dir=str(tmp_path))


def test_metrics_rows_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [f'{{"step": {s}, "split": "train", "loss": 1.0}}\n' for s in range(1, 7)]
    path.write_text("".join(rows) + '{"step": 7, "spl')  # a row torn by a kill
    truncate_metrics(str(path), 4)
    assert [r["step"] for r in read_metrics(str(path))] == [1, 2, 3, 4]
    assert path.read_text().endswith("\n")
