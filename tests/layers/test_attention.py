"""Attention: the five laws (full, windowed, grouped-query), a naive reference, mixed-length caches."""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.layers.attention import Attention
from tests.helpers import assert_rel, check_laws

CASES = [
    dict(n_head=4),
    dict(n_head=4, n_kv_head=2),
    dict(n_head=4, n_kv_head=1, window=3),
    dict(n_head=2, window=5, bias=True),
]
OPTIONS = [dict(n_head=4, rotary_dim=2), dict(n_head=2, n_kv_head=1, rotary_dim=0, scale=0.3)]


@pytest.mark.parametrize("kw", CASES + OPTIONS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_laws(kw):
    layer = Attention(32, **kw)
    check_laws(layer, torch.randn(2, 11, 32))


def test_bidirectional_sees_future_and_has_no_state():
    layer = Attention(16, n_head=2, bidirectional=True)
    check_laws(layer, torch.randn(2, 7, 16), causal=False)
    with pytest.raises(RuntimeError, match="bidirectional"):
        layer.init_state(2)


def naive_attention(layer: Attention, x: torch.Tensor) -> torch.Tensor:
    """Loop over heads and queries: RoPE by explicit 2x2 rotations, softmax over the allowed keys."""
    b, l, _ = x.shape
    H, Hk, hd = layer.n_head, layer.n_kv_head, layer.head_dim
    q, k, v = layer.in_proj(x).split([H * hd, Hk * hd, Hk * hd], dim=-1)
    q, k, v = q.view(b, l, H, hd), k.view(b, l, Hk, hd), v.view(b, l, Hk, hd)

    rd = layer.rotary_dim  # the first rd channels rotate, pairs (i, i + rd/2)
    scale = 1 / math.sqrt(hd) if layer.scale is None else layer.scale

    def rope(t, p):  # t: (b, n, hd) at position p
        out = t.clone()
        for i in range(rd // 2):
            theta = p * layer.rope_theta ** (-2 * i / rd)
            c, s = math.cos(theta), math.sin(theta)
            out[..., i] = t[..., i] * c - t[..., i + rd // 2] * s
            out[..., i + rd // 2] = t[..., i + rd // 2] * c + t[..., i] * s
        return out

    qr = torch.stack([rope(q[:, p], p) for p in range(l)], 1)
    kr = torch.stack([rope(k[:, p], p) for p in range(l)], 1)
    y = torch.zeros(b, l, H, hd, dtype=x.dtype)
    for h in range(H):
        g = h // (H // Hk)
        for t in range(l):
            lo = 0 if layer.window is None else max(0, t - layer.window + 1)
            scores = torch.einsum("bd,bsd->bs", qr[:, t, h], kr[:, lo : t + 1, g]) * scale
            y[:, t, h] = torch.einsum("bs,bsd->bd", scores.softmax(-1), v[:, lo : t + 1, g])
    return layer.out_proj(y.reshape(b, l, H * hd))


@pytest.mark.parametrize(
    "kw", CASES[:3] + OPTIONS, ids=["mha", "gqa", "mqa-window", "partial-rope", "nope-scale"]
)
def test_matches_naive_reference_float64(kw):
    layer = Attention(16, **kw).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        assert_rel(layer(x), naive_attention(layer, x), 1e-10, "attention vs naive")


def test_window_cache_is_bounded():
    layer = Attention(16, n_head=2, window=4)
    _, st = layer(torch.randn(1, 20, 16), return_state=True)
    assert st["k"].shape[2] == 4 and st["pos"].item() == 20


def test_mixed_length_caches_batch_like_separate_rows():
    """Rows with 3 and 7 tokens of history, batched through cat_states, decode as if alone."""
    layer = Attention(16, n_head=4, n_kv_head=2).eval()
    xa, xb, nxt = torch.randn(1, 3, 16), torch.randn(1, 7, 16), torch.randn(2, 4, 16)
    with torch.no_grad():
        _, sa = layer(xa, return_state=True)
        _, sb = layer(xb, return_state=True)
        st = Attention.cat_states([sa, sb])
        assert st["k"].shape[2] == 7 and st["pos"].tolist() == [3, 7]
        y = layer(nxt, state=st)
        assert_rel(y[:1], layer(nxt[:1], state=sa), 1e-5, "short row")
        assert_rel(y[1:], layer(nxt[1:], state=sb), 1e-5, "long row")
        y_t = layer.step_(nxt[:, 0], st)  # one token: the short row's empty slots still masked
        assert_rel(y_t[:1], layer.step(nxt[:1, 0], sa)[0], 1e-5, "short row, one step")
        assert_rel(y_t[1:], layer.step(nxt[1:, 0], sb)[0], 1e-5, "long row, one step")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n_kv_head"):
        Attention(32, n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="d_model"):
        Attention(30, n_head=4)
    with pytest.raises(ValueError, match=r"rotary_dim must be an even int in \[0, head_dim=8\]"):
        Attention(32, n_head=4, rotary_dim=3)
    with pytest.raises(ValueError, match="scale must be > 0"):
        Attention(32, n_head=4, scale=0.0)
    layer = Attention(32, n_head=4)
    with pytest.raises(ValueError, match="d_model=32"):
        layer(torch.randn(1, 3, 16))


def test_step_grows_the_cache_in_place():
    """step_ writes each token into spare slots: a few buffers for 300 tokens, not one per token; a
    cache captured earlier keeps its contents; step on the same state still concatenates."""
    layer = Attention(16, n_head=2).eval()
    with torch.no_grad():
        _, st = layer(torch.randn(1, 5, 16), return_state=True)
        buffers, early = set(), None
        for t in range(300):
            layer.step_(torch.randn(1, 16), st)
            buffers.add(st["k"].untyped_storage().data_ptr())
            if t == 10:
                early, early_copy = st["k"], st["k"].clone()
        assert st["k"].shape[2] == 305 and st["pos"].item() == 305
        assert len(buffers) <= 3, f"{len(buffers)} cache buffers for 300 tokens"
        assert torch.equal(early, early_copy), "a cache captured at token 10 changed"
        k_before = st["k"].clone()
        _, new = layer.step(torch.randn(1, 16), st)
        assert torch.equal(st["k"], k_before) and new["k"].shape[2] == 306


def test_step_never_writes_into_a_tensor_it_did_not_allocate():
    """A cache that is a slice of the caller's longer tensor is copied, not extended in place."""
    layer = Attention(16, n_head=2).eval()
    with torch.no_grad():
        _, full = layer(torch.randn(1, 9, 16), return_state=True)
        k_all, v_all = full["k"].clone(), full["v"].clone()
        st = {"k": full["k"][:, :, :6], "v": full["v"][:, :, :6], "pos": torch.tensor([6])}
        layer.step_(torch.randn(1, 16), st)
        assert torch.equal(full["k"], k_all) and torch.equal(full["v"], v_all)
        assert st["k"].untyped_storage().data_ptr() != full["k"].untyped_storage().data_ptr()


@pytest.mark.parametrize("kw", [dict(n_head=4, n_kv_head=2), dict(n_head=6, n_kv_head=1, scale=0.3)])
def test_grouped_decode_by_matmuls_matches_sdpa(monkeypatch, kw):
    """One query over a grouped-query cache through the two matmuls (forced here: threshold 0) gives
    scaled_dot_product_attention's output, and decoding through it keeps the laws."""
    import ssmkit.layers.attention as attention

    layer = Attention(24, **kw).eval()
    x = torch.randn(2, 9, 24)
    with torch.no_grad():
        _, st = layer(x[:, :8], return_state=True)
        y_sdpa = layer.step(x[:, 8], st)[0]
        monkeypatch.setattr(attention, "GROUPED_MATMUL_BYTES", 0)
        y_mm = layer.step(x[:, 8], st)[0]
    assert_rel(y_mm, y_sdpa, 1e-5, "matmul path")
    check_laws(layer, x)
