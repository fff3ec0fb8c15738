"""Model directories: config.json + model.safetensors, written as a checked pair and read back.

    write_checkpoint(dir, config, tensors)      the weights first, then config.json, which records the
                                                weights' checksum (the manifest, written last)
    read_checkpoint(dir) -> (config, tensors)   every check below, before any model is built
    load_checked(model, tensors, source)        names and shapes checked, then the tensors assigned
                                                as the parameters (ssmkit.models.loading: one copy)

Each file is written atomically and carries a checksum (`ssmkit._files`). A save interrupted between
the two files leaves new weights beside the previous config.json; that config's recorded checksum does
not match the weights, so the directory is refused with a clear error instead of loading a model that
is neither the old one nor the new one. A directory written before checksums existed loads with a
one-time warning that it is unverified.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from ssmkit._files import DIGEST_KEY, check_readable, load_safetensors, save_safetensors, write_bytes_atomic
from ssmkit.models.loading import assign_weights, parameters_on_meta

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PAIR_KEY = "ssmkit_weights_sha256"  # in config.json: the checksum of the weights it belongs with


def write_checkpoint(
    directory: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor], metadata: dict | None = None
) -> None:
    """model.safetensors, then config.json naming its checksum; each file atomic."""
    directory = os.fspath(directory)
    weights_digest = save_safetensors(
        os.path.join(directory, WEIGHTS_NAME), tensors, {"format": "pt", **(metadata or {})}
    )
    text = json.dumps({**config, PAIR_KEY: weights_digest}, indent=2, sort_keys=True)
    write_bytes_atomic(os.path.join(directory, CONFIG_NAME), text.encode())


def read_config(directory: str | os.PathLike) -> dict:
    """config.json as a dict; clear errors for a missing, unreadable or non-JSON file."""
    path = os.path.join(os.fspath(directory), CONFIG_NAME)
    check_readable(path, "model config")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object (the model config), got {type(raw).__name__}")
    return raw


def read_checkpoint(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict without the pair key, tensors) of a directory written by `write_checkpoint`."""
    directory = os.fspath(directory)
    raw = read_config(directory)
    w_path = os.path.join(directory, WEIGHTS_NAME)
    tensors, meta = load_safetensors(w_path, "model weights")
    recorded = raw.pop(PAIR_KEY, None)
    if recorded is not None and recorded != meta.get(DIGEST_KEY):
        raise ValueError(
            f"{directory}: config.json and model.safetensors come from different saves (a save was "
            "interrupted between them?): the weights are not the ones this config was written with; "
            "save the model again"
        )
    return raw, tensors


def load_checked(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load `tensors` into `model` after checking every name and shape (a tied lm_head is not expected);
    a mismatch raises a ValueError naming `source` and the keys, and loads nothing."""
    tied = model._tied_keys()
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in tied}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(s)}"
        for k, s in expected.items()
        if k in tensors and tensors[k].shape != s
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} does not match the model its config describes: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}, wrong shapes {wrong[:8]}"
        )
    assign_weights(model, tensors)  # the tensors become the parameters: no second copy


def _quantized(model: nn.Module, method: str) -> nn.Module:
    """The modules of a saved quantized model, empty (models -> models.int8, imported when needed)."""
    from ssmkit.models.int8 import METHOD, quantize_int8

    if method != METHOD:
        raise ValueError(f"config.json: unknown ssmkit_quantization {method!r}; this ssmkit reads {METHOD!r}")
    return quantize_int8(model)


class PretrainedMixin:
    """save_pretrained / from_pretrained for any head whose only constructor argument is the config."""

    config: object

    def _tied_keys(self) -> set[str]:
        """The LM head's tensors when it is tied to the embedding (its weight, and an int8 head's scale)."""
        if getattr(self.config, "tie_embeddings", False) and hasattr(self, "lm_head"):
            return {f"lm_head.{k}" for k in self.lm_head.state_dict()}
        return set()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        tied = self._tied_keys()
        tensors = {k: v for k, v in self.state_dict().items() if k not in tied}
        config = {"ssmkit_class": type(self).__name__, **self.config.to_dict()}
        if getattr(self, "quantization", None):  # ssmkit.models.int8
            config["ssmkit_quantization"] = self.quantization
        write_checkpoint(directory, config, tensors, {"config_hash": self.config.config_hash()})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device=None, dtype=None):
        from ssmkit.models.config import SSMConfig

        directory = os.fspath(directory)
        raw, tensors = read_checkpoint(directory)
        saved_class = raw.pop("ssmkit_class", cls.__name__)
        quantization = raw.pop("ssmkit_quantization", None)
        if saved_class != cls.__name__:
            raise ValueError(f"{directory} holds a {saved_class}, not a {cls.__name__}")
        cfg = SSMConfig.from_dict(raw)
        with parameters_on_meta():  # the weights come from the file: none are allocated or initialised
            model = cls(cfg)
        if quantization is not None:
            model = _quantized(model, quantization)
        load_checked(model, tensors, os.path.join(directory, WEIGHTS_NAME))
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model
