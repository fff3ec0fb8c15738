"""The training loop: learning, exact kill-and-resume, parameter groups, atomic checkpoints, evaluation."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.training.checkpoint import CHECKPOINT_NAME, atomic_save, load_checkpoint, save_checkpoint
from ssmkit.training.config import TrainConfig
from ssmkit.training.data import LMBatches, TokenArray, eval_windows
from ssmkit.training.evaluation import evaluate
from ssmkit.training.loop import train
from ssmkit.training.optim import build_optimizer, build_scheduler, param_groups, warmup_cosine
from ssmkit.training.progress import read_metrics


class TinyLM(nn.Module):
    """Stand-in causal LM (embedding -> causal depthwise conv -> MLP -> logits), HF-style shifted labels.

    It has an `A_log` and a `D` (declared without weight decay, as the SSM layers declare theirs) so the
    parameter groups can be checked without the SSM layers.
    """

    no_weight_decay = ("A_log", "D")

    def __init__(self, vocab_size: int = 32, d_model: int = 32, kernel: int = 4):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.conv = nn.Conv1d(d_model, d_model, kernel, groups=d_model, padding=kernel - 1)
        self.A_log = nn.Parameter(torch.zeros(d_model, 2))
        self.D = nn.Parameter(torch.ones(d_model))
        self.norm = nn.LayerNorm(d_model)
        self.layers = nn.ModuleList(
            [nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))]
        )
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, input_ids, labels=None):
        x = self.embedding(input_ids)  # (b, l, d)
        L = x.shape[1]
        h = self.conv(x.transpose(1, 2))[..., :L].transpose(1, 2)  # causal: drop the look-ahead
        h = h * torch.exp(self.A_log).mean(-1) + self.D * x
        for layer in self.layers:
            h = h + layer(self.norm(h))
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return SimpleNamespace(logits=logits, loss=loss, aux_loss=None)


def periodic_tokens(n: int = 4000, vocab: int = 32, seed: int = 0) -> TokenArray:
    """A learnable stream: a fixed random order of the vocabulary, repeated."""
    order = np.random.default_rng(seed).permutation(vocab)
    return TokenArray.from_ids(np.tile(order, n // vocab + 1)[:n].astype(np.uint8))


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(
        max_steps=8,
        batch_size=4,
        seq_len=16,
        lr=1e-2,
        warmup_steps=2,
        eval_every=0,
        log_every=100,
        save_every=3,
        device="cpu",
        seed=0,
    )
    return TrainConfig(**{**base, **kw})


def test_loss_goes_down_on_a_tiny_task():
    torch.manual_seed(0)
    data = periodic_tokens()
    model = TinyLM()
    cfg = tiny_cfg(max_steps=40, save_every=0, eval_every=20)
    res = train(
        model, LMBatches(data, 16, 8), cfg, val_windows=eval_windows(data, 16, 8), bytes_per_token=1.0
    )
    first, last = res.train_losses[0][1], res.train_losses[-1][1]
    assert first > 3.0 and last < 0.5 * first, (first, last)
    assert res.evals[-1]["acc"] > 0.9 and res.evals[-1]["bpb"] < 1.0
    assert [e["step"] for e in res.evals] == [20, 40]


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    data = periodic_tokens()
    torch.manual_seed(1)
    full = TinyLM()
    ref = train(full, LMBatches(data, 16, 4, seed=3), tiny_cfg(grad_accum=2), out_dir=str(tmp_path / "a"))

    class Killed(Exception):
        pass

    def kill_at_5(step, loss):
        if step == 5:
            raise Killed

    torch.manual_seed(1)
    with pytest.raises(Killed):
        train(
            TinyLM(),
            LMBatches(data, 16, 4, seed=3),
            tiny_cfg(grad_accum=2, log_every=1),
            out_dir=str(tmp_path / "b"),
            on_step=kill_at_5,
        )
    assert torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)["step"] == 3
    metrics = str(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in read_metrics(metrics)] == [1, 2, 3, 4, 5]  # 4 and 5: after the checkpoint
    torch.manual_seed(123)  # a different process would start from other weights and RNG
    resumed_model = TinyLM()
    resumed = train(
        resumed_model,
        LMBatches(data, 16, 4, seed=3),
        tiny_cfg(grad_accum=2, log_every=1),
        out_dir=str(tmp_path / "b"),
    )
    assert [s for s, _ in resumed.train_losses] == [4, 5, 6, 7, 8]
    assert resumed.train_losses == ref.train_losses[3:]  # same losses, bitwise
    rows = read_metrics(metrics)
    assert [r["step"] for r in rows] == list(range(1, 9))  # no step logged twice
    assert [r["loss"] for r in rows] == [loss for _, loss in ref.train_losses]
    for k, v in _weights(full).items():
        assert torch.equal(v, resumed_model.state_dict()[k]), k


def test_param_groups_no_decay_on_ssm_params():
    model = TinyLM()
    model.embedding.no_weight_decay = ("weight",)  # a module's declaration wins over the matrix rule
    groups = param_groups(model, weight_decay=0.1)
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    decayed = {n for n, p in names.items() if by_id[id(p)] > 0}
    assert decayed == {"conv.weight", "layers.0.0.weight", "layers.0.2.weight", "head.weight"}
    assert len(by_id) == len(names)  # every parameter exactly once


def test_param_groups_honour_a_layer_hook_and_tied_weights():
    class WithGroups(nn.Module):
        def __init__(self):
            super().__init__()
            self.log_dt = nn.Parameter(torch.zeros(4))
            self.B = nn.Parameter(torch.zeros(4, 4))

        def param_groups(self):
            return [{"params": [self.B], "weight_decay": 0.0, "lr": 1e-3}]

    model = nn.Module()
    model.inner = WithGroups()
    model.emb = nn.Embedding(8, 4)
    model.head = nn.Linear(4, 8, bias=False)
    model.head.weight = model.emb.weight  # tied
    groups = param_groups(model, 0.1)
    assert sum(len(g["params"]) for g in groups) == 3
    hooked = [g for g in groups if g.get("lr") == 1e-3]
    assert len(hooked) == 1 and hooked[0]["params"][0] is model.inner.B
    opt = build_optimizer(model, lr=1e-2)
    assert any(g["lr"] == 1e-3 for g in opt.param_groups)


def test_warmup_cosine_shape():
    f = [warmup_cosine(s, 10, 100, 0.1) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_atomic_checkpoint_survives_a_crash_mid_write(tmp_path, monkeypatch):
    model = TinyLM()
    opt = build_optimizer(model, 1e-3)
    sched = build_scheduler(opt, 2, 10, 0.1)
    path = str(tmp_path / CHECKPOINT_NAME)
    save_checkpoint(path, model, opt, sched, step=7)
    before = _weights(model)

    def torn_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, opt, sched, step=8)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]  # no temporary file left behind
    fresh = TinyLM()
    ckpt = load_checkpoint(path, fresh, build_optimizer(fresh, 1e-3))
    assert ckpt["step"] == 7
    for k, v in before.items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = str(tmp_path / "c.pt")
    atomic_save({"x": torch.ones(1000)}, path)
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(path, TinyLM())


def test_evaluate_uniform_model_gives_log_vocab():
    class Uniform(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, ids, labels=None):
            return SimpleNamespace(logits=torch.zeros(*ids.shape, 64) + self.w)

    windows = torch.randint(0, 64, (5, 9))
    r = evaluate(Uniform(), windows, batch_size=2, bytes_per_token=2.0)
    assert r["loss"] == pytest.approx(math.log(64), rel=1e-6)
    assert r["bits_per_token"] == pytest.approx(6.0, rel=1e-6) and r["bpb"] == pytest.approx(3.0, rel=1e-6)
    assert r["ppl"] == pytest.approx(64.0, rel=1e-5)


def _ssm_lm(layers="attention"):
    from ssmkit.models.config import SSMConfig
    from ssmkit.models.heads import SSMForCausalLM

    torch.manual_seed(0)
    return SSMForCausalLM(
        SSMConfig(d_model=32, n_layer=2, vocab_size=32, layers=layers, n_head=2, d_intermediate=64)
    )


def test_gradient_checkpointing_same_gradients():
    from ssmkit.training.loop import enable_gradient_checkpointing

    ids = torch.randint(0, 32, (2, 12))
    a, b = _ssm_lm(), _ssm_lm()
    assert enable_gradient_checkpointing(b) == 2
    a(ids, labels=ids).loss.backward()
    b(ids, labels=ids).loss.backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_trains_the_real_model_with_bf16_autocast():
    model = _ssm_lm()
    data = periodic_tokens()
    res = train(
        model,
        LMBatches(data, 16, 4),
        tiny_cfg(max_steps=6, save_every=0, dtype="bfloat16"),
        val_windows=eval_windows(data, 16, 4),
        bytes_per_token=1.0,
    )
    assert all(math.isfinite(loss) for _, loss in res.train_losses)
    assert res.train_losses[-1][1] < res.train_losses[0][1]
    assert math.isfinite(res.evals[-1]["bpb"])


def test_max_time_stops_with_a_checkpoint(tmp_path):
    res = train(
        TinyLM(),
        LMBatches(periodic_tokens(), 16, 4),
        tiny_cfg(max_steps=10_000, max_time=0.3),
        out_dir=str(tmp_path),
    )
    assert res.stopped == "max_time" and res.step < 10_000
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["step"] == res.step


def test_trains_a_sequence_classifier_through_the_loop():
    from ssmkit.models.config import SSMConfig
    from ssmkit.models.heads import SSMForSequenceClassification
    from ssmkit.training.datasets import ArrayBatches

    torch.manual_seed(0)
    X = torch.randint(0, 8, (64, 12))
    y = (X == 3).any(1).long()  # class: does token 3 occur?
    model = SSMForSequenceClassification(
        SSMConfig(d_model=32, n_layer=1, vocab_size=8, layers="attention", n_head=2, n_classes=2)
    )

    @torch.no_grad()
    def evaluator(m):
        out = m(X, labels=y)
        return {"loss": out.loss.item(), "acc": (out.logits.argmax(-1) == y).float().mean().item()}

    res = train(
        model,
        ArrayBatches({"inputs": X, "labels": y}, 16),
        tiny_cfg(max_steps=30, save_every=0),
        evaluator=evaluator,
    )
    assert res.evals[-1]["loss"] < 0.5 * res.train_losses[0][1]
    assert res.tokens == 30 * 16 * 12


_KILLED_RUN = """
import sys, time, torch
torch.set_num_threads({threads})  # as the parent: float reductions depend on the thread count
sys.path.insert(0, {root!r})
from tests.training.test_training import TinyLM, periodic_tokens, tiny_cfg
from ssmkit.training.data import LMBatches
from ssmkit.training.loop import train
torch.manual_seed(1)
train(TinyLM(), LMBatches(periodic_tokens(), 16, 4, seed=3), tiny_cfg(max_steps=12, save_every=2),
      out_dir={out!r}, on_step=lambda step, loss: time.sleep(0.2))
