"""The `ssmkit` command: help on every subcommand, one-line errors, and a tiny train -> generate/eval/info."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ssmkit.cli import build_parser, main

SUBCOMMANDS = ("train", "generate", "eval", "bench", "convert", "quantize", "info", "demo")


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_help_of_every_subcommand(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"ssmkit {cmd}" in out and "--help" in out


def test_top_level_help_lists_every_subcommand():
    text = build_parser().format_help()
    assert all(cmd in text for cmd in SUBCOMMANDS)


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    return err


def test_bad_config_key_is_one_line_naming_it(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lr: 1e-3\nlearnig_rate: 0.1\n")
    assert "'learnig_rate'" in _one_line_error(capsys, ["train", "--config", str(cfg)])
    cfg.write_text("model:\n  d_modle: 64\n")
    assert "'d_modle'" in _one_line_error(capsys, ["train", "--config", str(cfg)])
    assert "'lrr'" in _one_line_error(capsys, ["train", "--set", "lrr=1"])
    cfg.write_text("batch_size: -3\n")
    assert "'batch_size'" in _one_line_error(capsys, ["train", "--config", str(cfg)])


def test_wrong_flags_and_missing_files_are_one_line(tmp_path, capsys):
    assert "--bogus" in _one_line_error(capsys, ["train", "--bogus"])
    assert "not found" in _one_line_error(capsys, ["train", "--config", str(tmp_path / "none.yaml")])
    assert "no such directory" in _one_line_error(capsys, ["generate", str(tmp_path / "none")])
    assert "no model here" in _one_line_error(capsys, ["eval", str(tmp_path)])


def test_tiny_train_then_generate_eval_info(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"f{i}.py").write_text("def add(a, b):\n    return a + b\n" * (10 + i))
    out = tmp_path / "run"
    argv = [
        "train",
        "--out",
        str(out),
        "--set",
        f"corpus={corpus}",
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
        "--set",
        "model.layers=attention",
        "--set",
        "model.d_model=32",
        "--set",
        "model.n_layer=1",
        "--set",
        "model.n_head=2",
        "--set",
        "max_steps=4",
        "--set",
        "seq_len=32",
        "--set",
        "batch_size=4",
        "--set",
        "eval_windows=2",
        "--set",
        "val_fraction=0.3",
    ]
    assert main(argv) == 0
    assert "trained" in capsys.readouterr().out
    assert {"checkpoint.pt", "metrics.jsonl", "train_config.json", "model"} <= set(os.listdir(out))
    with open(out / "metrics.jsonl") as f:
        assert any(json.loads(line)["split"] == "val" for line in f)
    assert main(["generate", str(out), "--prompt", "def ", "-n", "8"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    assert (
        main(
            [
                "eval",
                str(out),
                "--corpus",
                str(corpus),
                "--seq-len",
                "32",
                "--windows",
                "2",
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    assert "bits/byte" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    assert "parameters" in capsys.readouterr().out


def test_quantize_then_generate(tmp_path, capsys):
    from ssmkit import SSMConfig, SSMForCausalLM

    cfg = SSMConfig(d_model=32, n_layer=2, vocab_size=256, layers="mamba2",
                    layer_kwargs={"mamba2": {"d_state": 16, "headdim": 16}})
    SSMForCausalLM(cfg).save_pretrained(tmp_path / "model")
    assert main(["quantize", str(tmp_path / "model"), str(tmp_path / "int8")]) == 0
    assert "int8" in capsys.readouterr().out
    again = SSMForCausalLM.from_pretrained(tmp_path / "int8")
    assert again.quantization == "int8" and again.lm_head.weight.dtype == torch.int8
    for argv in (["generate", str(tmp_path / "int8")], ["generate", str(tmp_path / "model"), "--int8"]):
        assert main([*argv, "--prompt", "def ", "-n", "6", "--greedy"]) == 0
        assert capsys.readouterr().out.startswith("def ")


def test_python_dash_m_ssmkit():
    r = subprocess.run(
        [sys.executable, "-m", "ssmkit", "info", "--set", "bogus=1"], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "'bogus'" in r.stderr


def test_shipped_configs_parse():
    from ssmkit.training.config import TrainConfig

    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    names = sorted(f for f in os.listdir(root) if f.endswith(".yaml"))
    assert names
    for name in names:
        cfg = TrainConfig.from_yaml(os.path.join(root, name))
        assert cfg.model["layers"] and cfg.lr > 0
