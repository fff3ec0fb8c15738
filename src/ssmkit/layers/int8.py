"""Int8 weights for CPU inference: a Linear and an Embedding that store int8 with one scale per row.

    W ~= weight_scale[:, None] * weight,  weight = round(W / weight_scale[:, None]) in [-127, 127],
    weight_scale = max_j |W[i, j]| / 127          (symmetric, per output row; int8 "weight", float32 scale)

Int8Linear.forward, by backend:
    fbgemm (PyTorch's quantized engine on x86; qnnpack on ARM), for calls of at most MAX_INT8_ROWS
        rows (decoding): `torch.ops.quantized.linear_dynamic`, the weight packed once; each call
        quantizes its input to uint8 (one scale and zero point per call: per token when decoding one
        sequence) and multiplies in integers with int32 sums. The input's 8 bits are reduced to 7 on
        x86 CPUs without VNNI (whose int16 pair sums would saturate).
    float (more rows: a prompt; any device; where packing is unavailable; with autograd): the weight
        dequantized, then F.linear: only the weight is rounded.
Int8Embedding looks rows up and scales them; with tied embeddings the LM head is an Int8Linear on the
same int8 rows and scales (one row per token serves both).

PyTorch marks its quantized tensor types deprecated: if packing fails in a future release, the
reference path runs, with a one-time warning. Use `ssmkit.models.int8.quantize_int8` on a model.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

_warned = False
MAX_INT8_ROWS = 16  # calls with more rows (a prompt) take the float path: one input scale per call
# would span every token, and at that size the product is compute-bound anyway


def quantize_rows(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W (out, in) float -> (int8 (out, in), float32 scale (out,)), symmetric per row."""
    W = W.detach().float()
    scale = (W.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(W / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


@functools.cache
def _reduce_range() -> bool:
    """x86 without VNNI sums pairs of uint8 x int8 products in int16: 7-bit inputs avoid saturation."""
    if torch.backends.quantized.engine == "qnnpack":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return True
    return not ({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags.split()))


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
        self._packed = None  # (key of the tensors it was packed from, packed weight)

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
        return self.weight.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        fast = x.device.type == "cpu" and rows <= MAX_INT8_ROWS and not torch.is_grad_enabled()
        packed = self._packed_weight() if fast else None
        if packed is None:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self.dequantize().to(x.dtype), bias)
        y = torch.ops.quantized.linear_dynamic(
            x.reshape(-1, self.in_features).float(), packed, _reduce_range()
        )
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _packed_weight(self):
        """The weight packed for the quantized engine (redone when weight, scale or bias change)."""
        tensors = (self.weight, self.weight_scale, self.bias)
        key = tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors)
        if self._packed is not None and self._packed[0] == key:
            return self._packed[1]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # PyTorch's deprecation notice of qint8
                q = torch._make_per_channel_quantized_tensor(
                    self.weight,
                    self.weight_scale.double(),
                    torch.zeros_like(self.weight_scale, dtype=torch.long),
                    0,
                )
                packed = torch.ops.quantized.linear_prepack(
                    q, None if self.bias is None else self.bias.float()
                )
        except (RuntimeError, AttributeError) as e:
            global _warned
            if not _warned:
                _warned = True
                warnings.warn(
                    f"Int8Linear: PyTorch's int8 kernels are unavailable ({e}); dequantizing "
                    "the weights on every call instead (slow)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            packed = None
        self._packed = (key, packed)
        return packed


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
