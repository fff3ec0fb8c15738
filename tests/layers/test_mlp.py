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


def routed_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: scores, the allowed groups, the k best (biased) choices, their weights, the
    experts (in the latent width if any) and the shared expert, all written out."""
    out = []
    for t in range(x.shape[0]):
        logits = moe.router.weight @ x[t]
        p = logits.softmax(-1) if moe.scoring == "softmax" else logits.sigmoid()
        choice = p + (0 if moe.score_bias is None else moe.score_bias)
        size = moe.n_experts // moe.n_group
        groups = choice.view(moe.n_group, size)
        group_score = [groups[g].topk(min(2, size)).values.sum() for g in range(moe.n_group)]
        allowed = torch.tensor(group_score).topk(moe.topk_group).indices.tolist()
        ranked = [e for e in choice.argsort(descending=True).tolist() if e // size in allowed][: moe.top_k]
        w = p[ranked]
        w = (w / w.sum() if moe.norm_topk else w) * moe.routed_scale
        h = x[t] if moe.d_latent is None else moe.fc1_latent(x[t])
        y = sum(wi * moe.experts[e](h) for wi, e in zip(w, ranked))
        y = y if moe.d_latent is None else moe.fc2_latent(y)
        out.append(y + (0 if moe.shared is None else moe.shared(x[t])))
    return torch.stack(out)


ROUTING = [
    dict(norm_topk=False),
    dict(d_shared=12, gated=False, activation="relu2"),
    dict(scoring="sigmoid", score_bias=True, n_group=2, topk_group=1, routed_scale=2.5),
    dict(scoring="sigmoid", d_latent=6, d_shared=10, n_group=3, topk_group=2, top_k=3),
]


@pytest.mark.parametrize("kw", ROUTING, ids=["raw-softmax", "shared-relu2", "sigmoid-group-bias", "latent"])
def test_moe_routing_options_match_reference(kw):
    kw = {"top_k": 2, **kw}
    moe = MoE(8, 16, n_experts=6, **kw).double()
    if moe.score_bias is not None:
        moe.score_bias.copy_(torch.randn(6, dtype=torch.float64))
    x = torch.randn(11, 8, dtype=torch.float64)
    with torch.no_grad():
        assert_rel(moe(x), routed_reference(moe, x), 1e-12, f"moe {kw}")


def test_activations_by_name():
    x = torch.randn(5, 8)
    m = MLP(8, 16, activation="relu2")
    assert_rel(m(x), m.fc2(torch.relu(m.fc1(x)) ** 2), 1e-6, "relu2")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        GatedMLP(8, 16, activation="swish")
    with pytest.raises(ValueError, match="n_group=4 must divide n_experts=6"):
        MoE(8, 16, n_experts=6, n_group=4)


@pytest.mark.parametrize("kw", ROUTING[:1] + ROUTING[3:], ids=["raw-softmax", "latent"])
def test_moe_one_token_equals_its_row_of_many(kw):
    """One token (decoding) skips the gather/scatter: each token alone == its row of the batched call
    and the routed reference, and gradients reach its experts."""
    moe = MoE(8, 16, n_experts=6, **{"top_k": 2, **kw}).double()
    x = torch.randn(9, 8, dtype=torch.float64)
    with torch.no_grad():
        many = moe(x)
        for t in range(9):
            assert_rel(moe(x[t : t + 1]), many[t : t + 1], 1e-12, f"token {t}")
            assert_rel(moe(x[t : t + 1]), routed_reference(moe, x[t : t + 1]), 1e-12, f"token {t}")
    moe(x[:1]).sum().backward()
    assert sum(int(e.fc1.weight.grad is not None) for e in moe.experts) == moe.top_k


@pytest.mark.parametrize(
    "make",
    [
        lambda: GatedMLP(8, 16, gate_multiplier=0.7),
        lambda: MLP(8, 16, activation="relu2"),
        lambda: MoE(8, 16, n_experts=4, top_k=2, d_shared=8),
    ],
    ids=["gated_mlp", "mlp_relu2", "moe"],
)
def test_inference_in_place_path_equals_the_autograd_path(make):
    # without autograd the gate, the squared ReLU and the experts' sums work in place: same numbers
    m = make()
    x = torch.randn(3, 7, 8)
    with torch.no_grad():
        fast = m(x)
    ref = m(x.requires_grad_())
    assert ref.requires_grad
    assert torch.equal(fast, ref.detach())
