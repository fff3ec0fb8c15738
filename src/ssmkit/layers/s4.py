"""S4 and S4D: linear time-invariant state space layers run as long convolutions (Gu, Goel & Re,
"Efficiently Modeling Long Sequences with Structured State Spaces", ICLR 2022; Gu, Gupta, Goel & Re,
"On the Parameterization and Initialization of Diagonal State Space Models", NeurIPS 2022).

Per channel h (d_model of them), one SSM with state size N = d_state:

    x_k = Ad x_{k-1} + Bd u_k,    y_k = C x_k + D u_k,    so y = K * u + D u,  K_l = C Ad^l Bd

then the S4 block: activation, dropout, and a channel-mixing output layer (GLU or linear).

Glossary (code name: paper symbol, shape):
    d_model          H                    channels; each has its own SSM
    d_state          N                    state size; complex inits store N2 = N/2 states (one of each
                                          conjugate pair) and read out 2 Re(C x)
    log_dt           log Delta            (H,) learned step sizes, log-uniform in [dt_min, dt_max]
    log_A_real       log(-Re A)           (H, n) so that Re A = -exp(log_A_real) < 0 (stable)
    A_imag           Im A                 (H, n)
    P                P                    (rank, H, N2) complex (S4 only): A = Lambda - P P^*
    B, C             B, C                 (H, n) complex (real for S4D's "real" init)
    C                C~ (S4 only)         S4 trains C~ = C (I - Ad^l_max) directly, as the paper does
    D                D                    (H,) skip
    Ad, Bd           A-bar, B-bar         the discretized system (ssmkit.math.discretize)
    K                K-bar                (H, L) the convolution kernel (ssmkit.math.kernels)

S4D: A diagonal; the kernel is a Vandermonde product (`vandermonde_kernel` on log Ad, so ZOH and
bilinear share it). S4: A = Lambda - P P^* (DPLR, in the HiPPO eigenbasis from `hippo.dplr`); the
kernel is the Cauchy + Woodbury generating function (`dplr_kernel`, bilinear). The kernel is applied by
`ssmkit.ops.fft_conv`.

Streaming. A carried-in state x0 adds the free response C Ad^{k+1} x0 at position k, and the state
after a chunk of length L is x_L = Ad^L x0 + sum_j Ad^{L-1-j} Bd u_j. S4D computes both from powers of
the diagonal Ad (a Vandermonde of the state; the sum in blocks of time). S4 steps the bilinear DPLR
system through its low-rank structure (Woodbury, O(N rank) per token); for chunks it uses the real
N x N matrix of that same map with log-depth doubling (powers Ad^(2^i)) inside blocks of time.
S4 is bilinear only: that is the discretization the DPLR (Cauchy) kernel is defined for.
The state is {"x": (batch, H, n)}, complex64 (complex128 for float64 inputs), real for S4D "real".

Caching: in eval mode with gradients off, the kernel and the recurrence tensors are cached, keyed on
every SSM parameter's version (in-place updates, e.g. an optimizer step, invalidate them) and on the
length and dtype; train() clears the cache. With gradients on they are always recomputed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit._checks import check_choice, check_positive_int
from ssmkit.layers.base import Mixer, StateDict
from ssmkit.ops import fft_conv

_TIME_CHUNK = 512                   # time positions per block when streaming chunks (memory bound)
_ACTIVATIONS = ("gelu", "silu", "identity")
_OUTPUTS = ("glu", "linear", None)


def _complex_of(real: torch.dtype) -> torch.dtype:
    return torch.complex128 if real == torch.float64 else torch.complex64


def _log_uniform(n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, dtype=torch.float64) * (math.log(hi) - math.log(lo)) + math.log(lo)


class _ConvSSM(Mixer):
    """What S4 and S4D share: step sizes, D, the block's output, fft_conv, caching, param groups.

    Subclasses set `n` (stored states per channel), `is_complex`, `_ssm_names` (the parameters trained
    with the smaller lr and no weight decay) and implement `_kernel`, `_recurrence`, `_free_response`,
    `_final_state`, `_step_state`.
    """

    _ssm_names: tuple[str, ...] = ()

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
        self.log_dt = nn.Parameter(_log_uniform(d_model, dt_min, dt_max).to(**factory))
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
        return [getattr(self, name) for name in (*self._ssm_names, "C")]

    def _hi(self, real: torch.dtype) -> torch.dtype:
        """The dtype of the SSM math: kernel_dtype, or float64 for float64 inputs."""
        return torch.promote_types(real, self.kernel_dtype)

    def cached_kernel(self, L: int, dtype=torch.float32) -> torch.Tensor:
        """The convolution kernel (n_dir, H, L) (backward direction second when bidirectional)."""
        return self._cached(("kernel", L, dtype), lambda: self._kernel(L, dtype))

    def _cached_recurrence(self, dtype):
        return self._cached(("recurrence", dtype), lambda: self._recurrence(dtype))

    # ---- optimizer groups ---------------------------------------------------------------------
    def param_groups(self, weight_decay: float = 0.0, lr: float | None = None) -> list[dict]:
        """Optimizer groups as the S4 papers train: A, dt, B (and P) without weight decay and with
        the smaller learning rate `self.lr` (None: the base lr); everything else with `weight_decay`.
        `lr` is the base learning rate (None: the optimizer's default)."""
        slow_ids = {id(getattr(self, name)) for name in self._ssm_names}
        slow = [p for p in self.parameters() if id(p) in slow_ids]
        rest = [p for p in self.parameters() if id(p) not in slow_ids]
        base = {"params": rest, "weight_decay": weight_decay}
        ssm = {"params": slow, "weight_decay": 0.0}
        if lr is not None:
            base["lr"] = lr
        if (self.lr if self.lr is not None else lr) is not None:
            ssm["lr"] = self.lr if self.lr is not None else lr
        return [base, ssm]

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

    def _check_state_x(self, state: StateDict, batch: int) -> torch.Tensor:
        self._check_state(state, batch)
        if "x" not in state:
            raise ValueError(f"state must have key 'x' (from init_state), got keys {sorted(state)}")
        x0 = state["x"]
        if tuple(x0.shape) != (batch, self.d_model, self.n):
            raise ValueError(
                f"state['x'] must have shape ({batch}, {self.d_model}, {self.n}) (batch, d_model, states), "
                f"got {tuple(x0.shape)}"
            )
        return x0

    def forward(self, x: torch.Tensor, state: StateDict | None = None, return_state: bool = False):
        self._check_x(x)
        if self.bidirectional and (state is not None or return_state):
            self._check_causal("a state")
        batch, L, _ = x.shape
        real = torch.float64 if x.dtype == torch.float64 else torch.float32
        u = x.transpose(1, 2).to(real)                                     # (b, H, L)
        K = self.cached_kernel(L, real)                                    # (n_dir, H, L)
        y = fft_conv(u, K[0], self.D.to(real))                            # (b, H, L)
        if self.bidirectional:
            y = y + fft_conv(u.flip(-1), K[1]).flip(-1)                   # sees u_j for j >= k
        x0 = None
        if state is not None:
            x0 = self._check_state_x(state, batch)
        if x0 is not None or return_state:
            rec = self._cached_recurrence(real)
            if x0 is None:
                x0 = self.init_state(batch, device=x.device, dtype=real)["x"]
            x0 = x0.to(_complex_of(real) if self.is_complex else real)
            if state is not None:
                y = y + self._free_response(rec, x0, L)
        y = self._block_output(y.transpose(1, 2)).to(x.dtype)              # (b, L, H)
        if not return_state:
            return y
        return y, {"x": self._final_state(rec, x0, u)}

    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        self._check_causal("init_state")
        real = torch.float64 if dtype == torch.float64 else torch.float32
        state_dtype = _complex_of(real) if self.is_complex else real
        device = device if device is not None else self.D.device
        return {"x": torch.zeros(batch_size, self.d_model, self.n, device=device, dtype=state_dtype)}

    def step(self, x_t: torch.Tensor, state: StateDict) -> tuple[torch.Tensor, StateDict]:
        """One token: x_t (batch, d_model) -> y_t (batch, d_model), the new state. O(H N) work."""
        self._check_causal("step")
        self._check_x_t(x_t)
        x0 = self._check_state_x(state, x_t.shape[0])
        real = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        rec = self._cached_recurrence(real)
        u = x_t.to(real)                                                   # (b, H)
        x0 = x0.to(_complex_of(real) if self.is_complex else real)
        y, x1 = self._step_state(rec, x0, u)
        y = self._block_output(y + self.D.to(real) * u).to(x_t.dtype)
        return y, {"x": x1}


# ================================================================================================
class S4D(_ConvSSM):
    """S4D: a diagonal SSM per channel, kernel by Vandermonde product, then the S4 block output.

    Args:
        d_model: H, channels in and out.
        d_state: N; complex inits keep N/2 conjugate-half states (N must be even), "real" keeps N.
        init: "legs" | "lin" | "inv" | "real" (ssmkit.math.hippo.s4d_init).
        discretization: "zoh" | "bilinear".
        dt_min, dt_max: range of the log-uniform initial step sizes.
        bidirectional: a second C reads the reversed sequence (the outputs add); no streaming.
        activation: "gelu" | "silu" | "identity", after the SSM (and D).
        output: "glu" (Linear(H, 2H) then GLU) | "linear" | None, the channel mixing at the end.
        dropout: after the activation.
        lr: the learning rate for A, dt and B in `param_groups` (None: the base lr).
        kernel_dtype: precision of the discretization, the powers Ad^l (kernel, free response, final
            state) and the step's Ad multiply; results are cast back to float32. float64 by default:
            in float32, exp(l log Ad) carries the argument's rounding (its ulp is ~1e-3 at l ~ 4096), a
            phase error that long-memory (bilinear) modes turn into ~1e-4 relative output error.
            torch.float32 is faster where float64 is slow (consumer GPUs).
    """

    _ssm_names = ("log_dt", "log_A_real", "A_imag", "B")

    def __init__(self, d_model: int, d_state: int = 64, init: str = "legs", discretization: str = "zoh",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, bidirectional: bool = False,
                 activation: str = "gelu", output: str | None = "glu", dropout: float = 0.0,
                 lr: float | None = 1e-3, kernel_dtype: torch.dtype = torch.float64, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype or torch.float32}
        check_positive_int("d_state", d_state)
        check_choice("init", init, ("legs", "lin", "inv", "real"))
        check_choice("discretization", discretization, ("zoh", "bilinear"))
        if init != "real" and d_state % 2:
            raise ValueError(f"d_state must be even for init={init!r} (conjugate pairs), got {d_state}")
        self._setup_block(d_model, discretization, dt_min, dt_max, bidirectional, activation, output,
                          dropout, lr, kernel_dtype, factory)
        from ssmkit.math.hippo import s4d_init

        A, B = s4d_init(init, d_state)                                    # (n,) complex or real
        self.init, self.d_state, self.n = init, d_state, A.shape[-1]
        self.is_complex = A.is_complex()
        A, B = A.to(torch.complex128 if self.is_complex else torch.float64), B.to(A.dtype)
        rows = (d_model, self.n)
        self.log_A_real = nn.Parameter(torch.log(-A.real).expand(rows).clone().to(**factory))
        if self.is_complex:
            self.A_imag = nn.Parameter(A.imag.expand(rows).clone().to(**factory))
            self.B = nn.Parameter(torch.view_as_real(B.expand(rows).clone()).to(**factory))  # (H, n, 2)
            C = torch.randn(self.n_dir, *rows, dtype=torch.complex128)   # E|C|^2 = 1
            self.C = nn.Parameter(torch.view_as_real(C).to(**factory))   # (n_dir, H, n, 2)
        else:
            self.register_parameter("A_imag", None)
            self.B = nn.Parameter(B.expand(rows).clone().to(**factory))  # (H, n)
            self.C = nn.Parameter(torch.randn(self.n_dir, *rows, dtype=torch.float64).to(**factory))

    def _ssm_tensors(self):
        return [t for t in super()._ssm_tensors() if t is not None]

    def _params(self, real: torch.dtype):
        """Continuous A (H, n), B (H, n), C (n_dir, H, n) and dt (H,) in the compute dtype."""
        A_re = -self.log_A_real.to(real).exp()
        if not self.is_complex:
            return A_re, self.B.to(real), self.C.to(real), self.log_dt.to(real).exp()
        A = torch.complex(A_re, self.A_imag.to(real))
        B = torch.view_as_complex(self.B.to(real).contiguous())
        C = torch.view_as_complex(self.C.to(real).contiguous())
        return A, B, C, self.log_dt.to(real).exp()

    def _discrete(self, real: torch.dtype):
        """(log Ad, Ad, Bd, C) in kernel_dtype (or float64 inputs' float64), log Ad complex (H, n):
        Ad^l = exp(l log Ad) for any l."""
        from ssmkit.math import discretize

        real = self._hi(real)
        A, B, C, dt = self._params(real)
        Ad, Bd = getattr(discretize, self.discretization)(A, B, dt, diagonal=True)   # (H, n)
        if self.discretization == "zoh":
            log_Ad = (dt[:, None] * A).to(_complex_of(real))              # exact: Ad = exp(dt A)
        else:
            log_Ad = torch.log(Ad.to(_complex_of(real)))                  # bilinear Ad may be < 0 (real)
        return log_Ad, Ad, Bd, C

    def _vandermonde(self, log_Ad, BC, L):
        """sum_n BC_n Ad_n^l for l < L (2 Re of it for conjugate halves): (..., L) real."""
        from ssmkit.math.kernels import vandermonde_kernel

        log_Ad = log_Ad.expand(BC.shape)
        K = vandermonde_kernel(log_Ad, BC.to(log_Ad.dtype), L, conj_sym=self.is_complex)
        return K.real if K.is_complex() else K

    def _kernel(self, L: int, real: torch.dtype) -> torch.Tensor:
        log_Ad, _, Bd, C = self._discrete(real)
        return self._vandermonde(log_Ad, C * Bd, L).to(real)              # (n_dir, H, L)

    def _recurrence(self, real: torch.dtype) -> dict:
        log_Ad, Ad, Bd, C = self._discrete(real)
        return {"log_Ad": log_Ad, "Ad": Ad, "Bd": Bd, "C": C[0]}

    def _readout(self, C, x):
        y = (C * x).sum(-1)
        return 2 * y.real if self.is_complex else y

    def _free_response(self, rec, x0, L):
        """C Ad^(k+1) x0 for k < L: (b, H, L)."""
        return self._vandermonde(rec["log_Ad"], rec["C"] * rec["Ad"] * x0, L).to(x0.real.dtype)

    def _final_state(self, rec, x0, u):
        """Ad^L x0 + Bd sum_j Ad^(L-1-j) u_j, the time sum in chunks: (b, H, n)."""
        log_Ad, L = rec["log_Ad"], u.shape[-1]
        acc = torch.exp(L * log_Ad) * x0.to(log_Ad.dtype)                 # (b, H, n)
        for start in range(0, L, _TIME_CHUNK):
            stop = min(start + _TIME_CHUNK, L)
            powers = torch.arange(L - 1 - start, L - 1 - stop, -1, device=u.device, dtype=u.dtype)
            V = torch.exp(log_Ad[..., None] * powers)                     # (H, n, T)
            acc = acc + rec["Bd"] * torch.einsum("bht,hnt->bhn", u[..., start:stop].to(V.dtype), V)
        return (acc if self.is_complex else acc.real).to(x0.dtype)

    def _step_state(self, rec, x, u):
        x1 = rec["Ad"] * x + rec["Bd"] * u[..., None]                      # (b, H, n) in kernel_dtype
        return self._readout(rec["C"], x1).to(u.dtype), x1.to(x.dtype)


# ================================================================================================
class S4(_ConvSSM):
    """S4: a DPLR SSM per channel (A = Lambda - P P^* from HiPPO), kernel by Cauchy + Woodbury.

    Args:
        d_model: H, channels in and out.
        d_state: N (even); N/2 conjugate-half complex states are stored.
        measure: HiPPO measure for the initialization: "legs" | "legt" | "lagt" | "fout".
        rank: rank of the low-rank correction P; None: the measure's smallest (2 for legt, else 1).
        discretization: "bilinear" (the S4 algorithm; the DPLR kernel is defined for it).
        l_max: the length that the trained C~ = C (I - Ad^l_max) refers to. Inputs up to l_max use
            it as is (kernel truncated); longer inputs convert C~ to the next l_max * 2^k.
        dt_min, dt_max, bidirectional, activation, output, dropout, lr, kernel_dtype: as in S4D (lr also
            for P; kernel_dtype for the DPLR kernel, the step and the chunk matrices).
    """

    _ssm_names = ("log_dt", "log_A_real", "A_imag", "P", "B")

    def __init__(self, d_model: int, d_state: int = 64, measure: str = "legs", rank: int | None = None,
                 discretization: str = "bilinear", l_max: int = 1024, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, bidirectional: bool = False, activation: str = "gelu",
                 output: str | None = "glu", dropout: float = 0.0, lr: float | None = 1e-3,
                 kernel_dtype: torch.dtype = torch.float64, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype or torch.float32}
        check_positive_int("d_state", d_state)
        check_choice("measure", measure, ("legs", "legt", "lagt", "fout"))
        rank = (2 if measure == "legt" else 1) if rank is None else rank
        check_positive_int("rank", rank)
        check_positive_int("l_max", l_max)
        check_choice("discretization", discretization, ("bilinear",))
        if d_state % 2:
            raise ValueError(f"d_state must be even (conjugate pairs), got {d_state}")
        self._setup_block(d_model, discretization, dt_min, dt_max, bidirectional, activation, output,
                          dropout, lr, kernel_dtype, factory)
        from ssmkit.math.hippo import dplr

        Lambda, P, B, _ = dplr(measure, d_state, rank=rank)               # (N2,), (r, N2), (N2,)
        self.measure, self.d_state, self.rank, self.l_max = measure, d_state, rank, l_max
        self.n, self.is_complex = d_state // 2, True
        rows = (d_model, self.n)
        Lambda = Lambda.to(torch.complex128)
        re = Lambda.real.clamp(max=-1e-4)                                 # Re A < 0 through exp()
        self.log_A_real = nn.Parameter(torch.log(-re).expand(rows).clone().to(**factory))
        self.A_imag = nn.Parameter(Lambda.imag.expand(rows).clone().to(**factory))
        P = P.to(torch.complex128)[:, None].expand(rank, *rows).clone()
        self.P = nn.Parameter(torch.view_as_real(P).to(**factory))        # (r, H, N2, 2)
        B = B.to(torch.complex128).expand(rows).clone()
        self.B = nn.Parameter(torch.view_as_real(B).to(**factory))        # (H, N2, 2)
        C = torch.randn(self.n_dir, *rows, dtype=torch.complex128)        # this is C~ (see glossary)
        self.C = nn.Parameter(torch.view_as_real(C).to(**factory))        # (n_dir, H, N2, 2)

    def _params(self, real: torch.dtype):
        """Lambda (H, N2), P (r, H, N2), B (H, N2), C~ (n_dir, H, N2) complex; dt (H,)."""
        Lambda = torch.complex(-self.log_A_real.to(real).exp(), self.A_imag.to(real))
        P, B, Ct = (torch.view_as_complex(t.to(real).contiguous()) for t in (self.P, self.B, self.C))
        return Lambda, P, B, Ct, self.log_dt.to(real).exp()

    # ---- the bilinear DPLR map on conjugate-half states ----------------------------------------
    # The full state is x_full = (x, conj x) (N = 2 N2). A_full = Lambda - P P^*, so P^* x_full =
    # 2 Re(P^* x) is real, and every map below is real-linear in the stored half x.
    @staticmethod
    def _pstar(P, x):
        """P^* x_full: (r, H, N2), (..., H, N2) -> (..., r, H) real."""
        return 2 * torch.einsum("rhn,...hn->...rh", P.conj(), x).real

    def _woodbury(self, real: torch.dtype) -> dict:
        """What the bilinear step needs: x' = (I - dt/2 A)^{-1} ((I + dt/2 A) x + dt B u).

        With E = 1 - dt/2 Lambda (diagonal), Woodbury gives (I - dt/2 A)^{-1} w
            = E^{-1} w - E^{-1} P (dt/2) R P^* E^{-1} w,    R = (I + dt/2 P^* E^{-1} P)^{-1} (r x r real).
        """
        Lambda, P, B, _, dt = self._params(real)
        half = (dt / 2)[:, None]                                           # (H, 1)
        E_inv = 1 / (1 - half * Lambda)                                    # (H, N2)
        PEP = 2 * torch.einsum("ahn,hn,bhn->hab", P.conj(), E_inv, P).real  # (H, r, r)
        eye = torch.eye(self.rank, dtype=real, device=PEP.device)
        R = torch.linalg.inv(eye + (dt / 2)[:, None, None] * PEP)          # (H, r, r)
        return {"Lambda": Lambda, "P": P, "B": B, "dt": dt, "E_inv": E_inv, "R": R}

    def _bilinear_step(self, w, x, u):
        """One bilinear step of x (..., H, N2) with input u (..., H) (None: no input)."""
        Lambda, P, dt, E_inv, R = w["Lambda"], w["P"], w["dt"], w["E_inv"], w["R"]
        half = (dt / 2)[:, None]
        v = x + half * (Lambda * x - torch.einsum("rhn,...rh->...hn", P, self._pstar(P, x).to(P.dtype)))
        if u is not None:
            v = v + (dt[:, None] * w["B"]) * u[..., None]                  # (I + dt/2 A) x + dt B u
        z = E_inv * v
        corr = torch.einsum("hab,...bh->...ah", R, self._pstar(P, z))      # (..., r, H) real
        return z - E_inv * half * torch.einsum("rhn,...rh->...hn", P, corr.to(P.dtype))

    # ---- real N x N form of the same map, for chunks ---------------------------------------------
    def _to_real(self, x):
        return torch.cat([x.real, x.imag], -1)                             # (..., N2) -> (..., N)

    def _from_real(self, v):
        return torch.complex(v[..., : self.n], v[..., self.n :])

    def _recurrence_matrix(self, real: torch.dtype, w: dict | None = None) -> torch.Tensor:
        """M (H, N, N) real: the bilinear step on real coordinates (Re x, Im x), M[h] @ x_real."""
        w = self._woodbury(real) if w is None else w
        basis = torch.eye(2 * self.n, dtype=real, device=w["dt"].device)  # rows e_k, real coordinates
        cols = self._bilinear_step(w, self._from_real(basis)[:, None].expand(-1, self.d_model, -1), None)
        return self._to_real(cols).permute(1, 2, 0)                        # [h, i, k] = (M e_k)_i

    def _recurrence(self, real: torch.dtype) -> dict:
        """Step tensors, the real matrix M = Ad (H, N, N), Bd and the true C, in kernel_dtype."""
        real = self._hi(real)
        w = self._woodbury(real)
        M = self._recurrence_matrix(real, w)
        Bd = self._bilinear_step(w, torch.zeros_like(w["B"]), torch.ones_like(w["dt"]))
        Bd = self._to_real(Bd)                                             # (H, N): the step of u = 1
        c = self._true_c(self._params(real)[3][0], M)                      # (H, N) real readout
        C = torch.complex(c[:, : self.n], -c[:, self.n :]) / 2             # (H, N2)
        return {**w, "M": M, "Bd_real": Bd, "c": c, "C_true": C}

    def _readout(self, C, x):
        return 2 * (C * x).sum(-1).real

    def _step_state(self, rec, x, u):
        x1 = self._bilinear_step(rec, x.to(rec["P"].dtype), u.to(rec["dt"].dtype))
        return self._readout(rec["C_true"], x1).to(u.dtype), x1.to(x.dtype)

    def _free_response(self, rec, x0, L):
        """c M^(k+1) x0 for k < L: (b, H, L). Rows W_i = c M^i (i <= T) by doubling, [W, W M^len W];
        then chunks of T positions, the state advanced by M^T between them."""
        M, T = rec["M"], min(L, _TIME_CHUNK)
        W, Mp = rec["c"].unsqueeze(1) @ M, M                               # (H, 1, N): c M
        while W.shape[1] < T:
            W, Mp = torch.cat([W, W @ Mp], 1), Mp @ Mp                     # c M^i for i <= 2 len W
        MT, xr, out = torch.linalg.matrix_power(M, T), self._to_real(x0).to(M.dtype), []
        for start in range(0, L, T):
            out.append(torch.einsum("hin,bhn->bhi", W[:, : min(T, L - start)], xr))
            xr = torch.einsum("hmn,bhn->bhm", MT, xr)                      # M^(start + T) x0
        return torch.cat(out, -1).to(x0.real.dtype)

    def _final_state(self, rec, x0, u):
        """M^L x0 + sum_j M^(L-1-j) Bd u_j, (b, H, N2) complex: per chunk of T positions a pairwise
        tree (log2 T levels, no loop over time), chunks folded in as acc <- M^T acc + chunk sum."""
        M, L, acc = rec["M"], u.shape[-1], self._to_real(x0).to(rec["M"].dtype)
        for start in range(0, L, _TIME_CHUNK):
            seg = u[..., start : start + _TIME_CHUNK].to(M.dtype)         # (b, H, T)
            T = seg.shape[-1]
            size = 1 << (T - 1).bit_length()
            v = torch.einsum("bht,hn->bhtn", F.pad(seg, (size - T, 0)), rec["Bd_real"])  # (b, H, size, N)
            Mp = M
            while v.shape[2] > 1:                                          # (left, right) -> M^s left + right
                v = torch.einsum("hmn,bhkn->bhkm", Mp, v[:, :, 0::2]) + v[:, :, 1::2]
                Mp = Mp @ Mp
            acc = torch.einsum("hmn,bhn->bhm", torch.linalg.matrix_power(M, T), acc) + v[:, :, 0]
        return self._from_real(acc).to(x0.dtype)

    def _kernel(self, L: int, real: torch.dtype) -> torch.Tensor:
        from ssmkit.math.kernels import dplr_kernel

        hi = self._hi(real)
        Lambda, P, B, Ct, dt = self._params(hi)
        m = self.l_max
        while m < L:
            m *= 2
        if m != self.l_max:
            Ct = self._c_tilde_for(Ct, m, hi)
        K = torch.stack([dplr_kernel(Lambda, P, B, Ct[i], dt, m) for i in range(self.n_dir)])
        return K[..., :L].to(real)                                         # (n_dir, H, L)

    def _true_c(self, Ct, M):
        """The readout c = 2 (Re C, -Im C) (H, N) of C = C~ (I - Ad^l_max)^-1, solved in float64."""
        from ssmkit.math.kernels import c_from_c_tilde

        ct = 2 * torch.cat([Ct.real, -Ct.imag], -1)                        # (H, N): the functional of C~
        return c_from_c_tilde(ct.to(torch.float64), M.to(torch.float64), self.l_max).to(M.dtype)

    def _c_tilde_for(self, Ct, m: int, real):
        """C~ for length m from the trained C~ (for length l_max): C~_m = C (I - Ad^m): (n_dir, H, N2)."""
        from ssmkit.math.kernels import c_tilde

        M, out = self._recurrence_matrix(real), []
        for i in range(self.n_dir):
            c = c_tilde(self._true_c(Ct[i], M).to(torch.float64), M.to(torch.float64), m).to(real)
            out.append(torch.complex(c[:, : self.n], -c[:, self.n :]) / 2)
        return torch.stack(out)


__all__ = ["S4", "S4D"]
