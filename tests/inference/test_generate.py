"""generate: cached == full, streaming, left padding, chunked prefill, sampling options, stop tokens,
and a transcript paused after any token, saved, and continued in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ssmkit import State
from ssmkit.inference.generate import sample_next
from tests.models.tiny import tiny_lm

PATTERNS = [
    "toy,attention",
    "attention",
    "mamba2",
    "mamba",
    "s4d",
    "mamba2*3,attention",
    "s4d,attention",
    "mamba,attention",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_greedy_equals_argmax_of_full_forward(pattern):
    model = tiny_lm(pattern, d_intermediate=32)
    ids = torch.randint(0, 37, (2, 5))
    out = model.generate(ids, max_new_tokens=8)
    assert out.shape == (2, 13) and torch.equal(out[:, :5], ids)
    with torch.no_grad():
        full = model(out).logits
    assert torch.equal(out[:, 5:], full[:, 4:-1].argmax(-1))


@pytest.mark.parametrize("pattern", ["attention", "mamba2,attention"])
def test_stream_yields_the_same_tokens(pattern):
    model = tiny_lm(pattern)
    ids = torch.randint(0, 37, (2, 4))
    out = model.generate(ids, max_new_tokens=6)
    it = model.generate(ids, max_new_tokens=6, stream=True)
    assert not isinstance(it, torch.Tensor)
    streamed = list(it)
    assert len(streamed) == 6 and all(t.shape == (2,) for t in streamed)
    assert torch.equal(torch.stack(streamed, 1), out[:, 4:])
    assert torch.is_grad_enabled()  # grad mode never leaks


@pytest.mark.parametrize(
    "pattern", ["toy,attention", "attention", "mamba2", "s4d,attention", "mamba2*3,attention"]
)
def test_left_padded_batch_equals_each_prompt_alone(pattern):
    model = tiny_lm(pattern)
    prompts = [torch.randint(0, 37, (n,)) for n in (3, 7, 5, 7)]
    L = 7
    ids = torch.stack([torch.cat([torch.zeros(L - len(p), dtype=torch.long), p]) for p in prompts])
    mask = torch.stack([(torch.arange(L) >= L - len(p)).long() for p in prompts])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6)
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=6)
        assert torch.equal(out[i, L:], alone[0, len(p) :]), f"row {i}"


@pytest.mark.parametrize("pattern", ["toy,attention", "attention", "mamba2,attention", "s4d,attention"])
def test_chunked_prefill_equals_one_call(pattern):
    model = tiny_lm(pattern)
    ids = torch.randint(0, 37, (2, 11))
    st1, st2 = model.init_state(2), model.init_state(2)
    a = model.generate(ids, max_new_tokens=5, state=st1)
    b = model.generate(ids, max_new_tokens=5, state=st2, prefill_chunk_size=3)
    assert torch.equal(a, b)
    for d1, d2 in zip(st1.layers, st2.layers):
        for k in d1:
            torch.testing.assert_close(d1[k], d2[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pattern", ["mamba2", "mamba,attention"])
def test_default_prefill_is_chunked_and_equals_one_call(pattern, monkeypatch):
    from ssmkit.inference import generate as gen

    model = tiny_lm(pattern)
    ids = torch.randint(0, 37, (2, 11))
    calls = []
    forward = type(model).forward
    monkeypatch.setattr(
        type(model), "forward", lambda self, x, **kw: calls.append(x.shape[1]) or forward(self, x, **kw)
    )
    monkeypatch.setattr(gen, "PREFILL_CHUNK", 4)
    st1, st2 = model.init_state(2), model.init_state(2)
    a = model.generate(ids, max_new_tokens=5, state=st1)
    assert calls == [4, 4, 3], "the prompt was not read in chunks of PREFILL_CHUNK"
    b = model.generate(ids, max_new_tokens=5, state=st2, prefill_chunk_size=11)
    assert torch.equal(a, b)
    for d1, d2 in zip(st1.layers, st2.layers):
        for k in d1:
            torch.testing.assert_close(d1[k], d2[k], rtol=1e-4, atol=1e-5)


def test_state_consumes_prompt_and_every_generated_token():
    """generate(p1, state) then generate(p2, state) == generate on the whole transcript without a state."""
    model = tiny_lm("attention")
    p1, p2 = torch.randint(0, 37, (2, 4)), torch.randint(0, 37, (2, 3))
    st = model.init_state(2)
    out1 = model.generate(p1, max_new_tokens=5, state=st)
    assert st.layers[0]["pos"].tolist() == [9, 9]
    out2 = model.generate(p2, max_new_tokens=4, state=st)
    ref = model.generate(torch.cat([out1, p2], 1), max_new_tokens=4)
    assert torch.equal(out2[:, 3:], ref[:, 12:])


PAUSE_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, sys.argv[2])
    import tests.models.toy_mixer  # registers the "toy" layer, as any plugin mixer is made known
    from ssmkit import SSMForCausalLM, State
    work = sys.argv[1]
    jobs = json.load(open(work + "/jobs.json"))
    result = {}
    for name, job in jobs.items():
        model = SSMForCausalLM.from_pretrained(f"{work}/{name}").eval()
        follow = torch.tensor(job["follow"])
        for k in job["ks"]:
            st = State.load(f"{work}/{name}/state_{k}.safetensors")
            out = model.generate(follow, max_new_tokens=6, state=st)
            result[f"{name}/{k}"] = out[:, follow.shape[1]:].tolist()
    print(json.dumps(result))
    """
)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAUSE_PATTERNS = ["attention", "mamba2*3,attention", "s4d,attention", "mamba", "toy,attention"]


