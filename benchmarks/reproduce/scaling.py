"""Scaling with sequence length: forward, training-step and per-token decode CPU time and peak memory,
for Mamba, Mamba-2, S4D, S5, H3, Hyena and a same-size Transformer, lengths 256 .. 65536 (batch 1) or
until a model's time passes the cap; the crossover lengths (shortest length from which an SSM is faster
than attention); a log-log plot.

Claim (Mamba paper, Gu & Dao 2023, sec. 4.5 and Figure 8): SSM cost grows linearly in length, attention's
quadratically; SSM decode cost per token is constant while attention's grows with the context.

Peak memory of a training step (forward + backward), on CPU: measured in a worker process of its own per
model (`step_peaks`), one step per length, as the rise of the resident-set high-water mark (VmHWM, reset
through /proc/self/clear_refs) over the resident set before the step. torch's CPU allocator keeps no
statistics, and in the timing process glibc and the kernels' buffer cache keep freed memory resident, so
there a later step reuses an earlier one's pages and shows a rise of 0; the worker runs with glibc
returning every block of 64 KiB or more to the system at free (MALLOC_MMAP_THRESHOLD_), its heap
trimmed (malloc_trim) before each step and the kernels' cache off, so the step faults in the pages of
its own tensors. On CUDA torch's peak allocation.

Time, on CPU: the timing process serves every allocation from glibc's heap and keeps freed memory for
the next step (`_keep_freed_memory`), as a caching allocator (torch's on CUDA, jemalloc) does. With
glibc's default every allocation over 32 MiB (each activation of a 32768-token step: (32768, 256)
float32 is 32 MiB) is fresh memory each step, faulted in 4 KiB at a time: measured (d_model 128, 2
layers, quiet, 2 threads), a Mamba-2 training step at 32768 took 49.3 us/token with the default and
39.2 with the heap kept (8192: 34.2 and 35.6), so the default's steeper slope at the longest lengths
is the operating system's, not the model's (the resident set kept: 2.6 GB, 1.9 GB with the default).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from benchmarks._cells import PeakRSS
from benchmarks.reproduce import harness as H

NAME = "scaling"
CLAIM = "SSM time and memory grow linearly with length, attention's quadratically; SSM decode is O(1)/token"
SOURCE = "Mamba paper (Gu & Dao 2023), Figure 8 (A100): the scan beats FlashAttention-2 beyond length 2k"

CONFIGS = {
    "tiny": dict(d_model=16, n_layer=1, lengths=[32, 64], cap_s=5.0, decode_tokens=2, repeats=1),
    # small: a model stops once its training step takes more than cap_s CPU seconds; each time the best
    # of 3 (of 1 beyond 2 s): with 2 and one run beyond 1 s the longest cells were single measurements
    # on a shared machine, and the slopes over them read 1.1-1.4 for the SSMs
    "small": dict(d_model=128, n_layer=2, lengths=[2**e for e in range(8, 16)], cap_s=4.0, decode_tokens=8,
                  repeats=3),
    "full": dict(d_model=256, n_layer=4, lengths=[2**e for e in range(8, 18)], cap_s=60.0, decode_tokens=32,
                 repeats=3),
}
# label, pattern, MLP width / d_model (attention + a gated MLP of width d: about a Mamba block's parameters)
MODELS = [("Mamba", "mamba", 0), ("Mamba-2", "mamba2", 0), ("S4D", "s4d", 0), ("S5", "s5", 0),
          ("H3", "h3", 0), ("Hyena", "hyena", 0), ("Transformer", "attention", 1)]
VOCAB = 256
METRICS = ("forward_s", "train_step_s", "decode_ms_per_token", "peak_mem_mb")


def _model(pattern: str, mlp: int, cfg: dict):
    from ssmkit import SSMConfig, SSMForCausalLM

    kw = {"mamba2": {"mamba2": {"headdim": 32, "d_state": 64}},
          # Hyena's filters (and its decode history) cover l_max positions: the longest prompt + decode
          "hyena": {"hyena": {"l_max": max(cfg["lengths"]) + cfg["decode_tokens"] + 1}}}.get(pattern, {})
    return SSMForCausalLM(SSMConfig(d_model=cfg["d_model"], n_layer=cfg["n_layer"], vocab_size=VOCAB,
                                    layers=pattern, layer_kwargs=kw, d_intermediate=mlp * cfg["d_model"],
                                    n_head=4))


class _PeakMemory:
    """Peak memory of the block in MB (CUDA: peak allocated; CPU: rise of the RSS high-water mark)."""

    def __init__(self, device: torch.device):
        self.device, self.mb = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.rss = PeakRSS().__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mb = round(max(0, torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20, 1)
        else:
            self.rss.__exit__(*exc)
            self.mb = round(self.rss.mb, 1)


def _timed(fn, repeats: int) -> float:
    """Best CPU time of fn() over `repeats` runs: the process's CPU seconds, all its threads, so other
    processes' load on a shared machine does not count (wall time under a load of 8 on 2 cores did)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
        if best > 2.0:                                          # long runs: one is enough
            break
    return best


