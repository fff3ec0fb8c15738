"""TrainConfig: a training run as data (YAML in, `--set key=value` overrides, unknown keys refused).

    run = TrainConfig.from_yaml("configs/stdlib_mamba2.yaml", overrides=["lr=1e-3", "model.d_model=192"])

Top-level keys are the fields below; `model:` holds SSMConfig arguments (checked by SSMConfig itself,
and each layer's layer_kwargs against its constructor). An error names the key and where its value
came from: the YAML file, or the `--set` that gave it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = {"d_model": 128, "n_layer": 4, "layers": "mamba2"}
DEFAULT_CACHE_DIR = ".ssmkit_cache"  # token arrays and dumped corpora; git-ignored
DEMO_BUDGET_S = 150.0  # `ssmkit demo`: wall-clock seconds of training per model


class ConfigError(ValueError):
    """A bad configuration key or value; the message is one line naming the key (`key`, when known:
    "lr", "model.d_model", ...)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def _check_model(model: dict) -> None:
    """SSMConfig's own checks on the model arguments, and each layer_kwargs entry against the keyword
    arguments its layer takes (caught here, before any model is built)."""
    import inspect

    from ssmkit.layers import registry
    from ssmkit.models.config import SSMConfig

    model_keys = {f.name for f in dataclasses.fields(SSMConfig) if f.init}
    for key in model:
        if key not in model_keys:
            raise ConfigError(
                f"unknown model config key {key!r} (SSMConfig arguments: {', '.join(sorted(model_keys))})",
                f"model.{key}",
            )
    try:
        SSMConfig(**{"vocab_size": 256, **model})
    except (TypeError, ValueError) as e:
        msg = str(e).splitlines()[0]
        named = [k for k in model if f"SSMConfig.{k}" in msg or f"{k}=" in msg]
        raise ConfigError(f"model: {msg}", f"model.{named[0]}" if len(named) == 1 else "model") from None
    for name, kw in (model.get("layer_kwargs") or {}).items():
        cls = registry.get(name).cls
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        takes = [p for p in params if p not in ("self", "d_model", "device", "dtype")]
        for key in kw:
            if key not in takes:
                where = f"model.layer_kwargs.{name}"
                raise ConfigError(
                    f"unknown key {key!r} in {where} ({cls.__name__} takes: {', '.join(takes)})",
                    "model.layer_kwargs",
                )


