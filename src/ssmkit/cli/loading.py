"""From a path on the command line to a model (and its tokenizer, for the commands that need text).

A path is a run directory (holding model/) or a model directory (holding config.json): ssmkit's own
(save_pretrained) or a transformers / mamba_ssm checkpoint, which loads through `ssmkit.interop`.
The tokenizer comes from `ssmkit.training.tokenizer.load_tokenizer`, which refuses to read text as
bytes for a model whose vocabulary is not the byte vocabulary.
"""

from __future__ import annotations

import os

from ssmkit.cli.errors import UsageError


def model_dir(path: str) -> str:
    """A run directory (holding model/) or a model directory (holding config.json) -> the latter."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such directory")
    for candidate in (os.path.join(path, "model"), path):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise UsageError(f"{path}: no model here (expected config.json in it or in {path}/model)")


def load_model(path: str, int8: bool = False):
    """(model, model directory): ssmkit's own, or a transformers checkpoint through the interop;
    `int8`: its weights quantized for CPU inference (ssmkit.models.int8)."""
    model, d = _load_float(path)
    if int8:
        from ssmkit.models.int8 import quantize_int8

        model = quantize_int8(model)
    return model, d


def _load_float(path: str):
    from ssmkit.interop.hf.files import is_transformers_dir
    from ssmkit.models.heads import SSMForCausalLM

    d = model_dir(path)
    if is_transformers_dir(d):
        from ssmkit.interop import from_hf

        try:
            return from_hf(d), d
        except (TypeError, ValueError) as e:
            msg = str(e).splitlines()[0]
            raise UsageError(f"{d} is a transformers checkpoint ssmkit cannot read: {msg}") from None
    try:
        return SSMForCausalLM.from_pretrained(d), d
    except TypeError as e:  # a layer given an argument it does not take (layer_kwargs)
        raise UsageError(f"{os.path.join(d, 'config.json')}: {str(e).splitlines()[0]}") from None


def load_model_and_tokenizer(path: str, int8: bool = False):
    """(model, tokenizer, model directory) for the commands that read or write text."""
    from ssmkit.training.tokenizer import load_tokenizer

    model, d = load_model(path, int8)
    return model, load_tokenizer(d, vocab_size=model.config.vocab_size), d
