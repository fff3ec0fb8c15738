"""LRU: the Linear Recurrent Unit (Orvieto et al., "Resurrecting Recurrent Neural Networks for Long
Sequences", ICML 2023), on the mixer protocol, scanned with `ssmkit.ops.parallel_scan`.

    x_k = lambda * x_{k-1} + gamma * (B u_k)        lambda, gamma: (N,) complex / real, elementwise
    y_k = Re(C x_k) + D * u_k

A diagonal complex recurrence learned directly in discrete time (no discretization step): the
eigenvalues are parameterized as lambda = exp(-exp(nu_log) + i exp(theta_log)), so |lambda| < 1 at any
parameter value (stable), initialized uniformly on the ring r_min <= |lambda| <= r_max with phases in
[0, max_phase]. gamma = sqrt(1 - |lambda|^2) normalizes the input so every state has unit variance for
white-noise input ("gamma_log" is learned from that start, as in the paper).

Glossary (code name: paper symbol, shape):
    d_model        H                 input/output channels
    d_state        N                 complex states
    nu_log         log(nu)           (N,)  -log|lambda| = exp(nu_log)
    theta_log      log(theta)        (N,)  arg(lambda) = exp(theta_log)
    gamma_log      log(gamma)        (N,)  input normalization
    B              B                 (N, H) complex, stored as (N, H, 2) real pairs
    C              C                 (H, N) complex, stored as (H, N, 2)
    D              D                 (H,) real skip
State: {"x": (batch, N)} complex64 (complex128 for float64 inputs).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmkit._checks import check_positive_int
from ssmkit._dtypes import acc_dtype, complex_of
from ssmkit.layers.base import Mixer, StateDict
from ssmkit.layers.registry import register
from ssmkit.ops import parallel_scan


@register("lru")
class LRU(Mixer):
    """LRU: a diagonal complex recurrence learned in discrete time, stable by its parameterization.

    Args:
        d_model: H, channels in and out.
        d_state: N, complex states.
        r_min, r_max: the eigenvalues start uniform on the ring r_min <= |lambda| <= r_max.
        max_phase: their phases start uniform in [0, max_phase].
        bidirectional: must be False (raises otherwise).
    """

    no_weight_decay = ("nu_log", "theta_log", "gamma_log", "D")
    any_input_dtype = True  # the recurrence runs in float32 (float64 for float64 input)

    def __init__(self, d_model: int, d_state: int = 64, r_min: float = 0.0, r_max: float = 1.0,
                 max_phase: float = 2 * math.pi, bidirectional: bool = False, device=None, dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_state", d_state)
        if not 0.0 <= r_min < r_max <= 1.0:
            raise ValueError(f"LRU: need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
        if bidirectional:
            raise ValueError("LRU is causal: bidirectional=True is not supported (use S5 or S4D for that)")
        self.d_model, self.d_state = d_model, d_state
        factory = {"device": device, "dtype": dtype or torch.float32}
        u1, u2 = torch.rand(d_state, dtype=torch.float64), torch.rand(d_state, dtype=torch.float64)
        nu = -0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2)      # -log|lambda|
        theta = u2 * max_phase
        self.nu_log = nn.Parameter(torch.log(nu).to(**factory))
        self.theta_log = nn.Parameter(torch.log(theta).to(**factory))
        self.gamma_log = nn.Parameter(0.5 * torch.log(-torch.expm1(-2 * nu)).to(**factory))
        B = torch.randn(d_state, d_model, 2, dtype=torch.float64) / math.sqrt(2 * d_model)
        C = torch.randn(d_model, d_state, 2, dtype=torch.float64) / math.sqrt(d_state)
        self.B = nn.Parameter(B.to(**factory))
        self.C = nn.Parameter(C.to(**factory))
        self.D = nn.Parameter(torch.randn(d_model, **factory))

    def _lambda_and_input(self, u: torch.Tensor):
        """lambda (N,) complex and gamma * B u (..., N) for real inputs u (..., H)."""
        real = u.dtype
        lam = torch.exp(torch.complex(-self.nu_log.to(real).exp(), self.theta_log.to(real).exp()))
        B = torch.view_as_complex(self.B.to(real).contiguous())            # (N, H)
        Bu = torch.einsum("nh,...h->...n", B, u.to(B.dtype)) * self.gamma_log.to(real).exp()
        return lam, Bu

    def _readout(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        C = torch.view_as_complex(self.C.to(u.dtype).contiguous())         # (H, N)
        return torch.einsum("hn,...n->...h", C, x).real + self.D.to(u.dtype) * u

    # ---- the protocol ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, state: StateDict | None = None, return_state: bool = False):
        if (empty := self._empty_forward(x, state, return_state)) is not None:
            return empty
        if state is not None:
            self._check_state(state, x.shape[0])
        u = x.to(acc_dtype(x.dtype))                                        # (b, l, H)
        lam, Bu = self._lambda_and_input(u)                                 # (N,), (b, l, N)
        x0 = None if state is None else state["x"].to(Bu.dtype)
        h, h_last = parallel_scan(lam.view(1, 1, -1), Bu, initial_state=x0, return_final_state=True)
        y = self._readout(h, u).to(x.dtype)
        return (y, {"x": h_last}) if return_state else y

    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        device = self.D.device if device is None else device
        return {"x": torch.zeros(batch_size, self.d_state, device=device, dtype=complex_of(acc_dtype(dtype)))}

    def step(self, x_t: torch.Tensor, state: StateDict) -> tuple[torch.Tensor, StateDict]:
        if (empty := self._empty_step(x_t, state)) is not None:
            return empty
        u = x_t.to(acc_dtype(x_t.dtype))                                    # (b, H)
        lam, Bu = self._lambda_and_input(u)
        h = lam * state["x"].to(Bu.dtype) + Bu                              # (b, N)
        return self._readout(h, u).to(x_t.dtype), {"x": h}
