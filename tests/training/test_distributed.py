"""Two CPU processes (gloo, DDP) == one process with the same global batch, after N optimizer steps."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssmkit.training import distributed as D
from ssmkit.training.data import LMBatches
from ssmkit.training.loop import train
from tests.training.test_training import TinyLM, periodic_tokens, tiny_cfg

STEPS, GLOBAL_BATCH = 4, 8


def _run(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    info = D.setup("cpu")
    assert (info.rank, info.world_size) == (rank, world)
    torch.manual_seed(0)
    model = TinyLM()
    batches = LMBatches(
        periodic_tokens(), 16, GLOBAL_BATCH, seed=5, rank=info.rank, world_size=info.world_size
    )
    cfg = tiny_cfg(max_steps=STEPS, grad_accum=2, save_every=0, lr=3e-2)
    res = train(model, batches, cfg, info=info)
    if info.is_main:
        torch.save({"weights": model.state_dict(), "losses": res.train_losses}, out)
    D.cleanup()


def test_two_processes_equal_one(tmp_path):
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    _run(0, 1, "", one)
    mp.spawn(_run, args=(2, str(tmp_path / "init"), two), nprocs=2, join=True)
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    for (_, la), (_, lb) in zip(a["losses"], b["losses"]):
        assert abs(la - lb) < 1e-5
    torch.manual_seed(0)
    init = TinyLM().state_dict()
    assert not torch.equal(a["weights"]["head.weight"], init["head.weight"])  # training moved the weights
    for k, v in a["weights"].items():
        torch.testing.assert_close(b["weights"][k], v, rtol=1e-5, atol=1e-5, msg=k)


def test_rank_shards_cover_the_global_batch():
    data = periodic_tokens()
    whole = LMBatches(data, 16, 8, seed=2).get(3, 1)["input_ids"]
    parts = [LMBatches(data, 16, 8, seed=2, rank=r, world_size=4).get(3, 1)["input_ids"] for r in range(4)]
    assert torch.equal(torch.cat(parts), whole)
    assert os.environ.get("WORLD_SIZE", "1") == "1"


def _run_signalled(rank: int, world: int, init_file: str, out: str) -> None:
    """Rank 1 alone gets SIGTERM after step 2: both ranks must stop there, and rank 0 checkpoint it."""
    import signal

    from ssmkit.training.interrupt import TrainingInterrupted

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    info = D.setup("cpu")
    batches = LMBatches(periodic_tokens(), 16, GLOBAL_BATCH, seed=5, rank=rank, world_size=world)

    def on_step(step, loss):
        if step == 2 and rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        train(
            TinyLM(), batches, tiny_cfg(max_steps=50, save_every=0), out_dir=out, info=info, on_step=on_step
        )
        stopped = "not stopped"
    except TrainingInterrupted as e:
        stopped = f"{e.step} {e.exit_code}"
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(stopped)
    D.cleanup()


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    from ssmkit.training.checkpoint import CHECKPOINT_NAME

    out = str(tmp_path / "run")
    os.makedirs(out)
    mp.spawn(_run_signalled, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    assert [open(os.path.join(out, f"rank{r}.txt")).read() for r in range(2)] == ["2 143", "2 143"]
    assert torch.load(os.path.join(out, CHECKPOINT_NAME), weights_only=True)["step"] == 2