"""


def test_sigkilled_process_resumes_to_the_same_weights(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    torch.manual_seed(1)
    full = TinyLM()
    train(full, LMBatches(periodic_tokens(), 16, 4, seed=3), tiny_cfg(max_steps=12, save_every=2))

    out = str(tmp_path / "run")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = _KILLED_RUN.format(root=root, out=out, threads=torch.get_num_threads())
    proc = subprocess.Popen([sys.executable, "-c", code])
    ckpt = os.path.join(out, CHECKPOINT_NAME)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(ckpt) and torch.load(ckpt, weights_only=True)["step"] >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 4 <= step < 12
    torch.manual_seed(99)
    resumed = TinyLM()
    res = train(
        resumed,
        LMBatches(periodic_tokens(), 16, 4, seed=3),
        tiny_cfg(max_steps=12, save_every=2),
        out_dir=out,
    )
    assert res.train_losses[0][0] == step + 1
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_time_schedule_follows_the_clock(tmp_path):
    import time

    from ssmkit.training.optim import warmup_cosine_time

    assert warmup_cosine_time(0, 4, 0.9, 0.1) == pytest.approx(0.25)  # warm-up by steps
    assert warmup_cosine_time(10, 4, 0.0, 0.1) == pytest.approx(1.0)
    assert warmup_cosine_time(10, 4, 0.5, 0.1) == pytest.approx(0.55)
    assert warmup_cosine_time(10, 4, 2.0, 0.1) == pytest.approx(0.1)
    batches = LMBatches(periodic_tokens(), 16, 4)
    # The budget is ~20 of this machine's steps as it runs now, so a loaded machine still takes many.
    probe = train(TinyLM(), batches, tiny_cfg(max_steps=3, save_every=0))
    budget = max(0.5, 20 * probe.elapsed / 3)
    cfg = tiny_cfg(
        max_steps=100_000, max_time=budget, schedule="time", save_every=0, warmup_steps=0, log_every=1
    )
    stamps: list[float] = []
    started = time.perf_counter()
    res = train(
        TinyLM(), batches, cfg, out_dir=str(tmp_path), on_step=lambda s, l: stamps.append(time.perf_counter())
    )
    assert res.stopped == "max_time" and res.step > 5
    assert res.train_losses[-1][1] < res.train_losses[0][1]
    # Step k+1 set its rate between the ends of steps k and k+1, at the fraction of the budget spent
    # since the run's clock started (after `started`, before the end of step 1): the cosine of that.
    lrs = [r["lr"] for r in read_metrics(str(tmp_path / "metrics.jsonl")) if r["split"] == "train"]
    assert len(lrs) == res.step == len(stamps)
    for k in range(1, len(lrs)):
        spent_min, spent_max = (stamps[k - 1] - stamps[0]) / budget, (stamps[k] - started) / budget
        factor = lrs[k] / cfg.lr
        assert warmup_cosine_time(k, 0, spent_max, 0.1) - 1e-9 <= factor, (k, factor, spent_max)
        assert factor <= warmup_cosine_time(k, 0, spent_min, 0.1) + 1e-9, (k, factor, spent_min)
    assert lrs[-1] < 0.5 * cfg.lr  # the end of the budget is the end of the schedule


def test_non_finite_loss_stops_training_naming_the_step(tmp_path):
    """A loss that turns NaN stops the run before the update, with the step in the message; the last
    checkpoint holds finite weights."""
    from ssmkit.training.loop import TrainingDiverged

    model = TinyLM()

    def poison(step, loss):
        if step == 5:  # after step 5's update, after the checkpoint of step 4
            with torch.no_grad():
                model.head.weight[0, 0] = float("nan")

    cfg = tiny_cfg(max_steps=8, save_every=2)
    with pytest.raises(TrainingDiverged, match="the loss is nan at step 6"):
        train(model, LMBatches(periodic_tokens(), 16, 4), cfg, out_dir=str(tmp_path), on_step=poison)
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
