"""A tiny selective-copying run (Mamba paper, sec. 3.1; ssmkit.training.tasks): a 2-layer stack of each
family member trains for a few dozen steps and its loss on a fixed held-out batch goes down.

Not a benchmark of which layer is best (too short for that): it checks that each layer learns at all
through a real optimizer loop. The accuracies are printed (pytest -s) for the reports."""

import pytest
import torch
from torch import nn

from ssmkit.layers import RMSNorm
from ssmkit.training.tasks import IGNORE_INDEX, selective_copying

SEQ, N_MEM, VOCAB, D = 24, 4, 8, 32
STEPS, BATCH, LR = 100, 32, 3e-3


def _s5():
    from ssmkit.layers import S5

    return lambda: S5(D, d_state=16)


def _h3():
    from ssmkit.layers import H3

    return lambda: H3(D, d_state=8, head_dim=2)


def _hyena():
    from ssmkit.layers import Hyena

    return lambda: Hyena(D, l_max=SEQ + N_MEM, filter_order=16)


def _s4d():
    from ssmkit.layers import S4D

    return lambda: S4D(D, d_state=16)


def _mamba():
    from ssmkit.layers import Mamba

    return lambda: Mamba(D, d_state=8)


LAYERS = {"S5": _s5, "H3": _h3, "Hyena": _hyena, "S4D": _s4d, "Mamba": _mamba}


class Stack(nn.Module):
    """embedding -> 2 x (x + mixer(norm(x))) -> norm -> linear head."""

    def __init__(self, make):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.norms = nn.ModuleList(RMSNorm(D) for _ in range(2))
        self.mixers = nn.ModuleList(make() for _ in range(2))
        self.norm_f = RMSNorm(D)
        self.head = nn.Linear(D, VOCAB)

    def forward(self, ids):
        x = self.embed(ids)
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        return self.head(self.norm_f(x))


def _loss_acc(model, inputs, targets):
    logits = model(inputs)
    loss = nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX)
    mask = targets != IGNORE_INDEX
    acc = (logits.argmax(-1)[mask] == targets[mask]).float().mean().item()
    return loss, acc


@pytest.mark.parametrize("name", list(LAYERS))
def test_loss_goes_down(name):
    torch.manual_seed(0)
    model = Stack(LAYERS[name]())
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    held_in, held_out = selective_copying(64, SEQ, N_MEM, VOCAB, seed=12345)
    with torch.no_grad():
        loss0, acc0 = _loss_acc(model, held_in, held_out)
    for step in range(STEPS):
        inputs, targets = selective_copying(BATCH, SEQ, N_MEM, VOCAB, seed=step)
        loss, _ = _loss_acc(model, inputs, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss1, acc1 = _loss_acc(model, held_in, held_out)
    print(f"\n{name}: held-out loss {loss0.item():.3f} -> {loss1.item():.3f}, "
          f"accuracy {acc0:.3f} -> {acc1:.3f}")
    assert torch.isfinite(loss1)
    assert loss1.item() < 0.9 * loss0.item(), f"{name}: loss {loss0.item():.3f} -> {loss1.item():.3f}"
