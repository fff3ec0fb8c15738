"""Choose the tier that runs an op, from what each tier module declares about itself.

An op is a package `ssmkit.ops.<op>`. Every module in it whose name does not start with "_" is a
tier: it exports a function named like the op (taking the op's normalized arguments, core tensors
positional and the rest by keyword) and declares

    BACKEND = Backend(devices=("cpu",), dtypes=(torch.float32,), priority=20)

Its backend name is its module name ("reference", "chunked", "numba", "fft"). A tier may also export
`unsupported_reason(*tensors) -> str | None` for checks finer than devices and dtypes. A tier whose
import fails because a third-party package is missing is unavailable, with a reason naming it.

`backend="auto"` (or the environment variable SSMKIT_BACKEND in its place) takes the tier of highest
priority that serves the inputs: their device among `devices` (None: any), every floating tensor's
dtype among `dtypes` (None: any), and `unsupported_reason` None. If that tier is a `fallback` while a
faster one refused, a one-time RuntimeWarning says why. A backend asked for by name runs or raises,
saying why it cannot; there a tier with `unsupported_reason` judges the device itself (Triton's
interpreter takes CPU tensors when asked by name, though "auto" picks Triton on CUDA only).
SSMKIT_BACKEND names a backend for every op that has one; ops without a tier of that name run "auto".
"cpu" is an alias of "numba" (its name in ssmkit 0.1.0).
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple

import torch

ENV = "SSMKIT_BACKEND"
ALIASES = {"cpu": "numba"}


@dataclass(frozen=True)
class Backend:
    """What a tier module serves: `devices` (device types, None: any) and `dtypes` (of its floating
    and complex inputs, None: any) for "auto"; the highest `priority` wins; a `fallback` tier is a
    slow path of last resort, and choosing it while a faster tier refused warns once."""

    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    priority: int = 0
    fallback: bool = False


@dataclass(frozen=True)
class Tier:
    """One tier module of an op: loaded (module, its backend, its function for the op and its
    unsupported_reason if any), or unavailable (missing says why)."""

    name: str
    module: ModuleType | None = None
    backend: Backend | None = None
    fn: Callable | None = None
    hook: Callable | None = None
    missing: str | None = None


class Choice(NamedTuple):
    name: str       # the tier's backend name
    fn: Callable    # its function for the op
    auto: bool      # True when "auto" chose it (not a name from the caller or SSMKIT_BACKEND)


def _package(op: str) -> str:
    """An op's package: "selective_scan" -> "ssmkit.ops.selective_scan"; a dotted name is taken as is."""
    return op if "." in op else f"ssmkit.ops.{op}"


def _short(op: str) -> str:
    return op.rsplit(".", 1)[-1]


