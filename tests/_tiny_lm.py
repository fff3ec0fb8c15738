"""A stand-in causal LM for the training tests: embedding -> causal depthwise conv -> MLP -> logits.

Speaks the loop's contract: forward(input_ids, labels=None) -> object with .logits and .loss
(labels shifted inside, Hugging Face style). Has an `A_log` and a `D` to check the parameter groups.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, vocab_size: int = 32, d_model: int = 32, kernel: int = 4):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.conv = nn.Conv1d(d_model, d_model, kernel, groups=d_model, padding=kernel - 1)
        self.A_log = nn.Parameter(torch.zeros(d_model, 2))
        self.D = nn.Parameter(torch.ones(d_model))
        self.norm = nn.LayerNorm(d_model)
        self.layers = nn.ModuleList(
            [nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))]
        )
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, input_ids, labels=None):
        x = self.embedding(input_ids)  # (b, l, d)
        L = x.shape[1]
        h = self.conv(x.transpose(1, 2))[..., :L].transpose(1, 2)  # causal: cut the look-ahead
        h = h * torch.exp(self.A_log).mean(-1) + self.D * x
        for layer in self.layers:
            h = h + layer(self.norm(h))
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return SimpleNamespace(logits=logits, loss=loss, aux_loss=None)
