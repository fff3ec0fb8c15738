"""Reading a checkpoint directory: config.json and the weights (safetensors or torch .bin, one file or
sharded with an *.index.json). Nothing here knows a model family."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from ssmkit._files import read_safetensors

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_weights(directory: str) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory: safetensors or torch .bin, one file or sharded."""
    for name in WEIGHT_FILES:
        single, index = os.path.join(directory, name), os.path.join(directory, name + ".index.json")
        if os.path.isfile(single):
            return _read_file(single)
        if os.path.isfile(index):
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            if not shards:
                raise ValueError(f"{index} has an empty weight_map")
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(_read_file(os.path.join(directory, shard)))
            return out
    raise FileNotFoundError(
        f"from_hf: {directory} holds none of {', '.join(WEIGHT_FILES)} (nor a sharded *.index.json)"
    )


def _read_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"from_hf: missing weight file {path}")
    try:
        if path.endswith(".safetensors"):
            return read_safetensors(path)[0]  # plain reads: the file is not mapped
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # each format's own error type on a damaged file
        raise ValueError(f"from_hf: cannot read {path} (truncated or corrupt?): {e}") from e


def read_json(path: str) -> dict[str, Any]:
    """A JSON file as a dict; transformers' {"__float__": "Infinity"} tags read as floats."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"from_hf: missing {path}")
    try:
        with open(path) as f:
            return json.load(f, object_hook=_special_floats)
    except json.JSONDecodeError as e:
        raise ValueError(f"from_hf: {path} is not valid JSON: {e}") from e


def _special_floats(obj: dict) -> Any:
    """transformers >= 5 writes inf / nan in config.json as {"__float__": "Infinity"}."""
    return float(obj["__float__"]) if obj.keys() == {"__float__"} else obj


def is_transformers_dir(directory: str | os.PathLike) -> bool:
    """True when `directory`'s config.json is a transformers (or mamba_ssm) one, not ssmkit's own."""
    path = os.path.join(os.fspath(directory), "config.json")
    if not os.path.isfile(path):
        return False
    try:
        raw = read_json(path)
    except ValueError:
        return False
    return isinstance(raw, dict) and "ssmkit_class" not in raw and ("model_type" in raw or "ssm_cfg" in raw)


def generation_ids(directory: str | os.PathLike) -> dict[str, list[int]]:
    """{"eos_token_id": [...]} of a transformers directory (generation_config.json, else config.json);
    {} for an ssmkit directory or one that names no end-of-sequence token."""
    directory = os.fspath(directory)
    if not is_transformers_dir(directory):
        return {}
    for name in ("generation_config.json", "config.json"):
        path = os.path.join(directory, name)
        eos = read_json(path).get("eos_token_id") if os.path.isfile(path) else None
        if eos is not None:
            return {"eos_token_id": [int(e) for e in (eos if isinstance(eos, list) else [eos])]}
    return {}
