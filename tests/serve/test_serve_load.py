"""benchmarks/serve_load.py at toy size: every phase runs, nothing errs, the SIGKILL check holds."""

from __future__ import annotations

import json

from benchmarks import serve_load


def test_serve_load_runs_small(tmp_path, capsys):
    out = tmp_path / "serve_load.json"
    serve_load.main(
        [
            "--clients",
            "2",
            "--requests",
            "1",
            "--max-tokens",
            "8",
            "--sessions",
            "6",
            "--session-clients",
            "3",
            "--prefix-tokens",
            "300",
            "--prefix-reps",
            "1",
            "--kill-sessions",
            "4",
            "--kill-after",
            "2",
            "--d-model",
            "32",
            "--n-layer",
            "2",
            "--out",
            str(out),
        ]
    )
    res = json.loads(out.read_text())
    rows = {r["phase"]: r for r in res["rows"]}
    for name, row in rows.items():
        if not name.startswith("load until SIGKILL"):  # there, the cut requests are the errors
            assert row["errors"] == 0, row
    assert rows["sessions, turn 2"]["requests"] == 6
    assert res["batching_ratio"] > 0 and res["prefix_ttft_ratio"] > 0
    kill = res["sigkill_restart"]
    assert kill["sessions_checked"] == 4 and kill["sessions_not_at_a_completed_turn"] == 0
    assert kill["errors_after_restart"] == 0 and kill["continued_after_restart"] == kill["in_flight_at_kill"]
    assert "batching:" in capsys.readouterr().out
