"""Model directories on the command line: a missing tokenizer is an error, not bytes (issue 16 item 4);
transformers checkpoints load through the interop; `info` names the backends this model runs (item 13)."""

from __future__ import annotations

import pytest

from ssmkit.cli import main
from tests.cli.cli_process import one_line_error, run_cli, tiny_corpus, tiny_model_dir


def test_a_model_without_its_tokenizer_is_refused(tmp_path, capsys):
    d = tiny_model_dir(tmp_path / "model", vocab_size=4096, tokenizer=False)
    err = one_line_error(run_cli("generate", d, "--prompt", "def ", "-n", "4"))
    assert "no tokenizer saved" in err and "4096" in err and d in err
    assert (
        main(["eval", d, "--corpus", tiny_corpus(tmp_path / "corpus"), "--cache-dir", str(tmp_path / "c")])
        == 2
    )
    out, err = capsys.readouterr()
    assert out == "" and "no tokenizer saved" in err and err.count("\n") == 1
    assert main(["info", d]) == 0  # describing the model needs no tokenizer
    assert "vocab_size=4096" in capsys.readouterr().out


def test_a_byte_model_needs_no_saved_tokenizer(tmp_path, capsys):
    d = tiny_model_dir(tmp_path / "model", vocab_size=256, tokenizer=False)
    assert main(["generate", d, "--prompt", "def ", "-n", "4"]) == 0
    assert capsys.readouterr().out.startswith("def ")


@pytest.mark.parametrize("layers, op", [("mamba2", "ssd"), ("mamba", "selective_scan")])
def test_info_names_the_backend_each_op_takes_for_this_model(tmp_path, capsys, layers, op):
    kw = (
        {"layer_kwargs": {"mamba2": {"d_state": 16, "headdim": 16, "chunk_size": 8}}}
        if layers == "mamba2"
        else {}
    )
    d = tiny_model_dir(tmp_path / "model", layers=layers, **kw)
    assert main(["info", d]) == 0
    out = capsys.readouterr().out
    lines = [
        line.strip().split(": ", 1) for line in out.splitlines() if line.startswith("  ") and ": " in line
    ]
    used = dict(lines)
    for mode in ("training (forward + backward)", "prefill (no autograd)", "decode step"):
        assert mode in used, out
    assert (
        f"{op}: " in used["training (forward + backward)"]
        and "causal_conv1d: " in used["prefill (no autograd)"]
    )
    assert "fft_conv" not in used["training (forward + backward)"]  # only the ops this model runs
    assert "decoding kernel: numba, every block in one call" in used["decode step"], out


def test_info_on_a_model_without_ssmkit_ops(tmp_path, capsys):
    d = tiny_model_dir(tmp_path / "model", layers="attention")
    assert main(["info", d]) == 0
    out = capsys.readouterr().out
    assert "training (forward + backward): no ssmkit op (PyTorch kernels only)" in out


def test_a_transformers_checkpoint_loads_through_the_interop(tmp_path, capsys):
    from ssmkit.interop import to_hf

    ours = tiny_model_dir(tmp_path / "ours", layers="mamba", tokenizer=False)
    from ssmkit import SSMForCausalLM

    hf = tmp_path / "hf"
    to_hf(SSMForCausalLM.from_pretrained(ours), hf)
    assert main(["info", str(hf)]) == 0
    out = capsys.readouterr().out
    assert f"model ({hf})" in out and "selective_scan" in out
    assert main(["generate", str(hf), "--prompt", "ab", "-n", "3", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("ab")
    (hf / "config.json").write_text('{"model_type": "llama", "vocab_size": 256}')
    assert main(["info", str(hf)]) == 2
    err = capsys.readouterr().err
    assert "transformers checkpoint" in err and "llama" in err and err.count("\n") == 1
