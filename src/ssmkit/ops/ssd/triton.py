"""Triton tier of SSD (Mamba-2's chunked scan): forward and backward as tiled matmuls on tensor cores
(operands in x's dtype, float32 accumulation; float32 inputs multiply in IEEE float32), on CUDA or on
CPU tensors under Triton's interpreter (TRITON_INTERPRET=1).

Forward: chunk cumsum -> C.B per chunk -> each chunk's own state -> states passed between chunks ->
chunk scan (see ssmkit.ops.ssd._triton_fwd). The backward keeps only the inputs: it reruns the first
four (cheap next to the scan) and then the kernels of ssmkit.ops.ssd._triton_bwd; the last steps of
the chain rule that are elementwise on (b, l, h) (reverse cumsum of dcs, clamp, softplus, bias) run
in PyTorch. Kernels are imported on first use: no Triton at import time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops import _triton
from ssmkit.ops._dispatch import Backend
from ssmkit.ops._triton import dot_upcast, empty, pow2

BACKEND = Backend(devices=("cuda",), dtypes=_triton.DTYPES, priority=30)


def unsupported_reason(*tensors: torch.Tensor) -> str | None:
    return _triton.unsupported_reason(*tensors)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _Launch:
    """One call's sizes and kernel options, and the launches of the forward's kernels."""

    def __init__(self, x, B, chunk_size, seq_idx):
        from ssmkit.ops._triton.common import tl_dtype

        self.b, self.l, self.h, self.P = x.shape
        self.G, self.N = B.shape[2], B.shape[3]
        self.T, self.hpg = chunk_size, self.h // self.G
        self.nc = _cdiv(self.l, chunk_size)
        most = 32 if x.dtype == torch.float32 else 64                   # fp32 operands live in registers
        tile = lambda n: min(most, pow2(n, 16))                          # noqa: E731  tl.dot wants >= 16
        self.blk = dict(BM=tile(self.T), BK=tile(self.T), BP=tile(self.P), BN=tile(self.N))
        self.dot = dict(DTYPE=tl_dtype(x.dtype), UPCAST=dot_upcast(x.dtype))
        self.seq, self.has_seq = seq_idx, seq_idx is not None
        self.seq_strides = tuple(seq_idx.stride()) if seq_idx is not None else (0, 0)
        self.f32 = dict(dtype=torch.float32, device=x.device)
        self.state_block = min(1024, pow2(self.P * self.N))
        self.warps = dict(num_warps=8)                     # the tiled matmul kernels: 64 x 64 fp32 tiles

    def sizes(self) -> tuple:
        """The sizes every kernel takes after its pointers: l, h, T, c."""
        return self.l, self.h, self.T, self.nc

    def tiles(self, rows: int, cols: int, br: str, bc: str) -> int:
        return _cdiv(rows, self.blk[br]) * _cdiv(cols, self.blk[bc])

    def intermediates(self, x, dt, A, B, C, dt_bias, softplus, dt_limit, h0):
        """dt and cs (b, h, c, T), CB (b, c, g, T, T), S_in (b, c, h, P, N) and the final state."""
        from ssmkit.ops.ssd import _triton_fwd as fwd

        b, h, T, nc, P, N, G, blk = self.b, self.h, self.T, self.nc, self.P, self.N, self.G, self.blk
        dt_p, cs = empty(b, h, nc, T, **self.f32), empty(b, h, nc, T, **self.f32)
        BH = min(16, pow2(h))
        fwd.dt_cumsum[(b, nc, _cdiv(h, BH))](
            dt, A, dt_bias, dt_p, cs, *self.sizes(), *dt.stride(), float(dt_limit[0]), float(dt_limit[1]),
            HAS_BIAS=dt_bias is not None, SOFTPLUS=softplus, BH=BH, BT=pow2(T))
        CB = empty(b, nc, G, T, T, **self.f32)
        fwd.chunk_cb[(b * nc, G, self.tiles(T, T, "BM", "BK"))](
            C, B, CB, self.l, T, nc, G, N, *C.stride(), *B.stride(), **self.dot,
            BM=blk["BM"], BK=blk["BK"], BN=blk["BN"], **self.warps)
        Sc = self.outer(x, B, dt_p, cs, state=True)
        S_in, final = empty(b, nc, h, P, N, **self.f32), empty(b, h, P, N, **self.f32)
        fwd.state_pass[(b, h, _cdiv(P * N, self.state_block))](
            Sc, cs, self.seq, h0, S_in, final, *self.sizes(), P * N, *self.seq_strides,
            HAS_H0=h0 is not None, HAS_SEQ=self.has_seq, BLOCK=self.state_block)
        return dt_p, cs, CB, S_in, final

    def outer(self, X, Y, dt_p, cs, state):
        """chunk_outer: each chunk's own end state (state=True: X = x, Y = B) or sum_t exp(cs_t) dy^T C."""
        from ssmkit.ops.ssd import _triton_fwd as fwd

        blk = self.blk
        out = empty(self.b, self.nc, self.h, self.P, self.N, **self.f32)
        fwd.chunk_outer[(self.b * self.nc, self.h, self.tiles(self.P, self.N, "BP", "BN"))](
            X, Y, dt_p, cs, self.seq, out, *self.sizes(), self.hpg, self.P, self.N, *X.stride(), *Y.stride(),
            *self.seq_strides, STATE=state, HAS_SEQ=self.has_seq, **self.dot,
            BP=blk["BP"], BN=blk["BN"], BK=blk["BK"], **self.warps)
        return out

    def scan(self, CB, x, dt_p, cs, C, S_in, D, z, dout=None):
        """chunk_scan: out (b, l, h, P) in x's dtype; with dout (and z): (dy float32, dz)."""
        from ssmkit.ops.ssd import _triton_fwd as fwd

        grad = dout is not None
        out = empty(*x.shape, dtype=torch.float32 if grad else x.dtype, device=x.device)
        dz = empty(*x.shape, dtype=z.dtype, device=x.device) if grad else None
        zz = z if z is not None else x
        fwd.chunk_scan[(self.b * self.nc, self.h, self.tiles(self.T, self.P, "BM", "BP"))](
            CB, x, dt_p, cs, C, S_in, D, zz, self.seq, dout, out, dz, *self.sizes(), self.hpg, self.P, self.N,
            *x.stride(), *C.stride(), *zz.stride(), *self.seq_strides, *out.stride(),
            HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
            HAS_SEQ=self.has_seq, GRAD=grad, **self.dot, **self.blk, **self.warps)
        return (out, dz) if grad else out


