"""`ssmkit info`: a model's size and state, and which op backend each part of it runs here."""

from __future__ import annotations

import os
import sys

NAME, ORDER = "info", 40
HELP = "parameters, state size and the backends this model uses"
DESCRIPTION = (
    "Describe a trained model (or a config's model): parameters, recurrent state, and which backend "
    "each ssmkit op takes when this model trains, prefills and decodes on this machine (observed on "
    "a short pass), besides the backends that exist."
)
PROBE_LENGTH = 64


def add_arguments(p) -> None:
    p.add_argument("checkpoint", nargs="?", help="run or model directory (else --config / defaults)")
    p.add_argument("--config", "-c", help="YAML config whose model to describe")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--layers", action="store_true", help="list the layer names a pattern can use, and exit")


def _print_layers() -> None:
    from ssmkit.layers import registry

    print("layer names for SSMConfig.layers (ssmkit.layers.registry):")
    for name in registry.names():
        spec = registry.get(name)
        print(f"  {name:<10} {spec.cls.__name__:<10} {spec.summary}")


def _model(args):
    """(model, where it came from)."""
    if args.checkpoint:
        from ssmkit.cli.loading import load_model

        return load_model(args.checkpoint)
    from ssmkit.training.config import TrainConfig
    from ssmkit.training.run import build_model

    cfg = TrainConfig.from_yaml(args.config, args.set or [])
    vocab = cfg.bpe_vocab_size if cfg.tokenizer == "bpe" else cfg.model.get("vocab_size", 256)
    return build_model(cfg.model, vocab), args.config or "default TrainConfig"


# the decoding kernels (ssmkit.ops._numba.decode and block_decode) by the Python function that calls them
DECODE_KERNELS = {
    "stack_": "numba, every block in one call",
    "mamba_block_": "numba, one call per block",
    "mamba2_block_": "numba, one call per block",
    "selective_state_update_": "numba, the mixer's state update (projections in PyTorch)",
    "mamba2_step_": "numba, the mixer's state update (projections in PyTorch)",
}


def op_tiers_run(fn) -> dict[str, list[str]]:
    """{op: [backend, ...]} while `fn()` runs, traced with sys.setprofile: the tiers the dispatcher
    (`ssmkit.ops._dispatch.resolve`) chose, and for an op that runs without dispatching (a decoding
    update that has one tier) the tier module whose code ran (ops/<op>/<tier>.py)."""
    from ssmkit import ops
    from ssmkit.ops import _dispatch

    root = os.path.dirname(os.path.abspath(ops.__file__)) + os.sep
    chosen: dict[str, list[str]] = {}
    ran: dict[str, list[str]] = {}

    def note(table: dict, op: str, tier: str) -> None:
        if tier not in table.setdefault(op, []):
            table[op].append(tier)

    def trace(frame, event, arg):
        code = frame.f_code
        if event == "return" and code is _dispatch.resolve.__code__ and arg is not None:
            note(chosen, frame.f_locals["op"].rsplit(".", 1)[-1], arg[0])
        elif event == "call" and code.co_name in DECODE_KERNELS and code.co_filename.startswith(root):
            note(ran, "decoding kernel", DECODE_KERNELS[code.co_name])
        elif event == "call" and code.co_filename.startswith(root):
            parts = code.co_filename[len(root) :].split(os.sep)
            tier = parts[1].removesuffix(".py") if len(parts) >= 2 else "_"
            if not parts[0].startswith("_") and not tier.startswith("_"):
                note(ran, parts[0], tier)

    sys.setprofile(trace)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return {op: chosen.get(op, tiers) for op, tiers in ran.items()}


def _passes(model):
    """The three ways a model runs: a training step, a prefill without autograd, a decoding step."""
    import torch

    ids = torch.randint(0, model.config.vocab_size, (1, PROBE_LENGTH))

    def training():
        model.train()
        model(ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    def prefill():
        model.eval()
        with torch.no_grad():
            model(ids, state=model.init_state(1))

    state = model.init_state(1)

    def decode():  # as generate decodes: step_ on a State of its own
        model.eval()
        model.step_(ids[:, 0], state)

    return {
        "training (forward + backward)": training,
        "prefill (no autograd)": prefill,
        "decode step": decode,
    }


def _print_backends(model) -> None:
    import torch

    from ssmkit import ops
    from ssmkit.ops._dispatch import available_backends

    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    print(f"backends this model runs on this machine (CPU, {dtype}; observed on {PROBE_LENGTH} tokens):")
    for label, fn in _passes(model).items():
        used = op_tiers_run(fn)
        text = "; ".join(f"{op}: {', '.join(tiers)}" for op, tiers in used.items())
        print(f"  {label}: {text or 'no ssmkit op (PyTorch kernels only)'}")
    print("backends that exist for each op (CPU tensors; yes = can run here):")
    import pkgutil

    x = torch.zeros(1)
    for op in sorted(
        m.name for m in pkgutil.iter_modules(ops.__path__) if m.ispkg and not m.name.startswith("_")
    ):
        line = ", ".join(
            f"{b}: {'yes' if why is None else 'no'}" for b, why in available_backends(op, x).items()
        )
        print(f"  {op}: {line}")


def run(args) -> int:
    from ssmkit.training.run import count_parameters

    if args.layers:
        _print_layers()
        return 0
    from ssmkit.interop.hf.describe import describe

    model, source = _model(args)
    print(f"model ({source}): {count_parameters(model):,} parameters")
    for line in describe(model, source if args.checkpoint else None):
        print(f"  {line}")
    _print_backends(model)
    return 0
