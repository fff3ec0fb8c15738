"""Decoding in place (`step_`, what generate uses) against the never-mutating `step`: every layer's
outputs and states, whole models, generate against a plain step loop (greedy and seeded sampling),
and the caller's State tensors never written."""

from __future__ import annotations

import pytest
import torch

from ssmkit.inference.generate import sample_next
from tests.models.tiny import PURE, tiny_lm

PATTERNS = ["mamba", "mamba2", "mamba2*3,attention", "s4d,attention", "toy,attention", "h3,mamba2"]


@pytest.mark.parametrize("pattern", PURE)
def test_layer_step_in_place_equals_step(pattern):
    model = tiny_lm(pattern)
    for blk in model.backbone.layers:
        layer = blk.mixer
        x = torch.randn(3, 6, layer.d_model)
        with torch.no_grad():
            _, state = layer(x[:, :2], return_state=True)
            owned = {k: v.clone() for k, v in state.items()}
            for t in range(2, 6):
                y_ref, state = layer.step(x[:, t], state)
                y = layer.step_(x[:, t], owned)
                torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
                assert owned.keys() == state.keys()
                for k in state:
                    torch.testing.assert_close(owned[k], state[k], rtol=1e-5, atol=1e-6, msg=k)


def _plain_generate(model, ids, n, seed=None, **sampling):
    """generate as a loop over the never-mutating model.step (the behaviour generate must keep); the
    State ends having consumed every token returned, as generate's given State does."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    st = model.init_state(ids.shape[0])
    with torch.no_grad():
        logits = model(ids, state=st, num_last_tokens=1).logits[:, -1]
        out = []
        for _ in range(n):
            tok = sample_next(logits, generator=gen, **sampling)
            out.append(tok)
            logits = model.step(tok, st)
    return torch.stack(out, 1), st


@pytest.mark.parametrize("pattern", PATTERNS)
def test_generate_equals_the_step_loop(pattern):
    model = tiny_lm(pattern)
    ids = torch.randint(0, 37, (2, 5))
    for sampling in ({}, {"do_sample": True, "seed": 3}, {"do_sample": True, "seed": 4, "temperature": 0.7}):
        seed = sampling.pop("seed", None)
        want, want_state = _plain_generate(model, ids, 9, seed, **sampling)
        st = model.init_state(2)
        seeded = {} if seed is None else {"seed": seed}
        got = model.generate(ids, max_new_tokens=9, state=st, **sampling, **seeded)
        assert torch.equal(got[:, 5:], want), sampling
        for d1, d2 in zip(st.layers, want_state.layers):
            for k in d1:
                torch.testing.assert_close(d1[k], d2[k], rtol=1e-5, atol=1e-6)


def test_generate_applies_the_logits_multiplier():
    """Granite's logits_scaling and Falcon-H1's lm_head_multiplier: sampling sees the scaled logits
    while decoding as it does after the prefill (generate decodes through step_, not step)."""
    model = tiny_lm("mamba2*3,attention", logits_multiplier=0.05)
    ids = torch.randint(0, 37, (1, 5))
    st = model.init_state(1)
    with torch.no_grad():
        model(ids, state=st)
        torch.testing.assert_close(model.step_(ids[:, -1], st.clone()), model.step(ids[:, -1], st))
    want, _ = _plain_generate(model, ids, 12, seed=5, do_sample=True)
    assert torch.equal(model.generate(ids, max_new_tokens=12, do_sample=True, seed=5)[:, 5:], want)


@pytest.mark.parametrize("stream", [False, True])
def test_generate_never_writes_the_callers_tensors(stream):
    model = tiny_lm("mamba2*3,attention")
    ids = torch.randint(0, 37, (2, 5))
    st = model.init_state(2)
    with torch.no_grad():
        model(ids, state=st)
    held = [dict(d) for d in st.layers]  # the caller's references
    before = [{k: v.clone() for k, v in d.items()} for d in held]
    out = model.generate(ids, max_new_tokens=6, state=st, stream=stream)
    if stream:
        list(out)
    for d, b in zip(held, before):
        for k in d:
            assert torch.equal(d[k], b[k]), k
    assert any(not torch.equal(d["ssm"], b["ssm"]) for d, b in zip(st.layers, before) if "ssm" in d)
