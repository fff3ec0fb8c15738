"""Mamba (Mamba-1) mixer: in_proj -> causal conv -> selective scan -> gate -> out_proj.

Glossary (code name: symbol in the Mamba paper / published code):
    d_model : D, the model width            d_inner : E*D = expand * d_model (channels of the scan)
    d_state : N, state size per channel     dt_rank : R, rank of the delta projection (ceil(D/16))
    d_conv  : kernel size of the short depthwise causal conv
    delta   : Delta = softplus(dt_proj(x_proj(x)[:R]))     A = -exp(A_log): S4D-Real, -(1..N)
    bcdt_rms_eps: when set, dt (before dt_proj), B and C are each RMS-normalized over their last
              dimension, without weights (Falcon-Mamba's mixer); None = the plain Mamba mixer
    bcdt_norm_weights: those three norms carry learned weights, dt_layernorm (dt_rank,),
              b_layernorm and c_layernorm (d_state,) (Jamba's mixer); needs bcdt_rms_eps
Parameter names and shapes are the published checkpoints' (and transformers' MambaMixer's):
in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj, so state_dicts load with strict=True.

State (the mixer protocol): {"conv": (b, d_inner, d_conv-1), the last d_conv-1 conv inputs, in the
activation dtype (transformers keeps d_conv entries; we keep exactly what the next step needs),
"ssm": (b, d_inner, d_state) float32}.

Variable length and bidirectional=True: see `ssmkit.layers.varlen`. Packed sequences run one at a
time (the scan restarts per sequence; the state given applies to the first sequence of a row, the
state returned is the last sequence's).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.layers.base import StateDict
from ssmkit.layers.norm import RMSNorm
from ssmkit.layers.registry import register
from ssmkit.layers.varlen import LINEARS, VarlenMixer, linear_arrays, parameters_at
from ssmkit.math.init import inverse_softplus_dt
from ssmkit.ops._decode import numba_step
from ssmkit.ops._triton import decode
from ssmkit.ops.causal_conv1d import causal_conv1d, causal_conv1d_update
from ssmkit.ops.selective_scan import selective_scan


@register("mamba")
class Mamba(VarlenMixer):
    """Mamba (Mamba-1): input-dependent (selective) SSM with a short causal conv and a gate.

    See the module docstring. `backend` is passed to the ops.
    """

    no_weight_decay = ("A_log", "D")

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        bcdt_rms_eps: float | None = None,
        bcdt_norm_weights: bool = False,
        bidirectional: bool = False,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        init_args = dict(locals())
        super().__init__()
        for name, v in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"Mamba: {name} must be a positive int, got {v!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        if bcdt_rms_eps is not None and not bcdt_rms_eps > 0:
            raise ValueError(f"Mamba: bcdt_rms_eps must be > 0 or None, got {bcdt_rms_eps!r}")
        if bcdt_norm_weights and bcdt_rms_eps is None:
            raise ValueError("Mamba: bcdt_norm_weights=True needs bcdt_rms_eps (the norms' epsilon)")
        self.bcdt_rms_eps = bcdt_rms_eps
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend, self.bidirectional = backend, bidirectional

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **fk)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias, **fk
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **fk)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)
        if bcdt_norm_weights:
            self.dt_layernorm = RMSNorm(self.dt_rank, eps=bcdt_rms_eps)
            self.b_layernorm = RMSNorm(d_state, eps=bcdt_rms_eps)
            self.c_layernorm = RMSNorm(d_state, eps=bcdt_rms_eps)
        self.bcdt_norm_weights = bcdt_norm_weights

        # published init: dt_proj.weight ~ U(-s, s) (or constant s), s = dt_rank^-0.5 * dt_scale
        std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            self.dt_proj.bias.copy_(inverse_softplus_dt(self.d_inner, dt_min, dt_max, dt_init_floor))
        # S4D-Real: A = -(1, 2, ..., N) for every channel, stored as A_log in float32
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # (d_inner, d_state)
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))

        if bidirectional:
            self._add_reverse(init_args)

    # ---- the protocol ------------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        self._check_causal("init_state")
        device = self.A_log.device if device is None else device
        dtype = self.conv1d.weight.dtype if dtype is None else dtype  # in_proj may hold int8
        return {
            "conv": torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        }

    def step(self, x_t: torch.Tensor, state: StateDict) -> tuple[torch.Tensor, StateDict]:
        """One token x_t (b, d_model) -> y_t (b, d_model), new state; O(1) in time and memory."""
        if (empty := self._empty_step(x_t, state)) is not None:
            return empty
        if (fused := self._fused_step(x_t, state)) is not None:  # CPU inference: numba kernels
            return fused
        u, z = self.in_proj(x_t).chunk(2, dim=-1)  # (b, d_inner) each
        fused = decode.fused_step("selective_scan", self.backend, u)  # Triton's decode kernels
        u, conv = (decode.causal_conv1d_update if fused else causal_conv1d_update)(
            u, state["conv"].to(u.dtype), self._conv_weight(), bias=self.conv1d.bias, activation="silu"
        )
        dt, B, C = self._dt_B_C(self.x_proj(u))
        delta = dt @ self.dt_proj.weight.t()  # (b, d_inner), bias and softplus inside the scan
        if fused:
            y, ssm = decode.selective_state_update(state["ssm"], u, delta, self._A(), B, C, D=self.D, z=z,
                                                   delta_bias=self.dt_proj.bias, delta_softplus=True)
            return self.out_proj(y), {"conv": conv, "ssm": ssm}
        y, ssm = selective_scan(
            u[..., None],
            delta[..., None],
            self._A(),
            B[..., None],
            C[..., None],
            D=self.D,
            z=z[..., None],
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
            initial_state=state["ssm"],
            return_final_state=True,
            backend=self.backend,
        )
        return self.out_proj(y[..., 0]), {"conv": conv, "ssm": ssm}

    # ---- internals ---------------------------------------------------------------------------
    def _numba_step(self, x_t, state):
        conv = self.conv1d
        params = (conv.weight, conv.bias, self.A_log, self.D, self.dt_proj.bias)

        def build(kernels):
            return kernels.mamba_prepared(self._conv_weight(), *params[1:])

        states = (state["conv"], state["ssm"])
        return numba_step(self, "selective_scan", self.backend, x_t, states, params, build)

    _block_op, _block_kernel = "selective_scan", "mamba_block_"

    _BLOCK_PARAMS = tuple(
        (m, n) for m in ("in_proj", "x_proj", "out_proj") for n in ("weight", "weight_scale", "bias")
    ) + (("conv1d", "weight"), ("conv1d", "bias"), ("dt_proj", "weight"), ("dt_proj", "bias"))
    _BCDT_PARAMS = (("dt_layernorm", "weight"), ("b_layernorm", "weight"), ("c_layernorm", "weight"))

    def _block_params(self):
        mods = self._modules
        if not all(type(mods[m]) in LINEARS for m in ("in_proj", "x_proj", "out_proj")):
            return None
        params = parameters_at(self, self._BLOCK_PARAMS)
        if params[5] is not None:
            return None  # x_proj with a bias: a layout the kernel does not have
        bcdt = parameters_at(self, self._BCDT_PARAMS) if self.bcdt_norm_weights else ()
        return (*params, self._parameters["A_log"], self._parameters["D"], *bcdt)

    def _block_arrays(self, kernels):
        a = kernels.array
        conv_w, conv_b, A, D, dt_bias = kernels.mamba_prepared(
            self._conv_weight(), self.conv1d.bias, self.A_log, self.D, self.dt_proj.bias)
        eps = -1.0 if self.bcdt_rms_eps is None else float(self.bcdt_rms_eps)
        lin_in, lin_x, lin_out = (linear_arrays(m, kernels) for m in (self.in_proj, self.x_proj,
                                                                         self.out_proj))
        return (lin_in, conv_w, conv_b, lin_x, a(self.dt_proj.weight), dt_bias, A, D, lin_out, eps,
                *(a(w) for w in self._bcdt_weights()))

    def _bcdt_weights(self) -> tuple:
        """The weights of the dt, B and C norms (Jamba), else Nones."""
        if self.bcdt_rms_eps is not None and self.bcdt_norm_weights:
            return self.dt_layernorm.weight, self.b_layernorm.weight, self.c_layernorm.weight
        return None, None, None

    def _fused_step_(self, fused, x_t, state):
        kernels, prepared = fused
        conv_w, conv_b = prepared[:2]
        u, z = self.in_proj(x_t).chunk(2, dim=-1)  # (b, d_inner) each
        u = kernels.conv_step_(u, state["conv"], conv_w, conv_b, silu_on=True)
        dt, B, C = self._dt_B_C(self.x_proj(u))
        delta = dt @ self.dt_proj.weight.t()  # (b, d_inner), bias and softplus inside the kernel
        return self.out_proj(kernels.selective_state_update_(state["ssm"], u, delta, B, C, z, prepared))

    def _A(self) -> torch.Tensor:
        return -torch.exp(self.A_log.float())  # (d_inner, d_state)

    def _dt_B_C(self, x_dbl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_proj's output (..., dt_rank + 2 d_state) -> dt, B, C (RMS-normalized with bcdt_rms_eps)."""
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.bcdt_rms_eps is None:
            return dt, B, C
        if self.bcdt_norm_weights:
            return self.dt_layernorm(dt), self.b_layernorm(B), self.c_layernorm(C)
        return tuple(_rms(t, self.bcdt_rms_eps) for t in (dt, B, C))

    def _conv_weight(self) -> torch.Tensor:
        return self.conv1d.weight[:, 0, :]  # (d_inner, d_conv)

    def _forward(self, x, state, seq_idx, mask):
        if seq_idx is not None:
            return self._forward_packed(x, state, seq_idx)
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (b, l, d_inner) each
        u, z = u.transpose(1, 2), z.transpose(1, 2)  # (b, d_inner, l)
        if mask is not None:
            u = u * mask[:, None, :]  # pads enter the conv as zeros, like an empty state
        conv0 = None if state is None else state["conv"].to(u.dtype)
        u, conv = causal_conv1d(
            u,
            self._conv_weight(),
            bias=self.conv1d.bias,
            initial_state=conv0,
            activation="silu",
            return_final_state=True,
            backend=self.backend,
        )
        x_dbl = self.x_proj(u.transpose(1, 2))  # (b, l, dt_rank + 2 d_state)
        dt, B, C = self._dt_B_C(x_dbl)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (b, d_inner, l)
        delta_bias, softplus = self.dt_proj.bias, True
        if mask is not None:
            # delta = 0 on pads: exp(0 * A) = 1 and no input, so the state passes through unchanged
            delta = F.softplus(delta.float() + delta_bias.float()[:, None]) * mask[:, None, :]
            delta_bias, softplus = None, False
        y, ssm = selective_scan(
            u,
            delta,
            self._A(),
            B.transpose(1, 2),
            C.transpose(1, 2),
            D=self.D,
            z=z,
            delta_bias=delta_bias,
            delta_softplus=softplus,
            initial_state=None if state is None else state["ssm"],
            return_final_state=True,
            backend=self.backend,
        )  # y: (b, d_inner, l)
        return self.out_proj(y.transpose(1, 2)), {"conv": conv, "ssm": ssm}

    def _forward_packed(self, x, state, seq_idx):
        """Each packed sequence alone (the selective scan has no resets); a row's state goes to its first."""
        ys, states = [], []
        for r in range(x.shape[0]):
            cuts = [0, *(torch.nonzero(seq_idx[r, 1:] != seq_idx[r, :-1]).flatten() + 1).tolist(), x.shape[1]]
            s = None if state is None else {k: v[r : r + 1] for k, v in state.items()}
            row = []
            for a, e in zip(cuts[:-1], cuts[1:]):
                y, last = self._forward(x[r : r + 1, a:e], s, None, None)
                row.append(y)
                s = None  # the next sequence starts from an empty state
            ys.append(torch.cat(row, dim=1))
            states.append(last)
        new_state = {k: torch.cat([s[k] for s in states], dim=0) for k in states[0]}
        return torch.cat(ys, dim=0), new_state


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dimension, in float32, without a weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
