"""Hugging Face checkpoints in and out: transformers' formats, one module per model family, and
mamba_ssm's own format.

    model = from_hf("dir")            # a transformers checkpoint directory or model object
    to_hf(model, "out")               # a directory that transformers' AutoModelForCausalLM loads
    names()                           # the supported model_types

How it is built:
    files.py      reading config.json and the weights (safetensors / .bin, one file or sharded)
    registry.py   `Family` (a model_type's config and weight names in ssmkit's terms) and its registry
    table.py      weight tables: checkpoint keys <-> ssmkit keys, both ways (renames, fused q/k/v,
                  gate/up halves, stacked experts)
    common.py     what several families' configs share (layer-type lists, rotary, attention, the
                  hybrids' Mamba-2 fields, multipliers)
    convert.py    from_hf / to_hf: dispatch on config.json's model_type
    families/     one module per model_type (mamba, mamba2, falcon_mamba, bamba, jamba, falcon_h1, ...)
    mamba_ssm.py  the state-spaces checkpoints (no model_type; ssmkit's own key names)

Each family is expressed with ssmkit's own layers and blocks (options of Mamba, Mamba2, Attention,
the MLPs; the "mlp" / "moe" mixers; SSMConfig's mlp pattern and multipliers), never a copy of
transformers' modules. Nothing here imports transformers except to save a model object handed in.
"""

from ssmkit.interop.hf.convert import config_from_transformers, from_hf, hf_config, to_hf
from ssmkit.interop.hf.files import is_transformers_dir, read_weights
from ssmkit.interop.hf.registry import Family, names, register_family

__all__ = [
    "Family",
    "config_from_transformers",
    "from_hf",
    "hf_config",
    "is_transformers_dir",
    "names",
    "read_weights",
    "register_family",
    "to_hf",
]
