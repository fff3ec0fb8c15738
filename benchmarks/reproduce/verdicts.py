"""Verdicts on the papers' claims, computed from an entry's numbers: `judge(name, result)` ->
{"reproduced": bool, "figures": {what the verdict rests on}, "verdict": one paragraph}. The runner
stores them in docs/results/<entry>.json; the report prints them. Thresholds are the issue's:

    selective copying  Mamba >= 95% per token, every plain time-invariant layer (S4D, H3, Hyena) at least
                       20 points below (S4D in the Mamba block and S5 reported, outside the criterion)
    induction heads    Mamba >= 95% at 16x the training length, attention below 50% there
    MQAR               Mamba-2's accuracy rises with its state (each N above the last by 2 points, or
                       both solved at >= 95%: no room left; the largest N above the smallest), attention
                       >= 90% (the row marked "reference": Zoology's, a short convolution before it)
    long range         on every task, the best SSM ahead of the same-size Transformer by more than two
                       standard errors of the difference (binomial over the test examples)
    forecasting        on every series, the best SSM's MAE below the best naive baseline's and the
                       Transformer's
    scaling            the Transformer's training step grows faster than linearly (log-log slope over the
                       longest lengths >= 1.5), every SSM's about linearly (<= 1.25);
                       peak memory > 0 everywhere

Where a claim is not reproduced, the verdict names the measured cause the numbers show (a learning curve
still improving at the end of the budget, a model at chance) and the run that would settle it.
"""

from __future__ import annotations

import math

from benchmarks.reproduce import harness as H

LTI_MARGIN = 0.20
LINEAR_SLOPE = 1.25               # scaling: a log-log slope at most this is linear growth
QUADRATIC_SLOPE = 1.5             # scaling: at least this, attention's superlinear growth
GATED_S4D = "S4D in the Mamba block"
SOLVED = 0.95                     # MQAR: accuracy at which a larger state has no room to add


def judge(name: str, r: dict) -> dict:
    fn = {
        "selective_copying": _selective_copying,
        "induction_heads": _induction_heads,
        "mqar": _mqar,
        "long_range": _long_range,
        "forecasting": _forecasting,
        "scaling": _scaling,
    }[name]
    reproduced, figures, text = fn(r)
    return {"reproduced": bool(reproduced), "figures": figures, "verdict": text}


def _ran(r: dict) -> list[dict]:
    return [x for x in r.get("rows", []) if x.get("status") != H.NOT_AVAILABLE]


def _row(rows: list[dict], model: str) -> dict | None:
    return next((x for x in rows if x["model"] == model), None)


def _cause(x: dict, metric: str = "acc", higher: bool = True) -> str:
    """What the row's learning curve says about its budget."""
    curve = x.get("curve") or []
    pts = [p for p in curve if "metric" in p]
    if len(pts) >= 4:
        if H.still_improving(curve, higher_is_better=higher):
            return (
                f"{x['model']}'s learning curve was still improving at the end ({_curve_text(pts)}): the "
                f"budget of {x['steps']} steps is too short; rerun with more steps (`--full`) to settle it"
            )
        return (
            f"{x['model']}'s learning curve had flattened ({_curve_text(pts)}): more steps of this "
            f"configuration would not change it; a learning-rate sweep or a larger model would"
        )
    return (
        f"{x['model']} trained {x.get('steps', '?')} steps (final training loss {x.get('final_loss', '?')}) "
        f"and its run recorded no learning curve; rerun with curves and more steps (`--full`)"
    )


def _curve_text(pts: list[dict]) -> str:
    return ", ".join(f"{p['metric']:.3g} at {p['step']}" for p in pts[-3:])