def test_pause_save_resume_in_fresh_process(tmp_path):
    """For each stack: pause after k generated tokens, save the State, continue with a follow-up
    prompt in another process (one process for all stacks): the tokens equal those of the
    never-paused transcript."""
    jobs, expected = {}, {}
    for i, pattern in enumerate(PAUSE_PATTERNS):
        model = tiny_lm(pattern)
        name = f"m{i}"
        model.save_pretrained(tmp_path / name)
        prompt, follow = torch.randint(0, 37, (2, 4)), torch.randint(0, 37, (2, 3))
        jobs[name] = {"follow": follow.tolist(), "ks": [1, 2, 5], "pattern": pattern}
        for k in jobs[name]["ks"]:
            st = model.init_state(2)
            first = model.generate(prompt, max_new_tokens=k, state=st)
            st.save(tmp_path / name / f"state_{k}.safetensors")
            never_paused = model.generate(torch.cat([first, follow], 1), max_new_tokens=6)
            expected[f"{name}/{k}"] = never_paused[:, first.shape[1] + 3 :].tolist()
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run(
        [sys.executable, "-c", PAUSE_SCRIPT, str(tmp_path), ROOT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for key, want in expected.items():
        assert got[key] == want, f"{jobs[key.split('/')[0]]['pattern']}, paused after {key.split('/')[1]}"


# ---- sampling options ------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy():
    model = tiny_lm("attention")
    ids = torch.randint(0, 37, (3, 4))
    a = model.generate(ids, max_new_tokens=10, do_sample=True, seed=7)
    b = model.generate(ids, max_new_tokens=10, do_sample=True, seed=7)
    c = model.generate(ids, max_new_tokens=10, do_sample=True, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = model.generate(ids, max_new_tokens=10)
    assert torch.equal(model.generate(ids, max_new_tokens=10, do_sample=True, top_k=1, seed=1), greedy)
    assert torch.equal(model.generate(ids, max_new_tokens=10, do_sample=True, top_p=1e-6, seed=1), greedy)


def test_sample_next_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, do_sample=True, top_k=2, generator=g) for _ in range(200)])
    assert set(draws.flatten().tolist()) == {0, 1}
    # top_p: p = softmax = [.66, .24, .09, .01]; 0.8 keeps the two tokens needed to reach 0.8
    draws = torch.stack([sample_next(logits, do_sample=True, top_p=0.8, generator=g) for _ in range(200)])
    assert set(draws.flatten().tolist()) == {0, 1}
    seen = torch.tensor([[True, False, False, False]])
    assert sample_next(logits, seen, repetition_penalty=2.0).item() == 1  # 3/2 < 2
    assert sample_next(logits, seen, repetition_penalty=1.4).item() == 0  # 3/1.4 > 2


def test_repetition_penalty_changes_greedy_output():
    model = tiny_lm("attention")
    ids = torch.randint(0, 37, (1, 4))
    plain = model.generate(ids, max_new_tokens=12)
    penalized = model.generate(ids, max_new_tokens=12, repetition_penalty=1e4)
    new = penalized[0, 4:].tolist()
    assert len(set(new)) > len(set(plain[0, 4:].tolist())) or len(set(new)) == len(new)


def test_stop_tokens_end_rows_and_pad():
    model = tiny_lm("attention")
    ids = torch.randint(0, 37, (2, 4))
    free = model.generate(ids, max_new_tokens=8)
    stop = int(free[0, 6])  # row 0's third new token
    out = model.generate(ids, max_new_tokens=8, eos_token_id=[stop, 999], pad_token_id=0)
    row0 = out[0, 4:].tolist()
    first = row0.index(stop)
    assert all(t == 0 for t in row0[first + 1 :])
    assert torch.equal(out[0, : 4 + first + 1], free[0, : 4 + first + 1])
    if stop not in free[1, 4:].tolist():
        assert out.shape[1] == 12 and torch.equal(out[1], free[1])


def test_bad_arguments_are_named():
    model = tiny_lm("attention")
    ids = torch.randint(0, 37, (2, 4))
    with pytest.raises(ValueError, match="top_p"):
        model.generate(ids, top_p=0.0)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(ids[:, :0])
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(ids + 100)
    with pytest.raises(ValueError, match="batch size"):
        model.generate(ids, state=model.init_state(3))
    assert isinstance(model.init_state(2), State)
