"""Shared transformer blocks: one attention + MLP block whose weights serve several layers of a model,
each use with its own low-rank adapters and output projection (Zamba2, Glorioso et al. 2024, fig. 2).

A block of the backbone that uses a shared block (SSMConfig.shared_layers) runs

    t = proj(mlp(norm2(attention(norm(cat(x, e))))))      # the shared block, this use's adapters
    x = x + mixer(norm(x + t))                              # the block itself, t joins its input only

where x is the residual stream before the block and e the token embeddings (the backbone's
`embed`, read again by every use). The k-th block that uses one takes shared block k % n_blocks.

Glossary (code name: meaning; SSMConfig.shared_block holds the options)
    n_blocks:        how many distinct shared blocks (Zamba2's num_mem_blocks), used round-robin
    with_embedding:  the block reads cat(x, e), 2 d_model channels, instead of x alone
    n_head, n_kv_head, head_dim, rope_theta, rotary_dim, scale, attention_bias: its Attention's
                     options (head_dim: width of its input / n_head unless given); its output has
                     d_model channels
    d_intermediate, activation, mlp_bias: its GatedMLP (act(gate) * up)
    adapter_rank:    rank r of the per-use adapters, W x + up(down(x)) with down: width -> r
    attention_adapters / mlp_adapters: which projections have them (q, k, v / the MLP's fc1)
    norm_eps:        the two RMSNorms' epsilon (SSMConfig.norm_eps unless given)

Parameters: backbone.shared_blocks.{b}.{norm, attention, norm2, mlp}; per use, in the block that uses
it, {block}.adapter.{proj, q, k, v, mlp} (q, k, v, mlp: Sequential(down, up)).
State of each use: its attention's KV cache (`Attention`'s, batched by its rules). A model's State
holds them after the blocks' states, one "attention" entry per use (SSMConfig.state_layout).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssmkit.layers.attention import Attention
from ssmkit.layers.base import StateDict
from ssmkit.layers.mlp import GatedMLP
from ssmkit.layers.norm import RMSNorm

OPTIONS = (
    "n_blocks",
    "with_embedding",
    "n_head",
    "n_kv_head",
    "head_dim",
    "rope_theta",
    "rotary_dim",
    "scale",
    "attention_bias",
    "d_intermediate",
    "activation",
    "mlp_bias",
    "adapter_rank",
    "attention_adapters",
    "mlp_adapters",
    "norm_eps",
)


def options(cfg) -> dict[str, Any]:
    """SSMConfig.shared_block over its defaults (n_head, n_kv_head, rope_theta, norm_eps: the config's)."""
    unknown = sorted(set(cfg.shared_block) - set(OPTIONS))
    if unknown:
        raise ValueError(f"SSMConfig.shared_block: unknown options {unknown}; known: {list(OPTIONS)}")
    o = dict(
        n_blocks=1,
        with_embedding=True,
        n_head=cfg.n_head,
        n_kv_head=cfg.n_kv_head,
        head_dim=None,
        rope_theta=cfg.rope_theta,
        rotary_dim=None,
        scale=None,
        attention_bias=False,
        d_intermediate=cfg.d_intermediate,
        activation="gelu",
        mlp_bias=False,
        adapter_rank=0,
        attention_adapters=False,
        mlp_adapters=False,
        norm_eps=cfg.norm_eps,
    )
    o.update(cfg.shared_block)
    if not isinstance(o["n_blocks"], int) or o["n_blocks"] <= 0:
        raise ValueError(f"SSMConfig.shared_block['n_blocks'] must be a positive int, got {o['n_blocks']!r}")
    if (o["attention_adapters"] or o["mlp_adapters"]) and not o["adapter_rank"] > 0:
        raise ValueError("SSMConfig.shared_block: adapters need adapter_rank > 0")
    return o


def _low_rank(d_in: int, rank: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out, bias=False))


class SharedBlock(nn.Module):
    """attention + MLP without residuals, on cat(x, embeddings); its weights serve several layers."""

    def __init__(self, d_model: int, o: dict[str, Any]):
        super().__init__()
        self.with_embedding = bool(o["with_embedding"])
        width = 2 * d_model if self.with_embedding else d_model
        self.norm = RMSNorm(width, eps=o["norm_eps"])
        self.attention = Attention(
            width,
            n_head=o["n_head"],
            n_kv_head=o["n_kv_head"],
            head_dim=o["head_dim"],
            rope_theta=o["rope_theta"],
            rotary_dim=o["rotary_dim"],
            scale=o["scale"],
            bias=o["attention_bias"],
            d_out=d_model,
        )
        self.norm2 = RMSNorm(d_model, eps=o["norm_eps"])
        self.mlp = GatedMLP(d_model, o["d_intermediate"], bias=o["mlp_bias"], activation=o["activation"])

    def forward(
        self,
        x: torch.Tensor,
        embeddings: torch.Tensor,
        adapter: SharedAdapter,
        state: StateDict | None = None,
        attention_mask: torch.Tensor | None = None,
        in_place: bool = False,
    ) -> tuple[torch.Tensor, StateDict]:
        """x, embeddings (b, l, d_model) -> this use's t (b, l, d_model), its attention's new state
        (in_place: the caller owns `state`, its cache grows in place: Attention's forward)."""
        h = torch.cat([x, embeddings.to(x.dtype)], dim=-1) if self.with_embedding else x
        h = self.norm(h).to(self.norm.weight.dtype)  # (b, l, width)
        kw = {"attention_mask": attention_mask} if attention_mask is not None else {}
        a, state = self.attention(
            h, state=state, return_state=True, in_proj_delta=adapter.qkv(h), in_place=in_place, **kw
        )
        a = self.norm2(a).to(self.norm2.weight.dtype)  # (b, l, d_model)
        return adapter.proj(self.mlp(a, fc1_delta=adapter.fc1(a))), state


class SharedAdapter(nn.Module):
    """One use of a shared block: its low-rank adapters and the projection of its output."""

    def __init__(self, d_model: int, o: dict[str, Any]):
        super().__init__()
        width = 2 * d_model if o["with_embedding"] else d_model
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.q = self.k = self.v = self.mlp = None
        r = o["adapter_rank"]
        if o["attention_adapters"]:
            n_head = o["n_head"]
            n_kv = n_head if o["n_kv_head"] is None else o["n_kv_head"]
            head_dim = o["head_dim"] or width // n_head
            self.q = _low_rank(width, r, n_head * head_dim)
            self.k = _low_rank(width, r, n_kv * head_dim)
            self.v = _low_rank(width, r, n_kv * head_dim)
        if o["mlp_adapters"]:
            self.mlp = _low_rank(d_model, r, 2 * o["d_intermediate"])

    def qkv(self, h: torch.Tensor) -> torch.Tensor | None:
        """The adapters' part of the attention's in_proj(h) (None without attention adapters)."""
        if self.q is None:
            return None
        return torch.cat([self.q(h), self.k(h), self.v(h)], dim=-1)

    def fc1(self, a: torch.Tensor) -> torch.Tensor | None:
        """The adapter's part of the MLP's fc1(a), in fc1's [up; gate] order (None without one)."""
        return None if self.mlp is None else self.mlp(a)