def _selective_copying(r):
    rows = _ran(r)
    sel = _row(rows, "Mamba")
    # the claim's: the plain time-invariant layers S4D, H3, Hyena; S5 and the gated S4D (the Mamba block
    # around a time-invariant SSM) are shown and reported, outside the criterion
    lti = [x for x in rows if x["model"] not in ("Mamba", "S5", GATED_S4D)]
    if not sel or not lti:
        return False, {}, "Not enough rows ran to compare."
    best = max(lti, key=lambda x: x["acc"])
    figures = {
        "mamba_acc": sel["acc"],
        "best_time_invariant": best["model"],
        "best_time_invariant_acc": best["acc"],
        "steps": sel.get("steps"),
    }
    ok = sel["acc"] >= 0.95 and best["acc"] <= sel["acc"] - LTI_MARGIN
    text = (
        f"Mamba {H.pct(sel['acc'])} per token after {sel.get('steps')} steps vs the best plain "
        f"time-invariant layer ({best['model']}) {H.pct(best['acc'])} after {best.get('steps')}"
        + (" (all: " + ", ".join(f"{x['model']} {H.pct(x['acc'])}" for x in lti) + ")."
           if len(lti) > 1 else ".")
    )
    gated = _row(rows, GATED_S4D)
    if gated:
        figures["gated_s4d_acc"] = gated["acc"]
        text += (
            f" {GATED_S4D} (the paper's 'Mamba architecture, S4 layer', 56.4% at length 4096; outside the "
            f"criterion): {H.pct(gated['acc'])}"
            + (f", within {100 * LTI_MARGIN:.0f} points of Mamba: with the Mamba block's gate and short "
               f"convolution a time-invariant SSM learns the task at a noise region of "
               f"{r.get('config', {}).get('seq_len')} tokens (a finding of this scale)."
               if gated["acc"] > sel["acc"] - LTI_MARGIN else ".")
        )
    if ok:
        return (
            True,
            figures,
            text + " Reproduced: the selective layer solves it, the time-invariant ones do not.",
        )
    whys = [_cause(sel)] if sel["acc"] < 0.95 else []
    if best["acc"] > sel["acc"] - LTI_MARGIN:
        noise = r.get("config", {}).get("seq_len")
        pts = [p for p in best.get("curve", []) if "metric" in p]
        rising = H.still_improving(best.get("curve") or [])
        whys.append(
            f"{best['model']} came within {100 * LTI_MARGIN:.0f} points of Mamba"
            + (f" ({_curve_text(pts)}{', still rising at the end' if rising else ''})" if pts else "")
            + _half_way(sel, best)
            + (f": over a noise region of {noise} tokens (the paper's: 4096) a time-invariant layer of this "
               f"size learns where the tokens sit"
               + (", and more steps would narrow the gap further, not widen it" if rising else "")
               + "; the paper's gap is a long-sequence one. The experiment that settles it: the same rows "
               "over a region many times the layers' state (`--full`: 1024), with the steps Mamba needs "
               "to leave its plateau there" if noise else "")
            + _sizing(r)
        )
    return False, figures, text + f" NOT reproduced: {'; '.join(whys)}."


def _sizing(r: dict) -> str:
    """The longer settings tried for this configuration (config["sizing"]) where Mamba fell short."""
    runs = [x for x in r.get("config", {}).get("sizing", []) if x["acc"].get("Mamba", 1.0) < 0.95]
    if not runs:
        return ""
    return ("; longer regions or more tokens, where the time-invariant rows would fall further behind, "
            "leave Mamba on its plateau within a budget we can run (" + "; ".join(
                f"region {x['region']} with {x['tokens']} tokens, {x['steps']} steps: "
                + ", ".join(f"{m} {H.pct(a)}" for m, a in x["acc"].items()) for x in runs)
            + "), so no setting within this budget shows the paper's gap")


def _half_way(sel: dict, lti: dict) -> str:
    """When each row's learning curve first reached 50%, where the LTI row got there first: Mamba's
    plateau (its loss at chance while it finds what to select) against a kernel learning positions."""
    def first(x):
        return next((p["step"] for p in x.get("curve", []) if p.get("metric", 0) >= 0.5), None)

    a, b = first(sel), first(lti)
    if a is None or b is None or a <= b:
        return ""
    return f"; it reached 50% by step {b}, Mamba by step {a}"


