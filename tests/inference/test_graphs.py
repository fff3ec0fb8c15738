"""CUDA-graph decoding (ssmkit.inference.graphs) where it does not need CUDA: the static-buffer step a
graph captures, run eagerly, equals model.step token for token; which models qualify; the cache per
model and batch size; a caller's State after generation; generate's CPU path stays graph-free."""

from __future__ import annotations

import pytest
import torch

from ssmkit.inference import generate as gen
from ssmkit.inference import graphs
from ssmkit.inference.graphs import fixed_size, graph_key, static_step
from tests.models.test_models import tiny_lm


def _decode(model, ids, n, state=None, graphs=True):
    """generate's own loop with graphs on (on CPU: the static-buffer step without capture)."""
    sampling = dict(do_sample=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                    generator=None)
    return torch.stack(list(gen._decode(model, ids, n, None, None, state, None, None, sampling, graphs)), 1)


@pytest.mark.parametrize("pattern", ["mamba2", "mamba,s4d"])
def test_static_step_equals_model_step(pattern):
    model = tiny_lm(pattern)
    state = model.init_state(2)
    model(torch.randint(0, 37, (2, 5)), state=state)
    twin = state.select(slice(0, 2))
    runner = static_step(model, state, capture=False)
    tok = torch.tensor([3, 7])
    for _ in range(4):
        want = model.step(tok, twin)
        got = runner(tok)
        assert torch.equal(got, want)
        tok = want.argmax(-1)
    for mine, theirs in zip(runner.layers, twin.layers):
        for k in mine:
            assert torch.equal(mine[k], theirs[k]), k
    runner.release()


def test_only_fixed_size_states_qualify():
    for pattern, fixed in (("mamba2", True), ("mamba2,attention", False)):
        model = tiny_lm(pattern)
        state = model.init_state(1)
        before = state.layers
        model.step(torch.tensor([1]), state)
        assert fixed_size(before, state.layers) == fixed, pattern


def test_one_cached_step_per_batch_size_and_weights():
    model = tiny_lm("mamba2")
    s1, s2 = model.init_state(1), model.init_state(3)
    a = static_step(model, s1, capture=False)
    assert static_step(model, s1, capture=False) is None         # in use by a decode: the caller goes eager
    a.release()
    assert static_step(model, s1, capture=False) is a                # the batch size seen before
    b = static_step(model, s2, capture=False)
    assert b is not a and b.tok.shape == (3,)
    key = graph_key(model, s1)
    model.double()                                                   # new weight storage: a new capture
    assert graph_key(model, s1.to(dtype=torch.float64)) != key
    a.release()
    b.release()


def test_generate_loop_with_graphs_equals_without():
    model = tiny_lm("mamba2,s4d")
    ids = torch.randint(0, 37, (2, 6))
    assert torch.equal(_decode(model, ids, 6), _decode(model, ids, 6, graphs=False))
    plain, graphed = model.init_state(2), model.init_state(2)
    a = _decode(model, ids, 5, state=plain, graphs=False)
    b = _decode(model, ids, 5, state=graphed)
    assert torch.equal(a, b)
    runner = static_step(model, graphed, capture=False)             # free again once decoding ended
    assert runner is not None
    for mine, theirs, buffers in zip(graphed.layers, plain.layers, runner.layers):
        for k in mine:
            assert torch.equal(mine[k], theirs[k]), k
            assert mine[k].data_ptr() != buffers[k].data_ptr()      # the State owns its tensors again
    runner.release()


def test_cuda_graphs_need_cuda():
    model = tiny_lm("mamba2")
    ids = torch.randint(0, 37, (1, 4))
    with pytest.raises(ValueError, match="cuda_graphs=True needs input_ids on a CUDA device"):
        model.generate(ids, max_new_tokens=2, cuda_graphs=True)
    model.generate(ids, max_new_tokens=3)                            # CPU default: no static step at all
    assert model not in graphs._cache
