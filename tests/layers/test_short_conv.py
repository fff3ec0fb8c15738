"""ShortConv (LFM2's gated short convolution) against a plain loop, and Attention's q/k norms."""

import torch
import torch.nn.functional as F

from ssmkit.layers import Attention
from ssmkit.layers.short_conv import ShortConv
from tests.helpers import assert_rel


def reference(layer: ShortConv, x: torch.Tensor) -> torch.Tensor:
    """y_t = out_proj(C_t * sum_j w[:, j] (B * x)_{t - (k-1) + j} + bias), one position at a time."""
    B, C, u = layer.in_proj(x).chunk(3, dim=-1)
    h = B * u  # (b, l, d)
    k, w = layer.d_conv, layer.conv.weight[:, 0, :]
    hp = F.pad(h, (0, 0, k - 1, 0))
    ys = []
    for t in range(x.shape[1]):
        c = (hp[:, t : t + k].transpose(1, 2) * w).sum(-1)
        if layer.conv.bias is not None:
            c = c + layer.conv.bias
        ys.append(layer.out_proj(C[:, t] * c))
    return torch.stack(ys, 1)


def test_short_conv_matches_the_loop_in_one_call_chunks_and_steps():
    torch.manual_seed(0)
    layer = ShortConv(16, d_conv=3, bias=True)
    x = torch.randn(2, 10, 16)
    want = reference(layer, x)
    assert_rel(layer(x), want, 1e-5, "forward vs loop")
    y1, st = layer(x[:, :4], return_state=True)
    y2, st = layer(x[:, 4:7], state=st, return_state=True)
    steps = []
    for t in range(7, 10):
        y_t, st = layer.step(x[:, t], st)
        steps.append(y_t)
    assert_rel(torch.cat([y1, y2, torch.stack(steps, 1)], 1), want, 1e-5, "chunks + steps vs loop")


def test_attention_qk_norm_normalizes_each_head_before_rotary():
    torch.manual_seed(0)
    attn = Attention(16, n_head=4, n_kv_head=2, qk_norm_eps=1e-3, rotary_dim=0)
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(1, 5, 16)
    q, k, v = attn.in_proj(x).split([16, 8, 8], dim=-1)

    def norm(t, w):
        t = t.view(1, 5, -1, 4)
        return (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-3) * w).transpose(1, 2)

    y = F.scaled_dot_product_attention(
        norm(q, attn.q_norm.weight), norm(k, attn.k_norm.weight), v.view(1, 5, 2, 4).transpose(1, 2),
        is_causal=True, enable_gqa=True,
    )
    assert_rel(attn(x), attn.out_proj(y.transpose(1, 2).reshape(1, 5, 16)), 1e-5, "q/k norms")