def _induction_heads(r):
    rows = _ran(r)
    train_len = r["config"]["train_len"]
    L16 = str(16 * train_len)
    mamba2 = [x["model"] for x in rows if x["model"].startswith("Mamba-2")]
    names = ["Mamba", *mamba2, "Attention (rotary)"]
    acc = {m: (_row(rows, m) or {}).get("by_length", {}).get(L16) for m in names}
    figures = {f"{m} acc at {L16}": (a or {}).get("acc") for m, a in acc.items()}
    m, a = acc["Mamba"], acc["Attention (rotary)"]
    ok = bool(m and m["acc"] >= 0.95 and (a is None or a["acc"] < 0.5))
    text = (
        "; ".join(f"{k} at 16x ({L16}): {H.pct(v['acc']) if v else 'not run'}" for k, v in acc.items()) + "."
    )
    states = [(m, acc[m]["acc"]) for m in mamba2 if acc.get(m)]
    if len(states) > 1:
        change = states[-1][1] - states[0][1]
        text += (f" Mamba-2 with a larger state ({states[0][0]} -> {states[-1][0]}): "
                 f"{H.pct(states[0][1])} -> {H.pct(states[-1][1])} at 16x, "
                 + ("no better: a larger state does not change it." if change <= 0.05
                    else "better.") )
    if ok:
        return True, figures, text + " Reproduced: Mamba extrapolates, attention collapses."
    mr = _row(rows, "Mamba")
    reach = [int(L) for L, v in (mr or {}).get("by_length", {}).items() if v and v["acc"] >= 0.95]
    why = (
        f"Mamba keeps >= 95% up to length {max(reach)} only"
        if reach
        else _cause(mr)
        if mr
        else "Mamba did not run"
    )
    return False, figures, text + f" NOT reproduced: {why}."


def _mqar(r):
    rows = {x["model"]: x for x in _ran(r)}
    m2 = sorted((x for k, x in rows.items() if k.startswith("Mamba-2")), key=lambda x: x["d_state"])
    attns = [x for k, x in rows.items() if k.startswith("Attention") and not x.get("probe")]
    # the reference: the row marked so (Zoology's attention, a short convolution before it), else the first
    attn = next((x for x in attns if x.get("reference")), attns[0] if attns else None)
    shown = [x for x in attns if x is not attn]                           # in the table, outside the verdict
    probe = next((x for x in rows.values() if x.get("probe")), None)
    figures = {f"Mamba-2 N={x['d_state']}": x["acc"] for x in m2}
    if attn:
        figures["attention"] = attn["acc"]
    for x in shown + ([probe] if probe else []):
        figures[x["model"]] = x["acc"]
    if len(m2) < 2:
        return False, figures, "Not enough rows ran to compare."
    grows = all(b["acc"] > a["acc"] + 0.02 or min(a["acc"], b["acc"]) >= SOLVED for a, b in zip(m2, m2[1:]))
    grows = grows and m2[-1]["acc"] > m2[0]["acc"] + 0.02
    solved = attn is not None and attn["acc"] >= 0.9
    text = " -> ".join(f"Mamba-2 N={x['d_state']}: {H.pct(x['acc'])}" for x in m2) + (
        f"; attention ({attn['model']}) {H.pct(attn['acc'])}." if attn else "."
    ) + "".join(f" {x['model']}: {H.pct(x['acc'])} (shown, outside the verdict)." for x in shown)
    if grows and solved:
        return (
            True,
            figures,
            text + " Reproduced: accuracy grows with the state size and attention solves it.",
        )
    in_context = r.get("in_context")
    ref = probe or attn
    stuck = bool(not solved and ref and in_context and ref["acc"] < 2 * in_context)
    if stuck and max(x["acc"] for x in m2) < 2 * in_context:
        pts = [p for p in ref.get("curve", []) if "metric" in p]
        return False, figures, text + (
            f" NOT reproduced, and not testable in this budget: every model, attention included, is at "
            f"or near {H.pct(in_context)}, a value picked among the {round(1 / in_context)} in context "
            f"without its key; {ref['model']} stays there through {ref['steps']} steps "
            f"({_curve_text(pts)}): the associations have not begun to be learned. The experiment that "
            f"settles it: train until attention leaves that plateau (Zoology trains ~10^5 steps; "
            f"`--full`: 20000 steps of batch 64), then compare Mamba-2's N at that budget.")
    bad = [] if grows else [f"accuracy does not grow with the state ({_cause(m2[-1])})"]
    if stuck:
        pts = [p for p in ref.get("curve", []) if "metric" in p]
        bad.append(
            f"attention does not learn it: {ref['model']} stays near {H.pct(in_context)} (a value picked "
            f"among the {round(1 / in_context)} in context, without its key) through {ref['steps']} steps "
            f"({_curve_text(pts)}) where Mamba-2 learned the associations; Mamba-2's short convolution "
            f"puts each key beside its value in one layer, attention has to learn a previous-token head "
            f"first. The experiment that settles it: attention with a learning-rate sweep and a budget "
            f"of ~10^5 steps (Zoology's), or with a short convolution before it")
    elif not solved:
        bad.append("attention does not solve it" + (f" ({_cause(attn)})" if attn else ""))
    return False, figures, text + " NOT reproduced: " + "; ".join(bad) + "."


