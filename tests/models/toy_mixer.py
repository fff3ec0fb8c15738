"""A test-only mixer, added the way every mixer is: one file that registers it. Importing this module
makes "toy" a layer name in patterns, with batching, optimizer groups and `ssmkit info` for free."""

from __future__ import annotations

import torch

from ssmkit.layers.base import Mixer
from ssmkit.layers.registry import register


@register("toy")
class ToyRecurrence(Mixer):
    """Toy recurrence: h_t = a * h_{t-1} + B x_t, plus a 2-tap causal conv of x (a test double)."""

    no_weight_decay = ("a_logit",)

    def __init__(self, d_model: int, bidirectional: bool = False):
        super().__init__()
        if bidirectional:
            raise ValueError("ToyRecurrence is causal: bidirectional=True is not supported")
        self.d_model = d_model
        self.B = torch.nn.Linear(d_model, d_model)
        self.a_logit = torch.nn.Parameter(torch.randn(d_model))
        self.conv = torch.nn.Parameter(torch.randn(2, d_model) / 2)

    def init_state(self, batch_size, device=None, dtype=None):
        z = torch.zeros(batch_size, self.d_model, device=device, dtype=dtype or torch.float32)
        return {"h": z, "x_prev": z.clone()}

    def forward(self, x, state=None, return_state=False):
        if (empty := self._empty_forward(x, state, return_state)) is not None:
            return empty
        if state is not None:
            self._check_state(state, x.shape[0])
        state = self.init_state(x.shape[0], x.device, x.dtype) if state is None else state
        ys = []
        for t in range(x.shape[1]):
            y, state = self._step(x[:, t], state)
            ys.append(y)
        y = torch.stack(ys, 1)
        return (y, state) if return_state else y

    def step(self, x_t, state):
        if (empty := self._empty_step(x_t, state)) is not None:
            return empty
        return self._step(x_t, state)

    def _step(self, x_t, state):
        a = torch.sigmoid(self.a_logit)
        h = a * state["h"] + self.B(x_t)
        return h + self.conv[0] * state["x_prev"] + self.conv[1] * x_t, {"h": h, "x_prev": x_t}
