"""Which fused kernels a Mamba / Mamba-2 layer's one-token `step` takes (the ops' own tiers decide).

    numba_step(layer, op, backend, x_t, state_tensors, params, build) -> (kernels, prepared) or None
    numba_norm(norm, x) -> (kernels, weight array) or None
    numba_block(layer, op, backend, residual_t, norm, state_tensors, params, build) -> (kernels, ...) or None
    numba_stack(owner, op, backend, residual_t, state_tensors, params, build) -> (kernels, ...) or None
    ssmkit.ops._triton.decode.fused_step(op, backend, x) -> bool (CUDA)

The numba decode kernels (ssmkit.ops._numba.decode) run when the op ("selective_scan" for Mamba,
"ssd" for Mamba-2) would take its numba tier for these tensors (CPU under "auto", or
backend="numba"), every tensor is float32, and no gradient is wanted (they have no backward):
inference on CPU. Elsewhere the layer's unfused step runs the ops at length 1 (the reference the
kernels are tested against). RMSNorm takes the kernel for inputs of at most NORM_ELEMENTS elements
(decoding: a few rows, where its ~17 small PyTorch operations cost more than the arithmetic).
Importing this module does not import numba.

A whole block (RMSNorm, the mixer with its projections, the residual add: ssmkit.ops._numba.block_decode)
runs as one kernel under the same conditions, for at most BLOCK_ROWS batch rows (more rows are matrix
products, PyTorch's), with the norm's weight among the parameters the kernel reads; and so does a
model's whole stack of such blocks (`numba_stack`, one call per token: between a block's kernel and
the next, the ~80 us of Python of a block's call ran with its caches cold from the weights streamed).

A decoding step of a 130M model is microseconds of arithmetic per layer, so the per-call Python
around it counts: the decision and what the kernel reads besides the token and the state (`build`:
numpy views of the parameters, arrays derived from them such as Mamba's A = -exp(A_log), scalar
options) are made once per layer and kept while the key holds: the backend asked for, the
SSMKIT_BACKEND variable, the dtypes and devices of the token and state, and each parameter's storage
and version (an in-place update such as an optimizer step or load_state_dict bumps the version; a
parameter replaced or moved gets new storage). The key is not checked under a gradient-wanting call
(never fused). Kept in a weak dictionary: nothing is stored on the layer, nothing outlives it.
"""

from __future__ import annotations

import importlib
import os
import weakref

import torch

from ssmkit.ops._dispatch import ENV

NORM_ELEMENTS = 1 << 14
BLOCK_ROWS = 8
_numba_missing: list[bool] = []
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> (key, value)
_blocks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> (key, value), its block's
_stacks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backbone -> (key, value)


def _kernels(module: str = "decode"):
    """ssmkit.ops._numba.<module> ("decode" or "block_decode"), only the one asked for; None without numba."""
    if _numba_missing:
        return None
    try:
        return importlib.import_module(f"ssmkit.ops._numba.{module}")
    except ImportError:  # numba not installed: the reference paths
        _numba_missing.append(True)
        return None


def _wants_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _key(extra, tensors, params) -> tuple:
    """What the decision and the prepared arrays depend on (see the module docstring)."""
    return (
        *extra,
        os.environ.get(ENV),
        *[(t.dtype, t.is_cpu) for t in tensors],
        *[None if p is None else (p.data_ptr(), p._version) for p in params],
    )


def _cached(layer, key, make, table=_prepared):
    hit = table.get(layer)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = make()
    table[layer] = (key, value)
    return value


def _kernel_dtypes_on_cpu(tensors) -> bool:
    """Every tensor on the CPU and float32, but for int8 weights (ssmkit.layers.int8)."""
    return all(t.dtype in (torch.float32, torch.int8) and t.device.type == "cpu" for t in tensors)


def numba_step(layer, op: str, backend: str, x_t: torch.Tensor, state_tensors, params, build,
               module: str = "decode", table=_prepared):
    """(the decode kernels module, build(kernels)) if `layer`'s step over x_t and its state should run
    the numba kernels, else None. params: the parameters the kernels read (None for an absent one)."""
    params = tuple(params)
    tensors = (x_t, *state_tensors)
    present = [p for p in params if p is not None]
    if _wants_grad((*tensors, *present)):
        return None

    def make():
        from ssmkit.ops._dispatch import resolve

        if not _kernel_dtypes_on_cpu((*tensors, *present)) or resolve(op, backend, x_t).name != "numba":
            return None
        kernels = _kernels(module)
        return None if kernels is None else (kernels, build(kernels))

    return _cached(layer, _key((op, backend), tensors, params), make, table)


def numba_block(layer, op: str, backend: str, residual_t: torch.Tensor, norm, state_tensors, params, build):
    """(ssmkit.ops._numba.block_decode, ((norm weight, eps), build(kernels))) if the step of a block made
    of RMSNorm `norm` (over all of d_model) and mixer `layer` should run as one kernel, else None."""
    if residual_t.shape[0] > BLOCK_ROWS or norm.group_size != norm.weight.shape[0]:
        return None

    def build_all(kernels):
        return (kernels.array(norm.weight), float(norm.eps)), build(kernels)

    return numba_step(layer, op, backend, residual_t, state_tensors, (norm.weight, *params), build_all,
                      "block_decode", _blocks)


def numba_norm(norm, x: torch.Tensor):
    """(the decode kernels module, norm.weight as an array) if RMSNorm `norm` of x should run the
    kernels' `rms_norm`, else None."""
    weight = norm.weight
    if x.numel() > NORM_ELEMENTS or _wants_grad((x, weight)):
        return None

    def make():
        kernels = _kernels() if _kernel_dtypes_on_cpu((x, weight)) else None
        return None if kernels is None else (kernels, kernels.array(weight))

    return _cached(norm, _key((), (x,), (weight,)), make)


def numba_stack(owner, op: str, backend: str, residual_t: torch.Tensor, state_tensors, params, build):
    """(ssmkit.ops._numba.block_decode, build(kernels)) if the blocks of `owner` (a backbone) should run
    as one kernel call, else None; params: every block's (its norm's weight among them)."""
    if residual_t.shape[0] > BLOCK_ROWS:
        return None
    return numba_step(owner, op, backend, residual_t, state_tensors, params, build, "block_decode", _stacks)