def _backward(run: _Launch, x, dt, A, B, C, D, z, dt_bias, h0, softplus, dt_limit, dout, dfinal):
    """Every input's gradient (see ssmkit.ops.ssd._triton_bwd for what each kernel computes)."""
    from ssmkit.ops.ssd import _triton_bwd as bwd

    b, h, P, N, G, T, nc, blk, f32 = run.b, run.h, run.P, run.N, run.G, run.T, run.nc, run.blk, run.f32
    seq, seqs = run.seq, run.seq_strides
    dt_p, cs, CB, S_in, _ = run.intermediates(x, dt, A, B, C, dt_bias, softplus, dt_limit, h0)
    dy, dz = run.scan(CB, x, dt_p, cs, C, S_in, D, z, dout=dout) if z is not None else (dout, None)
    dcs, ddt = torch.zeros(b, h, nc, T, **f32), torch.zeros(b, h, nc, T, **f32)
    # 1. states: dS_end per chunk (in place of dS_off), d initial state, the decays' share of dcs
    dS, dh0 = run.outer(dy, C, dt_p, cs, state=False), empty(b, h, P, N, **f32)
    bwd.state_pass_bwd[(b, h, _cdiv(P * N, run.state_block))](
        dS, S_in, cs, seq, dfinal.contiguous() if dfinal is not None else None, dh0, dcs, *run.sizes(), P * N,
        *seqs, HAS_DFINAL=dfinal is not None, HAS_SEQ=run.has_seq, BLOCK=run.state_block)
    # 2. dx, ddt through X = dt x, dD
    dx = empty(*x.shape, dtype=x.dtype, device=x.device)
    dD = torch.zeros(D.shape, **f32) if D is not None else None
    bwd.chunk_dx[(b * nc, h, run.tiles(T, P, "BM", "BP"))](
        CB, x, dt_p, cs, B, dS, D, seq, dy, dx, ddt, dD, dcs, *run.sizes(), run.hpg, P, N, *x.stride(),
        *B.stride(), *seqs, *dy.stride(), HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
        HAS_SEQ=run.has_seq, **run.dot, **blk, **run.warps)
    # 3. dCB, then dC (through B and the entering states) and dB (through C and the end states)
    dCB = empty(b, nc, G, T, T, **f32)
    bwd.chunk_dcb[(b * nc, G, run.tiles(T, T, "BM", "BK"))](
        x, dt_p, cs, CB, seq, dy, dCB, dcs, *run.sizes(), run.hpg, P, *x.stride(), *seqs, *dy.stride(),
        HAS_SEQ=run.has_seq, **run.dot, BM=blk["BM"], BK=blk["BK"], BP=blk["BP"], **run.warps)
    dC, dB = empty(b, run.l, G, N, **f32), empty(b, run.l, G, N, **f32)
    for is_c, other, S, out in ((True, B, S_in, dC), (False, C, dS, dB)):
        bwd.chunk_dbc[(b * nc, G, run.tiles(T, N, "BM", "BN"))](
            dCB, other, C, x, dt_p, cs, S, seq, dy, out, dcs, *run.sizes(), run.hpg, P, N, *other.stride(),
            *C.stride(), *x.stride(), *seqs, *dy.stride(), IS_C=is_c, HAS_SEQ=run.has_seq, **run.dot, **blk,
            **run.warps)
    # 4. dcs -> d(dt A) by a reverse cumsum inside each chunk; then dt's chain rule
    da = dcs.flip(-1).cumsum(-1).flip(-1)                                       # (b, h, c, T)
    dA = (da * dt_p).sum((0, 2, 3))
    ddt = (ddt + da * A.float()[None, :, None, None]).permute(0, 2, 3, 1).reshape(b, nc * T, h)[:, : run.l]
    ddt, dbias = _dt_chain(dt, dt_bias, softplus, dt_limit, ddt)
    cast = lambda grad, like: None if like is None else grad.to(like.dtype)       # noqa: E731
    return dx, ddt, cast(dA, A), cast(dB, B), cast(dC, C), cast(dD, D), dz, dbias, cast(dh0, h0)