def _long_range(r):
    figures, parts, ok = {}, [], bool(r.get("tasks"))
    for task, t in r.get("tasks", {}).items():
        ran = [x for x in t.get("rows", []) if x.get("status") != H.NOT_AVAILABLE]
        tf = _row(ran, "Transformer")
        ssm = [x for x in ran if x["model"] != "Transformer"]
        if not tf or not ssm:
            ok = False
            continue
        best = max(ssm, key=lambda x: x["acc"])
        figures[task] = {"best_ssm": best["model"], "best_ssm_acc": best["acc"], "transformer_acc": tf["acc"]}
        se = _diff_se(best["acc"], tf["acc"], t.get("n_test"))
        figures[task]["margin_se"] = None if se is None else round(se, 4)
        ahead = best["acc"] > tf["acc"] + Z_MARGIN * (se or 0.0)
        ok = ok and ahead
        floor = t.get("majority")
        if floor is not None and max(best["acc"], tf["acc"]) < floor + 0.03:
            why = (f"neither is above the majority class's {H.pct(floor)}: the task was not learned in this "
                   f"budget ({_cause(best)})")
        elif best["acc"] > tf["acc"]:
            why = (f"ahead by {100 * (best['acc'] - tf['acc']):.1f} points, within {Z_MARGIN:g} standard "
                   f"errors of the difference (one: {100 * se:.1f} points over {t['n_test']} test examples): "
                   f"not separated; {_cause(best)}")
        else:
            why = f"behind: {_cause(best)}"
        parts.append(
            f"{task}: best SSM {best['model']} {H.pct(best['acc'])} vs Transformer {H.pct(tf['acc'])}"
            + (f" ({why})" if not ahead else _lead(best["acc"] - tf["acc"], se))
        )
    text = "; ".join(parts) + "." if parts else "No task ran."
    return ok, figures, text + (" Reproduced." if ok else " NOT reproduced.")


Z_MARGIN = 2.0    # long range: the best SSM ahead by more than this many standard errors of the difference


def _lead(gap: float, se: float | None) -> str:
    return f" (+{100 * gap:.1f} points, {gap / se:.1f} standard errors)" if se else ""


def _diff_se(p1: float, p2: float, n: int | None) -> float | None:
    """The standard error of the difference of two accuracies, each over the same n test examples
    (binomial, independent): None when n is not recorded."""
    if not n:
        return None
    return math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)


