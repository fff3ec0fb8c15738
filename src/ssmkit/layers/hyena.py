"""Hyena (Poli et al., "Hyena Hierarchy", ICML 2023): implicit long convolutions with data-controlled
gating, on the mixer protocol.

    x_1, ..., x_N, v = short_conv(in_proj(u))          N = order; each (batch, d_model, length)
    z_1 = v;  z_{n+1} = x_n ⊙ (h_n * z_n + bias_n ⊙ z_n)   (* = causal long convolution, n = 1..N)
    y = out_proj(z_{N+1})                               (the paper's Hyena recurrence of order N)

Glossary (code name: paper symbol, shape):
    order           N                    number of long convolutions (N + 1 gates)
    l_max           L                    longest filter, hence longest context (prompt + generated)
    emb_dim         D_e                  positional features: t and (emb_dim-1)/2 sin/cos pairs of t
    filter_order    width of FFN         hidden size of the filter MLP
    filter.*        FFN, Window          h_i(t) = FFN(PositionalEncoding(t)) * exp(-alpha_c t)
    short_filter_order                   width of the depthwise causal conv on the projections
    bias            D (per filter)       skip term of each long convolution, (N, d_model)

Filters are a function of the absolute position t / l_max only, so a prefix of the filter does not
depend on the sequence length: chunked and one-shot calls agree. Inputs longer than l_max (counting
a carried-in state's history) raise an error naming l_max.

Streaming is honest, not O(1): a long convolution needs every past input, so the state holds the full
history of each long convolution's input, {"history": (batch, order, d_model, t)}, which grows by one
column per token (memory O(order * d_model * t), step time O(t)), plus the short conv windows
{"short": (batch, (order+1)*d_model, short_filter_order-1)}. Bidirectional is not supported (raises).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit._checks import check_positive_int
from ssmkit.layers.base import Mixer, StateDict
from ssmkit.layers.registry import register
from ssmkit.ops import fft_conv


class Sin(nn.Module):
    """sin(w x) with a learned frequency per feature (Hyena's filter activation)."""

    def __init__(self, dim: int, w: float = 1.0, **factory):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(dim, **factory))

    def forward(self, x):
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """h (order * d_model, length): positional encoding -> MLP with Sin -> exponential window."""

    def __init__(self, d_model, order, l_max, emb_dim, filter_order, fast_decay_pct=0.3, slow_decay_pct=1.5,
                 target=1e-2, w=1.0, **factory):
        super().__init__()
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"emb_dim must be odd and >= 3 (t plus sin/cos pairs), got {emb_dim}")
        self.l_max, self.channels = l_max, order * d_model
        bands = (emb_dim - 1) // 2
        f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64)                 # band frequencies
        self.register_buffer("f", f, persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(emb_dim, filter_order, **factory), Sin(filter_order, w, **factory),
            nn.Linear(filter_order, filter_order, **factory), Sin(filter_order, w, **factory),
            nn.Linear(filter_order, self.channels, bias=False, **factory),
        )
        # decay rates: a filter reaches `target` of its start at fast..slow fractions of l_max
        max_decay, min_decay = math.log(target) / fast_decay_pct, math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, self.channels,
                                                      dtype=torch.float64).abs(), persistent=False)

    def forward(self, L: int, dtype) -> torch.Tensor:
        t = torch.arange(L, device=self.deltas.device, dtype=torch.float64) / self.l_max  # (L,) in [0, 1)
        angle = 2 * math.pi * self.f[None] * t[:, None]                                  # (L, bands)
        z = torch.cat([t[:, None], torch.cos(angle), -torch.sin(angle)], dim=-1)          # (L, emb_dim)
        w = self.mlp[0].weight
        h = self.mlp(z.to(w.dtype))                                                       # (L, channels)
        window = torch.exp(-t[:, None] * self.deltas[None])                               # (L, channels)
        return (h * window.to(h.dtype)).T.to(dtype)                                       # (channels, L)


