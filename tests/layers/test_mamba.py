"""Mamba layer: parity with transformers' MambaMixer, the five laws, packed and padded inputs, inits."""

import pytest
import torch
import torch.nn.functional as F

from ssmkit.layers import Mamba
from tests.helpers import assert_rel, check_laws

D_MODEL = 16


def small(**kw):
    return Mamba(D_MODEL, d_state=4, d_conv=4, expand=2, **kw)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_parity_with_transformers_forward_and_step(backend):
    tf = pytest.importorskip("transformers")
    from transformers.models.mamba.modeling_mamba import MambaMixer

    cfg = tf.MambaConfig(hidden_size=D_MODEL, state_size=4, expand=2, conv_kernel=4, time_step_rank=3)
    theirs = MambaMixer(cfg, layer_idx=0).eval()
    ours = small(dt_rank=3, backend=backend).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 19, D_MODEL)
    with torch.no_grad():
        expected = theirs(x)
        y = ours(x)
        state, ys = ours.init_state(2), []
        for t in range(x.shape[1]):
            y_t, state = ours.step(x[:, t], state)
            ys.append(y_t)
    assert_rel(y, expected, 1e-4, "forward vs transformers")
    assert_rel(torch.stack(ys, 1), expected, 1e-4, "step-by-step vs transformers")


def test_laws():
    check_laws(small(), torch.randn(2, 12, D_MODEL))


def test_bidirectional_sees_the_future_and_has_no_state():
    layer = small(bidirectional=True)
    check_laws(layer, torch.randn(2, 12, D_MODEL), causal=False)
    assert any(k.startswith("reverse.") for k in layer.state_dict())
    with pytest.raises(RuntimeError, match="bidirectional=True"):
        layer.init_state(2)
    with pytest.raises(RuntimeError, match="bidirectional=True"):
        layer(torch.randn(1, 4, D_MODEL), return_state=True)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_equals_separate(bidirectional):
    layer = small(bidirectional=bidirectional).eval()
    lengths = [5, 2, 9]
    seqs = [torch.randn(1, n, D_MODEL) for n in lengths]
    packed = torch.cat(seqs, 1)
    cu = torch.tensor([0, 5, 7, 16], dtype=torch.int32)
    seq_idx = torch.tensor([[0] * 5 + [1] * 2 + [2] * 9])
    with torch.no_grad():
        y_cu = layer(packed, cu_seqlens=cu)
        y_idx = layer(packed, seq_idx=seq_idx)
        alone = torch.cat([layer(s) for s in seqs], 1)
        assert_rel(y_cu, alone, 1e-5, "cu_seqlens")
        assert_rel(y_idx, alone, 1e-5, "seq_idx")
        if not bidirectional:
            _, s_packed = layer(packed, cu_seqlens=cu, return_state=True)
            _, s_last = layer(seqs[-1], return_state=True)
            for k in s_last:
                assert_rel(s_packed[k], s_last[k], 1e-5, f"final state {k}")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_left_padded_equals_unpadded(bidirectional):
    layer = small(bidirectional=bidirectional).eval()
    a, b = torch.randn(1, 10, D_MODEL), torch.randn(1, 6, D_MODEL)
    batch = torch.cat([a, torch.cat([torch.randn(1, 4, D_MODEL) * 5, b], 1)], 0)
    mask = torch.tensor([[1] * 10, [0] * 4 + [1] * 6])
    with torch.no_grad():
        y = layer(batch, attention_mask=mask)
        assert_rel(y[:1], layer(a), 1e-5, "row without pads")
        assert_rel(y[1:, 4:], layer(b), 1e-5, "left-padded row")
        if not bidirectional:
            _, st = layer(batch, attention_mask=mask, return_state=True)
            _, st_b = layer(b, return_state=True)
            assert_rel(st["ssm"][1:], st_b["ssm"], 1e-5, "ssm state after pads")


def test_published_inits_and_no_weight_decay_flags():
    layer = Mamba(32, d_state=8, dt_min=0.01, dt_max=0.05)
    assert layer.dt_rank == 2 and layer.d_inner == 64
    dt = F.softplus(layer.dt_proj.bias.detach())
    assert dt.min() >= 0.01 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    assert torch.allclose(-torch.exp(layer.A_log), -torch.arange(1.0, 9.0).expand(64, 8))
    assert layer.A_log.dtype == torch.float32
    from ssmkit.training.optim import param_groups

    no_decay = {id(p) for g in param_groups(layer, 0.1) if g["weight_decay"] == 0.0 for p in g["params"]}
    assert {id(p) for p in (layer.A_log, layer.D)} <= no_decay
    assert tuple(layer.conv1d.weight.shape) == (64, 1, 4) and tuple(layer.x_proj.weight.shape) == (2 + 16, 64)


def test_errors():
    with pytest.raises(ValueError, match="d_state must be a positive int"):
        Mamba(16, d_state=0)
    layer = small()
    with pytest.raises(ValueError, match="last dimension d_model=16"):
        layer(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        layer(torch.randn(1, 4, D_MODEL), cu_seqlens=torch.tensor([0, 2, 3]))
    with pytest.raises(ValueError, match="or attention_mask, not both"):
        layer(torch.randn(1, 4, D_MODEL), cu_seqlens=torch.tensor([0, 4]), attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="pass seq_idx or cu_seqlens, not both"):
        layer(
            torch.randn(1, 4, D_MODEL),
            cu_seqlens=torch.tensor([0, 4]),
            seq_idx=torch.zeros(1, 4, dtype=torch.long),
        )
