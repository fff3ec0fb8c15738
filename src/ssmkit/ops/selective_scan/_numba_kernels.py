"""The selective scan's numba kernels: one forward (training and inference) and one fused backward.

Glossary (code name: paper symbol; shapes as the kernels see them):
    u: x, the input (b, d, l)          delta: Delta before bias/softplus (b, d, l)
    A: A (d, n), negative real         B, C: B_t, C_t (b, g, n, l)
    D: D skip (d,)                     z: gate (b, d, l), out = y * silu(z)
    dt_t = softplus(delta_t + delta_bias) (or delta_t + delta_bias);  a_t = exp(dt_t A): A-bar (ZOH)
    h_t = a_t h_{t-1} + dt_t B_t u_t (Euler for B);  y_t = <C_t, h_t> + D u_t;  out_t = y_t silu(z_t)
    K: checkpoint interval; hk (b, ceil(l/K), n, d) holds h_{t-1} for t = 0, K, 2K, ...
u, delta, z and dout come as `ssmkit.ops._numba.arrays.rows` gives them (channels-last or
contiguous rows, read through `load_tile`); out is written channels-last (b*l, d), the layout of the
projections around the scan, and du, ddelta, dz in the layout their input came in (`store_tile`).

Both kernels vectorize across channels: a job takes a block of channels of one group and keeps
its state as (n, lanes) in a local array, so every update is a vector operation over lanes and the
output's dot product over n needs no horizontal sum; time is staged in (steps, lanes) tiles.
The forward writes the output and, when asked (training), the checkpoints: nothing else is kept.
The backward walks the segments of K steps from the end: it recomputes the segment's states and
their a_t from its checkpoint into (K, n, lanes) buffers (each exp once), with y_t before the gate
(for dz) and dC_t = sum_c dy_t h_t; then walks back with g = dL/dh_t:
    g += dy_t C_t;  dB_t += sum_c g dt_t u_t;  <g, B_t> -> du_t, d dt_t;  q = g a_t h_{t-1}
    d dt_t += <q, A>;  dA += q dt_t;  g *= a_t
and finishes the segment with d delta = d dt sigmoid(delta + bias), dbias, dD and dz in its tile.
dB and dC are shared by the channels of a group: each worker adds into its own slice of a partial
buffer (workers, b, g, l, n), summed afterwards: no races, no atomics. One store target per inner
loop: LLVM vectorizes a loop only while its runtime alias checks (stores x other arrays) stay few.
"""

from __future__ import annotations

import numpy as np

from ssmkit.ops._numba import njit, prange
from ssmkit.ops._numba.arrays import LANES, TILE, load_tile, store_tile
from ssmkit.ops._numba.numerics import LOG2E, ONE, ZERO, sigmoid, silu, softplus, vexp2_neg

K_CHECKPOINT = 32  # the backward's segment; TILE is a multiple of it
BW = 128  # the backward's lanes: its (K, n, BW) buffers stay in L2 (n = 16: 0.5 MB)