def _dt_chain(dt, dt_bias, softplus, dt_limit, grad):
    """Gradient of dt_used = clamp(softplus(dt + dt_bias)) to dt (and dt_bias), given grad (b, l, h)."""
    raw = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
    used = F.softplus(raw) if softplus else raw
    grad = grad * ((used >= dt_limit[0]) & (used <= dt_limit[1]))
    if softplus:
        grad = grad * torch.sigmoid(raw)
    d_bias = grad.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None else None
    return grad.to(dt.dtype), d_bias


class _SSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, h0, seq_idx, chunk_size, softplus, dt_limit):
        run = _Launch(x, B, chunk_size, seq_idx)
        dt_p, cs, CB, S_in, final = run.intermediates(x, dt, A, B, C, dt_bias, softplus, dt_limit, h0)
        out = run.scan(CB, x, dt_p, cs, C, S_in, D, z)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, h0, seq_idx)
        ctx.options = (chunk_size, softplus, dt_limit)
        return out, final

    @staticmethod
    def backward(ctx, dout, dfinal):
        x, dt, A, B, C, D, z, dt_bias, h0, seq_idx = ctx.saved_tensors
        chunk_size, softplus, dt_limit = ctx.options
        run = _Launch(x, B, chunk_size, seq_idx)
        grads = _backward(run, x, dt, A, B, C, D, z, dt_bias, h0, softplus, dt_limit, dout, dfinal)
        return (*grads, None, None, None, None)


def ssd(x, dt, A, B, C, *, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
        dt_limit=(0.0, float("inf")), initial_state=None, seq_idx=None, return_final_state=False):
    """Normalized arguments as in ssmkit.ops.ssd.reference; out in x's dtype, final state float32."""
    if x.shape[1] == 0:
        from ssmkit.ops.ssd import reference

        return reference.ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                             dt_softplus=dt_softplus, dt_limit=dt_limit, initial_state=initial_state,
                             seq_idx=seq_idx, return_final_state=return_final_state)
    h0, D, dt_bias = (t.contiguous() if t is not None else None for t in (initial_state, D, dt_bias))
    out, final = _SSD.apply(x, dt, A.contiguous(), B, C, D, z, dt_bias, h0, seq_idx, int(chunk_size),
                            bool(dt_softplus), (float(dt_limit[0]), float(dt_limit[1])))
    return (out, final) if return_final_state else out
