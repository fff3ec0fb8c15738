"""What `ssmkit info` tells about a model besides its size and op backends: its family, layers and state
per sequence (what a KV cache adds per token measured on a short prefill, not guessed)."""

from __future__ import annotations

import os

import torch


def state_bytes(model) -> tuple[int, int]:
    """(bytes per sequence at the start, bytes added per token of context: attention's KV cache)."""
    ids = torch.zeros(1, 4, dtype=torch.long, device=model.lm_head.weight.device)
    with torch.no_grad():
        st = model.init_state(1)
        empty = st.nbytes
        model(ids[:, :1], state=st)
        one = st.nbytes
        model(ids[:, 1:], state=st)
    return empty, (st.nbytes - one) // 3


def describe(model, directory: str | os.PathLike | None = None) -> list[str]:
    """Lines for `ssmkit info` (after its parameter count): family, layers, state per sequence."""
    from ssmkit.interop.hf.files import is_transformers_dir, read_json

    cfg = model.config
    family = "ssmkit"
    if directory is not None and is_transformers_dir(directory):
        raw = read_json(os.path.join(os.fspath(directory), "config.json"))
        family = f"transformers {raw.get('model_type', 'mamba_ssm')} (read with ssmkit.interop.from_hf)"
    fixed, per_token = state_bytes(model)
    grows = f" + {per_token:,} bytes per token of context (attention KV cache)" if per_token else ""
    kinds = {k: cfg.layer_types.count(k) for k in dict.fromkeys(cfg.layer_types)}
    return [
        f"family: {family}",
        f"layers: {cfg.n_layer} ({', '.join(f'{n} {k}' for k, n in kinds.items())}), d_model={cfg.d_model}, "
        f"vocab_size={cfg.vocab_size}",
        f"state per sequence: {fixed:,} bytes{grows}",
    ]