def _forecasting(r):
    series = r.get("series") or {"electricity": r}
    figures, parts, ok = {}, [], True
    for name, s in series.items():
        rows = [x for x in s.get("rows", []) if "mae" in x]
        baselines = [x for x in rows if x.get("baseline") or x["model"].startswith("seasonal")]
        base = min(baselines, key=lambda x: x["mae"], default=None)
        tf = _row(rows, "Transformer")
        ssm = [x for x in rows if x not in baselines and x["model"] != "Transformer"]
        if base is None or not ssm:
            ok = False
            continue
        best = min(ssm, key=lambda x: x["mae"])
        beats = best["mae"] < base["mae"] and (tf is None or best["mae"] < tf["mae"])
        ok = ok and beats
        figures[name] = {
            "best_ssm": best["model"],
            "best_ssm_mae": best["mae"],
            "baseline": base["model"],
            "baseline_mae": base["mae"],
            "transformer_mae": tf and tf["mae"],
        }
        parts.append(
            f"{name}: best SSM {best['model']} MAE {best['mae']:.4g} vs {base['model']} {base['mae']:.4g}"
            + (f", Transformer {tf['mae']:.4g}" if tf else "")
            + ("" if beats else f" (not below both: {_cause(best, 'mae', higher=False)})")
        )
    text = "; ".join(parts) + "." if parts else "Nothing ran."
    return ok and bool(parts), figures, text + (" Reproduced." if ok and parts else " NOT reproduced.")


def slope(by_length: dict, metric: str, last: int = 3) -> float | None:
    """log-log slope of metric against length over the `last` longest measured lengths."""
    pts = sorted((int(L), v.get(metric)) for L, v in by_length.items() if (v.get(metric) or 0) > 0)[-last:]
    if len(pts) < 2:
        return None
    (l0, y0), (l1, y1) = pts[0], pts[-1]
    return math.log(y1 / y0) / math.log(l1 / l0)


def _scaling(r):
    rows = _ran(r)
    figures = {
        x["model"]: {
            "train_slope": _r(slope(x.get("by_length", {}), "train_step_s")),
            "memory_slope": _r(slope(x.get("by_length", {}), "peak_mem_mb")),
        }
        for x in rows
    }
    zero_mem = [
        x["model"]
        for x in rows
        for v in x.get("by_length", {}).values()
        if not (v.get("peak_mem_mb") or 0) > 0
    ]
    tf = figures.get("Transformer", {}).get("train_slope")
    ssm = {m: f["train_slope"] for m, f in figures.items() if m != "Transformer"}
    ok = (
        tf is not None
        and tf >= QUADRATIC_SLOPE
        and all(s is not None and s <= LINEAR_SLOPE for s in ssm.values())
        and not zero_mem
    )
    text = (
        f"log-log slope of the training step over the longest lengths: Transformer {tf}, "
        + ", ".join(f"{m} {s}" for m, s in ssm.items())
        + "; peak memory slopes: "
        + ", ".join(f"{m} {f['memory_slope']}" for m, f in figures.items())
        + "."
    )
    if zero_mem:
        text += f" Peak memory not measured (0 or missing) for {sorted(set(zero_mem))}."
    tf_mem = figures.get("Transformer", {}).get("memory_slope")
    if tf_mem is not None and tf_mem < QUADRATIC_SLOPE:
        text += (" Attention's peak memory grows linearly too: torch's scaled_dot_product_attention on the "
                 "CPU works in blocks and never holds the L x L score matrix (as FlashAttention does), so "
                 "its quadratic term is in time only.")
    if ok:
        return True, figures, text + " Reproduced: attention's step grows quadratically, the SSMs' linearly."
    h = r.get("hardware", {})
    longest = {x["model"]: max((int(L) for L in x.get("by_length", {})), default=0) for x in rows}
    flat = [m for m, s in ssm.items() if s is not None and s < 0.8]
    why = []
    if flat or min(longest.values(), default=0) < 4096:
        why.append(
            f"the steps measured are dominated by fixed costs (slopes below 1: {flat}) or stop early "
            f"(longest length per model: {longest}), with the 1-min load average at "
            f"{h.get('load_avg_1min_before', '?')}-{h.get('load_avg_1min', '?')} on {h.get('cores', '?')} "
            f"cores; rerun with a larger cap_s (longer sequences, where the length term dominates) to "
            f"settle it"
        )
    steep = [x for x in rows if x["model"] != "Transformer" and (ssm.get(x["model"]) or 0) > LINEAR_SLOPE]
    if steep:
        # the rows whose long convolution is the same FFT convolution (ssmkit.ops.fft_conv) at the same
        # lengths: where they stay linear, that op's n log n is not what makes a steep row steep
        fft_peers = [m for m in FFT_CONV_ROWS if m in ssm and ssm[m] is not None and ssm[m] <= LINEAR_SLOPE
                     and m not in {x["model"] for x in steep}]
        loaded = (h.get("load_avg_1min") or 0) > (h.get("cores") or 0)
        why.append(
            "the training step per token of " + ", ".join(_per_token(x) for x in steep)
            + (f" (attention's {_per_token(_row(rows, 'Transformer'))})" if _row(rows, "Transformer") else "")
            + "; " + "; ".join(_excess(x) for x in steep)
            + (f". {' and '.join(fft_peers)}, whose long convolutions are the same FFT convolution "
               f"(ssmkit.ops.fft_conv) at the same lengths, stay at slopes "
               f"{' and '.join(str(ssm[m]) for m in fft_peers)}: the FFT's n log n does not account for it"
               if fft_peers else "")
            + (f"; the 1-min load average was {h.get('load_avg_1min')} on {h.get('cores')} cores, so other "
               f"processes shared the memory bandwidth: rerun on an idle machine" if loaded else
               "; " + (KEPT_CAUSE if r.get("config", {}).get("allocator") else ALLOCATOR_CAUSE))
        )
    return False, figures, text + " NOT reproduced" + (": " + "; ".join(why) if why else "") + "."