@functools.cache
def tier_names(op: str) -> tuple[str, ...]:
    """The backend names of `op`'s tiers, from the package listing (nothing imported but the package)."""
    package = importlib.import_module(_package(op))
    return tuple(sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")))


@functools.cache
def load(op: str, name: str) -> Tier:
    """Import one tier module and read its declaration."""
    qualname = f"{_package(op)}.{name}"
    try:
        module = importlib.import_module(qualname)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == qualname.split(".")[0]:
            raise                                       # our own module is missing: a bug, not a choice
        return Tier(name, missing=f"{e.name} is not installed (pip install {e.name.split('.')[0]})")
    backend, fn = getattr(module, "BACKEND", None), getattr(module, _short(op), None)
    if not isinstance(backend, Backend) or not callable(fn):
        raise TypeError(
            f"{qualname} must declare BACKEND = Backend(...) and define {_short(op)}() "
            "(a module of an op package is a tier unless its name starts with '_')"
        )
    return Tier(name, module, backend, fn, getattr(module, "unsupported_reason", None))


@functools.cache
def tiers(op: str) -> tuple[Tier, ...]:
    """Every tier of `op`, highest priority first (unavailable ones last)."""
    loaded = [load(op, name) for name in tier_names(op)]
    return tuple(sorted(loaded, key=lambda t: (t.backend is None, -(t.backend.priority if t.backend else 0))))


@functools.cache
def _unavailable(op: str) -> tuple[tuple[str, str], ...]:
    """(name, why) of the tiers of `op` that could not be imported."""
    return tuple((t.name, t.missing) for t in tiers(op) if t.missing is not None)


@functools.cache
def known_backends() -> tuple[str, ...]:
    """Every backend name of every op in ssmkit.ops: what SSMKIT_BACKEND may say."""
    ops = importlib.import_module("ssmkit.ops")
    names = {n for m in pkgutil.iter_modules(ops.__path__) if m.ispkg and not m.name.startswith("_")
             for n in tier_names(m.name)}
    return tuple(sorted(names))


def refusal(op: str, tier: Tier, tensors, explicit: bool) -> str | None:
    """Why `tier` cannot run `op` on `tensors` (None if it can); `explicit`: asked for by name."""
    if tier.missing is not None:
        return tier.missing
    declared, hook = tier.backend, tier.hook
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    if declared.dtypes is not None:
        for t in tensors:
            if (t.dtype.is_floating_point or t.dtype.is_complex) and t.dtype not in declared.dtypes:
                served = ", ".join(str(d).replace("torch.", "") for d in declared.dtypes)
                return f"the {tier.name} backend supports {served}, got {str(t.dtype).replace('torch.', '')}"
    if declared.devices is not None and not (explicit and hook is not None):
        for t in tensors:
            if t.device.type not in declared.devices:
                return f"the {tier.name} backend runs on {'/'.join(declared.devices)} tensors, got {t.device}"
    return hook(*tensors) if hook is not None else None


def _requested(op: str, backend: str) -> str:
    """The backend name asked for ("auto" or a tier of `op`), aliases and SSMKIT_BACKEND applied."""
    names = tier_names(op)
    if backend == "auto":
        env = os.environ.get(ENV, "") or "auto"
        name = ALIASES.get(env, env)
        if name == "auto" or name in names:
            return name
        if name not in known_backends():
            raise ValueError(
                f"environment variable {ENV} must be one of {_valid(known_backends())}, got {env!r}"
            )
        return "auto"                                   # a backend this op does not have
    name = ALIASES.get(backend, backend) if isinstance(backend, str) else backend
    if name not in names:
        raise ValueError(f"backend must be one of {_valid(names)}, got {backend!r}")
    return name


def _valid(names) -> str:
    aliases = ", ".join(f"{a!r} for {n!r}" for a, n in ALIASES.items() if n in names)
    return f"{['auto', *names]}" + (f" (or {aliases})" if aliases else "")


_warned: set[tuple[str, str]] = set()


def resolve(op: str, backend: str, *tensors: torch.Tensor) -> Choice:
    """The tier that runs `op` on `tensors` (their device decides), as `backend` asks."""
    name = _requested(op, backend)
    if name != "auto":
        tier = next(t for t in tiers(op) if t.name == name)
        reason = refusal(op, tier, tensors, explicit=True)
        if reason is not None:
            asked = backend if backend != "auto" else os.environ.get(ENV)
            shown = f"{asked!r}" + (f" ({name})" if asked != name else "")
            raise RuntimeError(f"{_short(op)}: backend={shown} cannot run these inputs: {reason}")
        return Choice(name, tier.fn, False)

    device = next((t.device.type for t in tensors if isinstance(t, torch.Tensor)), "cpu")
    refused = []
    for tier in tiers(op):
        if tier.missing is not None:
            break                                       # unavailable tiers come last
        if tier.backend.devices is not None and device not in tier.backend.devices:
            continue                                    # not a tier for this device
        reason = refusal(op, tier, tensors, explicit=False)
        if reason is None:
            if tier.backend.fallback:
                # a tier that could not be imported may have served this device: it counts as refusing
                refused += _unavailable(op)
                if refused:
                    _warn_once(op, tier.name, *refused[0])
            return Choice(tier.name, tier.fn, True)
        refused.append((tier.name, reason))
    refused += _unavailable(op)
    raise RuntimeError(f"{_short(op)}: no backend can run these inputs: "
                       + "; ".join(f"{n}: {r}" for n, r in refused))


def _warn_once(op: str, chosen: str, faster: str, reason: str) -> None:
    key = (op, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"ssmkit.ops.{_short(op)}: using the slow {chosen} path ({faster}: {reason})",
                      RuntimeWarning, stacklevel=4)


def available_backends(op: str, *tensors: torch.Tensor) -> dict[str, str | None]:
    """{backend: None if asking for it by name would run these tensors, else why not}, best first."""
    return {t.name: refusal(op, t, tensors, explicit=True) for t in tiers(op)}
