"""Int8 weights for CPU inference: a Linear and an Embedding that store int8 with one scale per row.

    W ~= weight_scale[:, None] * weight,  weight = round(W / weight_scale[:, None]) in [-127, 127],
    weight_scale = max_j |W[i, j]| / 127          (symmetric, per output row; int8 "weight", float32 scale)

Int8Linear.forward is `ssmkit.ops.int8_linear` on this one int8 copy: a numba matrix-vector kernel
for a few rows without gradients on CPU (decoding: called through `decode_fn`, its checks done once
here), else the weight dequantized and F.linear (prompts, other devices, autograd: only the weight is
rounded, in both).
Int8Embedding looks rows up and scales them; with tied embeddings the LM head is an Int8Linear on the
same int8 rows and scales (one row per token serves both).
Use `ssmkit.models.int8.quantize_int8` on a model.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.ops.int8_linear import decode_fn, int8_linear
from ssmkit.ops.int8_linear.reference import dequantize


def quantize_rows(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W (out, in) float -> (int8 (out, in), float32 scale (out,)), symmetric per row."""
    W = W.detach().float()
    scale = (W.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(W / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """y = x (weight_scale * weight)^T + bias with an int8 weight; see the module docstring."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer(
            "weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("weight_scale", torch.ones(out_features, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        out = cls(linear.in_features, linear.out_features, bias=False, device="meta")
        out.weight, out.weight_scale = quantize_rows(linear.weight)
        if linear.bias is not None:
            out.bias = nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        return out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.weight, self.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = decode_fn(x, self.bias)  # decoding: numba's kernel without the per-call checks
        if fast is not None:
            return fast(x, self.weight, self.weight_scale.float(), bias=self.bias)
        return int8_linear(x, self.weight, self.weight_scale.float(), bias=self.bias)


class Int8Embedding(nn.Module):
    """An embedding table of int8 rows with one float32 scale per row."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer(
            "weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device)
        )
        self.register_buffer("weight_scale", torch.ones(num_embeddings, device=device))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> Int8Embedding:
        out = cls(embedding.num_embeddings, embedding.embedding_dim, device="meta")
        out.weight, out.weight_scale = quantize_rows(embedding.weight)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].float() * self.weight_scale[ids, None]
