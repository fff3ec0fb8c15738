"""The block that S4 and S4D share: a linear time-invariant SSM per channel run as a long convolution.

Per channel h (d_model of them), one SSM with state size N = d_state:

    x_k = Ad x_{k-1} + Bd u_k,    y_k = C x_k + D u_k,    so y = K * u + D u,  K_l = C Ad^l Bd

then the S4 block: activation, dropout, and a channel-mixing output layer (GLU or linear). The kernel
K comes from the subclass (S4D: Vandermonde; S4: Cauchy + Woodbury) and is applied by
`ssmkit.ops.fft_conv`.

Streaming. A carried-in state x0 adds the free response C Ad^{k+1} x0 at position k, and the state
after a chunk of length L is x_L = Ad^L x0 + sum_j Ad^{L-1-j} Bd u_j (the subclass computes both).
`step` advances the recurrence one token.

Caching: in eval mode with gradients off, the kernel and the recurrence tensors are cached, keyed on
every SSM parameter's version (in-place updates, e.g. an optimizer step, invalidate them) and on the
length and dtype; train() clears the cache. With gradients on they are always recomputed.

Glossary (code name: paper symbol, shape):
    d_model          H                    channels; each has its own SSM
    log_dt           log Delta            (H,) learned step sizes, log-uniform in [dt_min, dt_max]
    D                D                    (H,) skip
    Ad, Bd           A-bar, B-bar         the discretized system (ssmkit.math.discretize)
    K                K-bar                (n_dir, H, L) the convolution kernel
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit._checks import check_choice, check_positive_int
from ssmkit._dtypes import acc_dtype, complex_of
from ssmkit.layers.base import Mixer, StateDict
from ssmkit.math.init import log_uniform_log_dt
from ssmkit.ops import fft_conv

_ACTIVATIONS = ("gelu", "silu", "identity")
_OUTPUTS = ("glu", "linear", None)


class ConvSSM(Mixer):
    """What S4 and S4D share: step sizes, D, the block's output, fft_conv, caching, param groups.

    Subclasses set `n` (stored states per channel), `is_complex`, `_ssm_names` (the parameters trained
    with the smaller lr and no weight decay), `state_key` (the key of their state, distinct per layer
    type) and implement `_kernel`, `_recurrence`, `_free_response`,
    `_final_state`, `_step_state`.
    """

    _ssm_names: tuple[str, ...] = ()
    state_key = "x"
    any_input_dtype = True  # the SSM runs in float32 (float64 for float64 input) whatever the weights

    def _setup_block(self, d_model, discretization, dt_min, dt_max, bidirectional, activation, output,
                     dropout, lr, kernel_dtype, factory):
        check_positive_int("d_model", d_model)
        check_choice("kernel_dtype", kernel_dtype, (torch.float32, torch.float64))
        self.kernel_dtype = kernel_dtype
        check_choice("activation", activation, _ACTIVATIONS)
        check_choice("output", output, _OUTPUTS)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.discretization, self.bidirectional = d_model, discretization, bidirectional
        self.activation, self.output, self.lr = activation, output, lr
        self.n_dir = 2 if bidirectional else 1
        self.log_dt = nn.Parameter(log_uniform_log_dt(d_model, dt_min, dt_max).to(**factory))
        self.D = nn.Parameter(torch.randn(d_model, **factory))
        self.dropout = nn.Dropout(dropout)
        width = {"glu": 2 * d_model, "linear": d_model, None: 0}[output]
        self.output_linear = nn.Linear(d_model, width, **factory) if width else None
        self._cache: dict = {}

    # ---- caching ------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        self._cache = {}
        return super().train(mode)

    def _cached(self, key: tuple, build):
        if self.training or torch.is_grad_enabled():
            return build()
        versions = tuple((p.data_ptr(), p._version) for p in self._ssm_tensors())
        hit = self._cache.get(key)
        if hit is not None and hit[0] == versions:
            return hit[1]
        value = build()
        self._cache[key] = (versions, value)
        return value

    def _ssm_tensors(self):
        return [t for t in (getattr(self, name) for name in (*self._ssm_names, "C")) if t is not None]

    def _hi(self, real: torch.dtype) -> torch.dtype:
        """The dtype of the SSM math: kernel_dtype, or float64 for float64 inputs."""
        return torch.promote_types(real, self.kernel_dtype)

    def cached_kernel(self, L: int, dtype=torch.float32) -> torch.Tensor:
        """The convolution kernel (n_dir, H, L) (backward direction second when bidirectional)."""
        return self._cached(("kernel", L, dtype), lambda: self._kernel(L, dtype))

    def _cached_recurrence(self, dtype):
        return self._cached(("recurrence", dtype), lambda: self._recurrence(dtype))

    # ---- optimizer groups ---------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """The optimizer group of the SSM parameters (A, dt, B and P) as the S4 papers train them: no
        weight decay and the smaller learning rate `self.lr` (None: the optimizer's base rate). The
        other parameters follow the optimizer's general rules (`ssmkit.training.optim`)."""
        params = [getattr(self, name) for name in self._ssm_names]
        group = {"params": [p for p in params if p is not None], "weight_decay": 0.0}
        if self.lr is not None:
            group["lr"] = self.lr
        return [group]

    # ---- the block ----------------------------------------------------------------------------
    def _block_output(self, y: torch.Tensor) -> torch.Tensor:
        """activation, dropout, channel mixing; y (..., H) in the compute dtype."""
        if self.activation == "gelu":
            y = F.gelu(y)
        elif self.activation == "silu":
            y = F.silu(y)
        y = self.dropout(y)
        if self.output_linear is not None:
            W, b = self.output_linear.weight, self.output_linear.bias
            y = F.linear(y, W.to(y.dtype), b.to(y.dtype))
            if self.output == "glu":
                y = F.glu(y, dim=-1)
        return y

    def forward(
        self,
        x: torch.Tensor,
        state: StateDict | None = None,
        return_state: bool = False,
        *,
        attention_mask: torch.Tensor | None = None,
    ):
        """x (b, l, d_model) -> y [, state]. attention_mask (b, l), 1 = token, 0 = pad: pads enter the
        convolution as zeros, so each row's tokens are computed as if the row had no pads (no state)."""
        if (empty := self._empty_forward(x, state, return_state)) is not None:
            return empty
        if self.bidirectional and (state is not None or return_state):
            self._check_causal("a state")
        mask = self._padding_mask(attention_mask, x, stateful=state is not None or return_state)
        batch, L, _ = x.shape
        real = acc_dtype(x.dtype)
        u = x.transpose(1, 2).to(real)                                     # (b, H, L)
        if mask is not None:
            u = u * mask.to(real)[:, None, :]
        K = self.cached_kernel(L, real)                                    # (n_dir, H, L)
        y = fft_conv(u, K[0], D=self.D.to(real))                          # (b, H, L)
        if self.bidirectional:
            y = y + fft_conv(u.flip(-1), K[1]).flip(-1)                   # sees u_j for j >= k
        x0 = None
        if state is not None:
            self._check_state(state, batch)
            x0 = state[self.state_key]
        if x0 is not None or return_state:
            rec = self._cached_recurrence(real)
            if x0 is None:
                x0 = self.init_state(batch, device=x.device, dtype=real)[self.state_key]
            x0 = x0.to(complex_of(real) if self.is_complex else real)
            if state is not None:
                y = y + self._free_response(rec, x0, L)
        # channels-last before the activation: gelu's backward on the transposed view is ~10x slower
        y = self._block_output(y.transpose(1, 2).contiguous()).to(x.dtype)  # (b, L, H)
        if not return_state:
            return y
        return y, {self.state_key: self._final_state(rec, x0, u)}

    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        self._check_causal("init_state")
        real = acc_dtype(dtype)
        state_dtype = complex_of(real) if self.is_complex else real
        device = device if device is not None else self.D.device
        x0 = torch.zeros(batch_size, self.d_model, self.n, device=device, dtype=state_dtype)
        return {self.state_key: x0}

    def step(self, x_t: torch.Tensor, state: StateDict) -> tuple[torch.Tensor, StateDict]:
        """One token: x_t (batch, d_model) -> y_t (batch, d_model), the new state. O(H N) work."""
        if (empty := self._empty_step(x_t, state)) is not None:
            return empty
        x0 = state[self.state_key]
        real = acc_dtype(x_t.dtype)
        rec = self._cached_recurrence(real)
        u = x_t.to(real)                                                   # (b, H)
        x0 = x0.to(complex_of(real) if self.is_complex else real)
        y, x1 = self._step_state(rec, x0, u)
        y = self._block_output(y + self.D.to(real) * u).to(x_t.dtype)
        return y, {self.state_key: x1}
