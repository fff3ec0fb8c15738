"""Causal multi-head attention on the mixer protocol: grouped-query heads, rotary positions, an
optional sliding window, through `F.scaled_dot_product_attention`.

Glossary (code name: meaning)
    n_head:     number of query heads (H)
    n_kv_head:  number of key/value heads (grouped-query attention: n_head % n_kv_head == 0)
    head_dim:   channels per head (d_model // n_head unless given)
    rope_theta: base of the rotary frequencies, theta_i = rope_theta ** (-2i / rotary_dim)
    rotary_dim: channels of each head that rotate (the first ones; head_dim unless given); 0 = no
                positional encoding at all (NoPE: Jamba's, Nemotron-H's and Granite-4.0-H's attention)
    scale:      factor on q.k before the softmax (head_dim ** -0.5 unless given: Granite's
                attention_multiplier)
    window:     each query attends to at most `window` positions, itself included (None = all)
    qk_norm_eps: when set, each head's q and k are RMS-normalized (weights q_norm, k_norm of
                head_dim) before the rotary embedding (LFM2's q_layernorm / k_layernorm)
    d_out:      width of the output (d_model unless given: Zamba2's shared attention reads
                2 d_model channels and writes d_model)
    in_proj_delta: per call, a tensor added to in_proj(x), (b, l, (n_head + 2 n_kv_head) head_dim):
                the low-rank adapters of one use of a shared attention (Zamba2)
    pos:        per row, how many tokens the layer has seen; the next token has position `pos`

State = the KV cache, the one state in ssmkit that grows with the context:
    {"k": (b, n_kv_head, t, head_dim), "v": (b, n_kv_head, t, head_dim), "pos": (b,) int64}
Rotary embeddings are applied before caching, so cached keys never change. Cache slot j of row i
holds the token at position `pos[i] - t + j`; a negative position marks an empty slot. That rule
lets rows with different history lengths share one cache (left-padded with empty slots, see
`Attention.cat_states`), which is how a batch of prompts of different lengths is decoded together.
A window cache keeps only the last `window` slots, so its size is bounded.

Decoding with `step_` (the caller owns the state) grows the cache in place: the cache tensors are views
of a buffer with spare slots (a quarter more, at least 256), the new key and value are written into the
next slot, and only a full buffer is copied into a bigger one; `forward` and `step` concatenate (a new
tensor per call, the state passed in untouched). Concatenating copied the whole cache every token:
at a 2048-token context that was a third of a Zamba2 token's time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit._checks import check_positive_int
from ssmkit.layers.base import Mixer, StateDict
from ssmkit.layers.norm import RMSNorm
from ssmkit.layers.registry import register


def rotary_tables(positions: torch.Tensor, dim: int, theta: float, work: torch.dtype):
    """cos, sin of position * theta**(-2i/dim) for i < dim/2: (b, 1, l, dim/2) each, in `work`; the
    angles are formed in float64 (exact at 64k+ positions)."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    angles = positions.to(torch.float64)[:, None, :, None] * inv_freq          # (b, 1, l, dim/2)
    return angles.cos().to(work), angles.sin().to(work)


def rotary(
    x: torch.Tensor, positions: torch.Tensor, theta: float, rotary_dim: int | None = None, tables=None
) -> torch.Tensor:
    """Rotate channel pairs (i, i + rd/2) of x by position * theta**(-2i/rd) (GPT-NeoX), rd = rotary_dim.

    x: (b, h, l, head_dim); positions: (b, l) int64; rotary_dim (default head_dim): only the first
    rotary_dim channels rotate, the others pass through; tables: `rotary_tables` for these positions
    (computed when not given: q and k share them). The rotation runs in float32, or float64 for a
    float64 x.
    """
    rd = x.shape[-1] if rotary_dim is None else rotary_dim
    if rd == 0:
        return x
    work = torch.promote_types(x.dtype, torch.float32)
    cos, sin = rotary_tables(positions, rd, theta, work) if tables is None else tables
    x1, x2 = x[..., :rd].to(work).chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)   # (b, h, l, rd)
    return out if rd == x.shape[-1] else torch.cat([out, x[..., rd:]], dim=-1)


