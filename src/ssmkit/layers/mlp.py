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
    activation:     the nonlinearity, by name (ACTIVATIONS): "gelu_tanh" (MLP's default), "silu"
                    (GatedMLP's), "gelu", "relu", "relu2" (squared ReLU, Nemotron-H's)
MoE routing options (defaults: Mixtral's softmax top-k, renormalized):
    scoring:        "softmax" (p = softmax(logits)) or "sigmoid" (p = sigmoid(logits), DeepSeek-V3)
    norm_topk:      divide the k chosen weights by their sum (False: Jamba keeps the raw softmax)
    routed_scale:   factor on the routed experts' weights (DeepSeek-V3 routed_scaling_factor)
    score_bias:     a per-expert bias (buffer `score_bias`) added to the scores for choosing experts
                    only, not to the weights (DeepSeek-V3 e_score_correction_bias)
    n_group, topk_group: group-limited choice: experts in n_group groups, a group scored by the sum
                    of its two best; only the topk_group best groups are chosen from
    d_shared:       width of a shared expert applied to every token and added (0 = none)
    d_latent:       experts work in a latent width: x -> fc1_latent -> experts -> fc2_latent (None = off)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit._checks import check_positive_int
from ssmkit.layers.base import check_param_dtype


def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU (Primer; Nemotron-H's MLPs). Without autograd it overwrites x (the MLPs pass their
    fresh fc1 output): no new buffer of the MLP's width (a Nemotron-H prefill of 2048 tokens spent 3% of
    its time allocating the out-of-place ReLU's)."""
    if not torch.is_grad_enabled():
        return F.relu_(x).square_()
    return torch.square(F.relu(x))


ACTIVATIONS = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
    "relu2": relu2,
}


def activation_fn(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _check_last_dim(module: nn.Module, x: torch.Tensor, d_model: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != d_model:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{type(module).__name__}: x must have shape (..., d_model={d_model}), got {shape}")
    if not torch.is_autocast_enabled(x.device.type):
        check_param_dtype(module, x)


class MLP(nn.Module):
    """fc2(act(fc1(x))), act = GELU (tanh approximation) unless `activation` names another."""

    def __init__(
        self,
        d_model: int,
        d_intermediate: int,
        bias: bool = False,
        activation: str = "gelu_tanh",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_intermediate", d_intermediate)
        self.d_model, self.activation, self.act = d_model, activation, activation_fn(activation)
        self.fc1 = nn.Linear(d_model, d_intermediate, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(d_intermediate, d_model, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(self, x, self.d_model)
        return self.fc2(self.act(self.fc1(x)))


class GatedMLP(nn.Module):
    """SwiGLU: fc2(y * silu(gate)) with (y, gate) = fc1(x) split in halves (Mamba's GatedMLP layout).

    `activation` replaces silu on the gate. transformers' Llama-style gate_proj / up_proj map to
    fc1 = [up_proj; gate_proj]. `gate_multiplier` scales the gate before the activation and
    `out_multiplier` the output (Falcon-H1's mlp_multipliers).
    """

    def __init__(
        self,
        d_model: int,
        d_intermediate: int,
        bias: bool = False,
        activation: str = "silu",
        gate_multiplier: float = 1.0,
        out_multiplier: float = 1.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_intermediate", d_intermediate)
        self.d_model, self.activation, self.act = d_model, activation, activation_fn(activation)
        self.gate_multiplier, self.out_multiplier = float(gate_multiplier), float(out_multiplier)
        self.fc1 = nn.Linear(d_model, 2 * d_intermediate, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(d_intermediate, d_model, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, fc1_delta: torch.Tensor | None = None) -> torch.Tensor:
        """fc1_delta: added to fc1(x), (..., 2 d_intermediate) in fc1's [y; gate] order (the low-rank
        adapter of one use of a shared MLP, Zamba2's)."""
        _check_last_dim(self, x, self.d_model)
        h = self.fc1(x)
        y, gate = (h if fc1_delta is None else h + fc1_delta).chunk(2, dim=-1)
        if self.gate_multiplier != 1.0:
            gate = gate * self.gate_multiplier
        a = self.act(gate)  # without autograd gated in place (a new tensor, or gate itself: relu2)
        out = self.fc2(a.mul_(y) if not torch.is_grad_enabled() else y * a)
        if self.out_multiplier == 1.0:
            return out
        return out * self.out_multiplier if torch.is_grad_enabled() else out.mul_(self.out_multiplier)


class MoE(nn.Module):
    """Top-k mixture of expert MLPs: Mixtral's renormalized softmax routing by default; the options
    (module docstring) cover sigmoid, group-limited and biased choice, shared and latent experts.

    Experts are GatedMLPs (`gated=True`) or MLPs, with `activation`. After each forward,
    `self.aux_loss` holds the load-balancing loss of that call (a scalar with gradient to the
    router); the model sums it over layers into its output's `aux_loss`.
    """

    def __init__(
        self,
        d_model: int,
        d_intermediate: int,
        n_experts: int = 8,
        top_k: int = 2,
        bias: bool = False,
        gated: bool = True,
        activation: str | None = None,
        scoring: str = "softmax",
        norm_topk: bool = True,
        routed_scale: float = 1.0,
        score_bias: bool = False,
        n_group: int = 1,
        topk_group: int = 1,
        d_shared: int = 0,
        d_latent: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, v in (("d_model", d_model), ("n_experts", n_experts), ("top_k", top_k),
                        ("n_group", n_group), ("topk_group", topk_group)):
            check_positive_int(name, v)
        if top_k > n_experts:
            raise ValueError(f"MoE: top_k={top_k} must be <= n_experts={n_experts}")
        if scoring not in ("softmax", "sigmoid"):
            raise ValueError(f"MoE: scoring must be 'softmax' or 'sigmoid', got {scoring!r}")
        if n_experts % n_group or topk_group > n_group:
            raise ValueError(
                f"MoE: n_group={n_group} must divide n_experts={n_experts}, and topk_group={topk_group} "
                f"must be <= n_group"
            )
        self.d_model, self.n_experts, self.top_k = d_model, n_experts, top_k
        self.scoring, self.norm_topk, self.routed_scale = scoring, norm_topk, float(routed_scale)
        self.n_group, self.topk_group, self.d_latent = n_group, topk_group, d_latent
        fk = {"device": device, "dtype": dtype}
        expert_cls = GatedMLP if gated else MLP
        act = {"activation": activation} if activation is not None else {}
        d_expert = d_model if d_latent is None else d_latent
        self.router = nn.Linear(d_model, n_experts, bias=False, **fk)
        self.experts = nn.ModuleList(
            expert_cls(d_expert, d_intermediate, bias=bias, **act, **fk) for _ in range(n_experts)
        )
        if score_bias:
            self.register_buffer("score_bias", torch.zeros(n_experts, device=device, dtype=torch.float32))
        else:
            self.score_bias = None
        self.shared = expert_cls(d_model, d_shared, bias=bias, **act, **fk) if d_shared else None
        if d_latent is not None:
            self.fc1_latent = nn.Linear(d_model, d_latent, bias=bias, **fk)
            self.fc2_latent = nn.Linear(d_latent, d_model, bias=bias, **fk)
        self.aux_loss: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (T, d) -> top-k expert ids (T, k), their weights (T, k), and the load-balancing loss."""
        work = torch.promote_types(x.dtype, torch.float32)
        logits = F.linear(x.to(work), self.router.weight.to(work))  # (T, E), float32 at least
        probs = logits.softmax(dim=-1) if self.scoring == "softmax" else logits.sigmoid()
        choice = probs if self.score_bias is None else probs + self.score_bias
        if self.topk_group < self.n_group:  # keep the topk_group groups whose two best score highest
            T, G = choice.shape[0], self.n_group
            groups = choice.view(T, G, -1)
            best = groups.topk(min(2, groups.shape[-1]), dim=-1).values.sum(-1)  # (T, G)
            keep = torch.zeros_like(best).scatter_(1, best.topk(self.topk_group, dim=-1).indices, 1.0)
            choice = groups.masked_fill(keep[..., None] == 0, float("-inf")).view(T, -1)
        experts = choice.topk(self.top_k, dim=-1).indices  # (T, k)
        weights = probs.gather(1, experts)
        if self.norm_topk:
            eps = 1e-20 if self.scoring == "sigmoid" else 0.0  # sigmoid weights may all be ~0
            weights = weights / (weights.sum(dim=-1, keepdim=True) + eps)
        weights = weights * self.routed_scale
        counts = torch.zeros(self.n_experts, device=x.device).index_add_(
            0, experts.flatten(), torch.ones(experts.numel(), device=x.device)
        )
        f = counts / experts.numel()  # (E,) fraction routed
        P = (probs / probs.sum(-1, keepdim=True)).mean(dim=0)  # (E,) mean routing probability
        return experts, weights, self.n_experts * (f * P).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(self, x, self.d_model)
        flat = x.reshape(-1, self.d_model)  # (T, d)
        experts, weights, self.aux_loss = self.route(flat)
        h = flat if self.d_latent is None else self.fc1_latent(flat)  # (T, d or d_latent)
        out = torch.zeros_like(h)
        if h.shape[0] == 1:  # one token (decoding): its k experts in turn, no gather or scatter
            w = weights[0].to(h.dtype)
            for e, slot in sorted(zip(experts[0].tolist(), range(self.top_k))):  # index_add's order
                out = out + self.experts[e](h) * w[slot]
        else:
            out = self._dispatch(h, experts, weights, out)
        if self.d_latent is not None:
            out = self.fc2_latent(out)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view_as(x)

    def _dispatch(self, h, experts, weights, out):
        """out + each expert on the tokens routed to it, weighted (T tokens, k experts each)."""
        for e, expert in enumerate(self.experts):
            token, slot = (experts == e).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            y = expert(h[token]) * weights[token, slot, None].to(h.dtype)
            # without autograd, into `out` in place: no copy of (T, d) per expert
            out = out.index_add_(0, token, y) if not torch.is_grad_enabled() else out.index_add(0, token, y)
        return out
