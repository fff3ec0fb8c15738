"""Task heads on a Backbone: language model, sequence classifier, forecaster; save/load.

    model = SSMForCausalLM(cfg)
    out = model(input_ids, state=None, labels=None, attention_mask=None, num_last_tokens=0)
    out.logits (b, l, vocab_size), out.loss, out.aux_loss, out.state

Left padding: with an `attention_mask` (1 = token, 0 = padding on the left), each row is computed
exactly as if it were alone: rows are grouped by their number of real tokens and each group reads
only its real tokens. Recurrent layers have no notion of a masked token, so this is the one way to
keep padding out of their states. Padded positions get zero logits.

Checkpoints: `save_pretrained(dir)` / `from_pretrained(dir)` (see `ssmkit.models.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit._checks import FLOAT_DTYPES, check_tensor
from ssmkit.models.backbone import Backbone
from ssmkit.models.checkpoint import PretrainedMixin
from ssmkit.models.config import SSMConfig

INT_DTYPES = (torch.int64, torch.int32)


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # (b, l or num_last_tokens, vocab_size)
    loss: torch.Tensor | None = None  # shifted cross entropy (+ moe_aux_weight * aux_loss)
    aux_loss: torch.Tensor | None = None  # MoE load-balancing loss summed over layers
    state: object | None = None  # the State given, updated in place


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # (b, n_classes)
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


@dataclass
class ForecastOutput:
    prediction: torch.Tensor  # (b, horizon, input_dim)
    loss: torch.Tensor | None = None  # MSE against the targets
    aux_loss: torch.Tensor | None = None


def _with_aux(loss: torch.Tensor, aux: torch.Tensor | None, weight: float) -> torch.Tensor:
    return loss if aux is None else loss + weight * aux


class SSMForCausalLM(PretrainedMixin, nn.Module):
    """Backbone + lm_head (tied to the embedding by default)."""

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        if cfg.input_dim is not None:
            raise ValueError("SSMForCausalLM needs token input: build it with input_dim=None")
        self.config = cfg
        self._config_hash = cfg.config_hash()  # once: a decode step checks it on every token
        self.backbone = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size_padded, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    # ---- state ------------------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=None):
        """The empty State for `batch_size` sequences (an `ssmkit.State`)."""
        from ssmkit.inference.state import State  # models -> inference, lazily (State imports no model)

        layers = self.backbone.init_state(batch_size, device=device, dtype=dtype)
        return State(layers, self.config.state_layout, self._config_hash)

    def _check_state(self, state, batch_size: int) -> None:
        from ssmkit.inference.state import State

        if not isinstance(state, State):
            raise TypeError(
                f"state must be an ssmkit.State (from model.init_state), got {type(state).__name__}"
            )
        state.check_for(self._config_hash, self.config.state_layout, batch_size)

    def _check_ids(self, input_ids: torch.Tensor, name: str = "input_ids", ndim: int = 2) -> None:
        check_tensor(
            name,
            input_ids,
            ndim=ndim,
            dtypes=INT_DTYPES,
            legend="(batch, length)" if ndim == 2 else "(batch,)",
        )
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"{name} must hold token ids in [0, {self.config.vocab_size}), "
                f"got range [{int(input_ids.min())}, {int(input_ids.max())}]"
            )

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, input_ids, state=None, labels=None, attention_mask=None, num_last_tokens: int = 0):
        self._check_ids(input_ids)
        b, L = input_ids.shape
        if state is not None:
            self._check_state(state, b)
        if num_last_tokens and labels is not None:
            raise ValueError(
                "labels need the logits of every position: do not pass num_last_tokens with labels"
            )
        if attention_mask is not None:
            check_tensor("attention_mask", attention_mask, shape=(b, L), legend="(batch, length)")
            attention_mask = attention_mask.to(torch.bool)
            if bool(attention_mask.all()):
                attention_mask = None

        if attention_mask is None:
            if state is None:
                hidden, aux = self.backbone(input_ids), self.backbone.aux_loss()
            else:
                hidden, layers = self.backbone(input_ids, state.layers, return_state=True)
                aux = self.backbone.aux_loss()
                state.layers = layers
        else:
            hidden, aux = self._forward_left_padded(input_ids, attention_mask, state)
        if num_last_tokens:
            hidden = hidden[:, -num_last_tokens:]
        logits = self._logits(hidden)  # (b, l', vocab_size)

        loss = None
        if labels is not None:
            check_tensor("labels", labels, shape=(b, L), dtypes=INT_DTYPES, legend="(batch, length)")
            if attention_mask is not None:
                labels = labels.masked_fill(~attention_mask, -100)
            # position t predicts labels[t + 1]; the last position has no target (-100): the labels
            # shift, not the logits (slicing them would copy (b, l, vocab) forward and backward)
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                   ignore_index=-100)
            loss = _with_aux(loss, aux, self.config.moe_aux_weight)
        return CausalLMOutput(logits=logits, loss=loss, aux_loss=aux, state=state)

    def _forward_left_padded(self, input_ids, mask, state):
        """Rows grouped by their number of real tokens; each group reads only its real tokens."""
        b, L = input_ids.shape
        lengths = mask.sum(1)
        expected = torch.arange(L, device=mask.device)[None, :] >= (L - lengths)[:, None]
        if not torch.equal(mask, expected):
            raise ValueError("attention_mask must be left padding: per row zeros, then ones")
        hidden = torch.zeros(b, L, self.config.d_model, device=input_ids.device, dtype=self.backbone.dtype)
        auxes, order, parts = [], [], []
        for n in lengths.unique().tolist():
            rows = (lengths == n).nonzero(as_tuple=True)[0]
            sub = None if state is None else state.select(rows)
            if n > 0:
                ids = input_ids[rows, L - n :]
                if sub is None:
                    h = self.backbone(ids)
                else:
                    h, layers = self.backbone(ids, sub.layers, return_state=True)
                    sub.layers = layers
                hidden[rows, L - n :] = h
                auxes.append(self.backbone.aux_loss())
            order.append(rows)
            parts.append(sub)
        if state is not None:
            from ssmkit.inference.state import State

            back = torch.argsort(torch.cat(order))
            state.update_(State.cat(parts).select(back))
        auxes = [a for a in auxes if a is not None]
        return hidden, (torch.stack(auxes).sum() if auxes else None)

    @torch.no_grad()
    def step(self, input_ids_t: torch.Tensor, state) -> torch.Tensor:
        """One token per row (b,) -> next-token logits (b, vocab_size); `state` is updated in place."""
        self._check_ids(input_ids_t, "input_ids_t", ndim=1)
        self._check_state(state, input_ids_t.shape[0])
        hidden, state.layers = self.backbone.step(input_ids_t, state.layers)
        return self._logits(hidden)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """lm_head, cut to vocab_size, times cfg.logits_multiplier (1 by default)."""
        logits = self.lm_head(hidden)[..., : self.config.vocab_size]
        m = self.config.logits_multiplier
        return logits if m == 1.0 else logits * m

    @torch.no_grad()
    def step_(self, input_ids_t: torch.Tensor, state) -> torch.Tensor:
        """`step` that overwrites the State's tensors in place instead of replacing them (no new
        tensors per token): only for a State whose tensors nobody else holds, such as
        `state.clone()`. generate decodes this way on its own copy of the State."""
        self._check_ids(input_ids_t, "input_ids_t", ndim=1)
        self._check_state(state, input_ids_t.shape[0])
        return self._step_(input_ids_t, state.layers)

    def _step_(self, input_ids_t: torch.Tensor, layers: list) -> torch.Tensor:
        """step_ without the checks (generate checks its inputs once)."""
        return self._logits(self.backbone.step_(input_ids_t, layers))

    def generate(self, input_ids, max_new_tokens: int = 20, **kwargs):
        """Greedy by default; see `ssmkit.inference.generate.generate` for every option."""
        from ssmkit.inference.generate import generate

        return generate(self, input_ids, max_new_tokens=max_new_tokens, **kwargs)


class _Encoder(PretrainedMixin, nn.Module):
    """Shared input checks of the classification and forecasting heads."""

    def _check_inputs(self, inputs: torch.Tensor) -> None:
        cfg = self.config
        if cfg.input_dim is None:
            check_tensor("inputs", inputs, ndim=2, dtypes=INT_DTYPES, legend="(batch, length) token ids")
            if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= cfg.vocab_size):
                raise ValueError(f"inputs must hold token ids in [0, {cfg.vocab_size})")
        else:
            check_tensor(
                "inputs",
                inputs,
                shape=(None, None, cfg.input_dim),
                dtypes=FLOAT_DTYPES,
                legend="(batch, length, input_dim)",
            )


class SSMForSequenceClassification(_Encoder):
    """Backbone -> pooling ("mean" over valid positions or "last" valid position) -> score."""

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        if cfg.n_classes < 2:
            raise ValueError(f"SSMForSequenceClassification needs n_classes >= 2, got {cfg.n_classes}")
        self.config = cfg
        self.backbone = Backbone(cfg)
        self.score = nn.Linear(cfg.d_model, cfg.n_classes)

    def forward(self, inputs, labels=None, attention_mask=None) -> ClassifierOutput:
        """inputs: ids (b, l) or series (b, l, input_dim); attention_mask (b, l): 1 = real (right padding).

        A bidirectional model hands the mask to its mixers, so the backward direction skips the pads
        too; causal layers never see right padding before a real token.
        """
        self._check_inputs(inputs)
        b, L = inputs.shape[:2]
        mixer_mask = attention_mask if self.config.bidirectional else None
        hidden = self.backbone(inputs, attention_mask=mixer_mask)  # (b, l, d)
        mask = (
            torch.ones(b, L, device=hidden.device)
            if attention_mask is None
            else attention_mask.to(hidden.device)
        )
        check_tensor("attention_mask", mask, shape=(b, L), legend="(batch, length)")
        mask = mask.to(hidden.dtype)
        if self.config.pooling == "mean":
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        else:
            last = (mask * torch.arange(L, device=mask.device)).argmax(1)  # last valid position
            pooled = hidden[torch.arange(b, device=hidden.device), last]
        logits = self.score(pooled)  # (b, n_classes)
        aux, loss = self.backbone.aux_loss(), None
        if labels is not None:
            loss = _with_aux(F.cross_entropy(logits.float(), labels), aux, self.config.moe_aux_weight)
        return ClassifierOutput(logits=logits, loss=loss, aux_loss=aux)


class SSMForForecasting(_Encoder):
    """Series (b, l, c) -> forecast (b, horizon, c) from the last position's hidden state.

    With cfg.revin (reversible instance normalization, Kim et al. 2022), each series is normalized by
    its own mean and std over time before the backbone, with a learned per-channel affine map, and
    the forecast is mapped back.
    """

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        if cfg.input_dim is None or cfg.horizon <= 0:
            raise ValueError(
                f"SSMForForecasting needs input_dim (channels) and horizon > 0, got "
                f"input_dim={cfg.input_dim}, horizon={cfg.horizon}"
            )
        self.config = cfg
        self.backbone = Backbone(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.horizon * cfg.input_dim)
        if cfg.revin:
            self.revin_weight = nn.Parameter(torch.ones(cfg.input_dim))
            self.revin_bias = nn.Parameter(torch.zeros(cfg.input_dim))

    def forward(self, inputs, targets=None) -> ForecastOutput:
        self._check_inputs(inputs)
        cfg, eps = self.config, 1e-5
        x = inputs.float()
        if cfg.revin:
            mean = x.mean(1, keepdim=True)  # (b, 1, c)
            std = (x.var(1, keepdim=True, unbiased=False) + eps).sqrt()
            x = (x - mean) / std * self.revin_weight + self.revin_bias
        hidden = self.backbone(x)[:, -1]  # (b, d)
        pred = self.head(hidden).float().view(-1, cfg.horizon, cfg.input_dim)  # (b, horizon, c)
        if cfg.revin:
            pred = (pred - self.revin_bias) / (self.revin_weight + eps) * std + mean
        pred = pred.to(inputs.dtype)
        aux, loss = self.backbone.aux_loss(), None
        if targets is not None:
            check_tensor(
                "targets",
                targets,
                shape=(inputs.shape[0], cfg.horizon, cfg.input_dim),
                legend="(batch, horizon, input_dim)",
            )
            loss = _with_aux(F.mse_loss(pred.float(), targets.float()), aux, cfg.moe_aux_weight)
        return ForecastOutput(prediction=pred, loss=loss, aux_loss=aux)
