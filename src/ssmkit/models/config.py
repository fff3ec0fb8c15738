"""SSMConfig: everything that defines a model, as data (JSON-able, hashable).

A hybrid is chosen by a pattern, not a subclass: `layers="mamba2*3,attention"` expands to
mamba2, mamba2, mamba2, attention, and the pattern repeats (cut at the end) to `n_layer` layers.
The blocks' MLP sublayers may follow a pattern of their own (`mlp_layers="gated,moe"`).

Fields added after the first release (`_added`) are left out of `to_dict` while at their default,
so the `config_hash` of every config that does not use them (and every State saved with it) stays
what it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ssmkit.layers import registry

MLP_TYPES = ("gated", "mlp", "moe")
NO_MLP = "none"
POOLINGS = ("mean", "last")


def parse_pattern(
    pattern: str | list[str], n_layer: int, field_name: str = "layers", check=None
) -> list[str]:
    """ "mamba2*3,attention" (or a list of names) -> one name per layer, repeated to n_layer.

    check(name) raises a ValueError for an unknown name (default: the layer registry's lookup).
    """
    check = registry.get if check is None else check
    if isinstance(pattern, str):
        items = [p.strip().lower() for p in pattern.split(",") if p.strip()]
    else:
        items = [str(p).strip().lower() for p in pattern]
    names: list[str] = []
    for item in items:
        name, _, count = item.partition("*")
        name = name.strip()
        try:
            check(name)
        except ValueError as e:
            raise ValueError(f"{e} (in {field_name}={pattern!r})") from None
        try:
            n = int(count) if count else 1
        except ValueError:
            n = 0
        if n <= 0:
            raise ValueError(f"{field_name}={pattern!r}: the count in {item!r} must be a positive int")
        names += [name] * n
    if not names:
        raise ValueError(f"{field_name}={pattern!r} names nothing")
    return [names[i % len(names)] for i in range(n_layer)]


def _check_mlp_kind(name: str) -> None:
    if name not in (*MLP_TYPES, NO_MLP):
        raise ValueError(f"unknown MLP kind {name!r}; known: {[*MLP_TYPES, NO_MLP]}")


def _check_shared_kind(name: str) -> None:
    if name not in ("shared", NO_MLP):
        raise ValueError(f"unknown shared-layer kind {name!r}; known: ['shared', '{NO_MLP}']")


def _added(default=None, *, factory=None):
    """A field added after the first release: omitted from to_dict (and the hash) at its default."""
    meta = {"omit_at_default": True}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SSMConfig:
    """Configuration of a Backbone and its heads. Derived fields are set in __post_init__."""

    d_model: int = 256
    """Width of the residual stream."""
    n_layer: int = 4
    """Number of blocks."""
    vocab_size: int = 256
    """Token vocabulary size (ignored when `input_dim` is set)."""
    layers: str = "mamba2"
    """Layer pattern: comma-separated names with optional `*count`, repeated to `n_layer`. Names: every
    registered mixer (`ssmkit.layers.registry.names()`, listed by `ssmkit info --layers`)."""
    layer_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Keyword arguments per layer name, e.g. {"mamba2": {"headdim": 32}}; passed to the constructor."""
    d_intermediate: int = 0
    """Hidden width of the MLP sublayer of every block; 0 = no MLP sublayer (pure Mamba)."""
    mlp: str = "gated"
    """MLP sublayer kind: "gated" (SwiGLU), "mlp" (GELU) or "moe" (top-k mixture of gated experts)."""
    n_experts: int = 8
    """MoE: number of experts."""
    top_k: int = 2
    """MoE: experts per token."""
    moe_aux_weight: float = 0.01
    """MoE: weight of the load-balancing loss added to the training loss."""
    n_head: int = 8
    """Attention: query heads."""
    n_kv_head: int | None = None
    """Attention: key/value heads (grouped-query); None = n_head."""
    rope_theta: float = 10000.0
    """Attention: rotary base."""
    window: int | None = None
    """Attention: sliding window (positions attended, itself included); None = full causal."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    residual_in_fp32: bool = True
    """Keep the residual stream in float32 whatever the parameter dtype."""
    tie_embeddings: bool = True
    """LM head shares the embedding matrix."""
    pad_vocab_size_multiple: int = 8
    """The embedding has vocab_size rounded up to this multiple (logits are cut back to vocab_size)."""
    input_dim: int | None = None
    """Real-valued input channels (series) instead of tokens: an input projection replaces the embedding."""
    bidirectional: bool = False
    """Build every mixer with bidirectional=True (classification of whole sequences; no streaming)."""
    n_classes: int = 0
    """SSMForSequenceClassification: number of classes."""
    pooling: str = "mean"
    """SSMForSequenceClassification: "mean" over valid positions or the "last" valid position."""
    horizon: int = 0
    """SSMForForecasting: number of future steps predicted."""
    revin: bool = True
    """SSMForForecasting: reversible instance normalization (per series mean/std, learned affine)."""
    initializer_range: float = 0.02
    """Std of the embedding's normal initialization."""
    rescale_prenorm_residual: bool = True
    """Scale out_proj / fc2 weights by 1/sqrt(2 n_layer) at init (GPT-2 / Mamba scheme)."""
    mlp_layers: str = _added("")
    """MLP pattern, parallel to `layers`: comma-separated MLP kinds ("gated", "mlp", "moe") or "none",
    with optional `*count`, repeated to `n_layer`; e.g. "gated,moe" (Jamba: an MoE every other
    block). "" = every block gets `mlp` when d_intermediate > 0, none otherwise."""
    mlp_kwargs: dict[str, dict[str, Any]] = _added(factory=dict)
    """Keyword arguments per MLP kind, e.g. {"moe": {"d_intermediate": 512, "d_shared": 1024}};
    they override d_intermediate, n_experts and top_k for that kind (see `ssmkit.layers.mlp`)."""
    embedding_multiplier: float = _added(1.0)
    """Factor on the token embedding before the first block (Granite, Falcon-H1)."""
    residual_multiplier: float = _added(1.0)
    """Factor on every sublayer's output before it joins the residual stream (Granite)."""
    logits_multiplier: float = _added(1.0)
    """Factor on the LM head's logits (Granite: 1 / logits_scaling)."""
    shared_layers: str = _added("")
    """Which blocks use a shared transformer block (Zamba2's hybrid layers), parallel to `layers`:
    "shared" or "none" with optional `*count`, repeated to `n_layer`; "" = none. See
    `ssmkit.models.shared`."""
    shared_block: dict[str, Any] = _added(factory=dict)
    """Options of the shared blocks (`ssmkit.models.shared.OPTIONS`), e.g. {"n_blocks": 2,
    "d_intermediate": 256, "adapter_rank": 8, "attention_adapters": True, "mlp_adapters": True}."""

    # derived (not arguments)
    vocab_size_padded: int = field(init=False)
    """vocab_size rounded up to pad_vocab_size_multiple."""
    layer_types: list[str] = field(init=False)
    """One layer name per block, the expanded pattern."""
    mlp_types: list[str | None] = field(init=False)
    """One MLP kind per block (None: the block has no MLP sublayer), the expanded `mlp_layers`."""
    shared_uses: list[int] = field(init=False)
    """The blocks that use a shared block, in order (the expanded `shared_layers`)."""
    state_layout: list[str] = field(init=False)
    """A State's layout: `layer_types`, then "attention" for each use of a shared block."""

    def __post_init__(self):
        for name in ("d_model", "n_layer", "pad_vocab_size_multiple", "n_head", "n_experts", "top_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"SSMConfig.{name} must be a positive int, got {v!r}")
        for name in ("d_intermediate", "n_classes", "horizon"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"SSMConfig.{name} must be an int >= 0, got {v!r}")
        if self.input_dim is None and (not isinstance(self.vocab_size, int) or self.vocab_size <= 0):
            raise ValueError(f"SSMConfig.vocab_size must be a positive int, got {self.vocab_size!r}")
        if self.input_dim is not None and (not isinstance(self.input_dim, int) or self.input_dim <= 0):
            raise ValueError(f"SSMConfig.input_dim must be a positive int or None, got {self.input_dim!r}")
        if self.mlp not in MLP_TYPES:
            raise ValueError(f"SSMConfig.mlp must be one of {list(MLP_TYPES)}, got {self.mlp!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"SSMConfig.pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")
        if self.top_k > self.n_experts:
            raise ValueError(f"SSMConfig.top_k={self.top_k} must be <= n_experts={self.n_experts}")
        if self.n_kv_head is not None and (self.n_kv_head <= 0 or self.n_head % self.n_kv_head):
            raise ValueError(f"SSMConfig.n_kv_head={self.n_kv_head} must be a positive divisor of n_head")
        if self.window is not None and (not isinstance(self.window, int) or self.window <= 0):
            raise ValueError(f"SSMConfig.window must be a positive int or None, got {self.window!r}")
        if not isinstance(self.layer_kwargs, dict):
            raise TypeError(
                f"SSMConfig.layer_kwargs must be a dict name -> dict, got {type(self.layer_kwargs)}"
            )
        for name, kw in self.layer_kwargs.items():
            try:
                registry.get(name)
            except ValueError as e:
                raise ValueError(f"SSMConfig.layer_kwargs: {e}") from None
            if not isinstance(kw, dict):
                raise TypeError(f"SSMConfig.layer_kwargs[{name!r}] must be a dict, got {type(kw).__name__}")
        for name in ("rope_theta", "norm_eps", "moe_aux_weight", "initializer_range"):
            setattr(self, name, float(getattr(self, name)))  # 1e4 and 10000 hash alike
        for name in ("embedding_multiplier", "residual_multiplier", "logits_multiplier"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"SSMConfig.{name} must be a finite number > 0, got {v!r}")
            setattr(self, name, float(v))
        if not isinstance(self.layers, str):
            self.layers = ",".join(self.layers)
        self.layer_types = parse_pattern(self.layers, self.n_layer)
        self.mlp_types = self._expand_mlp_layers()
        self.shared_uses = self._expand_shared_layers()
        self.state_layout = self.layer_types + ["attention"] * len(self.shared_uses)
        m = self.pad_vocab_size_multiple
        self.vocab_size_padded = -(-self.vocab_size // m) * m if self.input_dim is None else 0

    def _expand_mlp_layers(self) -> list[str | None]:
        kw = self.mlp_kwargs
        if not isinstance(kw, dict) or not all(isinstance(v, dict) for v in kw.values()):
            raise TypeError(f"SSMConfig.mlp_kwargs must be a dict kind -> dict, got {self.mlp_kwargs!r}")
        for kind in self.mlp_kwargs:
            if kind not in MLP_TYPES:
                raise ValueError(f"SSMConfig.mlp_kwargs: unknown MLP kind {kind!r}; known: {list(MLP_TYPES)}")
        if not isinstance(self.mlp_layers, str):
            self.mlp_layers = ",".join(self.mlp_layers)
        if not self.mlp_layers:
            return [self.mlp if self.d_intermediate > 0 else None] * self.n_layer
        kinds = parse_pattern(self.mlp_layers, self.n_layer, "mlp_layers", _check_mlp_kind)
        for kind in set(kinds) - {NO_MLP}:
            if self.mlp_width(kind) <= 0:
                raise ValueError(
                    f"SSMConfig.mlp_layers={self.mlp_layers!r} uses {kind!r}, whose width is 0: set "
                    f"d_intermediate or mlp_kwargs[{kind!r}]['d_intermediate']"
                )
        return [None if k == NO_MLP else k for k in kinds]

    def _expand_shared_layers(self) -> list[int]:
        if not isinstance(self.shared_block, dict):
            raise TypeError(f"SSMConfig.shared_block must be a dict, got {self.shared_block!r}")
        if not isinstance(self.shared_layers, str):
            self.shared_layers = ",".join(self.shared_layers)
        if not self.shared_layers:
            return []
        kinds = parse_pattern(self.shared_layers, self.n_layer, "shared_layers", _check_shared_kind)
        return [i for i, k in enumerate(kinds) if k == "shared"]

    def mlp_width(self, kind: str) -> int:
        """Hidden width of the MLP sublayers of `kind` (mlp_kwargs[kind] may set its own)."""
        return int(self.mlp_kwargs.get(kind, {}).get("d_intermediate", self.d_intermediate))

    # ---- data in and out ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The constructor arguments (no derived fields), JSON-able; `_added` fields only when set."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not f.init or (f.metadata.get("omit_at_default") and v == _default(f)):
                continue
            out[f.name] = _plain(v)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SSMConfig:
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        derived = {f.name for f in dataclasses.fields(cls) if not f.init}
        unknown = set(d) - known - derived
        if unknown:
            raise ValueError(f"SSMConfig.from_dict: unknown fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def config_hash(self) -> str:
        """A stable 16-hex-digit hash of the arguments (same config -> same hash, across processes)."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _plain(v):
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
