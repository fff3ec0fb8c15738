"""Inference engines behind one small interface, each run in its own worker process by
benchmarks/llamacpp.py: llama.cpp (through llama-cpp-python), ssmkit (float32 or int8) and transformers.

    engine = ENGINES[name](checkpoint_dir, gguf_path, threads)
    engine.last_logits(ids)           # ids: list[int]; float32 numpy (vocab,), from a fresh state
    engine.prefill(ids)               # read ids from a fresh state, last logits only
    engine.decode(prompt, steps)      # prefill prompt (untimed), then `steps` greedy tokens: seconds each

A worker (`python -m benchmarks.engines NAME CKPT GGUF THREADS`) reads one JSON command per line on
stdin and answers one JSON line on stdout: {"op": "logits" | "prefill" | "decode" | "greedy" | "mem"}.
Memory: "mem" returns VmRSS and VmHWM (MiB); {"op": "reset_peak"} restarts the high-water mark at the
current resident size (Linux clear_refs), so a phase's own peak can be read.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class PromptRead:
    """Called by `decode` once the prompt is read: the prompt's time, and the memory peak restarts."""

    def __init__(self):
        self.t0, self.seconds = time.perf_counter(), None

    def __call__(self):
        self.seconds = time.perf_counter() - self.t0
        reset_peak()


