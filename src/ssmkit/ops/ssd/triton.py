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


def _blocks(T: int, P: int, N: int) -> dict:
    tile = lambda n: min(64, pow2(n, 16))                                 # noqa: E731  tl.dot wants >= 16
    return dict(BM=tile(T), BK=tile(T), BP=tile(P), BN=tile(N))


class _Plan:
    """Sizes, kernel options and the forward's recomputable intermediates of one call."""

    def __init__(self, x, B, chunk_size, seq_idx):
        from ssmkit.ops._triton.common import tl_dtype

        self.b, self.l, self.h, self.P = x.shape
        self.G, self.N = B.shape[2], B.shape[3]
        self.T, self.hpg = chunk_size, self.h // self.G
        self.nc = -(-self.l // chunk_size)
        self.blk = _blocks(self.T, self.P, self.N)
        self.dot = dict(DTYPE=tl_dtype(x.dtype), UPCAST=dot_upcast(x.dtype))
        self.seq = seq_idx
        self.seq_strides = tuple(seq_idx.stride()) if seq_idx is not None else (0, 0)
        self.f32 = dict(dtype=torch.float32, device=x.device)

    def intermediates(self, x, dt, A, B, C, dt_bias, softplus, dt_limit, h0):
        """dt and cs (b, h, c, T), CB (b, c, g, T, T), S_in (b, c, h, P, N) and the final state."""
        from ssmkit.ops.ssd import _triton_fwd as fwd

        b, h, T, nc, P, N, G = self.b, self.h, self.T, self.nc, self.P, self.N, self.G
        blk, has_seq = self.blk, self.seq is not None
        dt_p, cs = empty(b, h, nc, T, **self.f32), empty(b, h, nc, T, **self.f32)
        BH = min(16, pow2(h))
        fwd.dt_cumsum[(b, nc, -(-h // BH))](dt, A, dt_bias, dt_p, cs, self.l, h, T, nc, *dt.stride(),
                                            float(dt_limit[0]), float(dt_limit[1]), HAS_BIAS=dt_bias is not None,
                                            SOFTPLUS=softplus, BH=BH, BT=pow2(T))
        CB = empty(b, nc, G, T, T, **self.f32)
        tiles = -(-T // blk["BM"]) * -(-T // blk["BK"])
        fwd.chunk_cb[(b * nc, G, tiles)](C, B, CB, self.l, T, nc, G, N, *C.stride(), *B.stride(), **self.dot,
                                         BM=blk["BM"], BK=blk["BK"], BN=blk["BN"])
        Sc = self.outer(x, B, dt_p, cs, state=True)
        S_in, final = empty(b, nc, h, P, N, **self.f32), empty(b, h, P, N, **self.f32)
        block = min(1024, pow2(P * N))
        fwd.state_pass[(b, h, -(-(P * N) // block))](Sc, cs, self.seq, h0, S_in, final, self.l, h, T, nc, P * N,
                                                     *self.seq_strides, HAS_H0=h0 is not None,
                                                     HAS_SEQ=has_seq, BLOCK=block)
        return dt_p, cs, CB, S_in, final

    def outer(self, X, Y, dt_p, cs, state):
        """chunk_outer: each chunk's own end state (state=True: X = x, Y = B) or sum_t exp(cs_t) dy^T C."""
        from ssmkit.ops.ssd import _triton_fwd as fwd

        b, h, nc, P, N, blk = self.b, self.h, self.nc, self.P, self.N, self.blk
        out = empty(b, nc, h, P, N, **self.f32)
        grid = (b * nc, h, -(-P // blk["BP"]) * -(-N // blk["BN"]))
        fwd.chunk_outer[grid](X, Y, dt_p, cs, self.seq, out, self.l, h, self.T, nc, self.hpg, P, N,
                              *X.stride(), *Y.stride(), *self.seq_strides, STATE=state,
                              HAS_SEQ=self.seq is not None, **self.dot, BP=blk["BP"], BN=blk["BN"], BK=blk["BK"])
        return out

    def scan(self, CB, x, dt_p, cs, C, S_in, D, z, dout=None):
        """chunk_scan: out (b, l, h, P) in x's dtype; with dout (and z): (dy float32, dz)."""
        from ssmkit.ops.ssd import _triton_fwd as fwd

        b, l, h, P, blk = self.b, self.l, self.h, self.P, self.blk
        grad = dout is not None
        out = empty(b, l, h, P, dtype=torch.float32 if grad else x.dtype, device=x.device)
        dz = empty(b, l, h, P, dtype=z.dtype, device=x.device) if grad else None
        zz = z if z is not None else x
        grid = (b * self.nc, h, -(-self.T // blk["BM"]) * -(-P // blk["BP"]))
        fwd.chunk_scan[grid](CB, x, dt_p, cs, C, S_in, D, zz, self.seq, dout, out, dz, l, h, self.T, self.nc,
                             self.hpg, P, self.N, *x.stride(), *C.stride(), *zz.stride(), *self.seq_strides,
                             *out.stride(), HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
                             HAS_Z=z is not None, HAS_SEQ=self.seq is not None, GRAD=grad, **self.dot, **blk)
        return (out, dz) if grad else out


class _SSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, h0, seq_idx, chunk_size, softplus, dt_limit):
        plan = _Plan(x, B, chunk_size, seq_idx)
        dt_p, cs, CB, S_in, final = plan.intermediates(x, dt, A, B, C, dt_bias, softplus, dt_limit, h0)
        out = plan.scan(CB, x, dt_p, cs, C, S_in, D, z)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, h0, seq_idx)
        ctx.options = (chunk_size, softplus, dt_limit)
        return out, final

    @staticmethod
    def backward(ctx, dout, dfinal):
        from ssmkit.ops.ssd import _triton_bwd as bwd

        x, dt, A, B, C, D, z, dt_bias, h0, seq_idx = ctx.saved_tensors
        chunk_size, softplus, dt_limit = ctx.options
        plan = _Plan(x, B, chunk_size, seq_idx)
        b, l, h, P, N, G, T, nc, blk = plan.b, plan.l, plan.h, plan.P, plan.N, plan.G, plan.T, plan.nc, plan.blk
        has_seq, f32, seqs = seq_idx is not None, plan.f32, plan.seq_strides
        dt_p, cs, CB, S_in, _ = plan.intermediates(x, dt, A, B, C, dt_bias, softplus, dt_limit, h0)
        dz = None
        if z is not None:
            dy, dz = plan.scan(CB, x, dt_p, cs, C, S_in, D, z, dout=dout)
        else:
            dy = dout
        dcs, ddt = torch.zeros(b, h, nc, T, **f32), torch.zeros(b, h, nc, T, **f32)
        # 1. states: dS_end per chunk, d initial state, and the decays' share of dcs
        dS = plan.outer(dy, C, dt_p, cs, state=False)
        dh0 = empty(b, h, P, N, **f32)
        block = min(1024, pow2(P * N))
        bwd.state_pass_bwd[(b, h, -(-(P * N) // block))](
            dS, S_in, cs, seq_idx, dfinal.contiguous() if dfinal is not None else None, dh0, dcs, l, h, T, nc,
            P * N, *seqs, HAS_DFINAL=dfinal is not None, HAS_SEQ=has_seq, BLOCK=block)
        # 2. dx, ddt (through X = dt x), dD
        dx = empty(*x.shape, dtype=x.dtype, device=x.device)
        dD = torch.zeros(D.shape, **f32) if D is not None else None
        grid = (b * nc, h, -(-T // blk["BM"]) * -(-P // blk["BP"]))
        bwd.chunk_dx[grid](CB, x, dt_p, cs, B, dS, D, seq_idx, dy, dx, ddt, dD, dcs, l, h, T, nc, plan.hpg, P, N,
                           *x.stride(), *B.stride(), *seqs, *dy.stride(), HAS_D=D is not None,
                           D_PER_P=D is not None and D.dim() == 2, HAS_SEQ=has_seq, **plan.dot, **blk)
        # 3. dCB, then dC and dB
        dCB = empty(b, nc, G, T, T, **f32)
        tiles = -(-T // blk["BM"]) * -(-T // blk["BK"])
        bwd.chunk_dcb[(b * nc, G, tiles)](x, dt_p, cs, CB, seq_idx, dy, dCB, dcs, l, h, T, nc, plan.hpg, P,
                                          *x.stride(), *seqs, *dy.stride(), HAS_SEQ=has_seq, **plan.dot,
                                          BM=blk["BM"], BK=blk["BK"], BP=blk["BP"])
        dBC = []
        for is_c, other, S in ((True, B, S_in), (False, C, dS)):
            out = empty(b, l, G, N, **f32)
            grid = (b * nc, G, -(-T // blk["BM"]) * -(-N // blk["BN"]))
            bwd.chunk_dbc[grid](dCB, other, C, x, dt_p, cs, S, seq_idx, dy, out, dcs, l, h, T, nc, plan.hpg, P, N,
                                *other.stride(), *C.stride(), *x.stride(), *seqs, *dy.stride(), IS_C=is_c, HAS_SEQ=has_seq,
                                **plan.dot, **blk)
            dBC.append(out)
        dC, dB = dBC
        # 4. dcs -> d(dt A) by a reverse cumsum inside each chunk; then dt's chain rule
        da = dcs.flip(-1).cumsum(-1).flip(-1)                                   # (b, h, c, T)
        dA = (da * dt_p).sum((0, 2, 3))
        ddt_p = (ddt + da * A.float()[None, :, None, None]).permute(0, 2, 3, 1).reshape(b, nc * T, h)[:, :l]
        ddt_in, ddt_bias = _dt_chain(dt, dt_bias, softplus, dt_limit, ddt_p)
        cast = lambda grad, like: None if like is None else grad.to(like.dtype)   # noqa: E731
        return (dx, ddt_in, cast(dA, A), cast(dB, B), cast(dC, C), cast(dD, D), dz, ddt_bias, cast(dh0, h0),
                None, None, None, None)


def _dt_chain(dt, dt_bias, softplus, dt_limit, grad):
    """Gradient of dt_used = clamp(softplus(dt + dt_bias)) to dt (and dt_bias), given grad (b, l, h)."""
    raw = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
    used = F.softplus(raw) if softplus else raw
    grad = grad * ((used >= dt_limit[0]) & (used <= dt_limit[1]))
    if softplus:
        grad = grad * torch.sigmoid(raw)
    d_bias = grad.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None else None
    return grad.to(dt.dtype), d_bias


def ssd(x, dt, A, B, C, *, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
        dt_limit=(0.0, float("inf")), initial_state=None, seq_idx=None, return_final_state=False):
    """Normalized arguments as in ssmkit.ops.ssd.reference; out in x's dtype, final state float32."""
    if x.shape[1] == 0:
        from ssmkit.ops.ssd import reference

        return reference.ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                             dt_softplus=dt_softplus, dt_limit=dt_limit, initial_state=initial_state,
                             seq_idx=seq_idx, return_final_state=return_final_state)
    h0 = initial_state.contiguous() if initial_state is not None else None
    D = D.contiguous() if D is not None else None
    out, final = _SSD.apply(x, dt, A.contiguous(), B, C, D, z, dt_bias, h0, seq_idx, int(chunk_size),
                            bool(dt_softplus), (float(dt_limit[0]), float(dt_limit[1])))
    return (out, final) if return_final_state else out