@register("hyena")
class Hyena(Mixer):
    """Hyena: long implicit convolutions interleaved with data-controlled gates.

    See the module docstring.

    Args:
        d_model: channels in and out.
        l_max: maximum length of the filters, i.e. of the context (state history + input); 2048 by
            default so that "hyena" works in a backbone pattern without layer_kwargs.
        order: N, number of long convolutions.
        filter_order: hidden width of the filter MLP.
        emb_dim: positional features (odd, >= 3).
        short_filter_order: width of the short depthwise causal conv on the projections.
        w: initial frequency of the Sin activations.
        bidirectional: must be False (raises otherwise).
    """

    def __init__(
        self,
        d_model: int,
        l_max: int = 2048,
        order: int = 2,
        filter_order: int = 64,
        emb_dim: int = 3,
        short_filter_order: int = 3,
        w: float = 1.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, val in (("d_model", d_model), ("l_max", l_max), ("order", order),
                          ("filter_order", filter_order), ("short_filter_order", short_filter_order)):
            check_positive_int(name, val)
        if bidirectional:
            raise ValueError("Hyena is causal: bidirectional=True is not supported (use S4D or S5 for that)")
        self.d_model, self.l_max, self.order = d_model, l_max, order
        self.short_filter_order = short_filter_order
        factory = {"device": device, "dtype": dtype or torch.float32}
        width = (order + 1) * d_model
        self.in_proj = nn.Linear(d_model, width, **factory)
        self.out_proj = nn.Linear(d_model, d_model, **factory)
        short = torch.randn(width, short_filter_order, **factory) / short_filter_order
        self.short_filter = nn.Parameter(short)
        self.short_bias = nn.Parameter(torch.zeros(width, **factory))
        self.filter = ImplicitFilter(d_model, order, l_max, emb_dim, filter_order, w=w, **factory)
        self.bias = nn.Parameter(torch.randn(order, d_model, **factory))

    # ---- pieces ------------------------------------------------------------------------------
    def _short_conv(self, z: torch.Tensor, window: torch.Tensor | None):
        """Depthwise causal conv of z (b, C, l) after the previous k-1 inputs `window`; -> y, new window."""
        k1 = self.short_filter_order - 1
        window = z.new_zeros(z.shape[0], z.shape[1], k1) if window is None else window.to(z.dtype)
        ext = torch.cat([window, z], dim=-1)                                             # (b, C, k-1+l)
        y = F.conv1d(ext, self.short_filter.to(z.dtype).unsqueeze(1), self.short_bias.to(z.dtype),
                     groups=z.shape[1])                                                   # (b, C, l)
        return y, ext[..., ext.shape[-1] - k1:]

    def _check_length(self, total: int) -> None:
        if total > self.l_max:
            raise ValueError(
                f"Hyena was built with l_max={self.l_max}: its filters cover at most l_max positions, but "
                f"this call needs {total} (state history + input); build it with a larger l_max"
            )

    # ---- the protocol ------------------------------------------------------------------------
    def forward(self, x, state: StateDict | None = None, return_state: bool = False):
        if (empty := self._empty_forward(x, state, return_state)) is not None:
            return empty
        b, L, d = x.shape
        if state is not None:
            self._check_state(state, b)
        T = 0 if state is None else state["history"].shape[-1]
        self._check_length(T + L)
        z = self.in_proj(x).transpose(1, 2)                                              # (b, (N+1)d, l)
        z, short = self._short_conv(z, None if state is None else state["short"])
        *xs, v = z.split(d, dim=1)                                                       # x_1..x_N, v
        h = self.filter(T + L, z.dtype).view(self.order, d, T + L)                       # (N, d, T+l)
        hist = []
        for o in range(self.order):
            if state is not None:
                v = torch.cat([state["history"][:, o].to(v.dtype), v], dim=-1)          # (b, d, T+l)
            hist.append(v)
            v = xs[o] * fft_conv(v, h[o], D=self.bias[o].to(v.dtype))[..., T:]          # (b, d, l)
        y = self.out_proj(v.transpose(1, 2))
        if not return_state:
            return y
        return y, {"history": torch.stack(hist, dim=1), "short": short}

    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        device = device or self.bias.device
        dtype = dtype or self.bias.dtype
        return {
            "history": torch.zeros(batch_size, self.order, self.d_model, 0, device=device, dtype=dtype),
            "short": torch.zeros(batch_size, (self.order + 1) * self.d_model, self.short_filter_order - 1,
                                 device=device, dtype=dtype),
        }

    @classmethod
    def cat_states(cls, states: list[StateDict]) -> StateDict:
        """Histories of different lengths are left-padded with zeros: an input of 0 before a row's first
        token adds nothing to a long convolution, so every row continues exactly as it would alone."""
        t = max(s["history"].shape[-1] for s in states)
        padded = [{**s, "history": F.pad(s["history"], (t - s["history"].shape[-1], 0))} for s in states]
        return super().cat_states(padded)

    def step(self, x_t, state: StateDict):
        """One token; O(t) time: the long convolutions read the whole history (see the module doc)."""
        if (empty := self._empty_step(x_t, state)) is not None:
            return empty
        d = self.d_model
        T = state["history"].shape[-1]
        self._check_length(T + 1)
        z = self.in_proj(x_t).unsqueeze(-1)                                              # (b, (N+1)d, 1)
        z, short = self._short_conv(z, state["short"])
        *xs, v = z.squeeze(-1).split(d, dim=1)
        h = self.filter(T + 1, z.dtype).view(self.order, d, T + 1).flip(-1)              # lag 0 last
        hist = []
        for o in range(self.order):
            ext = torch.cat([state["history"][:, o].to(v.dtype), v.unsqueeze(-1)], dim=-1)   # (b, d, T+1)
            hist.append(ext)
            v = xs[o] * ((ext * h[o]).sum(-1) + self.bias[o].to(v.dtype) * v)           # (b, d)
        y = self.out_proj(v)
        return y, {"history": torch.stack(hist, dim=1), "short": short}
