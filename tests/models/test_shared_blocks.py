"""Shared transformer blocks (Zamba2's): the protocol's equivalences on a model that uses them, the
weights held once, and a reference written from the module docstring's formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit import SSMConfig, SSMForCausalLM, State
from tests.helpers import assert_rel

SHARED = {"n_blocks": 2, "d_intermediate": 40, "adapter_rank": 4, "attention_adapters": True,
          "mlp_adapters": True, "n_head": 4, "n_kv_head": 2, "head_dim": 8}  # fmt: skip


def shared_lm(**kw) -> SSMForCausalLM:
    cfg = dict(d_model=32, n_layer=5, vocab_size=37, layers="mamba2,attention*2,mamba2",
               layer_kwargs={"mamba2": {"d_state": 16, "headdim": 16, "chunk_size": 8}}, n_head=4,
               shared_layers="none,shared", shared_block=SHARED)  # fmt: skip
    torch.manual_seed(0)
    model = SSMForCausalLM(SSMConfig(**{**cfg, **kw})).eval()
    with torch.no_grad():  # adapters away from zero so that each use differs
        for name, p in model.named_parameters():
            if ".adapter." in name:
                p.normal_(0, p.shape[-1] ** -0.5)
    return model


def ids(b=3, length=13, seed=1):
    return torch.randint(0, 37, (b, length), generator=torch.Generator().manual_seed(seed))


def test_layout_and_weights_held_once():
    model = shared_lm()
    cfg = model.config
    assert cfg.shared_uses == [1, 3] and cfg.state_layout == cfg.layer_types + ["attention"] * 2
    assert len(model.backbone.shared_blocks) == 2
    assert model.init_state(2).layout == cfg.state_layout
    again = SSMConfig.from_dict(cfg.to_dict())
    assert again.config_hash() == cfg.config_hash() and again.shared_uses == [1, 3]
    assert "shared_layers" not in SSMConfig().to_dict()  # configs without shared blocks hash as before


def test_forward_matches_the_formula():
    """Block 1 by hand: x + mixer(norm(x + proj(mlp(norm2(attention(norm(cat(x, e))))))))."""
    model = shared_lm(n_layer=2)
    bb, x = model.backbone, ids(2, 9)
    e = bb.embed(x)
    h0 = bb.layers[0](e)
    blk, sb = bb.layers[1], bb.shared_blocks[0]
    a_in = sb.norm(torch.cat([h0, e], -1))
    q, k, v = sb.attention.in_proj(a_in).split([32, 16, 16], -1)
    q, k, v = q + blk.adapter.q(a_in), k + blk.adapter.k(a_in), v + blk.adapter.v(a_in)
    expected_attn = sb.attention(a_in, in_proj_delta=torch.cat([q, k, v], -1) - sb.attention.in_proj(a_in))
    m_in = sb.norm2(expected_attn)
    up, gate = (sb.mlp.fc1(m_in) + blk.adapter.mlp(m_in)).chunk(2, -1)
    t = blk.adapter.proj(sb.mlp.fc2(up * F.gelu(gate)))
    out = h0 + blk.mixer(blk.norm(h0 + t))
    with torch.no_grad():
        assert_rel(bb(x), bb.norm_f(out), 1e-6, "backbone vs formula")


def test_step_step_and_chunks_equal_one_forward():
    model, x = shared_lm(), ids()
    with torch.no_grad():
        full = model(x).logits
        st = model.init_state(3)
        chunks = torch.cat([model(x[:, :6], state=st).logits, model(x[:, 6:], state=st).logits], 1)
        assert_rel(chunks, full, 1e-5, "chunked vs one call")
        st = model.init_state(3)
        steps = torch.stack([model.step(x[:, t], st) for t in range(x.shape[1])], 1)
        assert_rel(steps, full, 1e-5, "step vs forward")
        st = model.init_state(3).clone()
        steps_ = torch.stack([model.step_(x[:, t], st) for t in range(x.shape[1])], 1)
        assert_rel(steps_, full, 1e-5, "step_ vs forward")


def test_rows_of_different_lengths_batch_and_split():
    model = shared_lm()
    a, b = ids(1, 4, seed=2), ids(1, 9, seed=3)
    with torch.no_grad():
        sa, sb = model.init_state(1), model.init_state(1)
        model(a, state=sa), model(b, state=sb)
        both = State.cat([sa, sb])
        assert both.layers[5]["k"].shape[2] == 9  # the shorter row's KV cache left-padded
        nxt = ids(2, 3, seed=4)
        together = model(nxt, state=both).logits
        alone = torch.cat([model(nxt[:1], state=sa).logits, model(nxt[1:], state=sb).logits])
    assert_rel(together, alone, 1e-5, "batched rows vs rows alone")
    assert torch.equal(both[1].layers[6]["pos"], sb.layers[6]["pos"])
    batch = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), a], 1), b])
    mask = torch.ones_like(batch)
    mask[0, :5] = 0
    out = model.generate(batch, max_new_tokens=4, attention_mask=mask, prefill_chunk_size=3)
    assert torch.equal(out[:1, 9:], model.generate(a, max_new_tokens=4)[:, 4:])
    assert torch.equal(out[1:, 9:], model.generate(b, max_new_tokens=4)[:, 9:])


def test_gradients_reach_the_shared_weights_from_every_use():
    model = shared_lm(shared_layers="shared", shared_block={**SHARED, "n_blocks": 1})
    model.train()
    model(ids(2, 7)).logits.square().mean().backward()
    sb = model.backbone.shared_blocks[0]
    assert sb.attention.in_proj.weight.grad.abs().sum() > 0
    for blk in model.backbone.layers:
        assert blk.adapter.q[0].weight.grad.abs().sum() > 0 and blk.adapter.mlp[1].weight.grad.abs().sum() > 0


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown options"):
        shared_lm(shared_block={**SHARED, "ranks": 3})
    with pytest.raises(ValueError, match="adapter_rank"):
        shared_lm(shared_block={**SHARED, "adapter_rank": 0})
    with pytest.raises(ValueError, match="shared-layer kind"):
        shared_lm(shared_layers="none,hybrid")


def test_int8_model_with_shared_blocks(tmp_path):
    """quantize_int8 on a model with shared blocks: its logits stay near float32's, it saves and loads
    as int8 with the same greedy transcript, and a carried State continues it."""
    from ssmkit.models.int8 import quantize_int8

    x = ids(2, 9)
    with torch.no_grad():
        ref = shared_lm()(x).logits
        model = quantize_int8(shared_lm())
        assert_rel(model(x).logits, ref, 0.1, "int8 vs float32 logits")
    want = model.generate(x, max_new_tokens=6)
    model.save_pretrained(tmp_path)
    again = SSMForCausalLM.from_pretrained(tmp_path)
    assert again.quantization == model.quantization
    assert torch.equal(again.generate(x, max_new_tokens=6), want)
    st = again.init_state(2)
    head = again.generate(x, max_new_tokens=3, state=st)  # st: the prompt and the 3 tokens consumed
    more = ids(2, 2, seed=5)
    got = again.generate(more, max_new_tokens=3, state=st)
    assert torch.equal(got, again.generate(torch.cat([head, more], 1), max_new_tokens=3)[:, -5:])
