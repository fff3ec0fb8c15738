"""Weight tables: one list of entries maps a family's checkpoint keys to ssmkit's, both ways.

An `Entry` says that ssmkit tensors `ours` are a function of checkpoint tensors `theirs`
(`to_ours`), and how to get them back (`to_theirs`): a rename is one key to one key; q/k/v
projections are three keys concatenated into attention's `in_proj`; a stacked (E, ...) expert
tensor is E keys. A family builds its table from the ssmkit model it describes (`Table(model)`),
so sizes needed on the way back (how to split in_proj) come from the model's own modules.

    t = Table(model)
    t.embedding("model.embed_tokens.weight")
    t.rename("model.layers.0.input_layernorm.weight", "backbone.layers.0.norm.weight")
    t.prefix("model.layers.0.mamba.", "backbone.layers.0.mixer.")    # same suffixes below both
    t.attention("model.layers.1.self_attn.", "backbone.layers.1.mixer.")
    t.gated_mlp("model.layers.0.feed_forward.", "backbone.layers.0.mlp.")
    ours = t.to_ours(checkpoint_tensors, source)   # raises on missing or unexpected keys
    theirs = t.to_theirs(model.state_dict())
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Tensors = list[torch.Tensor]


def _same(ts: Tensors) -> Tensors:
    return list(ts)


def swap_halves(w: torch.Tensor) -> torch.Tensor:
    """[a; b] -> [b; a] along dim 0 (its own inverse): transformers' [gate; up] <-> ssmkit's [up; gate]."""
    a, b = w.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


@dataclass(frozen=True)
class Entry:
    theirs: tuple[str, ...]
    ours: tuple[str, ...]
    to_ours: Callable[[Tensors], Tensors] = _same
    to_theirs: Callable[[Tensors], Tensors] = _same


class Table:
    """The entries of one model; see the module docstring."""

    def __init__(self, model, ignored: Sequence[str] = ()):
        self.model = model
        self.keys = list(model.state_dict())
        self.entries: list[Entry] = []
        self.ignored = [re.compile(p) for p in ignored]  # checkpoint keys with no counterpart

    # ---- building ---------------------------------------------------------------------------
    def add(self, theirs, ours, to_ours=_same, to_theirs=_same) -> None:
        self.entries.append(Entry(tuple(theirs), tuple(ours), to_ours, to_theirs))

    def rename(
        self, theirs: str, ours: str, fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        """One tensor; `fn` (its own inverse, e.g. swap_halves) applied both ways."""
        if fn is None:
            self.add([theirs], [ours])
        else:
            self.add([theirs], [ours], lambda ts: [fn(ts[0])], lambda ts: [fn(ts[0])])

    def prefix(self, theirs: str, ours: str) -> None:
        """Every ssmkit key under `ours` <-> the same suffix under `theirs`."""
        found = [k for k in self.keys if k.startswith(ours)]
        if not found:
            raise KeyError(f"weight table: the model has no keys under {ours!r}")
        for k in found:
            self.rename(theirs + k[len(ours) :], k)

    def fused(self, theirs: Sequence[str], ours: str, sizes: Sequence[int]) -> None:
        """ours = cat(theirs) along dim 0; back: split into `sizes` rows."""
        sizes = list(sizes)
        self.add(
            theirs, [ours], lambda ts: [torch.cat(ts, dim=0)], lambda ts: list(ts[0].split(sizes, dim=0))
        )

    def stacked(self, theirs: str, ours: Sequence[str], fn: Callable | None = None) -> None:
        """theirs (E, ...) <-> E tensors ours[e] = theirs[e]; `fn` (its own inverse) on each slice."""
        f = (lambda w: w) if fn is None else fn
        self.add(
            [theirs],
            ours,
            lambda ts: [f(w) for w in ts[0].unbind(0)],
            lambda ts: [torch.stack([f(w) for w in ts])],
        )

    def embedding(self, theirs: str) -> None:
        """The token embedding: ssmkit may pad the vocabulary, transformers has vocab_size rows."""
        V = self.model.config.vocab_size
        self.add([theirs], ["backbone.embedding.weight"], _same, lambda ts: [ts[0][:V]])

    def lm_head(self, theirs: str = "lm_head.weight") -> None:
        """The LM head, unless tied to the embedding (a stored tied head is then skipped)."""
        if self.model.config.tie_embeddings:
            self.ignored.append(re.compile(f"^{re.escape(theirs)}$"))
            return
        V = self.model.config.vocab_size
        self.add([theirs], ["lm_head.weight"], _same, lambda ts: [ts[0][:V]])

    def attention(self, theirs: str, ours: str, q="q_proj", k="k_proj", v="v_proj", o="o_proj") -> None:
        """Separate q/k/v/o projections (Llama-style) <-> ssmkit Attention's fused in_proj and out_proj."""
        mixer = self.model.get_submodule(ours.rstrip("."))
        hd = mixer.head_dim
        sizes = [mixer.n_head * hd, mixer.n_kv_head * hd, mixer.n_kv_head * hd]
        params = ["weight"] + (["bias"] if mixer.in_proj.bias is not None else [])
        for p in params:
            self.fused([f"{theirs}{x}.{p}" for x in (q, k, v)], f"{ours}in_proj.{p}", sizes)
            self.rename(f"{theirs}{o}.{p}", f"{ours}out_proj.{p}")

    def hybrid_layers(self, norm2: str):
        """The layers of a Mamba + attention hybrid in the Llama-style layout (Bamba, Granite 4.0-H,
        Jamba): `model.layers.{i}.input_layernorm` -> norm, `mamba.` or `self_attn.` -> the mixer,
        `{norm2}` -> norm2; yields (block, their prefix, our prefix) for the family's feed-forward."""
        for i, blk in enumerate(self.model.backbone.layers):
            theirs, ours = f"model.layers.{i}.", f"backbone.layers.{i}."
            self.rename(theirs + "input_layernorm.weight", ours + "norm.weight")
            if blk.kind == "attention":
                self.attention(theirs + "self_attn.", ours + "mixer.")
            else:
                self.prefix(theirs + "mamba.", ours + "mixer.")
            self.rename(f"{theirs}{norm2}.weight", ours + "norm2.weight")
            yield blk, theirs, ours

    def gated_mlp(self, theirs: str, ours: str, gate="gate_proj", up="up_proj", down="down_proj") -> None:
        """Llama-style gate/up/down projections <-> GatedMLP's fc1 = [up; gate] and fc2."""
        mlp = self.model.get_submodule(ours.rstrip("."))
        d = mlp.fc2.weight.shape[1]
        for p in ["weight"] + (["bias"] if mlp.fc1.bias is not None else []):
            self.fused([f"{theirs}{up}.{p}", f"{theirs}{gate}.{p}"], f"{ours}fc1.{p}", [d, d])
            self.rename(f"{theirs}{down}.{p}", f"{ours}fc2.{p}")

    def mlp(self, theirs: str, ours: str, up="up_proj", down="down_proj") -> None:
        """up/down projections <-> MLP's fc1 and fc2."""
        mlp = self.model.get_submodule(ours.rstrip("."))
        for p in ["weight"] + (["bias"] if mlp.fc1.bias is not None else []):
            self.rename(f"{theirs}{up}.{p}", f"{ours}fc1.{p}")
            self.rename(f"{theirs}{down}.{p}", f"{ours}fc2.{p}")

    # ---- converting -------------------------------------------------------------------------
    def to_ours(self, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
        """Checkpoint tensors -> ssmkit's; missing or unexpected keys raise one ValueError naming them."""
        left, out, missing = dict(tensors), {}, []
        for e in self.entries:
            absent = [k for k in e.theirs if k not in left]
            if absent:
                missing += absent
                continue
            parts = [left.pop(k) for k in e.theirs]
            try:
                out.update(zip(e.ours, e.to_ours(parts), strict=True))
            except (RuntimeError, ValueError) as err:
                shapes = {k: tuple(p.shape) for k, p in zip(e.theirs, parts)}
                raise ValueError(f"{source}: cannot map {shapes} to {list(e.ours)}: {err}") from err
        unexpected = sorted(k for k in left if not any(p.search(k) for p in self.ignored))
        if missing or unexpected:
            raise ValueError(
                f"{source} does not match the model its config describes: missing {sorted(missing)[:8]}, "
                f"unexpected {unexpected[:8]}"
            )
        return out

    def to_theirs(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ssmkit tensors -> the checkpoint's keys (contiguous, on the CPU)."""
        out = {}
        for e in self.entries:
            parts = e.to_theirs([state_dict[k].detach() for k in e.ours])
            out.update((k, v.to("cpu").contiguous()) for k, v in zip(e.theirs, parts, strict=True))
        return out