FFT_CONV_ROWS = ("S4", "S4D", "H3", "Hyena")    # long convolutions through ssmkit.ops.fft_conv
ALLOCATOR_CAUSE = (  # measured 2026-12-04, quiet, 2 threads, d_model 128, 2 layers
    "measured cause: glibc's allocator, not the model: every activation of a 32768-token step is an "
    "allocation over glibc's 32 MiB mmap ceiling, fresh memory faulted in page by page each step; with "
    "freed memory kept in glibc's heap (MALLOC_MMAP_MAX_=0, no trim) a Mamba-2 step took 39.2 us/token "
    "at 32768 against 49.3 with the default (8192: 35.6 and 34.2), and an idle run of this entry so "
    "kept gave every SSM a slope <= 1.21; the experiment that settles it: this entry's timing with freed "
    "memory kept (its default on glibc) or with a caching allocator preloaded")
KEPT_CAUSE = (  # a run whose timing already kept freed memory: the allocator is ruled out
    "this run's timing kept freed memory in glibc's heap (no fresh pages each step), so the allocator "
    "does not account for it; the experiment that settles it: the steep row's step profiled at its "
    "longest length (python -m benchmarks train_speed --breakdown)")


def _excess(x: dict) -> str:
    """How much more a row's step per token grows from its middle to its longest length than an FFT
    convolution's log factor (log 2L) accounts for, and its peak memory there."""
    by_length = x.get("by_length", {})
    pts = sorted((int(L), v) for L, v in by_length.items() if v.get("train_step_s"))
    if len(pts) < 3:
        return f"{x['model']}: too few lengths"
    (l0, v0), (l1, v1) = pts[len(pts) // 2], pts[-1]
    growth = (v1["train_step_s"] / l1) / (v0["train_step_s"] / l0)
    log_factor = math.log(2 * l1) / math.log(2 * l0)
    mem = f", peak memory {v1['peak_mem_mb']:.0f} MB at {l1}" if v1.get("peak_mem_mb") else ""
    return (f"{x['model']}'s per-token cost grows x{growth:.2f} from {l0} to {l1}, where log 2L accounts "
            f"for x{log_factor:.2f}{mem}")


def _per_token(x: dict) -> str:
    """A row's training-step time per token (microseconds) at its shortest, middle and longest lengths."""
    by_length = x.get("by_length", {})
    pts = sorted((int(L), v["train_step_s"]) for L, v in by_length.items() if v.get("train_step_s"))
    if not pts:
        return f"{x['model']}: not measured"
    picks = [pts[0], pts[len(pts) // 2], pts[-1]]
    return f"{x['model']}: " + " -> ".join(f"{1e6 * t / L:.0f} us at {L}" for L, t in picks)


def _r(v):
    return None if v is None else round(v, 2)
