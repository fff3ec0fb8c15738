"""Mamba-2 mixer: in_proj -> (z, xBC, dt); causal conv over xBC -> SSD -> gated grouped RMSNorm -> out_proj.

Glossary (code name: symbol in "Transformers are SSMs" / published code):
    d_inner : expand * d_model (or given)    nheads : H = d_inner / headdim, one scalar A per head
    headdim : P, channels per head            ngroups: G, heads share B and C within a group
    d_state : N                               dt     : per head, softplus(dt + dt_bias) clamped to dt_limit
    A = -exp(A_log), A_log initialised from A ~ U(A_init_range)
Options of the hybrids:
    in_proj_multipliers: (z, x, B, C, dt) factors on those parts of in_proj's output (Falcon-H1's
              ssm_multipliers); None = none
    norm_before_gate: with rmsnorm, RMSNorm(y) * silu(z) instead of RMSNorm(y * silu(z))
              (Falcon-H1's mamba_norm_before_gate)
    out_bias: out_proj's bias (None: as `bias`, which sets in_proj's)
Parameter names and shapes are the published checkpoints' (and transformers' Mamba2Mixer's): in_proj
(outputs ordered z, x, B, C, dt), conv1d (over x, B, C), dt_bias, A_log, D, norm.weight, out_proj.

State: {"conv": (b, d_inner + 2 G N, d_conv-1), the last d_conv-1 conv inputs (transformers keeps
d_conv), "ssm": (b, H, P, N) float32}.

Variable length and bidirectional=True: see `ssmkit.layers.varlen`. Packed sequences run in one call:
the conv taps and the SSD state stop at every boundary; a given state applies to each row's first
sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.layers.base import StateDict
from ssmkit.layers.norm import RMSNorm
from ssmkit.layers.registry import register
from ssmkit.layers.varlen import LINEARS, VarlenMixer, linear_arrays, mask_conv_state, parameters_at
from ssmkit.math.init import inverse_softplus_dt
from ssmkit.ops._decode import numba_step
from ssmkit.ops._triton import decode
from ssmkit.ops.causal_conv1d import causal_conv1d, causal_conv1d_update
from ssmkit.ops.ssd import ssd


def _check_sizes(d_model, d_state, d_conv, expand, headdim, ngroups, chunk_size, d_inner, A_init_range,
                 in_proj_multipliers):
    """Mamba2's size arguments checked, each error naming the argument; -> (d_inner, nheads, multipliers)."""
    for name, v in (
        ("d_model", d_model),
        ("d_state", d_state),
        ("d_conv", d_conv),
        ("expand", expand),
        ("headdim", headdim),
        ("ngroups", ngroups),
        ("chunk_size", chunk_size),
    ):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"Mamba2: {name} must be a positive int, got {v!r}")
    # d_inner given: the SSM's width set apart from d_model (Nemotron-H: nheads * headdim)
    if d_inner is not None and (not isinstance(d_inner, int) or d_inner <= 0):
        raise ValueError(f"Mamba2: d_inner must be a positive int or None, got {d_inner!r}")
    given = d_inner is not None
    d_inner = d_inner if given else expand * d_model
    if d_inner % headdim != 0:
        how = "" if given else f" = expand * d_model = {expand} * {d_model}"
        raise ValueError(f"Mamba2: d_inner{how} = {d_inner} must be divisible by headdim={headdim}")
    nheads = d_inner // headdim
    if nheads % ngroups != 0:
        raise ValueError(f"Mamba2: ngroups={ngroups} must divide nheads = d_inner / headdim = {nheads}")
    if not 0 < A_init_range[0] <= A_init_range[1]:
        raise ValueError(
            f"Mamba2: A_init_range must be (low, high) with 0 < low <= high, got {A_init_range}"
        )
    if in_proj_multipliers is not None:
        if len(in_proj_multipliers) != 5:
            raise ValueError(
                f"Mamba2: in_proj_multipliers must be 5 factors (z, x, B, C, dt) or None, "
                f"got {in_proj_multipliers!r}"
            )
        in_proj_multipliers = tuple(float(m) for m in in_proj_multipliers)
    return d_inner, nheads, in_proj_multipliers