GROUPED_MATMUL_BYTES = 16 << 20  # a grouped-query cache (k and v) from which one query takes matmuls
_ROOM = "_ssmkit_cache_room"  # marks a buffer allocated by append_cache, whose spare slots it may fill


def append_cache(cache: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """torch.cat([cache, new], dim=2) for a cache the caller owns: written into the spare slots of
    cache's buffer when cache is a leading view of a buffer this function allocated (the result then
    shares cache's storage; cache itself is unchanged), else into a new buffer with a quarter more
    slots (at least 256), so the copying averages O(1) slots per appended token.

    cache: (b, h, t, d); new: (b, h, l, d) -> (b, h, t + l, d).
    """
    b, h, t, d = cache.shape
    l = new.shape[2]
    base = cache._base
    roomy = (
        base is not None
        and getattr(base, _ROOM, False)
        and base.dtype == new.dtype
        and cache.data_ptr() == base.data_ptr()
        and cache.stride() == base.stride()
        and base.shape[:2] == (b, h)
        and t + l <= base.shape[2]
    )
    if not roomy:
        base = new.new_empty(b, h, t + l + max(256, (t + l) // 4), d)
        setattr(base, _ROOM, True)
        base[:, :, :t] = cache
    out = base[:, :, : t + l]
    out[:, :, t:] = new
    return out


@register("attention", config=("n_head", "n_kv_head", "rope_theta", "window"))
class Attention(Mixer):
    """Causal (or bidirectional) multi-head attention with GQA, RoPE and an optional sliding window.

    Weights follow the hybrid Mamba checkpoints' attention mixer: `in_proj` (fused q, k, v) and
    `out_proj`.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int = 8,
        n_kv_head: int | None = None,
        head_dim: int | None = None,
        rope_theta: float = 10000.0,
        window: int | None = None,
        bias: bool = False,
        rotary_dim: int | None = None,
        scale: float | None = None,
        qk_norm_eps: float | None = None,
        d_out: int | None = None,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_positive_int("d_model", d_model)
        d_out = d_model if d_out is None else d_out
        check_positive_int("d_out", d_out)
        check_positive_int("n_head", n_head)
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        check_positive_int("n_kv_head", n_kv_head)
        if n_head % n_kv_head != 0:
            raise ValueError(f"Attention: n_head={n_head} must be a multiple of n_kv_head={n_kv_head}")
        if head_dim is None:
            if d_model % n_head != 0:
                raise ValueError(
                    f"Attention: d_model={d_model} must be divisible by n_head={n_head} (or give head_dim)"
                )
            head_dim = d_model // n_head
        check_positive_int("head_dim", head_dim)
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if not isinstance(rotary_dim, int) or not 0 <= rotary_dim <= head_dim or rotary_dim % 2:
            raise ValueError(
                f"Attention: rotary_dim must be an even int in [0, head_dim={head_dim}] (rotary embeddings "
                f"rotate channel pairs; 0 = none), got {rotary_dim!r}"
            )
        if scale is not None and not scale > 0:
            raise ValueError(f"Attention: scale must be > 0 or None, got {scale!r}")
        if window is not None:
            check_positive_int("window", window)
        if rope_theta <= 0:
            raise ValueError(f"Attention: rope_theta must be > 0, got {rope_theta}")
        self.d_model, self.n_head, self.n_kv_head, self.head_dim = d_model, n_head, n_kv_head, head_dim
        self.rope_theta, self.window, self.bidirectional = float(rope_theta), window, bidirectional
        self.rotary_dim, self.scale, self.d_out = rotary_dim, scale, d_out
        kw = {"device": device, "dtype": dtype}
        self.in_proj = nn.Linear(d_model, (n_head + 2 * n_kv_head) * head_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(n_head * head_dim, d_out, bias=bias, **kw)
        self.qk_norm_eps = qk_norm_eps
        if qk_norm_eps is not None:
            given = {k: v for k, v in kw.items() if v is not None}
            self.q_norm = RMSNorm(head_dim, eps=qk_norm_eps).to(**given)
            self.k_norm = RMSNorm(head_dim, eps=qk_norm_eps).to(**given)

    # ---- protocol ---------------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        self._check_causal("init_state")
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        empty = torch.zeros(batch_size, self.n_kv_head, 0, self.head_dim, device=device, dtype=dtype)
        return {
            "k": empty,
            "v": empty.clone(),
            "pos": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    def forward(
        self,
        x: torch.Tensor,
        state: StateDict | None = None,
        return_state: bool = False,
        *,
        attention_mask: torch.Tensor | None = None,
        in_proj_delta: torch.Tensor | None = None,
        in_place: bool = False,
    ):
        """x (b, l, d_model) -> y (b, l, d_out) [, state]. attention_mask (b, l), 1 = token, 0 = pad: no
        query attends to a pad (a pad attends to itself only), so with rotary's relative positions each
        row's tokens are computed as if the row had no pads (calls without a carried state).
        in_proj_delta: added to in_proj(x) (see the module docstring). in_place: the caller owns `state`
        (step_): the new keys and values go into the cache's spare slots (`append_cache`), so the
        returned cache may share storage with state's and `state` must not be extended again."""
        if (empty := self._empty_forward(x, state, return_state)) is not None:
            return empty
        if state is not None or return_state:
            self._check_causal("a state")
        if state is not None:
            self._check_state(state, x.shape[0])
        pad_mask = self._padding_mask(attention_mask, x, stateful=state is not None or return_state)
        b, l, _ = x.shape
        H, Hk, hd = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.in_proj(x)
        if in_proj_delta is not None:
            if in_proj_delta.shape != qkv.shape:
                raise ValueError(
                    f"Attention: in_proj_delta must have shape {tuple(qkv.shape)} (batch, length, "
                    f"(n_head + 2 n_kv_head) head_dim), got {tuple(in_proj_delta.shape)}"
                )
            qkv = qkv + in_proj_delta
        q, k, v = qkv.split([H * hd, Hk * hd, Hk * hd], dim=-1)
        q, k = q.view(b, l, H, hd), k.view(b, l, Hk, hd)
        if self.qk_norm_eps is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.transpose(1, 2)  # (b, H, l, hd)
        k = k.transpose(1, 2)  # (b, Hk, l, hd)
        v = v.view(b, l, Hk, hd).transpose(1, 2)

        pos0 = state["pos"] if state is not None else torch.zeros(b, dtype=torch.long, device=x.device)
        positions = pos0[:, None] + torch.arange(l, device=x.device)  # (b, l)
        rd = hd if self.rotary_dim is None else self.rotary_dim
        work = torch.promote_types(q.dtype, torch.float32)
        tables = rotary_tables(positions, rd, self.rope_theta, work) if rd else None  # shared by q and k
        q = rotary(q, positions, self.rope_theta, rd, tables)
        k = rotary(k, positions, self.rope_theta, rd, tables)
        if state is not None and in_place and self.window is None:
            k, v = append_cache(state["k"], k), append_cache(state["v"], v)  # (b, Hk, t + l, hd)
        elif state is not None:
            k = torch.cat([state["k"].to(k.dtype), k], dim=2)
            v = torch.cat([state["v"].to(v.dtype), v], dim=2)
        t_past = k.shape[2] - l

        plain = self.bidirectional or (t_past == 0 and self.window is None and state is None)
        if pad_mask is None and plain:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=not self.bidirectional, scale=self.scale, enable_gqa=H != Hk
            )
        elif pad_mask is None and l == 1 and self.window is None and not bool((pos0 < t_past).any()):
            # one query per row and no empty slot (a row's first cached position, pos0 - t_past, is
            # >= 0): every key is in the query's past, no mask to build
            y = self._attend_one(q, k, v)
        else:
            y = self._attend_masked(q, k, v, pos0, positions, pad_mask)
        y = self.out_proj(y.transpose(1, 2).reshape(b, l, H * hd))  # (b, l, d_out)
        if not return_state:
            return y
        if self.window is not None:
            k, v = k[:, :, -self.window :], v[:, :, -self.window :]
        return y, {"k": k, "v": v, "pos": pos0 + l}

    def _attend_masked(self, q, k, v, pos0, positions, pad_mask) -> torch.Tensor:
        """Attention with the mask of the cache's positions (empty slots, causality, the window) and
        of the call's pads: q (b, H, l, hd), k, v (b, Hk, t + l, hd), positions (b, l) -> (b, H, l, hd)."""
        b, l, t_all = q.shape[0], q.shape[2], k.shape[2]
        key_pos = pos0[:, None] - (t_all - l) + torch.arange(t_all, device=q.device)   # (b, t + l)
        mask = (key_pos >= 0)[:, None, :].expand(b, l, t_all)
        if not self.bidirectional:
            mask = mask & (key_pos[:, None, :] <= positions[:, :, None])
        if self.window is not None and not self.bidirectional:
            mask = mask & (positions[:, :, None] - key_pos[:, None, :] < self.window)
        if pad_mask is not None:                                   # stateless: keys are this call's
            eye = torch.eye(l, dtype=torch.bool, device=q.device)
            mask = mask & pad_mask.bool()[:, None, :] | eye
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None], scale=self.scale, enable_gqa=q.shape[1] != k.shape[1]
        )

    def _attend_one(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One query per row over a whole cache: q (b, H, 1, hd), k, v (b, Hk, t, hd) -> (b, H, 1, hd).
        Grouped-query heads with a cache of GROUPED_MATMUL_BYTES or more go through two batched
        matrix products, the group's queries as the rows of one, so each key and value is read once
        (scaled_dot_product_attention reads them once per query head of the group: at a 16384-token
        cache, 12 heads over 4, head_dim 64, 2.6 -> 1.5 ms on 2 threads)."""
        H, Hk = q.shape[1], k.shape[1]
        if H == Hk or (k.numel() + v.numel()) * k.element_size() < GROUPED_MATMUL_BYTES:
            return F.scaled_dot_product_attention(q, k, v, scale=self.scale, enable_gqa=H != Hk)
        b, _, _, hd = q.shape
        scale = hd**-0.5 if self.scale is None else self.scale
        scores = torch.matmul(q.reshape(b, Hk, H // Hk, hd), k.transpose(-1, -2))     # (b, Hk, g, t)
        work = torch.promote_types(scores.dtype, torch.float32)
        probs = torch.softmax(scores.to(work).mul_(scale), dim=-1)
        return torch.matmul(probs.to(v.dtype), v).reshape(b, H, 1, hd)

    def step(self, x_t: torch.Tensor, state: StateDict) -> tuple[torch.Tensor, StateDict]:
        """One token; the cost grows with the cache length (at most `window` with a window)."""
        if (empty := self._empty_step(x_t, state)) is not None:
            return empty
        y, state = self.forward(x_t[:, None], state=state, return_state=True)
        return y[:, 0], state

    def step_(self, x_t: torch.Tensor, state: StateDict) -> torch.Tensor:
        """step, the cache grown in place (see the module docstring)."""
        if (empty := self._empty_step(x_t, state)) is not None:
            return empty[0]
        y, new = self.forward(x_t[:, None], state=state, return_state=True, in_place=True)
        state.update(new)
        return y[:, 0]

    # ---- batching states of different lengths -----------------------------------------------
    @classmethod
    def cat_states(cls, states: list[StateDict]) -> StateDict:
        """Concatenate caches along the batch, left-padding shorter ones with empty slots.

        Valid because a slot's position is `pos - t + j`: padding on the left makes it negative.
        """
        t = max(s["k"].shape[2] for s in states)

        def pad(c: torch.Tensor) -> torch.Tensor:
            return F.pad(c, (0, 0, t - c.shape[2], 0))

        return {
            "k": torch.cat([pad(s["k"]) for s in states]),
            "v": torch.cat([pad(s["v"]) for s in states]),
            "pos": torch.cat([s["pos"] for s in states]),
        }

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_head={self.n_head}, n_kv_head={self.n_kv_head}, "
            f"head_dim={self.head_dim}, rope_theta={self.rope_theta}, rotary_dim={self.rotary_dim}, "
            f"scale={self.scale}, window={self.window}, d_out={self.d_out}, "
            f"bidirectional={self.bidirectional}"
        )