@njit(parallel=True, fastmath=True)
def scan_forward(u, u0, ucl, dl, dl0, dlcl, A, B, C, D, z, z0, zcl, has_z, bias, do_softplus, h0,
                 y, hT, K, hk, save):
    b, d, n = h0.shape
    g, L = B.shape[1], B.shape[3]
    per_group = d // g
    nblk = (per_group + LANES - 1) // LANES
    for job in prange(b * g * nblk):
        i = job // (g * nblk)
        gi = (job // nblk) % g
        c0 = gi * per_group + (job % nblk) * LANES
        cb = min(LANES, (gi + 1) * per_group - c0)
        # lanes c >= cb stay zero: dt u = 0 and A = 0 keep their state at 0, nothing is stored
        h = np.zeros((n, LANES), dtype=np.float32)
        At = np.zeros((n, LANES), dtype=np.float32)
        ub = np.zeros((TILE, LANES), dtype=np.float32)
        dtb = np.zeros((TILE, LANES), dtype=np.float32)
        zb = np.zeros((TILE, LANES), dtype=np.float32)
        yb = np.zeros((TILE, LANES), dtype=np.float32)
        Dv = np.zeros(LANES, dtype=np.float32)
        bv = np.zeros(LANES, dtype=np.float32)
        du = np.zeros(LANES, dtype=np.float32)
        acc = np.zeros(LANES, dtype=np.float32)
        for c in range(cb):
            Dv[c] = D[c0 + c]
            bv[c] = bias[c0 + c]
            for s in range(n):
                h[s, c] = h0[i, c0 + c, s]
                At[s, c] = A[c0 + c, s] * LOG2E  # a_t = 2^(dt A log2(e))
        for t0 in range(0, L, TILE):
            tl = min(TILE, L - t0)
            load_tile(dl, dl0, dlcl, i, d, L, c0, cb, t0, tl, dtb)
            load_tile(u, u0, ucl, i, d, L, c0, cb, t0, tl, ub)
            for r in range(tl):
                for c in range(LANES):
                    dtb[r, c] = softplus(dtb[r, c] + bv[c]) if do_softplus else dtb[r, c] + bv[c]
            for r in range(tl):
                t = t0 + r
                if save and t % K == 0:
                    for s in range(n):
                        seg = hk[i, t // K, s, c0: c0 + cb]
                        for c in range(cb):
                            seg[c] = h[s, c]
                for c in range(LANES):
                    du[c] = dtb[r, c] * ub[r, c]
                for c in range(LANES):
                    acc[c] = Dv[c] * ub[r, c]
                for s in range(n):
                    bs = B[i, gi, s, t]
                    cs = C[i, gi, s, t]
                    for c in range(LANES):
                        h[s, c] = vexp2_neg(dtb[r, c] * At[s, c]) * h[s, c] + du[c] * bs
                    for c in range(LANES):
                        acc[c] += cs * h[s, c]
                for c in range(LANES):
                    yb[r, c] = acc[c]
            if has_z:
                load_tile(z, z0, zcl, i, d, L, c0, cb, t0, tl, zb)
                for r in range(tl):
                    for c in range(LANES):
                        yb[r, c] *= silu(zb[r, c])
            store_tile(y, True, i, d, L, c0, cb, t0, tl, yb)
        for c in range(cb):
            for s in range(n):
                hT[i, c0 + c, s] = h[s, c]


@njit(parallel=True, fastmath=True)
def scan_backward(u, u0, ucl, dl, dl0, dlcl, z, z0, zcl, has_z, do, do0, docl, A, B, C, D, bias,
                  do_softplus, K, hk, dhT, nwork, du_o, ddl_o, dz_o, dbias_o, dA_o, dD_o, dh0_o, dBp, dCp):
    b, d, n = dhT.shape
    g, L = B.shape[1], B.shape[3]
    per_group = d // g
    nbg = (per_group + BW - 1) // BW  # blocks per group
    nblk = g * nbg
    chunk = (nblk + nwork - 1) // nwork
    nseg = (L + K - 1) // K
    for job in prange(b * nwork):
        i = job // nwork
        w = job % nwork
        hb = np.zeros((K + 1, n, BW), dtype=np.float32)  # h_{t0-1} .. h_{t1-1}
        ab = np.zeros((K, n, BW), dtype=np.float32)  # a_t for t0 .. t1-1
        G = np.zeros((n, BW), dtype=np.float32)  # dL/dh_t
        dAc = np.zeros((n, BW), dtype=np.float32)
        At = np.zeros((n, BW), dtype=np.float32)
        A2 = np.zeros((n, BW), dtype=np.float32)  # A log2(e): a_t = 2^(dt A2)
        ub = np.zeros((K, BW), dtype=np.float32)
        dtb = np.zeros((K, BW), dtype=np.float32)  # delta + bias, then dt
        sgb = np.zeros((K, BW), dtype=np.float32)  # d dt / d delta
        zb = np.zeros((K, BW), dtype=np.float32)
        dob = np.zeros((K, BW), dtype=np.float32)  # dout, then dz
        dyb = np.zeros((K, BW), dtype=np.float32)  # dL/dy_t, y before the gate
        ypb = np.zeros((K, BW), dtype=np.float32)  # y_t before the gate
        dub = np.zeros((K, BW), dtype=np.float32)
        ddb = np.zeros((K, BW), dtype=np.float32)
        Dv = np.zeros(BW, dtype=np.float32)
        bv = np.zeros(BW, dtype=np.float32)
        dDv = np.zeros(BW, dtype=np.float32)
        dbv = np.zeros(BW, dtype=np.float32)
        dtu = np.zeros(BW, dtype=np.float32)
        gv = np.zeros(BW, dtype=np.float32)
        qv = np.zeros(BW, dtype=np.float32)
        gB = np.zeros(BW, dtype=np.float32)  # <g, B_t>
        gA = np.zeros(BW, dtype=np.float32)  # <q, A>
        for blk in range(w * chunk, min(nblk, (w + 1) * chunk)):
            gi = blk // nbg
            c0 = gi * per_group + (blk % nbg) * BW
            cb = min(BW, (gi + 1) * per_group - c0)
            if cb < BW:  # lanes c >= cb: zero inputs, A and dL/dh, so they add nothing to dB, dC
                for r in range(K):
                    for c in range(BW):
                        ub[r, c] = ZERO
                        dtb[r, c] = ZERO
                        dob[r, c] = ZERO
                        zb[r, c] = ZERO
                for s in range(n):
                    for c in range(BW):
                        At[s, c] = ZERO
                        A2[s, c] = ZERO
                        hb[0, s, c] = ZERO
            for c in range(BW):
                dDv[c] = ZERO
                dbv[c] = ZERO
                for s in range(n):
                    G[s, c] = ZERO
                    dAc[s, c] = ZERO
            for c in range(cb):
                Dv[c] = D[c0 + c]
                bv[c] = bias[c0 + c]
                for s in range(n):
                    At[s, c] = A[c0 + c, s]
                    A2[s, c] = A[c0 + c, s] * LOG2E
                    G[s, c] = dhT[i, c0 + c, s]
            for seg in range(nseg - 1, -1, -1):
                t0 = seg * K
                tl = min(K, L - t0)
                load_tile(dl, dl0, dlcl, i, d, L, c0, cb, t0, tl, dtb)
                load_tile(u, u0, ucl, i, d, L, c0, cb, t0, tl, ub)
                load_tile(do, do0, docl, i, d, L, c0, cb, t0, tl, dob)
                for r in range(tl):
                    for c in range(BW):
                        x = dtb[r, c] + bv[c]
                        sgb[r, c] = sigmoid(x) if do_softplus else ONE
                        dtb[r, c] = softplus(x) if do_softplus else x
                if has_z:
                    load_tile(z, z0, zcl, i, d, L, c0, cb, t0, tl, zb)
                    for r in range(tl):
                        for c in range(BW):
                            dyb[r, c] = dob[r, c] * silu(zb[r, c])
                else:
                    for r in range(tl):
                        for c in range(BW):
                            dyb[r, c] = dob[r, c]
                # 1. recompute the segment's states from its checkpoint, with y (before the gate) and dC
                for s in range(n):
                    seg_h = hk[i, seg, s, c0: c0 + cb]
                    for c in range(cb):
                        hb[0, s, c] = seg_h[c]
                for r in range(tl):
                    t = t0 + r
                    for c in range(BW):
                        dtu[c] = dtb[r, c] * ub[r, c]
                    for c in range(BW):
                        ypb[r, c] = Dv[c] * ub[r, c]
                    for s in range(n):
                        bs = B[i, gi, s, t]
                        cs = C[i, gi, s, t]
                        for c in range(BW):
                            ab[r, s, c] = vexp2_neg(dtb[r, c] * A2[s, c])
                        for c in range(BW):
                            hb[r + 1, s, c] = ab[r, s, c] * hb[r, s, c] + dtu[c] * bs
                        for c in range(BW):
                            ypb[r, c] += cs * hb[r + 1, s, c]
                        acc = ZERO
                        for c in range(BW):
                            acc += dyb[r, c] * hb[r + 1, s, c]
                        dCp[w, i, gi, t, s] += acc
                # 2. walk the segment backwards
                for r in range(tl - 1, -1, -1):
                    t = t0 + r
                    for c in range(BW):
                        dtu[c] = dtb[r, c] * ub[r, c]
                    for c in range(BW):
                        gB[c] = ZERO
                    for c in range(BW):
                        gA[c] = ZERO
                    for s in range(n):
                        bs = B[i, gi, s, t]
                        cs = C[i, gi, s, t]
                        for c in range(BW):
                            gv[c] = G[s, c] + dyb[r, c] * cs
                        acc = ZERO
                        for c in range(BW):
                            acc += gv[c] * dtu[c]
                        dBp[w, i, gi, t, s] += acc
                        for c in range(BW):
                            gB[c] += gv[c] * bs
                        for c in range(BW):
                            qv[c] = gv[c] * ab[r, s, c] * hb[r, s, c]
                        for c in range(BW):
                            gA[c] += qv[c] * At[s, c]
                        for c in range(BW):
                            dAc[s, c] += qv[c] * dtb[r, c]
                        for c in range(BW):
                            G[s, c] = gv[c] * ab[r, s, c]
                    for c in range(BW):
                        dub[r, c] = gB[c] * dtb[r, c] + Dv[c] * dyb[r, c]
                    for c in range(BW):
                        ddb[r, c] = (gA[c] + gB[c] * ub[r, c]) * sgb[r, c]
                # 3. the segment's dz, dD and dbias, over its tile
                for r in range(tl):
                    for c in range(BW):
                        dbv[c] += ddb[r, c]
                    for c in range(BW):
                        dDv[c] += dyb[r, c] * ub[r, c]
                if has_z:
                    for r in range(tl):
                        for c in range(BW):
                            sz = sigmoid(zb[r, c])
                            dob[r, c] = dob[r, c] * ypb[r, c] * sz * (ONE + zb[r, c] * (ONE - sz))
                    store_tile(dz_o, zcl, i, d, L, c0, cb, t0, tl, dob)
                store_tile(du_o, ucl, i, d, L, c0, cb, t0, tl, dub)
                store_tile(ddl_o, dlcl, i, d, L, c0, cb, t0, tl, ddb)
            for c in range(cb):
                dD_o[i, c0 + c] = dDv[c]
                dbias_o[i, c0 + c] = dbv[c]
                for s in range(n):
                    dh0_o[i, c0 + c, s] = G[s, c]
                    dA_o[i, c0 + c, s] = dAc[s, c]
