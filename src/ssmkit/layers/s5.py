"""S5: a MIMO diagonal state space layer (Smith, Warrington & Linderman, "Simplified State Space Layers
for Sequence Modeling", ICLR 2023), on the mixer protocol, scanned with `ssmkit.ops.parallel_scan`.

Glossary (code name: paper symbol, shape):
    d_model        H                 input/output channels
    d_state        P                 latent size (complex); stored as P/2 when conj_sym
    n              P or P/2          the stored state size (`self.n`)
    blocks         J                 HiPPO-N blocks on the diagonal of the initial V
    Lambda         Lambda            (n,) complex diagonal of the continuous-time A, = V^-1 A V
    B              B~ = V^-1 B       (n, H) complex
    C              C~ = C V          (H, n) complex; (2, H, n) when bidirectional (forward, backward)
    D              D                 (H,) real feedthrough
    log_dt         log Delta         (n,) one learned time step per state
    Lambda_bar     Lambda-bar        exp(Lambda Delta) (zoh) or (1 + Lambda Delta/2)/(1 - Lambda Delta/2)
    B_bar          B-bar             per-state factor times B~ (from ssmkit.math.discretize, diagonal)

    x_k = Lambda_bar * x_{k-1} + B_bar u_k,   y_k = Re(C~ x_k) (times 2 when conj_sym) + D u_k

Irregular sampling: `forward(x, dt=...)` with dt (batch, length) or (batch, length, 1) multiplies the
learned steps at every position (Delta_{k,p} = dt_k * exp(log_dt_p)), e.g. the differences between
timestamps. Then Lambda_bar and B_bar vary with k: the scan gets a (batch, length, n) decay instead
of the time-invariant (1, 1, n) one. dt=None is the same as dt of all ones.

Initialization (HiPPO-N): the normal part of HiPPO-LegS, S = A + P P^T with P = B / sqrt(2) from
`ssmkit.math.hippo.transition("legs", N)`, equals -1/2 I plus a skew-symmetric matrix, so it is
diagonalized stably by `eigh` of S / i: Lambda = -1/2 + i * eig. With blocks J, each of the J blocks of
size P/J gets this eigendecomposition; V is block diagonal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit._checks import FLOAT_DTYPES, check_choice, check_positive_int, check_tensor
from ssmkit._dtypes import acc_dtype, complex_of
from ssmkit.layers.base import Mixer, StateDict
from ssmkit.layers.registry import register
from ssmkit.math.init import log_uniform_log_dt
from ssmkit.ops import parallel_scan


def hippo_n(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (N,) and eigenvectors V (N, N) (complex128) of the normal part of HiPPO-LegS.

    The eigenvalues come sorted by imaginary part, so conjugate pairs sit at i and N-1-i and the first
    N//2 keep one of each pair (the positive imaginary parts come last: we take those).
    """
    from ssmkit.math.hippo import transition

    A, B = transition("legs", N)
    A, B = A.to(torch.float64), B.to(torch.float64).reshape(N)
    S = A + 0.5 * torch.outer(B, B)                                       # -1/2 I + skew-symmetric
    re = torch.diagonal(S).mean()
    im, V = torch.linalg.eigh(S.to(torch.complex128) * -1j)              # S / i is Hermitian
    Lambda = re + 1j * im                                                 # (N,)
    order = torch.argsort(im, descending=True)
    return Lambda[order], V[:, order]


