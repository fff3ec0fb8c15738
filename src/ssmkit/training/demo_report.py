"""What the demo writes: results.json, results.md (equal-time and equal-steps tables), samples.txt and
learning_curves.png, each file written atomically (`ssmkit._files`)."""

from __future__ import annotations

import json
import os

from ssmkit._files import write_atomic, write_bytes_atomic


def write_report(out: str, summary: dict, curves: dict, samples: dict, prompt: str) -> str:
    """Every output file under `out`; returns the markdown table (also printed by the demo)."""
    write_bytes_atomic(os.path.join(out, "results.json"), json.dumps(summary, indent=2).encode())
    text = "".join(
        f"===== {name} ({summary['models'][name]['layers']}), prompt {prompt!r} =====\n{sample}\n\n"
        for name, sample in samples.items()
    )
    write_bytes_atomic(os.path.join(out, "samples.txt"), text.encode())
    table = markdown(summary)
    write_bytes_atomic(os.path.join(out, "results.md"), table.encode())
    plot_msg = plot(curves, summary["unigram_bpb"], os.path.join(out, "learning_curves.png"))
    if plot_msg:
        print(f"demo: {plot_msg}")
    return table


def plot(curves: dict, unigram_bpb: float, path: str) -> str | None:
    """Validation bits per byte against training time (the equal-time view) and per-batch training
    bits per byte against steps (the equal-steps view); a message instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot written"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, c in curves.items():
        axes[0].plot([t / 60 for t in c["val_time"]], c["val_bpb"], marker="o", label=name)
        axes[1].plot(c["train_step"], c["train_bpb"], alpha=0.8, label=name)
    for ax in axes:
        ax.axhline(unigram_bpb, color="gray", linestyle="--", label="unigram baseline")
        ax.set_ylabel("bits per byte")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_xlabel("training time (min)")
    axes[0].set_title("validation (same wall-clock budget)")
    axes[1].set_xlabel("step")
    axes[1].set_title("training (per batch)")
    fig.suptitle("byte-level LM on the Python standard library sources")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return None


def markdown(s: dict) -> str:
    """The results page: the setting, the equal-time table and the equal-steps comparison."""
    c, eq = s["corpus"], s["equal_steps"]
    lines = [
        f"# ssmkit demo: byte-level LM on the Python {c['python']} standard library",
        "",
        f"Train {c['train_bytes']:,} bytes, validation {c['val_bytes']:,} bytes (split by file, fingerprint "
        f"{c['fingerprint']}); context {s['seq_len']}, batch {s['batch_size']}. Each model trained for "
        f"the same wall-clock budget of {s['budget_s_per_model']:.0f} s (its learning-rate schedule runs "
        f"over the clock), so the faster model takes more steps. Whole run: {s['wall_seconds']:.0f} s.",
        "",
        "## Equal time",
        "",
        "| model | layers | parameters | steps | train s | tokens/s | val bits/byte | val acc |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in s["models"].items():
        lines.append(
            f"| {name} | {r['layers']} | {r['parameters']:,} | {r['steps']} | {r['train_seconds']:.0f} | "
            f"{r['tokens_per_s']:,} | {r['val_bpb']:.3f} | {r['val_acc']:.3f} |"
        )
    lines.append(f"| unigram baseline | byte frequencies | 256 | - | - | - | {s['unigram_bpb']:.3f} | - |")
    lines += ["", "## Equal steps", ""]
    if not eq["models"]:
        lines.append("No step was evaluated by both models (too short a run).")
    else:
        lines += [
            eq["note"],
            "",
            "| model | at step | train s to that step | val bits/byte | val acc |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, r in eq["models"].items():
            lines.append(f"| {name} | {r['step']} | {r['time']:.0f} | {r['bpb']:.3f} | {r['acc']:.3f} |")
    return "\n".join(lines) + "\n"
