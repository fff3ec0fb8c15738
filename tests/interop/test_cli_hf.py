"""`ssmkit generate` / `info` on a transformers checkpoint directory: read through from_hf, its
tokenizer.json used as is, its eos token honoured."""

import pytest
import torch

from ssmkit.cli import main
from ssmkit.training.tokenizer import BPETokenizer
from tests.interop.parity import hf_greedy, randomize_

tf = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bamba")
    text = d / "corpus.txt"
    text.write_text("the state space model reads the sequence and keeps a state. " * 40)
    bpe = BPETokenizer.train([text], vocab_size=300)
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=bpe._tok, eos_token="<eos>")
    cfg = tf.BambaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(fast),
        attn_layer_indices=[1],
        mamba_n_heads=4,
        mamba_d_state=8,
        mamba_chunk_size=8,
        eos_token_id=fast.eos_token_id,
        bos_token_id=None,
        pad_token_id=None,
    )
    model = tf.BambaForCausalLM(cfg)
    randomize_(model)
    model.save_pretrained(d / "model")
    fast.save_pretrained(d / "model")
    return d / "model", model.eval(), fast


def test_generate_on_a_transformers_directory(hf_dir, capsys):
    directory, theirs, fast = hf_dir
    prompt = "the state space"
    assert main(["generate", str(directory), "--prompt", prompt, "-n", "6", "--greedy"]) == 0
    out = capsys.readouterr().out
    ids = torch.tensor([fast(prompt)["input_ids"]])
    new = hf_greedy(theirs, ids, 6)[0, ids.shape[1] :].tolist()
    if fast.eos_token_id in new:
        new = new[: new.index(fast.eos_token_id)]
    assert out == prompt + fast.decode(new, skip_special_tokens=True) + "\n"


def test_info_tells_family_size_state_and_backends(hf_dir, capsys):
    directory, theirs, _ = hf_dir
    assert main(["info", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "family: transformers bamba" in out
    assert f"{sum(p.numel() for p in theirs.parameters()):,} parameters" in out
    assert "state per sequence:" in out and "bytes per token of context (attention KV cache)" in out
    prefill = next(line for line in out.splitlines() if "prefill (no autograd):" in line)
    assert "ssd: " in prefill and "causal_conv1d: " in prefill  # the Mamba-2 layer's ops, observed
