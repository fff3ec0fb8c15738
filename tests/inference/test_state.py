"""State: rows, batching, dtype/device moves, size, save/load, and refusing the wrong model."""

from __future__ import annotations

import pytest
import torch

from ssmkit import SSMForCausalLM, State
from tests.models.tiny import PURE, tiny_cfg, tiny_lm

PATTERNS = ["toy,attention", "attention", "mamba2,attention", "s4d,attention", "mamba"]


def filled_state(model, batch=3, length=6):
    st = model.init_state(batch)
    with torch.no_grad():
        model(torch.randint(0, 37, (batch, length)), state=st)
    return st


def assert_states_equal(a: State, b: State):
    assert a.layout == b.layout and a.config_hash == b.config_hash
    for da, db in zip(a.layers, b.layers):
        assert da.keys() == db.keys()
        for k in da:
            assert da[k].dtype == db[k].dtype and torch.equal(da[k], db[k]), k


@pytest.mark.parametrize("pattern", PATTERNS)
def test_rows_and_cat_round_trip(pattern):
    st = filled_state(tiny_lm(pattern))
    assert st.batch_size == 3
    assert st[1].batch_size == 1 and st.select([0, 2]).batch_size == 2
    assert_states_equal(State.cat([st[0], st[1], st[2]]), st)
    assert_states_equal(State.cat([st.select([2, 0]), st[1]]).select([1, 2, 0]), st)
    with pytest.raises(IndexError, match="out of range"):
        st[3]


CAUSAL = [name for name in PURE]  # every registered mixer, the toy included (all are causal-capable)


@pytest.mark.parametrize("name", CAUSAL)
def test_rows_of_different_histories_batch_and_continue_as_alone(name):
    """For every registered mixer: states read from prompts of different lengths (a growing state,
    attention's cache or Hyena's history, has a different size per row) are joined with State.cat,
    continued as one batch, and split again with select: each row equals the row continued alone."""
    model = tiny_lm(name)
    rows = []
    with torch.no_grad():
        for n in (5, 2, 7):
            st = model.init_state(1)
            model(torch.randint(0, 37, (1, n)), state=st)
            rows.append(st)
        batch = State.cat(rows)
        assert batch.batch_size == 3
        ids = torch.randint(0, 37, (3, 3))
        logits = model(ids, state=batch).logits
        for i, st in enumerate(rows):
            alone = model(ids[i : i + 1], state=st).logits               # st advances like the batch
            torch.testing.assert_close(logits[i : i + 1], alone, rtol=1e-5, atol=1e-5, msg=f"{name} row {i}")
            tok = torch.randint(0, 37, (1,))
            row = batch.select([i])
            torch.testing.assert_close(model.step(tok, row), model.step(tok, st), rtol=1e-5, atol=1e-5)


def test_row_of_state_continues_like_the_batch():
    model = tiny_lm("attention")
    st = filled_state(model)
    ids = torch.randint(0, 37, (3, 4))
    with torch.no_grad():
        batch = model(ids, state=st.clone()).logits
        row = model(ids[2:], state=st[2]).logits
    torch.testing.assert_close(row, batch[2:], rtol=1e-5, atol=1e-6)


def test_to_dtype_keeps_counters_and_nbytes():
    st = filled_state(tiny_lm("attention"))
    half = st.to(dtype=torch.bfloat16)
    for d in half.layers:
        assert d["k"].dtype == torch.bfloat16 and d["pos"].dtype == torch.int64
    expected = sum(v.numel() * v.element_size() for d in st.layers for v in d.values())
    assert st.nbytes == expected and half.nbytes < expected
    # attention cache: 2 layers x (k + v) x 3 rows x 2 kv heads x 6 tokens x 8 dims x 4 bytes, + pos
    assert st.nbytes == 2 * (2 * 3 * 2 * 6 * 8 * 4 + 3 * 8)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_save_load_bit_exact(tmp_path, pattern):
    st = filled_state(tiny_lm(pattern))
    st.save(tmp_path / "s.safetensors")
    assert_states_equal(State.load(tmp_path / "s.safetensors"), st)


def test_truncated_or_foreign_file_is_a_clear_error(tmp_path):
    st = filled_state(tiny_lm("attention"))
    path = tmp_path / "s.safetensors"
    st.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(ValueError, match="truncated"):
        State.load(path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an ssmkit State"):
        State.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        State.load(tmp_path / "missing.safetensors")


def test_state_refuses_another_model(tmp_path):
    model = tiny_lm("attention")
    st = filled_state(model)
    st.save(tmp_path / "s.safetensors")
    other = SSMForCausalLM(tiny_cfg("attention", d_model=64)).eval()  # same layout, other config
    loaded = State.load(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="config hash"):
        other(torch.randint(0, 37, (3, 2)), state=loaded)
    with pytest.raises(ValueError, match="config hash"):
        other.generate(torch.randint(0, 37, (3, 2)), state=loaded)
    with pytest.raises(ValueError, match="batch size"):
        model(torch.randint(0, 37, (2, 2)), state=loaded)
    with pytest.raises(ValueError, match="different models"):
        State.cat([loaded, other.init_state(3)])
    with pytest.raises(TypeError, match="ssmkit.State"):
        model(torch.randint(0, 37, (3, 2)), state=loaded.layers)


def test_state_is_updated_in_place_and_is_the_same_object():
    model = tiny_lm("attention")
    st = model.init_state(2)
    out = model(torch.randint(0, 37, (2, 5)), state=st)
    assert out.state is st and st.layers[0]["pos"].tolist() == [5, 5]


def test_state_does_not_pin_prefill_buffers():
    """The State after a long prefill holds only its own bytes, not views of the prefill activations."""
    model = tiny_lm("mamba2,attention")
    st = filled_state(model, batch=1, length=200)
    for i, d in enumerate(st.layers):
        for k, v in d.items():
            held, need = v.untyped_storage().nbytes(), v.numel() * v.element_size()
            assert held <= 2 * need + 4096, f"layer {i} state[{k!r}] pins {held} bytes for {need}"
