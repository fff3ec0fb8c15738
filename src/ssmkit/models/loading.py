"""Loading a checkpoint with one copy of the weights in memory.

    tensors, _ = ssmkit._files.load_safetensors(path, "weights")   # plain reads, no mmap'd pages
    with parameters_on_meta():
        model = SSMForCausalLM(cfg)                  # parameters on the meta device: no memory, no init
    assign_weights(model, tensors)                   # the read tensors become the parameters

The usual way (build the model with random weights, read the file, copy the file's tensors in) holds
the weights twice at its peak, and safetensors' own reader maps the whole file into the process, so
the file's pages count as resident memory too while it reads. Here the file is read with plain reads
into fresh tensors (ssmkit._files.read_safetensors), the model is built with parameters that take no
memory, and the tensors read are assigned as the parameters (not copied): the peak is the weights once.

`parameters_on_meta` puts parameters only on the meta device; buffers (including non-persistent
ones that a layer computes in its constructor, such as Hyena's positions) are built as usual.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_building = threading.local()
_register_parameter = nn.Module.register_parameter


def _register_on_meta(module: nn.Module, name: str, param) -> None:
    if param is not None and getattr(_building, "active", False) and param.device.type != "meta":
        meta = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        meta.__dict__.update(param.__dict__)  # markers such as _no_weight_decay
        param = meta
    _register_parameter(module, name, param)


class _SkipInitOnMeta(TorchFunctionMode):
    """In-place ops on meta tensors (the constructors' initialisers: normal_, uniform_, copy_, div_)
    return at once: their values are never used, and running them would import torch's Python meta
    kernels on first use (hundreds of modules, ~70 MB resident, ~1 s)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else kwargs.get("tensor")  # nn.init's functions pass it by keyword
        name = getattr(func, "__name__", "")
        in_place = name.endswith("_") and not name.endswith("__")
        if in_place and isinstance(first, torch.Tensor) and first.is_meta:
            return first
        return func(*args, **kwargs)


@contextmanager
def parameters_on_meta():
    """Modules built inside (in this thread) get their parameters on the meta device; buffers stay real.

    The hook is installed into nn.Module on first use and stays: outside this context, and in other
    threads, it defers to nn.Module's own register_parameter, so concurrent builds are unaffected."""
    nn.Module.register_parameter = _register_on_meta
    _building.active = True
    try:
        with _SkipInitOnMeta():
            yield
    finally:
        _building.active = False


def assign_weights(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Make `tensors` (a state_dict, names already checked) the model's parameters and buffers.

    Parameters keep their requires_grad and attributes; a tensor in another dtype than the one it
    replaces is converted; tensors shared by several modules (tied weights, under one name in the
    file) stay shared."""
    owners: dict[int, list[str]] = {}
    for name, t in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        owners.setdefault(id(t), []).append(name)
    for name, t in tensors.items():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        slots = "_parameters" if attr in module._parameters else "_buffers"
        old = getattr(module, slots)[attr]
        if slots == "_parameters":
            new = nn.Parameter(t.to(old.dtype), requires_grad=old.requires_grad)
            new.__dict__.update(old.__dict__)
        else:
            new = t.to(old.dtype)
        for shared in owners[id(old)]:
            m_name, _, a = shared.rpartition(".")
            getattr(model.get_submodule(m_name), slots)[a] = new
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"no weights given for {left[:8]}")
