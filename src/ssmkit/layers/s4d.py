"""S4D: a diagonal state space layer run as a long convolution (Gu, Gupta, Goel & Re, "On the
Parameterization and Initialization of Diagonal State Space Models", NeurIPS 2022).

Each of the d_model channels has a diagonal SSM x_k = Ad x_{k-1} + Bd u_k, y_k = C x_k + D u_k; the
kernel K_l = C Ad^l Bd is a Vandermonde product (`vandermonde_kernel` on log Ad, so ZOH and bilinear
share it), applied by `fft_conv` in the block of `ssmkit.layers.conv_ssm`. A carried-in state's free
response and the state after a chunk come from powers of the diagonal Ad (`ssmkit.math.diagonal`).

Glossary (code name: paper symbol, shape; the block's names are in conv_ssm):
    d_state          N                    state size; complex inits store n = N/2 states (one of each
                                          conjugate pair) and read out 2 Re(C x); "real" stores N
    log_A_real       log(-Re A)           (H, n) so that Re A = -exp(log_A_real) < 0 (stable)
    A_imag           Im A                 (H, n)
    B, C             B, C                 (H, n), (n_dir, H, n) complex (real for the "real" init)
State: {"x": (batch, H, n)}, complex64 (complex128 for float64 inputs), real for the "real" init.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit._checks import check_choice, check_positive_int
from ssmkit._dtypes import complex_of
from ssmkit.layers.conv_ssm import ConvSSM
from ssmkit.layers.registry import register
from ssmkit.math.diagonal import final_state, free_response


@register("s4d")
class S4D(ConvSSM):
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
    no_weight_decay = (*_ssm_names, "D")

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
            log_Ad = (dt[:, None] * A).to(complex_of(real))              # exact: Ad = exp(dt A)
        else:
            log_Ad = torch.log(Ad.to(complex_of(real)))                  # bilinear Ad may be < 0 (real)
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
        return free_response(rec["log_Ad"], rec["C"], x0, L, conj_sym=self.is_complex).to(x0.real.dtype)

    def _final_state(self, rec, x0, u):
        """Ad^L x0 + Bd sum_j Ad^(L-1-j) u_j: (b, H, n)."""
        acc = final_state(rec["log_Ad"], rec["Bd"], u, x0)
        return (acc if self.is_complex else acc.real).to(x0.dtype)

    def _step_state(self, rec, x, u):
        x1 = rec["Ad"] * x + rec["Bd"] * u[..., None]                      # (b, H, n) in kernel_dtype
        return self._readout(rec["C"], x1).to(u.dtype), x1.to(x.dtype)
