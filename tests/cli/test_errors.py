"""Mistakes get one line on stderr and exit code 2, never a traceback (issue 16, items 8 and 13), run as
the real command where the point is what a user's terminal shows."""

from __future__ import annotations

import inspect
import json
import os

from ssmkit.cli import main
from tests.cli.cli_process import one_line_error, run_cli, tiny_model_dir, train_args


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_unknown_key_inside_layer_kwargs(tmp_path):
    args = train_args(tmp_path, str(tmp_path / "run"), **{"model.layer_kwargs": "{attention: {bogus: 1}}"})
    err = one_line_error(run_cli(*args))
    assert "'bogus'" in err and "model.layer_kwargs.attention" in err and "--set model.layer_kwargs=" in err
    assert not os.path.exists(tmp_path / "run" / "checkpoint.pt")


def test_model_dir_whose_config_is_not_a_json_object(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("[1, 2, 3]")
    err = one_line_error(run_cli("generate", str(d), "-n", "2"))
    assert "config.json" in err and "JSON object" in err


def test_model_dir_with_an_unknown_layer_argument(tmp_path, capsys):
    d = tiny_model_dir(tmp_path / "model")
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    cfg["layer_kwargs"] = {"attention": {"bogus": 1}}
    (tmp_path / "model" / "config.json").write_text(json.dumps(cfg))
    err = _err(capsys, ["info", d])
    assert "config.json" in err and "bogus" in err


def test_resume_with_another_model_config_says_what_differs(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(train_args(tmp_path, out, max_steps=2)) == 0
    capsys.readouterr()
    err = one_line_error(run_cli(*train_args(tmp_path, out, max_steps=4, **{"model.d_model": 48})))
    assert "cannot resume from" in err and "d_model: 32 -> 48" in err
    assert "--no-resume" in err and "--out" in err
    # what the message suggests works
    assert main([*train_args(tmp_path, out, max_steps=2, **{"model.d_model": 48}), "--no-resume"]) == 0
    assert "trained" in capsys.readouterr().out


def test_version():
    r = run_cli("--version", timeout=120)
    from ssmkit import __version__

    assert r.returncode == 0 and r.stdout.strip() == f"ssmkit {__version__}"


def test_a_typo_in_a_flag_points_at_the_subcommand_help(tmp_path, capsys):
    d = tiny_model_dir(tmp_path / "model")
    err = _err(capsys, ["generate", d, "--temprature", "0.5"])
    assert "did you mean --temperature?" in err and "see ssmkit generate --help" in err
    err = _err(capsys, ["train", "--no-resme"])
    assert "did you mean --no-resume?" in err and "see ssmkit train --help" in err


def test_generate_checks_its_options_before_echoing_the_prompt(tmp_path, capsys):
    d = tiny_model_dir(tmp_path / "model")
    assert main(["generate", d, "--prompt", "hello", "--temperature", "-1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "temperature" in err
    assert main(["generate", d, "--prompt", "hello", "--top-p", "1.5"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "top_p" in err


def test_eval_with_an_unknown_corpus_lists_the_names(tmp_path, capsys):
    d = tiny_model_dir(tmp_path / "model")
    err = _err(capsys, ["eval", d, "--corpus", "stdlb", "--cache-dir", str(tmp_path / "cache")])
    assert "'stdlb'" in err and all(name in err for name in ("stdlib", "kjv", "python-docs", "dna"))


def test_a_bad_set_is_blamed_not_the_yaml(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lr: 1e-3\nmodel:\n  d_model: 64\n")
    err = _err(capsys, ["train", "--config", str(cfg), "--set", "lr=abc"])
    assert err.startswith("ssmkit: error: --set lr=abc:") and str(cfg) not in err
    err = _err(capsys, ["train", "--config", str(cfg), "--set", "model.n_layer=0"])
    assert err.startswith("ssmkit: error: --set model.n_layer=0:") and "n_layer" in err
    cfg.write_text("lr: abc\n")
    err = _err(capsys, ["train", "--config", str(cfg), "--set", "batch_size=2"])
    assert err.startswith(f"ssmkit: error: {cfg}:") and "'lr'" in err


def test_the_corpus_cache_has_one_place_and_git_ignores_it():
    from ssmkit.cli import build_parser
    from ssmkit.training.config import DEFAULT_CACHE_DIR, TrainConfig
    from ssmkit.training.demo import demo

    assert TrainConfig().cache_dir == DEFAULT_CACHE_DIR
    assert inspect.signature(demo).parameters["cache_dir"].default == DEFAULT_CACHE_DIR
    ev = build_parser().parse_args(["eval", "x"])
    assert ev.cache_dir == DEFAULT_CACHE_DIR
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, ".gitignore")) as f:
        assert f"{DEFAULT_CACHE_DIR}/" in f.read().split()