def _discretize(Lambda: torch.Tensor, step: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(Lambda_bar, B_bar factor) for diagonal Lambda and steps broadcasting against it (any shape)."""
    from ssmkit.math import discretize

    fn = discretize.zoh if method == "zoh" else discretize.bilinear
    shape = torch.broadcast_shapes(Lambda.shape, step.shape)
    # every state is its own 1-state diagonal system, so each gets its own step (dt spans A's batch dims)
    Lambda = Lambda.expand(shape).unsqueeze(-1)                          # (..., n, 1)
    step = step.expand(shape).to(Lambda.dtype)
    Lambda_bar, B_bar = fn(Lambda, torch.ones_like(Lambda), step, diagonal=True)
    return Lambda_bar.reshape(shape), B_bar.reshape(shape)


@register("s5")
class S5(Mixer):
    """S5 layer: y = activation(SSM(u)), SSM a MIMO diagonal complex SSM of size d_state (see module doc).

    Args:
        d_model: H, channels in and out.
        d_state: P, latent size; with conj_sym it must be even and P/2 complex states are stored.
        blocks: J, HiPPO-N blocks of the initial eigenvector matrix; d_state must divide by blocks
            (and by 2 * blocks with conj_sym).
        discretization: "zoh" | "bilinear".
        dt_min, dt_max: the learned steps start log-uniform in [dt_min, dt_max].
        conj_sym: keep one of each conjugate eigenvalue pair; the output takes 2 * Re(.).
        clip_eigs: clip Re(Lambda) <= -1e-4 in the forward pass (stability, as in the S5 code).
        bidirectional: a second output matrix C reads a backward scan (same Lambda, B); no streaming.
        activation: "gelu" | "identity" | "half_glu" (gelu, then times sigmoid(W y)), after the SSM.
    """

    no_weight_decay = ("Lambda_re", "Lambda_im", "log_dt", "D")
    any_input_dtype = True  # the SSM runs in float32 (float64 for float64 input) whatever the weights

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        blocks: int = 1,
        discretization: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        conj_sym: bool = True,
        clip_eigs: bool = False,
        bidirectional: bool = False,
        activation: str = "gelu",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_state", d_state)
        check_positive_int("blocks", blocks)
        check_choice("discretization", discretization, ("zoh", "bilinear"))
        check_choice("activation", activation, ("gelu", "identity", "half_glu"))
        if d_state % (blocks * (2 if conj_sym else 1)):
            need = f"2 * blocks = {2 * blocks}" if conj_sym else f"blocks = {blocks}"
            raise ValueError(f"d_state must be a multiple of {need}, got d_state={d_state}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_model, self.d_state, self.blocks = d_model, d_state, blocks
        self.discretization, self.conj_sym, self.clip_eigs = discretization, conj_sym, clip_eigs
        self.bidirectional, self.activation = bidirectional, activation
        factory = {"device": device, "dtype": dtype or torch.float32}

        size = d_state // blocks                                          # one HiPPO-N block
        Lambda, V = hippo_n(size)
        if conj_sym:
            Lambda, V = Lambda[: size // 2], V[:, : size // 2]          # (size, size/2)
        Vinv = V.conj().T                                                 # V is unitary
        Lambda = Lambda.repeat(blocks)                                    # (n,)
        V = torch.block_diag(*[V] * blocks)                               # (P, n)
        Vinv = torch.block_diag(*[Vinv] * blocks)                         # (n, P)
        self.n = n = Lambda.shape[0]

        B = torch.randn(d_state, d_model, dtype=torch.float64) / math.sqrt(d_model)   # lecun normal
        n_out = 2 if bidirectional else 1
        C = torch.randn(n_out, d_model, d_state, dtype=torch.complex128) / math.sqrt(d_state)
        B_tilde = Vinv @ B.to(torch.complex128)                           # (n, H)
        C_tilde = C @ V                                                   # (n_out, H, n)
        log_dt = log_uniform_log_dt(n, dt_min, dt_max)

        # complex parameters as real (.., 2) pairs: optimizers and state_dict stay real
        self.Lambda_re = nn.Parameter(Lambda.real.to(**factory))
        self.Lambda_im = nn.Parameter(Lambda.imag.to(**factory))
        self.B = nn.Parameter(torch.view_as_real(B_tilde).to(**factory))  # (n, H, 2)
        self.C = nn.Parameter(torch.view_as_real(C_tilde).to(**factory))  # (n_out, H, n, 2)
        self.D = nn.Parameter(torch.randn(d_model, **factory))
        self.log_dt = nn.Parameter(log_dt.to(**factory))
        self.glu = nn.Linear(d_model, d_model, **factory) if activation == "half_glu" else None

    # ---- parameters in complex form --------------------------------------------------------
    def _Lambda(self) -> torch.Tensor:
        re = self.Lambda_re.clamp(max=-1e-4) if self.clip_eigs else self.Lambda_re
        return torch.complex(re, self.Lambda_im)                          # (n,)

    def _discrete(self, dt: torch.Tensor | None, real: torch.dtype):
        """Lambda_bar and the B_bar factor (B_bar = factor * B~), both (1, 1, n) or with dt (b, l, n)."""
        Lambda = self._Lambda().to(complex_of(real))
        step = self.log_dt.to(real).exp()                                 # (n,)
        step = step.view(1, 1, -1) if dt is None else dt.to(real).reshape(*dt.shape[:2], 1) * step
        return _discretize(Lambda.view(1, 1, -1), step, self.discretization)

    def _readout(self, h: torch.Tensor, which: int) -> torch.Tensor:
        C = torch.view_as_complex(self.C[which].to(h.real.dtype).contiguous())   # (H, n)
        y = torch.einsum("bln,hn->blh", h, C).real
        return 2 * y if self.conj_sym else y

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        if self.activation == "identity":
            return y
        y = F.gelu(y)
        return y * torch.sigmoid(self.glu(y)) if self.glu is not None else y

    # ---- the protocol ----------------------------------------------------------------------
    def forward(
        self,
        x,
        state: StateDict | None = None,
        return_state: bool = False,
        *,
        dt: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ):
        """x (b, l, d_model) -> y [, state]. dt: see the module docstring. attention_mask (b, l), 1 = token,
        0 = pad: pads get a step of 0 (Lambda_bar = 1, B_bar = 0), so the state passes through them
        unchanged and each row is computed as if it had no pads, carried states included."""
        if (empty := self._empty_forward(x, state, return_state)) is not None:
            return empty
        batch, length = x.shape[:2]
        real = acc_dtype(x.dtype)
        if dt is not None:
            legend = "(batch, length) or (batch, length, 1)"
            check_tensor("dt", dt, ndim=(2, 3), dtypes=FLOAT_DTYPES, legend=legend)
            if tuple(dt.shape[:2]) != (batch, length) or (dt.dim() == 3 and dt.shape[2] != 1):
                raise ValueError(
                    f"dt must have shape ({batch}, {length}) or ({batch}, {length}, 1) to match x, "
                    f"got {tuple(dt.shape)}"
                )
        if self.bidirectional and (state is not None or return_state):
            self._check_causal("a state")
        mask = self._padding_mask(attention_mask, x, stateful=False)
        if mask is not None:
            dt = mask if dt is None else dt.reshape(batch, length) * mask
        h0 = None
        if state is not None:
            self._check_state(state, batch)
            h0 = state["x"].to(complex_of(real))
        u = x.to(real)
        Lambda_bar, factor = self._discrete(dt, real)                    # (1 or b, 1 or l, n)
        B = torch.view_as_complex(self.B.to(real).contiguous())            # (n, H)
        Bu = factor * torch.einsum("nh,blh->bln", B, u.to(B.dtype))      # B_bar u: (b, l, n)
        h, h_last = parallel_scan(Lambda_bar, Bu, initial_state=h0, return_final_state=True)
        y = self._readout(h, 0)
        if self.bidirectional:
            h_back = parallel_scan(Lambda_bar.flip(1), Bu.flip(1)).flip(1)   # x_k from u_k .. u_{L-1}
            y = y + self._readout(h_back, 1)
        y = self._activate(y + self.D.to(real) * u).to(x.dtype)
        return (y, {"x": h_last}) if return_state else y

    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        self._check_causal("init_state")
        real = acc_dtype(dtype)
        return {"x": torch.zeros(batch_size, self.n, device=device or self.D.device,
                                 dtype=complex_of(real))}

    def step(self, x_t, state: StateDict, *, dt=None):
        """One token: x_t (batch, d_model), optional dt (batch,) or (batch, 1) -> y_t, new state."""
        if (empty := self._empty_step(x_t, state)) is not None:
            return empty
        if dt is not None:
            check_tensor("dt", dt, ndim=(1, 2), dtypes=FLOAT_DTYPES, legend="(batch,) or (batch, 1)")
            dt = dt.reshape(-1, 1)
        y, new = self.forward(x_t.unsqueeze(1), state=state, return_state=True, dt=dt)
        return y.squeeze(1), new
