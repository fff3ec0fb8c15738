"""Falcon-Mamba: transformers' falcon_mamba checkpoints in and out (B, C, dt RMS-normalized in the mixer)."""

import pytest
import torch

from ssmkit.layers.mamba import Mamba
from tests.interop.parity import check_family, randomize_

tf = pytest.importorskip("transformers")

VOCAB = 61


def tiny(tie: bool = True):
    cfg = tf.FalconMambaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        vocab_size=VOCAB,
        state_size=8,
        conv_kernel=4,
        tie_word_embeddings=tie,
        mixer_rms_eps=1e-3,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    model = tf.FalconMambaForCausalLM(cfg)
    randomize_(model)
    return model.eval()


@pytest.mark.parametrize("tie", [True, False])
def test_falcon_mamba_matches_transformers(tmp_path, tie):
    ours = check_family(tiny(tie), tmp_path, VOCAB, model_type="falcon_mamba")
    assert ours.config.layer_types == ["mamba", "mamba"]
    assert ours.backbone.layers[0].mixer.bcdt_rms_eps == 1e-3


def test_the_normalization_is_what_differs_from_mamba(tmp_path):
    """to_hf without a model_type writes a Falcon-Mamba model as falcon_mamba, a plain one as mamba;
    the same weights without the B/C/dt norms give other logits."""
    from ssmkit.interop import from_hf
    from ssmkit.interop.hf import hf_config

    ours = from_hf(tiny())
    assert hf_config(ours)["model_type"] == "falcon_mamba"
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        with_norms = ours(ids).logits
        for blk in ours.backbone.layers:
            blk.mixer.bcdt_rms_eps = None
        assert hf_config(ours)["model_type"] == "mamba"
        assert (ours(ids).logits - with_norms).abs().max() > 1e-2


def test_mamba_option_validates():
    with pytest.raises(ValueError, match="bcdt_rms_eps must be > 0"):
        Mamba(16, bcdt_rms_eps=0.0)