def _measure(model, L: int, cfg: dict, device) -> dict:
    ids = torch.randint(0, VOCAB, (1, L), device=device)
    model.eval()
    with torch.no_grad():
        fwd = _timed(lambda: model(ids, num_last_tokens=1), cfg["repeats"])
    model.train()

    def step():
        model(ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    with _PeakMemory(device) as mem:
        train = _timed(step, cfg["repeats"])
    peak = mem.mb if device.type == "cuda" else None            # CPU: step_peaks, in a worker
    model.eval()
    with torch.no_grad():                                       # decode after a prompt of length L
        state = model.init_state(1)
        model(ids, state=state, num_last_tokens=1)
        tok = ids[:, -1]
        t = time.process_time()
        for _ in range(cfg["decode_tokens"]):
            tok = model.step(tok, state).argmax(-1)
        decode = (time.process_time() - t) / cfg["decode_tokens"]
    model.train()
    return {"forward_s": fwd, "train_step_s": train, "decode_ms_per_token": 1e3 * decode,
            "peak_mem_mb": peak}


# the worker's allocator: blocks of 64 KiB and more are mmapped and unmapped at free, the heap trimmed
PEAK_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "SSMKIT_CPU_CACHE_MB": "0"}


def step_peaks(pattern: str, mlp: int, cfg: dict, seed: int, lengths: list[int]) -> dict[str, float]:
    """{length: peak MB of one training step} for one model, measured in a fresh worker process (see
    the module docstring); lengths in increasing order. A length the worker did not reach is missing."""
    env = dict(os.environ, **PEAK_ENV)
    env["PYTHONPATH"] = os.pathsep.join([H.ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    job = json.dumps([pattern, mlp, cfg, seed, lengths])
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.reproduce.scaling", job], env=env,
                              cwd=H.ROOT, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return {}
    if proc.returncode != 0:
        H.log(f"{NAME}: peak-memory worker for {pattern} failed: {proc.stderr.strip()[-300:]}")
    out = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(out[-1]) if out else {}


def _peak_worker(pattern: str, mlp: int, cfg: dict, seed: int, lengths: list[int]) -> None:
    from benchmarks._cells import PeakRSS

    torch.set_num_threads(1)
    model = H.build(lambda: _model(pattern, mlp, cfg), seed)
    model.train()

    def step(L):
        ids = torch.randint(0, VOCAB, (1, L))
        model(ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    step(min(lengths))                                          # numba's cache, lazy imports
    trim = _malloc_trim()
    peaks = {}
    for L in lengths:
        trim()  # free heap pages back: the step faults its own
        with PeakRSS() as mem:
            step(L)
        peaks[str(L)] = round(mem.mb, 1)
        print(json.dumps(peaks), flush=True)                    # what was reached, if a later one dies


def crossovers(rows: list[dict], metric: str) -> dict:
    """Per SSM: the shortest measured length from which it stays faster than the Transformer."""
    attn = next((r for r in rows if r["model"] == "Transformer" and r.get("by_length")), None)
    out = {}
    for r in rows:
        if r is attn or not r.get("by_length") or attn is None:
            continue
        common = [L for L in r["by_length"] if L in attn["by_length"]]
        cross = None
        for L in sorted(common, key=int, reverse=True):
            mine, theirs = r["by_length"][L].get(metric), attn["by_length"][L].get(metric)
            if mine is not None and theirs is not None and mine < theirs:
                cross = int(L)
            else:
                break
        longest = max((int(L) for L in common), default=None)
        out[r["model"]] = cross if cross is not None else (f"> {longest}" if longest else None)
    return out


def run(cfg: dict, full: bool = False, seed: int = 0, plot: bool = True, out_dir: str | None = None) -> dict:
    t0 = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kept = device.type == "cpu" and _keep_freed_memory(True)

    def row(label, pattern, mlp):
        model = H.build(lambda: _model(pattern, mlp, cfg), seed).to(device)
        _measure(model, cfg["lengths"][0], dict(cfg, repeats=1, decode_tokens=1), device)   # warm-up
        by_len, stopped = {}, None
        for L in cfg["lengths"]:
            try:
                m = _measure(model, L, cfg, device)
            except (torch.OutOfMemoryError, MemoryError) as e:
                stopped = f"stopped at {L}: {type(e).__name__}"
                break
            by_len[str(L)] = m
            H.log(f"{NAME}: {label}: L={L}: fwd {m['forward_s']:.3f}s train {m['train_step_s']:.3f}s "
                  f"decode {m['decode_ms_per_token']:.2f}ms mem {m['peak_mem_mb']}MB")
            if m["train_step_s"] > cfg["cap_s"] and L != cfg["lengths"][-1]:
                stopped = f"stopped after {L}: training step {m['train_step_s']:.1f}s > cap {cfg['cap_s']}s"
                break
        if device.type == "cpu" and by_len:
            peaks = step_peaks(pattern, mlp, cfg, seed, [int(L) for L in by_len])
            for L, m in by_len.items():
                m["peak_mem_mb"] = peaks.get(L)
        return {"model": label, "params": H.n_params(model), "by_length": by_len, "stopped": stopped}

    try:
        rows = [H.guarded(m[0], lambda m=m: row(*m)) for m in MODELS]
    finally:
        if kept:
            _keep_freed_memory(False)
    allocator = "glibc, freed memory kept (no mmap)" if kept else None
    res = H.result(NAME, CLAIM, dict(cfg, allocator=allocator), rows, t0, full, source=SOURCE,
                   device=str(device),
                   crossover={m: crossovers(rows, m) for m in ("forward_s", "train_step_s",
                                                                 "decode_ms_per_token", "peak_mem_mb")})
    if plot:
        res["plot"] = _plot(res, os.path.join(out_dir or H.RESULTS_DIR, "scaling.png"))
    return res


def _plot(r: dict, path: str | None = None) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = path or os.path.join(H.RESULTS_DIR, "scaling.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    titles = {"forward_s": "forward (s)", "train_step_s": "training step (s)",
              "decode_ms_per_token": "decode (ms / token)", "peak_mem_mb": "peak memory, train step (MB)"}
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, metric in zip(axes, METRICS):
        for row in r["rows"]:
            by_length = row.get("by_length", {}).items()
            pts = [(int(L), v[metric]) for L, v in by_length if (v.get(metric) or 0) > 0]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=row["model"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(titles[metric])
        ax.set_xlabel("sequence length")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    c = r["config"]
    fig.suptitle(f"ssmkit scaling, batch 1, d_model {c['d_model']}, {c['n_layer']} layers, {r['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return os.path.relpath(path, H.ROOT)


def markdown(r: dict) -> str:
    c = r["config"]
    lengths = [str(L) for L in c["lengths"]]
    out = [f"Batch 1, d_model {c['d_model']}, {c['n_layer']} layers (Transformer: attention + gated MLP of "
           f"width {c['d_model']}; parameter counts in the JSON), device {r['device']}; a model stops once "
           f"its training step passes {c['cap_s']} CPU s (times: the process's CPU time, best of "
           f"{c['repeats']}, so other processes' load does not count). Paper: {r['source']}.\n"]
    for metric, title in (("forward_s", "Forward CPU time (s)"),
                          ("train_step_s", "Training step, forward + backward, CPU time (s)"),
                          ("decode_ms_per_token", "Decode CPU time per token after a prompt (ms)"),
                          ("peak_mem_mb", "Peak memory of a training step (MB)")):
        rows = []
        for x in r["rows"]:
            if x.get("status") == H.NOT_AVAILABLE:
                rows.append([x["model"]] + [None] * len(lengths) + [f"not available: {x['reason']}"])
                continue
            vals = [x["by_length"].get(L, {}).get(metric) for L in lengths]
            vals = [None if v is None else float(v) for v in vals]
            rows.append([x["model"]] + vals + [x.get("stopped") or ""])
        out.append(f"**{title}**\n\n" + H.table(["model"] + lengths + ["note"], rows))
    cross = r.get("crossover", {})
    lines = []
    for metric, what in (("forward_s", "forward"), ("train_step_s", "training step"),
                         ("decode_ms_per_token", "decode per token"), ("peak_mem_mb", "peak memory")):
        parts = [f"{m}: {v if v is not None else 'n/a'}" for m, v in cross.get(metric, {}).items()]
        if parts:
            lines.append(f"- {what}: " + "; ".join(parts))
    out.append("**Crossover lengths** (shortest measured length from which the SSM stays below the "
               "Transformer):\n\n" + "\n".join(lines))
    if r.get("plot"):
        out.append(f"![scaling]({os.path.relpath(r['plot'], 'docs')})")
    return "\n\n".join(out)


def _keep_freed_memory(keep: bool) -> bool:
    """glibc: keep=True maps no allocation (M_MMAP_MAX 0) and never trims freed heap memory
    (M_TRIM_THRESHOLD 2 GiB - 1); keep=False restores the defaults (65536 maps, 128 KiB). Whether it
    applied (False off glibc). See the module docstring."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mmap_max, trim = (0, (1 << 31) - 1) if keep else (65536, 128 << 10)
    return bool(mallopt(-4, mmap_max)) and bool(mallopt(-1, trim))


def _malloc_trim():
    """glibc's malloc_trim(0) (free pages of the heap back to the system), or a no-op elsewhere."""
    try:
        import ctypes

        fn = ctypes.CDLL(None).malloc_trim
        return lambda: fn(0)
    except (OSError, AttributeError):
        return lambda: None


if __name__ == "__main__":                                      # the peak-memory worker (step_peaks)
    _peak_worker(*json.loads(sys.argv[1]))
