"""S4: a diagonal-plus-low-rank state space layer run as a long convolution (Gu, Goel & Re,
"Efficiently Modeling Long Sequences with Structured State Spaces", ICLR 2022).

Each of the d_model channels has an SSM with A = Lambda - P P^* (DPLR, in the HiPPO eigenbasis from
`hippo.dplr`), discretized bilinearly (the discretization the DPLR kernel is defined for). The kernel
is the Cauchy + Woodbury generating function (`ssmkit.math.kernels.dplr_kernel`), applied by
`fft_conv` in the block of `ssmkit.layers.conv_ssm`. `step` runs the bilinear DPLR map through its
low-rank structure (`ssmkit.math.dplr`, O(N rank) per token); for chunks it uses the real N x N
matrix M of that same map with log-depth doubling (powers M^(2^i)) inside blocks of time.

Glossary (code name: paper symbol, shape; the block's names are in conv_ssm):
    d_state          N                    state size; n = N/2 conjugate-half complex states are stored
    log_A_real       log(-Re Lambda)      (H, n) so that Re Lambda = -exp(log_A_real) < 0
    A_imag           Im Lambda            (H, n)
    P                P                    (rank, H, n) complex: A = Lambda - P P^*
    B                B                    (H, n) complex
    C                C~                   (n_dir, H, n) complex: S4 trains C~ = C (I - Ad^l_max) directly,
                                          as the paper does
State: {"x_dplr": (batch, H, n)} complex64 (complex128 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit._checks import check_choice, check_positive_int
from ssmkit.layers.conv_ssm import ConvSSM
from ssmkit.layers.registry import register
from ssmkit.math import dplr
from ssmkit.math.diagonal import TIME_CHUNK


@register("s4")
class S4(ConvSSM):
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
    no_weight_decay = (*_ssm_names, "D")
    state_key = "x_dplr"

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

    def _woodbury(self, real: torch.dtype) -> dict:
        Lambda, P, B, _, dt = self._params(real)
        return dplr.woodbury(Lambda, P, B, dt)

    def _recurrence(self, real: torch.dtype) -> dict:
        """Step tensors, the real matrix M = Ad (H, N, N), Bd and the true C, in kernel_dtype."""
        real = self._hi(real)
        w = self._woodbury(real)
        M = dplr.recurrence_matrix(w)
        Bd = dplr.bilinear_step(w, torch.zeros_like(w["B"]), torch.ones_like(w["dt"]))
        Bd = dplr.to_real(Bd)                                             # (H, N): the step of u = 1
        c = self._true_c(self._params(real)[3][0], M)                      # (H, N) real readout
        C = torch.complex(c[:, : self.n], -c[:, self.n :]) / 2             # (H, N2)
        return {**w, "M": M, "Bd_real": Bd, "c": c, "C_true": C}

    def _readout(self, C, x):
        return 2 * (C * x).sum(-1).real

    def _step_state(self, rec, x, u):
        x1 = dplr.bilinear_step(rec, x.to(rec["P"].dtype), u.to(rec["dt"].dtype))
        return self._readout(rec["C_true"], x1).to(u.dtype), x1.to(x.dtype)

    def _free_response(self, rec, x0, L):
        """c M^(k+1) x0 for k < L: (b, H, L). Rows W_i = c M^i (i <= T) by doubling, [W, W M^len W];
        then chunks of T positions, the state advanced by M^T between them."""
        M, T = rec["M"], min(L, TIME_CHUNK)
        W, Mp = rec["c"].unsqueeze(1) @ M, M                               # (H, 1, N): c M
        while W.shape[1] < T:
            W, Mp = torch.cat([W, W @ Mp], 1), Mp @ Mp                     # c M^i for i <= 2 len W
        MT, xr, out = torch.linalg.matrix_power(M, T), dplr.to_real(x0).to(M.dtype), []
        for start in range(0, L, T):
            out.append(torch.einsum("hin,bhn->bhi", W[:, : min(T, L - start)], xr))
            xr = torch.einsum("hmn,bhn->bhm", MT, xr)                      # M^(start + T) x0
        return torch.cat(out, -1).to(x0.real.dtype)

    def _final_state(self, rec, x0, u):
        """M^L x0 + sum_j M^(L-1-j) Bd u_j, (b, H, N2) complex: per chunk of T positions a pairwise
        tree (log2 T levels, no loop over time), chunks folded in as acc <- M^T acc + chunk sum."""
        M, L, acc = rec["M"], u.shape[-1], dplr.to_real(x0).to(rec["M"].dtype)
        for start in range(0, L, TIME_CHUNK):
            seg = u[..., start : start + TIME_CHUNK].to(M.dtype)         # (b, H, T)
            T = seg.shape[-1]
            size = 1 << (T - 1).bit_length()
            v = torch.einsum("bht,hn->bhtn", F.pad(seg, (size - T, 0)), rec["Bd_real"])  # (b, H, size, N)
            Mp = M
            while v.shape[2] > 1:                                          # (left, right) -> M^s left + right
                v = torch.einsum("hmn,bhkn->bhkm", Mp, v[:, :, 0::2]) + v[:, :, 1::2]
                Mp = Mp @ Mp
            acc = torch.einsum("hmn,bhn->bhm", torch.linalg.matrix_power(M, T), acc) + v[:, :, 0]
        return dplr.from_real(acc).to(x0.dtype)

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

        M, out = dplr.recurrence_matrix(self._woodbury(real)), []
        for i in range(self.n_dir):
            c = c_tilde(self._true_c(Ct[i], M).to(torch.float64), M.to(torch.float64), m).to(real)
            out.append(torch.complex(c[:, : self.n], -c[:, self.n :]) / 2)
        return torch.stack(out)


__all__ = ["S4"]
