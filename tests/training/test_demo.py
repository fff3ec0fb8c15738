"""The demo: both models get the same wall-clock budget, and the table reports them at equal time and
at equal steps (issue 16 item 11)."""

from __future__ import annotations

import json

import pytest

from ssmkit.training.demo import demo


def test_demo_gives_both_models_the_same_time_and_compares_at_equal_steps(tmp_path):
    pytest.importorskip("matplotlib")
    tiny = {"d_model": 16, "n_layer": 1, "layers": "attention", "n_head": 2}
    out, budget = tmp_path / "out", 3.0  # room for a few steps and evaluations on a loaded machine
    s = demo(
        out=str(out),
        cache_dir=str(tmp_path / "cache"),
        budget_s=budget,
        ssm_model=tiny,
        transformer_model={**tiny, "n_layer": 2, "d_intermediate": 16},  # slower per step
        sample_tokens=5,
        batch_size=2,
        seq_len=32,
        n_eval_windows=4,
    )
    files = {p.name for p in out.iterdir()}
    assert {"results.md", "results.json", "learning_curves.png", "samples.txt", "ssm", "transformer"} <= files
    assert not any(".tmp-" in name for name in files)
    assert 4.0 < s["unigram_bpb"] < 6.0 and set(s["models"]) == {"ssm", "transformer"}
    for r in s["models"].values():  # equal time: each stopped on the clock, not on a step count
        assert r["stopped"] == "max_time" and r["train_seconds"] >= budget and r["val_bpb"] > 0
    steps = {name: r["steps"] for name, r in s["models"].items()}
    eq = s["equal_steps"]
    assert eq["step"] is not None and eq["step"] <= min(steps.values()) and set(eq["models"]) == set(steps)
    assert all(m["step"] == eq["step"] and m["bpb"] > 0 for m in eq["models"].values())
    if eq["step"] == min(steps.values()):  # the shorter run's final evaluation is its equal-steps row
        shorter = min(steps, key=steps.get)
        assert eq["models"][shorter]["bpb"] == s["models"][shorter]["val_bpb"]
    table = (out / "results.md").read_text()
    assert "## Equal time" in table and "## Equal steps" in table and f"after {eq['step']} steps" in table
    assert json.loads((out / "results.json").read_text())["equal_steps"]["step"] == eq["step"]
