"""The one tier-checking harness: every tier of an op against the sequential oracle.

`check_tiers(case, dtype)` makes random inputs, runs the op's public function with backend="reference"
on them in float64 (complex128) as the oracle, and then with every tier that can run them (found by
`ssmkit.ops._dispatch`, so a new tier module is checked without a line here): outputs and final states,
the gradients of every floating input (initial_state's included) for a fixed random projection of the
outputs, and a forward under torch.no_grad() (where the numba tiers run their inference kernels).
Tolerances are by dtype (tests.helpers.TOL, as relative errors). Kernel outputs are NaN-poisoned
(SSMKIT_POISON=1), so an element a kernel forgot to write fails the finiteness check.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ssmkit.ops import _dispatch
from tests.helpers import TOL, assert_rel


@dataclass(frozen=True)
class Case:
    """Inputs of one op: `make(dtype, gen)` returns (core tensors, keyword arguments); every floating
    tensor among them is differentiated. `final_state`: the op takes return_final_state."""

    op: str
    make: Callable[[torch.dtype, torch.Generator], tuple[tuple, dict]]
    final_state: bool = True
    name: str = field(default="", compare=False)


def op_function(op: str) -> Callable:
    return getattr(importlib.import_module(f"ssmkit.ops.{op}"), op)


def _real(dtype: torch.dtype) -> torch.dtype:
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


def _floating(t) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())


def _wide(t: torch.Tensor) -> torch.Tensor:
    """The same values in float64 / complex128 (exactly: every narrower dtype embeds)."""
    return t.to(torch.complex128 if t.is_complex() else torch.float64)


def _leaves(args, kwargs, convert=None):
    """Fresh leaves requiring grad (converted by `convert`), and [(name, leaf)] for the messages."""
    def leaf(t):
        t = t.detach()
        return (convert(t) if convert else t).requires_grad_(True)

    args = tuple(leaf(t) if _floating(t) else t for t in args)
    kwargs = {k: leaf(v) if _floating(v) else v for k, v in kwargs.items()}
    return args, kwargs


def _named(fn, args, kwargs):
    params = list(inspect.signature(fn).parameters)
    named = [(params[i], t) for i, t in enumerate(args)] + list(kwargs.items())
    return [(n, t) for n, t in named if _floating(t)]


def _outputs(fn, args, kwargs, backend, final_state):
    extra = {"return_final_state": True} if final_state else {}
    out = fn(*args, **kwargs, **extra, backend=backend)
    return out if isinstance(out, tuple) else (out,)


def _loss(outs, gen_seed: int):
    """A fixed random projection of the outputs, in float64 whatever their dtype."""
    gen = torch.Generator().manual_seed(gen_seed)
    loss = 0
    for o in outs:
        w = torch.randn(o.shape, generator=gen, dtype=torch.float64)
        loss = loss + ((_wide(o) * w).real if o.is_complex() else _wide(o) * w).sum()
    return loss


def _run(fn, args, kwargs, backend, final_state):
    """(outputs, {name: grad}, no-grad outputs) of one backend."""
    outs = _outputs(fn, args, kwargs, backend, final_state)
    named = _named(fn, args, kwargs)
    grads = torch.autograd.grad(_loss(outs, 1), [t for _, t in named], allow_unused=True)
    with torch.no_grad():
        plain = _outputs(fn, args, kwargs, backend, final_state)
    return outs, dict(zip([n for n, _ in named], grads)), plain


@contextmanager
def _poisoned():
    before = os.environ.get("SSMKIT_POISON")
    os.environ["SSMKIT_POISON"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["SSMKIT_POISON"]
        else:
            os.environ["SSMKIT_POISON"] = before


def runnable_tiers(op: str, tensors) -> list[str]:
    """The tiers that say they can run these tensors when asked by name."""
    return [name for name, why in _dispatch.available_backends(op, *tensors).items() if why is None]


def check_tiers(case: Case, dtype: torch.dtype, *, seed: int = 0, tol: float | None = None,
                backends: tuple[str, ...] | None = None) -> list[str]:
    """Check every tier that can run `case` in `dtype` against the oracle (or just `backends`, each of
    which must be able to); return the tiers checked."""
    fn = op_function(case.op)
    gen = torch.Generator().manual_seed(seed)
    args, kwargs = case.make(dtype, gen)
    tol = TOL[_real(dtype)][0] if tol is None else tol
    o_args, o_kwargs = _leaves(args, kwargs, _wide)
    want, want_grads, _ = _run(fn, o_args, o_kwargs, "reference", case.final_state)
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    checked = runnable_tiers(case.op, tensors)
    if backends is not None:
        missing = [b for b in backends if b not in checked]
        why = _dispatch.available_backends(case.op, *tensors)
        assert not missing, f"{case.op}: {missing} cannot run {case.name}: {why}"
        checked = list(backends)
    with _poisoned():
        for backend in checked:
            what = f"{case.op}[{backend}] {case.name} {str(dtype).replace('torch.', '')}"
            t_args, t_kwargs = _leaves(args, kwargs)
            got, grads, plain = _run(fn, t_args, t_kwargs, backend, case.final_state)
            assert got[0].dtype == args[0].dtype, f"{what}: output {got[0].dtype}, input {args[0].dtype}"
            assert len(got) == len(want), f"{what}: {len(got)} outputs, the oracle {len(want)}"
            for k, (g, p, w) in enumerate(zip(got, plain, want)):
                label = "output" if k == 0 else "final state"
                assert_rel(g, w, tol, f"{what} {label}")
                assert_rel(p, w, tol, f"{what} {label} under no_grad")
            for name, w in want_grads.items():
                g = grads[name]
                assert (g is None) == (w is None), f"{what}: gradient of {name} is {g}, the oracle's {w}"
                if w is not None:
                    assert g.dtype == dict(_named(fn, t_args, t_kwargs))[name].dtype, f"{what}: d{name} dtype"
                    assert_rel(g, w, tol, f"{what} d{name}")
    return checked
