"""The checks every transformers family passes (tests/interop/test_<family>.py call `check_family`).

A tiny random transformers model, its weights scaled so that logits are far from uniform, is saved
with save_pretrained and read with from_hf; then, against transformers' own FORWARD (never its
generate: the two can disagree, e.g. Nemotron-H clamps dt in the forward only):
  - logits within 1e-4 relative error;
  - greedy decoding (with a chunked prefill) equal to greedy decoding by repeated full forwards,
    for a batch of prompts of different lengths (left padding) as for each prompt alone;
  - a transcript continued from a State saved to a file and loaded into a fresh State object equal
    to the uninterrupted one, and to transformers' greedy decoding of the whole transcript;
  - sampling with a seed gives the same tokens streamed or not; save_pretrained / from_pretrained
    keeps the logits;
  - where the family round-trips, to_hf writes a directory that transformers loads with the same
    weights and logits.
"""

from __future__ import annotations

import math

import torch

from ssmkit import SSMForCausalLM, State
from ssmkit.interop import from_hf, to_hf
from tests.helpers import assert_rel


def randomize_(model, seed: int = 0) -> None:
    """Weights of order one: Linear ~ N(0, 1/fan_in), norms ~ 1 + N(0, 0.1^2), A_log / D / dt_bias
    spread, biases and saved buffers (routing bias) small; so logits are far from uniform."""
    g = torch.Generator().manual_seed(seed)

    def randn(p):
        return torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)

    saved = set(model.state_dict())  # non-persistent buffers (Falcon-H1's mup_vector) are derived
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not p.is_floating_point() or "inv_freq" in name or name not in saved:
                continue
            if name.endswith("A_log"):
                p.copy_(randn(p) * 0.5)
            elif name.endswith((".D", "dt_bias", "dt_proj.bias")):
                p.copy_(randn(p) * 0.5)
            elif "norm" in name and p.dim() == 1:
                p.copy_(1 + 0.1 * randn(p))
            elif "embed" in name:
                p.copy_(randn(p))
            elif p.dim() == 1:
                p.copy_(0.1 * randn(p))
            else:
                p.copy_(randn(p) / math.sqrt(p.shape[-1]))


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def hf_greedy(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding by n full forward passes (no cache)."""
    for _ in range(n):
        nxt = hf_logits(model, ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


def check_family(theirs, tmp_path, vocab: int, model_type: str | None = None, round_trip: bool = True):
    """Every check of the module docstring on a transformers model object `theirs` (eval mode)."""
    theirs.eval()
    theirs.save_pretrained(tmp_path / "hf")
    ours = from_hf(tmp_path / "hf")
    g = torch.Generator().manual_seed(1)

    ids = torch.randint(0, vocab, (2, 23), generator=g)
    assert_rel(hf_logits(ours, ids), hf_logits(theirs, ids), 1e-4, "logits vs transformers' forward")

    # greedy, a batch of prompts of different lengths (left padding), chunked prefill
    n_new = 8
    short, long = ids[0, :5], ids[1, :11]
    batch = torch.stack([torch.cat([torch.zeros(6, dtype=torch.long), short]), long])
    mask = torch.ones_like(batch)
    mask[0, :6] = 0
    got = ours.generate(batch, max_new_tokens=n_new, attention_mask=mask, prefill_chunk_size=4)
    for row, prompt in enumerate((short, long)):
        expected = hf_greedy(theirs, prompt[None], n_new)[0, len(prompt) :]
        assert torch.equal(got[row, -n_new:], expected), (
            f"greedy row {row}: {got[row, -n_new:]} vs {expected}"
        )

    # a transcript paused in a file and continued from a fresh State object
    first, second = ids[0, :7][None], ids[1, :4][None]
    st = ours.init_state(1)
    turn1 = ours.generate(first, max_new_tokens=5, state=st)[:, 7:]
    st.save(tmp_path / "state.safetensors")
    uninterrupted = ours.generate(second, max_new_tokens=6, state=st)[:, 4:]
    resumed_state = State.load(tmp_path / "state.safetensors")
    resumed = ours.generate(second, max_new_tokens=6, state=resumed_state)[:, 4:]
    assert torch.equal(resumed, uninterrupted), "continued after State.save/load differs"
    whole = hf_greedy(theirs, torch.cat([first, turn1, second], 1), 6)[:, -6:]
    assert torch.equal(resumed, whole), "transcript differs from transformers' greedy decoding of it"

    # sampling, streamed or not; ssmkit's own checkpoint format
    sample = dict(max_new_tokens=6, do_sample=True, seed=3, top_k=8, temperature=0.9)
    drawn = ours.generate(ids[:, :5], **sample)[:, 5:]
    streamed = torch.stack(list(ours.generate(ids[:, :5], stream=True, **sample)), 1)
    assert torch.equal(drawn, streamed), "sampling streamed vs not"
    ours.save_pretrained(tmp_path / "ssmkit")
    again = SSMForCausalLM.from_pretrained(tmp_path / "ssmkit")
    assert_rel(hf_logits(again, ids), hf_logits(ours, ids), 1e-7, "save_pretrained / from_pretrained")

    if round_trip:
        from transformers import AutoModelForCausalLM

        to_hf(ours, tmp_path / "back", model_type=model_type)
        again = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
        assert type(again) is type(theirs)
        want = theirs.state_dict()
        for k, v in again.state_dict().items():
            assert torch.equal(v, want[k]), f"to_hf round trip changed {k}"
        assert_rel(hf_logits(again, ids), hf_logits(theirs, ids), 1e-6, "to_hf round trip logits")
    return ours
