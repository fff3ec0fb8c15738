"""Parallel (Falcon-H1's block): branches side by side, and the Mamba-2 / GatedMLP options Falcon-H1 uses."""

import pytest
import torch
import torch.nn.functional as F

from ssmkit.layers import Mamba2
from ssmkit.layers.mlp import GatedMLP
from ssmkit.layers.parallel import Parallel
from tests.helpers import assert_rel

M2 = {"d_state": 8, "headdim": 8, "chunk_size": 4}


def _parallel(**kw):
    torch.manual_seed(0)
    return Parallel(
        16,
        mixers={"mamba2": M2, "attention": {}},
        n_head=4,
        n_kv_head=2,
        in_multipliers={"mamba2": 1.3, "attention": 0.7},
        out_multipliers={"attention": 1.5},
        **kw,
    )


def test_output_is_the_weighted_sum_of_the_branches_and_steps_agree():
    layer = _parallel()
    x = torch.randn(2, 9, 16)
    m, a = layer.branches["mamba2"], layer.branches["attention"]
    want = m(1.3 * x) + 1.5 * a(0.7 * x)
    y, state = layer(x, return_state=True)
    assert_rel(y, want, 1e-6, "parallel forward")
    assert sorted(state) == ["attention.k", "attention.pos", "attention.v", "mamba2.conv", "mamba2.ssm"]
    # one call vs a chunk and token-by-token steps with the state carried
    y1, st = layer(x[:, :5], state=layer.init_state(2), return_state=True)
    steps = []
    for t in range(5, 9):
        y_t, st = layer.step(x[:, t], st)
        steps.append(y_t)
    assert_rel(torch.cat([y1, torch.stack(steps, 1)], 1), y, 1e-5, "chunk + steps vs one call")


def test_states_batch_through_each_branch():
    layer = _parallel()
    xs = [torch.randn(1, n, 16) for n in (3, 6)]
    states = [layer(x, return_state=True)[1] for x in xs]
    both = Parallel.cat_states(states)
    assert both["attention.k"].shape[2] == 6  # the shorter cache left-padded
    x_t = torch.randn(2, 16)
    y, _ = layer.step(x_t, both)
    for i, s in enumerate(states):
        assert_rel(y[i : i + 1], layer.step(x_t[i : i + 1], s)[0], 1e-5, f"row {i}")
        row = Parallel.select_state(both, slice(i, i + 1))
        assert_rel(layer.step(x_t[i : i + 1], row)[0], y[i : i + 1], 1e-5, f"selected row {i}")


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match="in_multipliers names \\['ssm'\\]"):
        Parallel(16, mixers={"mamba2": M2}, in_multipliers={"ssm": 2.0})
    with pytest.raises(ValueError, match="non-empty dict"):
        Parallel(16, mixers={})


def test_mamba2_in_proj_multipliers_scale_in_proj_rows_and_norm_before_gate():
    torch.manual_seed(0)
    mult = (1.2, 0.8, 0.9, 1.1, 0.7)
    m = Mamba2(16, **M2, in_proj_multipliers=mult)
    plain = Mamba2(16, **M2)
    plain.load_state_dict(m.state_dict())
    d, gn, h = m.d_inner, m.ngroups * m.d_state, m.nheads
    rows = torch.cat([torch.full((n,), f) for n, f in zip((d, d, gn, gn, h), mult)])
    with torch.no_grad():
        plain.in_proj.weight.mul_(rows[:, None])
    x = torch.randn(2, 7, 16)
    assert_rel(m(x), plain(x), 1e-5, "in_proj_multipliers vs scaled rows")

    # norm_before_gate: RMSNorm per group of y, times the weight, then the gate silu(z)
    before = Mamba2(16, **M2, norm_before_gate=True, norm_eps=1e-3)
    with torch.no_grad():
        before.norm.weight.uniform_(0.5, 1.5)
    y, z = torch.randn(2, 7, d), torch.randn(2, 7, d)
    g = y.view(2, 7, m.ngroups, -1)
    ref = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + 1e-3)).view(2, 7, d) * before.norm.weight
    assert_rel(before._gated_norm(y, z), ref * F.silu(z), 1e-5, "norm before gate")
    y_full, st = before(x, return_state=True)
    y0, st0 = before(x[:, :6], return_state=True)
    y_t, _ = before.step(x[:, 6], st0)
    assert_rel(y_t, y_full[:, 6], 1e-5, "norm_before_gate: step vs forward")


def test_gated_mlp_multipliers():
    torch.manual_seed(0)
    mlp = GatedMLP(16, 24, gate_multiplier=0.9, out_multiplier=1.3)
    x = torch.randn(3, 16)
    y, gate = mlp.fc1(x).chunk(2, dim=-1)
    assert_rel(mlp(x), 1.3 * mlp.fc2(y * F.silu(0.9 * gate)), 1e-6, "gate / out multipliers")