@dataclass
class TrainConfig:
    # ---- model ---------------------------------------------------------------------------------
    model: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MODEL))
    """SSMConfig arguments over DEFAULT_MODEL; vocab_size is set from the tokenizer."""
    # ---- data ----------------------------------------------------------------------------------
    corpus: str = "stdlib"
    """"stdlib" (built in), "kjv", "python-docs", "dna", or files / a directory / a glob."""
    tokenizer: str = "bytes"
    """"bytes", "bpe" (trained on the train split) or a saved tokenizer's directory."""
    bpe_vocab_size: int = 4096
    """Vocabulary of a BPE trained by the run."""
    val_fraction: float = 0.05
    """Fraction of the corpus' files held out for validation."""
    seq_len: int = 256
    """Tokens per training window (context)."""
    cache_dir: str = DEFAULT_CACHE_DIR
    """Where token arrays and dumped corpora are kept between runs."""
    # ---- optimization --------------------------------------------------------------------------
    batch_size: int = 16
    """Global windows per micro-step (all ranks together)."""
    grad_accum: int = 1
    """Micro-steps per optimizer step."""
    max_steps: int = 1000
    """Optimizer steps (the schedule's length)."""
    max_time: float = 0.0
    """Stop (with a checkpoint) after this many seconds of training; 0 = no limit."""
    schedule: str = "steps"
    """"steps": the cosine runs over max_steps (exactly resumable); "time": over max_time seconds of
    wall clock (a fixed time budget whatever the machine's speed; not bitwise resumable)."""
    lr: float = 2e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW decay for matrices (never for A, dt, D, norms, biases)."""
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 = off."""
    seed: int = 0
    """Seeds the model's initialization and the data order."""
    dtype: str = "auto"
    """"float32", "bfloat16" (autocast) or "auto" (bf16 autocast on a GPU that supports it, else fp32)."""
    gradient_checkpointing: bool = False
    """Recompute each block in the backward pass (less memory, more time)."""
    device: str = "auto"
    """"auto" (cuda if available), "cpu", "cuda", "cuda:1", ..."""
    distributed: str = "ddp"
    """Under torchrun: "ddp" or "fsdp"."""
    # ---- evaluation, logging, checkpoints ------------------------------------------------------
    eval_every: int = 100
    """Evaluate every this many steps (and at the end); 0 = only at the end."""
    eval_windows: int = 64
    """Validation windows per evaluation."""
    log_every: int = 10
    """A progress line every this many steps when not on a terminal."""
    save_every: int = 200
    """Checkpoint every this many steps (and at the end); 0 = only at the end."""
    out_dir: str = "runs/ssmkit"
    """Checkpoints, metrics.jsonl and the final model go here."""
    resume: bool = True
    """Continue from out_dir's checkpoint if there is one."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the tensorboard package)."""

    def __post_init__(self):
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "eval_windows", "bpe_vocab_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"config key {name!r} must be a positive integer, got {v!r}", name)
        for name in ("warmup_steps", "eval_every", "log_every", "save_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"config key {name!r} must be an integer >= 0, got {v!r}", name)
        choices = {
            "dtype": ("auto", "float32", "bfloat16"),
            "schedule": ("steps", "time"),
            "distributed": ("ddp", "fsdp"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"config key {name!r} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}",
                    name,
                )
        if self.schedule == "time" and not self.max_time > 0:
            raise ConfigError("config key 'max_time' must be > 0 with schedule: time", "max_time")
        if not isinstance(self.model, dict):
            raise ConfigError(
                f"config key 'model' must be a mapping of SSMConfig arguments, got {self.model!r}", "model"
            )
        _check_model(self.model)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                f"config key 'val_fraction' must be in (0, 1), got {self.val_fraction!r}", "val_fraction"
            )

    # ---- in and out ----------------------------------------------------------------------------
    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(
        cls, d: dict[str, Any], source: str = "config", origins: dict[str, str] | None = None
    ) -> TrainConfig:
        """A config from a dict; errors start with where the bad value came from: `origins[key]` (e.g.
        "--set lr=abc") when given for the key, else `source`."""
        try:
            return cls._from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{_origin(e.key, origins or {}, source)}: {e}", e.key) from None

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = cls.fields()
        for key in d:
            if key not in known:
                raise ConfigError(f"unknown config key {key!r} (known: {', '.join(sorted(known))})", key)
        values = {}
        if isinstance(d.get("model"), dict):
            d = {**d, "model": {**DEFAULT_MODEL, **d["model"]}}
        for key, value in d.items():
            default = known[key].default
            if isinstance(default, float) and not isinstance(value, bool):
                if isinstance(value, int):
                    value = float(value)
                elif isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
                    try:
                        value = float(value)
                    except ValueError:
                        raise ConfigError(
                            f"config key {key!r} must be a number, got {value!r}", key
                        ) from None
            values[key] = value
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(str(e)) from None

    @classmethod
    def from_yaml(cls, path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        """Load `path` (or the defaults when None), then apply `key=value` overrides in order."""
        d: dict[str, Any] = {}
        if path is not None:
            if not os.path.isfile(path):
                raise ConfigError(f"config file {path!r} not found")
            d = load_yaml(path)
            if d is None:
                d = {}
            if not isinstance(d, dict):
                raise ConfigError(f"{path}: the config must be a mapping of keys to values")
        d = {**d, "model": dict(d.get("model") or {})} if "model" in d else d
        origins = {}
        for item in overrides:
            origins[apply_override(d, item)] = f"--set {item}"
        return cls.from_dict(d, source=path or "config", origins=origins)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _origin(key: str | None, origins: dict[str, str], source: str) -> str:
    """Where the value of `key` came from. An error of the model as a whole ("model") names the
    --set's of model keys too, since any of them may be the cause."""
    if key in origins:
        return origins[key]
    if key == "model":
        sets = [o for k, o in origins.items() if k.startswith("model.")]
        if sets:
            return " / ".join(([source] if source != "config" else []) + sets)
    return source


def load_yaml(path: str):
    try:
        import yaml
    except ImportError:
        raise ConfigError("reading a YAML config needs PyYAML: pip install pyyaml") from None
    with open(path) as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None


def parse_value(text: str):
    """A command-line value as YAML would read it (numbers, true/false, null, lists), else the string."""
    try:
        import yaml

        value = yaml.safe_load(text)
    except Exception:
        return text
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            pass
    return value


def apply_override(d: dict[str, Any], item: str) -> str:
    """`key=value` or `model.key=value` into the config dict `d` (in place); returns the key."""
    key, eq, value = item.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. lr=1e-3 or model.d_model=192)")
    parsed = parse_value(value)
    if key.startswith("model."):
        d.setdefault("model", {})
        d["model"] = dict(d["model"] or {})
        d["model"][key[len("model.") :]] = parsed
        return key
    if key not in TrainConfig.fields():
        raise ConfigError(
            f"--set: unknown config key {key!r} (known: {', '.join(sorted(TrainConfig.fields()))})"
        )
    if key == "model":
        raise ConfigError("--set model=... is not supported: set model.<key>=value instead")
    d[key] = parsed
    return key
