"""H3: Hungry Hungry Hippos (Fu, Dao et al., ICLR 2023), on the mixer protocol.

    q, k, v = in_proj(u)                               (batch, length, d_model) each
    k_s     = SSM_shift(k)                             a learned FIR of length d_state per head
    kv      = k_s ⊗ v                                  per head: outer product over head_dim
    y       = q · SSM_diag(kv)                         contract q with the first head_dim index
    out     = out_proj(y)

Glossary (code name: paper symbol, shape):
    d_model               D                     channels in and out
    n_heads, head_dim     H, d_h                D = H * d_h; head_dim=1 is H3 without heads
    d_state               m (shift), N (diag)   FIR length of the shift SSM; state size of the diagonal SSM
    shift_kernel          C of the shift SSM    (H, d_state): K_shift[l] = C[l] for l < d_state
                          (A = shift matrix, B = e_1: the kernel is exactly the learned C, lags 0..m-1)
    A, B, C, log_dt       S4D parameters        (H, d_state/2) complex (conjugate half), log_dt (H,)
    D                     D of the diagonal SSM (H,)

Conv mode: the shift SSM runs as a depthwise causal convolution of width d_state
(`ssmkit.ops.causal_conv1d`, Mamba's short conv: O(l m), where an FFT of a sequence padded by m-1
could double its size), the diagonal SSM as an FFT convolution (`ssmkit.ops.fft_conv`), its kernel
from `ssmkit.math.kernels.diag_kernel` (S4D machinery, ZOH or bilinear).
Recurrent mode (`step`): the shift state holds the last d_state-1 inputs of k; the diagonal state is
s_t = Ad * s_{t-1} + Bd * kv_t with y_t = 2 Re(C s_t) + D kv_t (the same Ad, Bd as the kernel).
State: {"shift": (batch, d_model, d_state-1) real, "diag": (batch, H, d_h, d_h, d_state/2) complex}.
A carried-in state adds the free response 2 Re(C Ad^{t+1} s_0) (a Vandermonde kernel per row).
Bidirectional is not supported (H3 is a causal language-model layer): it raises.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmkit._checks import check_choice, check_positive_int
from ssmkit._dtypes import acc_dtype, complex_of
from ssmkit.layers.base import Mixer, StateDict
from ssmkit.layers.registry import register
from ssmkit.math.diagonal import final_state, free_response
from ssmkit.math.init import log_uniform_log_dt
from ssmkit.math.kernels import diag_kernel
from ssmkit.ops import fft_conv
from ssmkit.ops.causal_conv1d import causal_conv1d, causal_conv1d_update


@register("h3")
class H3(Mixer):
    """H3: a shift SSM and a diagonal SSM with multiplicative gates (Hungry Hungry Hippos).

    See the module docstring.

    Args:
        d_model: channels in and out.
        d_state: length of the shift FIR and state size of the diagonal SSM (even).
        head_dim: d_h, the outer-product size per head; n_heads = d_model // head_dim.
        n_heads: optional; if given it must equal d_model // head_dim.
        init: S4D init of the diagonal SSM ("lin", "inv", "legs"; see ssmkit.math.hippo.s4d_init).
        discretization: "zoh" | "bilinear" for the diagonal SSM.
        dt_min, dt_max: log-uniform range of the initial steps.
        bidirectional: must be False (raises otherwise).
    """

    no_weight_decay = ("A_log", "A_im", "log_dt", "D")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        head_dim: int = 1,
        n_heads: int | None = None,
        init: str = "lin",
        discretization: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_state", d_state)
        check_positive_int("head_dim", head_dim)
        check_choice("discretization", discretization, ("zoh", "bilinear"))
        if bidirectional:
            raise ValueError("H3 is causal: bidirectional=True is not supported (use S4D or S5 for that)")
        if d_state % 2:
            raise ValueError(f"d_state must be even (the diagonal SSM keeps conjugate pairs), got {d_state}")
        if d_model % head_dim:
            raise ValueError(
                f"d_model must be a multiple of head_dim, got d_model={d_model}, head_dim={head_dim}"
            )
        if n_heads is not None and n_heads * head_dim != d_model:
            raise ValueError(
                f"n_heads * head_dim must equal d_model={d_model}, got n_heads={n_heads}, head_dim={head_dim}"
            )
        from ssmkit.math.hippo import s4d_init

        self.d_model, self.d_state, self.head_dim = d_model, d_state, head_dim
        self.n_heads = H = d_model // head_dim
        self.discretization = discretization
        factory = {"device": device, "dtype": dtype or torch.float32}

        self.in_proj = nn.Linear(d_model, 3 * d_model, **factory)
        self.out_proj = nn.Linear(d_model, d_model, **factory)
        # shift SSM: starts as a decaying random FIR so that k_s mixes the recent past
        decay = torch.exp(-torch.arange(d_state, dtype=torch.float64) / 4)
        self.shift_kernel = nn.Parameter((torch.randn(H, d_state, dtype=torch.float64) * decay).to(**factory))
        # diagonal SSM (S4D parameterization, conjugate half)
        A, B = s4d_init(init, d_state)                                    # (N/2,) complex
        A, B = A.expand(H, -1), B.expand(H, -1)
        C = torch.randn(H, d_state // 2, dtype=torch.complex128) * math.sqrt(0.5)
        log_dt = log_uniform_log_dt(H, dt_min, dt_max)
        self.A_log = nn.Parameter(torch.log(-A.real).to(**factory))       # Re A = -exp(A_log) < 0
        self.A_im = nn.Parameter(A.imag.to(**factory).clone())
        self.B = nn.Parameter(torch.view_as_real(B.clone()).to(**factory))  # (H, N/2, 2)
        self.C = nn.Parameter(torch.view_as_real(C).to(**factory))         # (H, N/2, 2)
        self.D = nn.Parameter(torch.randn(H, **factory))
        self.log_dt = nn.Parameter(log_dt.to(**factory))

    # ---- the diagonal SSM's pieces -----------------------------------------------------------
    def _diag(self, real: torch.dtype):
        """A, B, C (H, N/2) complex, dt (H,), and the discretized Ad, Bd (H, N/2)."""
        from ssmkit.math import discretize

        cdt = complex_of(real)
        A = torch.complex(-self.A_log.to(real).exp(), self.A_im.to(real)).to(cdt)
        B = torch.view_as_complex(self.B.to(real).contiguous())
        C = torch.view_as_complex(self.C.to(real).contiguous())
        dt = self.log_dt.to(real).exp()
        fn = discretize.zoh if self.discretization == "zoh" else discretize.bilinear
        Ad, Bd = fn(A, B, dt, diagonal=True)
        return A, B, C, dt, Ad, Bd

    def _shift_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The FIR as a depthwise causal-conv weight (D, m): column m-1 weights lag 0."""
        return self.shift_kernel.to(dtype).repeat_interleave(self.head_dim, dim=0).flip(-1)

    # ---- the protocol ------------------------------------------------------------------------
    def forward(self, x, state: StateDict | None = None, return_state: bool = False):
        if (empty := self._empty_forward(x, state, return_state)) is not None:
            return empty
        b, L, _ = x.shape
        H, p = self.n_heads, self.head_dim
        if state is not None:
            self._check_state(state, b)
        real = acc_dtype(x.dtype)
        q, k, v = self.in_proj(x).to(real).transpose(1, 2).chunk(3, dim=1)   # (b, D, l) each
        hist = None if state is None else state["shift"].to(real)
        k, shift_state = causal_conv1d(k, self._shift_weight(real), initial_state=hist,
                                       return_final_state=True)
        kv = k.reshape(b, H, p, 1, L) * v.reshape(b, H, 1, p, L)          # (b, H, p, p, l)

        A, B, C, dt, Ad, Bd = self._diag(real)
        K = diag_kernel(A, B, C, dt, L, discretization=self.discretization, conj_sym=True)   # (H, l)
        Kx = K.repeat_interleave(p * p, dim=0)                            # (H*p*p, l)
        Dx = self.D.to(real).repeat_interleave(p * p)
        ykv = fft_conv(kv.reshape(b, H * p * p, L), Kx, D=Dx).reshape(b, H, p, p, L)
        s0 = None if state is None else state["diag"].to(Ad.dtype)       # (b, H, p, p, N/2)
        if s0 is not None:
            log_Ad = torch.log(Ad)[:, None, None]                            # (H, 1, 1, N/2)
            ykv = ykv + free_response(log_Ad, C[:, None, None], s0, L, conj_sym=True)
        y = (q.reshape(b, H, p, 1, L) * ykv).sum(2).reshape(b, H * p, L)  # (b, D, l)
        y = self.out_proj(y.transpose(1, 2).to(x.dtype))
        if not return_state:
            return y
        diag = final_state(torch.log(Ad)[:, None, None], Bd[:, None, None], kv, s0)
        return y, {"shift": shift_state, "diag": diag}

    def init_state(self, batch_size: int, device=None, dtype=None) -> StateDict:
        real = acc_dtype(dtype)
        cdt = complex_of(real)
        device = device or self.D.device
        p = self.head_dim
        return {
            "shift": torch.zeros(batch_size, self.d_model, self.d_state - 1, device=device, dtype=real),
            "diag": torch.zeros(batch_size, self.n_heads, p, p, self.d_state // 2, device=device, dtype=cdt),
        }

    def step(self, x_t, state: StateDict):
        if (empty := self._empty_step(x_t, state)) is not None:
            return empty
        b = x_t.shape[0]
        H, p = self.n_heads, self.head_dim
        real = acc_dtype(x_t.dtype)
        q, k, v = self.in_proj(x_t).to(real).chunk(3, dim=-1)             # (b, D) each
        k_s, shift_state = causal_conv1d_update(k, state["shift"].to(real), self._shift_weight(real))
        kv = k_s.reshape(b, H, p, 1) * v.reshape(b, H, 1, p)              # (b, H, p, p)
        _, _, C, _, Ad, Bd = self._diag(real)
        s = state["diag"].to(Ad.dtype) * Ad[:, None, None] + Bd[:, None, None] * kv.unsqueeze(-1).to(Ad.dtype)
        ykv = 2 * (s * C[:, None, None]).sum(-1).real + self.D.to(real)[:, None, None] * kv
        y = (q.reshape(b, H, p, 1) * ykv).sum(2).reshape(b, H * p)
        return self.out_proj(y.to(x_t.dtype)), {"shift": shift_state, "diag": s}


