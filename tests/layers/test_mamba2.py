"""Mamba2 layer: parity with transformers' Mamba2Mixer, the five laws, packed and padded inputs, inits."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssmkit.layers import Mamba2
from tests.helpers import assert_rel, check_laws

D_MODEL = 16


def small(**kw):
    kw = {"d_state": 8, "headdim": 8, "ngroups": 2, "chunk_size": 8, **kw}
    return Mamba2(D_MODEL, expand=2, **kw)


@pytest.mark.parametrize("dt_limit", [(0.0, math.inf), (0.01, 0.05)])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_parity_with_transformers_forward_and_step(backend, dt_limit):
    tf = pytest.importorskip("transformers")
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    cfg = tf.Mamba2Config(
        hidden_size=D_MODEL,
        state_size=8,
        expand=2,
        head_dim=8,
        num_heads=4,
        n_groups=2,
        chunk_size=8,
        time_step_limit=dt_limit,
    )
    theirs = Mamba2Mixer(cfg, layer_idx=0).eval()
    with torch.no_grad():  # their init: A_log = log(1..H), D = 1; move away from it
        theirs.A_log.copy_(torch.log(torch.rand(4) * 8 + 1))
        theirs.D.copy_(torch.randn(4))
    ours = small(dt_limit=dt_limit, backend=backend).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 21, D_MODEL)
    with torch.no_grad():
        expected = theirs(x)
        y = ours(x)
        state, ys = ours.init_state(2), []
        for t in range(x.shape[1]):
            y_t, state = ours.step(x[:, t], state)
            ys.append(y_t)
    assert_rel(y, expected, 1e-4, "forward vs transformers")
    assert_rel(torch.stack(ys, 1), expected, 1e-4, "step-by-step vs transformers")


@pytest.mark.parametrize("kw", [{}, {"rmsnorm": False, "D_has_hdim": True, "ngroups": 1}])
def test_laws(kw):
    check_laws(small(**kw), torch.randn(2, 13, D_MODEL))


def test_bidirectional_sees_the_future_and_has_no_state():
    layer = small(bidirectional=True)
    check_laws(layer, torch.randn(2, 12, D_MODEL), causal=False)
    with pytest.raises(RuntimeError, match="bidirectional=True"):
        layer.step(torch.randn(2, D_MODEL), {})


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_equals_separate(bidirectional):
    layer = small(bidirectional=bidirectional).eval()
    lengths = [5, 2, 12]
    seqs = [torch.randn(1, n, D_MODEL) for n in lengths]
    packed = torch.cat(seqs, 1)
    cu = torch.tensor([0, 5, 7, 19])
    with torch.no_grad():
        y = layer(packed, cu_seqlens=cu)
        alone = torch.cat([layer(s) for s in seqs], 1)
        assert_rel(y, alone, 1e-5, "packed")
        if not bidirectional:
            # the state returned continues the last sequence (its conv taps too)
            _, s_packed = layer(packed, cu_seqlens=cu, return_state=True)
            _, s_last = layer(seqs[-1], return_state=True)
            for k in s_last:
                assert_rel(s_packed[k], s_last[k], 1e-5, f"final state {k}")
            short = torch.cat(seqs[:2], 1)  # last sequence (2 tokens) shorter than d_conv - 1
            _, s_short = layer(short, cu_seqlens=torch.tensor([0, 5, 7]), return_state=True)
            _, s_alone = layer(seqs[1], return_state=True)
            assert_rel(s_short["conv"], s_alone["conv"], 1e-6, "conv state of a short last sequence")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_left_padded_equals_unpadded(bidirectional):
    layer = small(bidirectional=bidirectional, dt_limit=(0.001, 1.0)).eval()
    a, b = torch.randn(1, 11, D_MODEL), torch.randn(1, 6, D_MODEL)
    batch = torch.cat([a, torch.cat([torch.randn(1, 5, D_MODEL) * 5, b], 1)], 0)
    mask = torch.tensor([[1] * 11, [0] * 5 + [1] * 6])
    with torch.no_grad():
        y = layer(batch, attention_mask=mask)
        assert_rel(y[:1], layer(a), 1e-5, "row without pads")
        assert_rel(y[1:, 5:], layer(b), 1e-5, "left-padded row")


def test_published_inits_and_no_weight_decay_flags():
    layer = Mamba2(32, d_state=16, headdim=16, dt_min=0.01, dt_max=0.05, A_init_range=(2, 4))
    assert layer.nheads == 4
    dt = F.softplus(layer.dt_bias.detach())
    assert dt.min() >= 0.01 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    A = torch.exp(layer.A_log.detach())
    assert A.min() >= 2 - 1e-5 and A.max() <= 4 + 1e-5
    from ssmkit.training.optim import param_groups

    no_decay = {id(p) for g in param_groups(layer, 0.1) if g["weight_decay"] == 0.0 for p in g["params"]}
    assert {id(p) for p in (layer.A_log, layer.D, layer.dt_bias)} <= no_decay
    keys = set(layer.state_dict())
    assert {
        "in_proj.weight",
        "conv1d.weight",
        "conv1d.bias",
        "dt_bias",
        "A_log",
        "D",
        "norm.weight",
        "out_proj.weight",
    } == keys
    assert tuple(layer.in_proj.weight.shape) == (2 * 64 + 2 * 16 + 4, 32)


def test_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"d_inner = expand \* d_model = 2 \* 16 = 32 .* headdim=12"):
        Mamba2(16, headdim=12)
    with pytest.raises(ValueError, match="ngroups=3 must divide nheads = d_inner / headdim = 4"):
        Mamba2(16, headdim=8, ngroups=3)
    with pytest.raises(ValueError, match="seq_idx must be nondecreasing"):
        small()(torch.randn(1, 3, D_MODEL), seq_idx=torch.tensor([[1, 0, 0]]))
