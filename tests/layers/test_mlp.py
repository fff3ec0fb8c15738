"""MLP, GatedMLP and MoE: formulas, top-k routing against a dense reference, the load-balancing loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit.layers.mlp import MLP, GatedMLP, MoE
from tests.helpers import assert_rel


def test_gated_mlp_is_swiglu():
    m = GatedMLP(8, 16).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    W1, W2 = m.fc1.weight, m.fc2.weight
    y, gate = (x @ W1.T)[..., :16], (x @ W1.T)[..., 16:]
    assert_rel(m(x), (y * gate * torch.sigmoid(gate)) @ W2.T, 1e-12, "swiglu")


def test_mlp_shapes_and_token_independence():
    m = MLP(8, 32)
    x = torch.randn(2, 6, 8)
    assert_rel(m(x)[:, 3], m(x[:, 3]), 1e-6, "per token")
    with pytest.raises(ValueError, match="d_model=8"):
        m(torch.randn(2, 3, 4))


def dense_moe_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the renormalized top-k router probabilities (0 elsewhere)."""
    probs = F.softmax(moe.router(x), dim=-1)  # (T, E)
    top = probs.topk(moe.top_k, dim=-1)
    w = torch.zeros_like(probs).scatter(-1, top.indices, top.values)
    w = w / w.sum(-1, keepdim=True)
    outs = torch.stack([e(x) for e in moe.experts], dim=1)  # (T, E, d)
    return (w[..., None] * outs).sum(1)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_moe_matches_dense_reference(top_k):
    moe = MoE(8, 16, n_experts=4, top_k=top_k).double()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    assert_rel(moe(x), dense_moe_reference(moe, x.reshape(-1, 8)).view(2, 7, 8), 1e-12, "moe")


def test_moe_routes_exactly_top_k_distinct_experts():
    moe = MoE(8, 16, n_experts=6, top_k=2)
    experts, weights, _ = moe.route(torch.randn(50, 8))
    assert experts.shape == (50, 2) and (experts[:, 0] != experts[:, 1]).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(50))


def test_aux_loss_positive_with_gradient_and_one_when_balanced():
    moe = MoE(8, 16, n_experts=4, top_k=2)
    moe(torch.randn(4, 10, 8))
    assert moe.aux_loss.item() > 0
    moe.aux_loss.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    # a zero router gives uniform probabilities: f sums to 1, P_e = 1/E, so E * sum f_e P_e = 1
    with torch.no_grad():
        moe.router.weight.zero_()
    moe(torch.randn(3, 8))
    assert abs(moe.aux_loss.item() - 1.0) < 1e-6


def test_moe_collapsed_router_gets_larger_loss():
    moe = MoE(8, 16, n_experts=4, top_k=1)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 10.0  # everything -> expert 0
    moe(torch.ones(20, 8))
    assert moe.aux_loss.item() > 3.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="top_k"):
        MoE(8, 16, n_experts=2, top_k=3)
    with pytest.raises(ValueError, match="d_intermediate"):
        GatedMLP(8, 0)
