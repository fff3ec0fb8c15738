"""Channel mixers of a block's second sublayer: MLP, GatedMLP (SwiGLU) and a top-k mixture of experts.

They act on each token alone, so they have no state and work on any (..., d_model) input: the same
module serves a full sequence and a single decode step.

Glossary (code name: meaning)
    d_intermediate: hidden width of one MLP
    fc1, fc2:       first and second linear maps (names as in the Mamba checkpoints' GatedMLP)
    n_experts:      number of expert MLPs (E); top_k: experts per token (k)
    router:         linear map d_model -> E, logits of the routing distribution p(e | x)
    aux_loss:       Switch-Transformer load-balancing loss, E * sum_e f_e * P_e, where f_e is the
                    fraction of routed (token, slot) pairs sent to expert e and P_e the mean of
                    p(e | x) over tokens; 1 when perfectly balanced, up to E when collapsed
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit._checks import check_positive_int
from ssmkit.layers.base import check_param_dtype


def _check_last_dim(module: nn.Module, x: torch.Tensor, d_model: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != d_model:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{type(module).__name__}: x must have shape (..., d_model={d_model}), got {shape}")
    if not torch.is_autocast_enabled(x.device.type):
        check_param_dtype(module, x)


class MLP(nn.Module):
    """fc2(gelu(fc1(x)))."""

    def __init__(self, d_model: int, d_intermediate: int, bias: bool = False, device=None, dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_intermediate", d_intermediate)
        self.d_model = d_model
        self.fc1 = nn.Linear(d_model, d_intermediate, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(d_intermediate, d_model, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(self, x, self.d_model)
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class GatedMLP(nn.Module):
    """SwiGLU: fc2(y * silu(gate)) with (y, gate) = fc1(x) split in halves (Mamba's GatedMLP layout)."""

    def __init__(self, d_model: int, d_intermediate: int, bias: bool = False, device=None, dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_intermediate", d_intermediate)
        self.d_model = d_model
        self.fc1 = nn.Linear(d_model, 2 * d_intermediate, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(d_intermediate, d_model, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(self, x, self.d_model)
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * F.silu(gate))


class MoE(nn.Module):
    """Top-k mixture of GatedMLP experts with renormalized top-k weights (as in Mixtral).

    After each forward, `self.aux_loss` holds the load-balancing loss of that call (a scalar with
    gradient to the router); the model sums it over layers into its output's `aux_loss`.
    """

    def __init__(
        self,
        d_model: int,
        d_intermediate: int,
        n_experts: int = 8,
        top_k: int = 2,
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("n_experts", n_experts)
        check_positive_int("top_k", top_k)
        if top_k > n_experts:
            raise ValueError(f"MoE: top_k={top_k} must be <= n_experts={n_experts}")
        self.d_model, self.n_experts, self.top_k = d_model, n_experts, top_k
        self.router = nn.Linear(d_model, n_experts, bias=False, device=device, dtype=dtype)
        self.experts = nn.ModuleList(
            GatedMLP(d_model, d_intermediate, bias=bias, device=device, dtype=dtype) for _ in range(n_experts)
        )
        self.aux_loss: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (T, d) -> top-k expert ids (T, k), their weights (T, k), and the load-balancing loss."""
        probs = self.router(x).to(torch.promote_types(x.dtype, torch.float32)).softmax(dim=-1)  # (T, E)
        weights, experts = probs.topk(self.top_k, dim=-1)  # (T, k)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        counts = torch.zeros(self.n_experts, device=x.device).index_add_(
            0, experts.flatten(), torch.ones(experts.numel(), device=x.device)
        )
        f = counts / experts.numel()  # (E,) fraction routed
        P = probs.mean(dim=0)  # (E,) mean probability
        return experts, weights, self.n_experts * (f * P).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(self, x, self.d_model)
        flat = x.reshape(-1, self.d_model)  # (T, d)
        experts, weights, self.aux_loss = self.route(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = (experts == e).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            y = expert(flat[token]) * weights[token, slot, None].to(flat.dtype)
            out = out.index_add(0, token, y)
        return out.view_as(x)