@register("mamba2")
class Mamba2(VarlenMixer):
    """Mamba-2: selective SSM with a scalar decay per head, computed in chunks by matmuls (SSD).

    See the module docstring. `backend` is passed to the ops.
    """

    no_weight_decay = ("A_log", "D", "dt_bias")

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 256,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, math.inf),
        conv_bias: bool = True,
        bias: bool = False,
        rmsnorm: bool = True,
        norm_eps: float = 1e-5,
        D_has_hdim: bool = False,
        d_inner: int | None = None,
        in_proj_multipliers: tuple[float, ...] | None = None,
        norm_before_gate: bool = False,
        out_bias: bool | None = None,
        bidirectional: bool = False,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        init_args = dict(locals())
        super().__init__()
        d_inner, nheads, in_proj_multipliers = _check_sizes(
            d_model, d_state, d_conv, expand, headdim, ngroups, chunk_size, d_inner, A_init_range,
            in_proj_multipliers,
        )
        self.in_proj_multipliers, self.norm_before_gate = in_proj_multipliers, norm_before_gate
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner, self.headdim, self.nheads, self.ngroups = d_inner, headdim, nheads, ngroups
        self.chunk_size, self.dt_limit = chunk_size, (float(dt_limit[0]), float(dt_limit[1]))
        self.rmsnorm, self.D_has_hdim = rmsnorm, D_has_hdim
        self.backend, self.bidirectional = backend, bidirectional
        self.conv_dim = d_inner + 2 * ngroups * d_state

        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, bias=bias, **fk)
        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            d_conv,
            groups=self.conv_dim,
            padding=d_conv - 1,
            bias=conv_bias,
            **fk,
        )
        self.dt_bias = nn.Parameter(inverse_softplus_dt(nheads, dt_min, dt_max, dt_init_floor).to(device))
        A = torch.empty(nheads, dtype=torch.float32).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(device))  # (nheads,) float32
        self.D = nn.Parameter(torch.ones(d_inner if D_has_hdim else nheads, device=device))
        if rmsnorm:
            self.norm = RMSNorm(d_inner, eps=norm_eps, group_size=d_inner // ngroups)
            if device is not None or dtype is not None:
                self.norm.to(**{k: v for k, v in fk.items() if v is not None})
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias if out_bias is None else out_bias, **fk)

        if bidirectional:
            self._add_reverse(init_args)

    # ---- the protocol ------------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        self._check_causal("init_state")
        device = self.A_log.device if device is None else device
        dtype = self.conv1d.weight.dtype if dtype is None else dtype  # in_proj may hold int8
        return {
            "conv": torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
            "ssm": torch.zeros(
                batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=torch.float32
            ),
        }

    def step(self, x_t: torch.Tensor, state: StateDict) -> tuple[torch.Tensor, StateDict]:
        """One token x_t (b, d_model) -> y_t (b, d_model), new state; O(1) in time and memory."""
        if (empty := self._empty_step(x_t, state)) is not None:
            return empty
        if (fused := self._fused_step(x_t, state)) is not None:  # CPU inference: numba kernels
            return fused
        z, xBC, dt = self._project(x_t).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if decode.fused_step("ssd", self.backend, xBC):  # conv, dt, state, output, gate: one Triton kernel
            D = self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D
            y, conv, ssm = decode.mamba2_step(
                xBC, dt, state["conv"].to(xBC.dtype), state["ssm"], self.conv1d.weight[:, 0, :],
                self.conv1d.bias, self.dt_bias, -torch.exp(self.A_log.float()), D,
                None if self.rmsnorm else z, ngroups=self.ngroups, dt_limit=self.dt_limit)
            return self.out_proj(self._gated_norm(y, z) if self.rmsnorm else y), {"conv": conv, "ssm": ssm}
        xBC, conv = causal_conv1d_update(
            xBC,
            state["conv"].to(xBC.dtype),
            self.conv1d.weight[:, 0, :],
            bias=self.conv1d.bias,
            activation="silu",
        )
        y, ssm = self._ssd(xBC[:, None], dt[:, None], z[:, None], state["ssm"], None, None, chunk_size=1)
        return self.out_proj(y[:, 0]), {"conv": conv, "ssm": ssm}

    # ---- internals ---------------------------------------------------------------------------
    def _step_params(self) -> tuple:
        """The parameters the fused step reads (decode.mamba2_prepared's)."""
        conv = self.conv1d
        norm_w = self.norm.weight if self.rmsnorm else None
        return conv.weight, conv.bias, self.dt_bias, self.A_log, self.D, norm_w

    def _prepared(self, kernels) -> tuple:
        norm = self.norm if self.rmsnorm else None
        conv_w, conv_b, dt_bias, A_log, D, norm_w = self._step_params()
        return kernels.mamba2_prepared(
            conv_w[:, 0, :], conv_b, dt_bias, A_log, D, ngroups=self.ngroups, dt_limit=self.dt_limit,
            norm_weight=norm_w, norm_eps=0.0 if norm is None else norm.eps,
            group_size=None if norm is None else norm.group_size, norm_before_gate=self.norm_before_gate,
        )

    def _numba_step(self, x_t, state):
        states = (state["conv"], state["ssm"])
        return numba_step(self, "ssd", self.backend, x_t, states, self._step_params(), self._prepared)

    _block_op, _block_kernel = "ssd", "mamba2_block_"

    def _block_params(self):
        mods = self._modules
        linear = all(type(mods[m]) in LINEARS for m in ("in_proj", "out_proj"))
        if self.in_proj_multipliers is not None or not linear:
            return None  # Falcon-H1's multipliers
        own = self._parameters
        norm_w = mods["norm"]._parameters["weight"] if self.rmsnorm else None
        return (*parameters_at(self, self._BLOCK_PARAMS), own["dt_bias"], own["A_log"], own["D"], norm_w)

    _BLOCK_PARAMS = tuple(
        (m, n) for m in ("in_proj", "out_proj") for n in ("weight", "weight_scale", "bias")
    ) + (("conv1d", "weight"), ("conv1d", "bias"))

    def _block_arrays(self, kernels):
        prepared = list(self._prepared(kernels))
        prepared[9] = prepared[9] or self.d_inner  # the group norm's group size: all channels by default
        return (linear_arrays(self.in_proj, kernels), *prepared, linear_arrays(self.out_proj, kernels))

    def _fused_step_(self, fused, x_t, state):
        kernels, prepared = fused
        return self.out_proj(kernels.mamba2_step_(self._project(x_t), state["conv"], state["ssm"], prepared))

    def _ssd(self, xBC, dt, z, ssm0, seq_idx, mask, chunk_size):
        """xBC (b, l, conv_dim) after the conv, dt (b, l, H), z (b, l, d_inner) -> y (b, l, d_inner), ssm."""
        b, l = xBC.shape[:2]
        H, P, G, N = self.nheads, self.headdim, self.ngroups, self.d_state
        xs, B, C = xBC.split([self.d_inner, G * N, G * N], dim=-1)
        dt_bias, softplus, limit = self.dt_bias, True, self.dt_limit
        if mask is not None:
            # dt = 0 on pads: exp(0 * A) = 1 and no input, so the state passes through unchanged
            dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(*self.dt_limit) * mask[..., None]
            dt_bias, softplus, limit = None, False, (0.0, math.inf)
        D = self.D.view(H, P) if self.D_has_hdim else self.D
        gate = None if self.rmsnorm else z.reshape(b, l, H, P)
        y, ssm = ssd(
            xs.reshape(b, l, H, P),
            dt,
            -torch.exp(self.A_log.float()),
            B.reshape(b, l, G, N),
            C.reshape(b, l, G, N),
            chunk_size=chunk_size,
            D=D,
            z=gate,
            dt_bias=dt_bias,
            dt_softplus=softplus,
            dt_limit=limit,
            initial_state=ssm0,
            seq_idx=seq_idx,
            return_final_state=True,
            backend=self.backend,
        )
        y = y.reshape(b, l, self.d_inner)
        if self.rmsnorm:
            y = self._gated_norm(y, z)
        return y, ssm

    def _gated_norm(self, y, z):
        """RMSNorm_groups(y * silu(z)) * weight; norm_before_gate: RMSNorm_groups(y) * weight * silu(z)."""
        return self.norm(y, z, gate_after=self.norm_before_gate)

    def _project(self, x):
        """in_proj(x), its (z, x, B, C, dt) parts scaled by in_proj_multipliers when set."""
        p = self.in_proj(x)
        if self.in_proj_multipliers is None:
            return p
        GN = self.ngroups * self.d_state
        sizes = (self.d_inner, self.d_inner, GN, GN, self.nheads)
        scale = torch.cat([p.new_full((n,), m) for n, m in zip(sizes, self.in_proj_multipliers)])
        return p * scale if torch.is_grad_enabled() else p.mul_(scale)  # in place on in_proj's output

    def _forward(self, x, state, seq_idx, mask):
        z, xBC, dt = self._project(x).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC = xBC.transpose(1, 2)  # (b, conv_dim, l)
        if mask is not None:
            xBC = xBC * mask[:, None, :]  # pads enter the conv as zeros, like an empty state
        conv0 = None if state is None else state["conv"].to(xBC.dtype)
        w = self.conv1d.weight[:, 0, :]  # (conv_dim, d_conv)
        conv_kw = dict(bias=self.conv1d.bias, initial_state=conv0, activation="silu", return_final_state=True)
        if seq_idx is not None:
            xBC, conv = causal_conv1d(xBC, w, seq_idx=seq_idx, **conv_kw)
            conv = mask_conv_state(conv, seq_idx)
        else:
            xBC, conv = causal_conv1d(xBC, w, backend=self.backend, **conv_kw)
        ssm0 = None if state is None else state["ssm"]
        y, ssm = self._ssd(xBC.transpose(1, 2), dt, z, ssm0, seq_idx, mask, self.chunk_size)
        return self.out_proj(y), {"conv": conv, "ssm": ssm}