class LlamaCpp:
    """A GGUF model in llama.cpp; greedy argmax over the last logits read through the C API."""

    repack = True  # llama.cpp's extra buffer types (weights repacked for its CPU kernels)

    def __init__(self, ckpt: str, gguf: str, threads: int, n_ctx: int = 8192 + 1024):
        import llama_cpp
        import llama_cpp.llama_cpp as capi

        self.lib = llama_cpp
        if not self.repack:
            defaults = capi.llama_model_default_params

            def params():
                p = defaults()
                p.use_extra_bufts = False
                return p

            capi.llama_model_default_params = params  # Llama() takes no argument for it
        self.llm = llama_cpp.Llama(
            model_path=gguf,
            n_ctx=n_ctx,
            n_batch=512,
            n_ubatch=512,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.n_vocab = self.llm.n_vocab()

    def _logits(self) -> np.ndarray:
        ptr = self.lib.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def prefill(self, ids):
        self.llm.reset()
        self.llm.eval(ids)

    def last_logits(self, ids):
        self.prefill(ids)
        return self._logits().copy()

    def decode(self, prompt, steps, on_ready):
        self.prefill(prompt)
        on_ready()
        tok, times = int(self._logits().argmax()), []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.llm.eval([tok])
            tok = int(self._logits().argmax())
            times.append(time.perf_counter() - t0)
        return times

    def greedy(self, prompt, steps):
        self.prefill(prompt)
        toks = [int(self._logits().argmax())]
        for _ in range(steps - 1):
            self.llm.eval([toks[-1]])
            toks.append(int(self._logits().argmax()))
        return toks


class LlamaCppQ8(LlamaCpp):
    """q8_0 without the repacking: llama-cpp-python 0.3.36's repacked q8_0 weights crash (SIGSEGV)
    in the first decode of these Mamba and Mamba-2 models on an AVX-512/AMX CPU; unrepacked they run."""

    repack = False


class Ssmkit:
    """ssmkit's SSMForCausalLM from the transformers checkpoint; prefill as generate does (chunks of
    PREFILL_CHUNK tokens); decode by `model.step_` on the prefill's State (in place, as generate
    decodes), and the same tokens through `generate` (its overhead)."""

    int8 = False

    def __init__(self, ckpt: str, gguf: str, threads: int):
        import torch

        from ssmkit.inference.memory import return_freed_memory
        from ssmkit.interop import from_hf

        return_freed_memory()  # as `ssmkit generate` and `ssmkit serve` do
        self.torch = torch
        self.model = from_hf(ckpt)
        if self.int8:
            from ssmkit.models.int8 import quantize_int8

            self.model = quantize_int8(self.model)

    def _ids(self, ids):
        return self.torch.tensor([ids], dtype=self.torch.long)

    def prefill(self, ids):
        """In chunks of generate's PREFILL_CHUNK tokens carrying the State, as generate prefills."""
        from ssmkit.inference.generate import PREFILL_CHUNK

        ids = self._ids(ids)
        with self.torch.no_grad():
            st = self.model.init_state(1)
            for a in range(0, ids.shape[1], PREFILL_CHUNK):
                out = self.model(ids[:, a : a + PREFILL_CHUNK], state=st, num_last_tokens=1)
            return out.logits[0, -1], st

    def last_logits(self, ids):
        return self.prefill(ids)[0].float().numpy()

    def decode(self, prompt, steps, on_ready):
        logits, st = self.prefill(prompt)
        on_ready()
        tok, times = logits.argmax(-1)[None], []
        for _ in range(steps):  # step_: the State is this loop's own (generate decodes the same way)
            t0 = time.perf_counter()
            tok = self.model.step_(tok, st).argmax(-1)
            times.append(time.perf_counter() - t0)
        return times

    def decode_generate(self, prompt, steps, on_ready):
        """Seconds per token handed out by generate(stream=True) after its prefill."""
        it = self.model.generate(self._ids(prompt), max_new_tokens=steps + 1, stream=True)
        next(it)  # the prefill and the first token
        on_ready()
        times, t0 = [], time.perf_counter()
        for _ in it:
            t = time.perf_counter()
            times.append(t - t0)
            t0 = t
        return times

    def greedy(self, prompt, steps):
        out = self.model.generate(self._ids(prompt), max_new_tokens=steps)
        return out[0, len(prompt) :].tolist()


class SsmkitInt8(Ssmkit):
    int8 = True


class Transformers:
    """transformers' MambaForCausalLM / Mamba2ForCausalLM (its CPU path), greedy through its cache."""

    def __init__(self, ckpt: str, gguf: str, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()

    def _run(self, ids, cache=None):
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([ids]), cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], out.cache

    def prefill(self, ids):
        return self._run(ids)

    def last_logits(self, ids):
        return self._run(ids)[0].float().numpy()

    def decode(self, prompt, steps, on_ready):
        logits, cache = self._run(prompt)
        on_ready()
        tok, times = int(logits.argmax()), []
        for _ in range(steps):
            t0 = time.perf_counter()
            logits, cache = self._run([tok], cache)
            tok = int(logits.argmax())
            times.append(time.perf_counter() - t0)
        return times

    def greedy(self, prompt, steps):
        logits, cache = self._run(prompt)
        toks = [int(logits.argmax())]
        for _ in range(steps - 1):
            logits, cache = self._run([toks[-1]], cache)
            toks.append(int(logits.argmax()))
        return toks


ENGINES = {
    "llama.cpp": LlamaCpp,
    "llama.cpp q8_0": LlamaCppQ8,
    "ssmkit": Ssmkit,
    "ssmkit int8": SsmkitInt8,
    "transformers": Transformers,
}


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def serve(name: str, ckpt: str, gguf: str, threads: int) -> None:
    set_threads(threads)
    reset_peak()
    t0 = time.perf_counter()
    engine = ENGINES[name](ckpt, gguf, threads)
    print(
        json.dumps(
            {
                "load_s": time.perf_counter() - t0,
                "rss_mb": _status_mb("VmRSS"),
                "peak_mb": _status_mb("VmHWM"),
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "logits":
            out = {"logits": engine.last_logits(cmd["ids"]).tolist()}
        elif op == "prefill":
            t0 = time.perf_counter()
            engine.prefill(cmd["ids"])
            out = {"s": time.perf_counter() - t0}
        elif op == "decode":
            fn = engine.decode_generate if cmd.get("generate") else engine.decode
            phase = PromptRead()
            times = fn(cmd["ids"], cmd["steps"], phase)
            out = {"prefill_s": phase.seconds, "times": times, "peak_mb": _status_mb("VmHWM")}
        elif op == "greedy":
            out = {"tokens": engine.greedy(cmd["ids"], cmd["steps"])}
        elif op == "reset_peak":
            reset_peak()
            out = {}
        elif op == "mem":
            out = {"rss_mb": _status_mb("VmRSS"), "peak_mb": _status_mb("VmHWM")}
        else:
            out = {"error": f"unknown op {op!r}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
