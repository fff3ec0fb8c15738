"""Continuous batching: one thread runs the model; requests join and leave between steps.

    engine = Engine(model, tokenizer, prefix_cache, max_batch=64)
    job = Job(prompt_ids, state, SamplingParams(max_tokens=32), emit=callback)
    engine.submit(job)          # callback(Token(text)) ..., then callback(Done(...)) or Failed(...)
    job.cancel()                # the client went away: the job leaves at the next step

Each turn of the loop:
  1. admit waiting jobs while fewer than `max_batch` are in flight; drop cancelled ones;
  2. prefill: read up to `prefill_budget` prompt tokens of the jobs still reading their prompt,
     oldest first, in chunks; a job whose prompt is read samples its first token and joins the
     decode batch (`State.cat` of the batch's state and its own);
  3. decode: one batched `model.step_` on every decoding job's last sampled token (the batch's state,
     tensors of its own, consumes it in place), then each job samples its next token, or, if it had
     finished, leaves the batch with its row of the state (`State.select`, a copy) in its Done event.

As with `generate(..., state=st)`, a job's final state has consumed the prompt and every token
sampled, the last one (a stop token, or the one completing a stop string) included, so the next
turn of a session continues exactly after it.

A job without a start state reads its prompt from the empty state in chunks cut at multiples of
`prefix_cache.chunk`, starting from the longest cached prefix; the cuts are the same with or without
a cache hit, so a cache hit changes the time to the first token and nothing else.
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ssmkit.inference.generate import sample_next
from ssmkit.inference.state import State
from ssmkit.serve.prefix_cache import PrefixCache, share
from ssmkit.serve.textstream import TextStream

log = logging.getLogger("ssmkit.serve")


def use_threads(n: int) -> None:
    """Kernel threads of the calling thread: torch's (process-wide) and numba's (per thread)."""
    torch.set_num_threads(n)
    if importlib.util.find_spec("numba") is not None:  # the fused CPU kernels have their own pool
        from ssmkit.ops import _numba

        _numba.set_threads(min(n, _numba.nb.config.NUMBA_NUM_THREADS))


class EngineBusy(Exception):
    """Too many requests are waiting; try again later."""


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Token:
    text: str  # text to append (never taken back)


@dataclass
class Done:
    text: str  # the whole reply, cut before a stop string
    ids: list[int]  # every token sampled (what the state consumed after the prompt)
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int  # tokens read this turn
    cached_tokens: int  # of which came from the prefix cache
    state: State  # batch 1; has consumed the prompt and every sampled token


@dataclass
class Failed:
    message: str


class Job:
    """One request inside the engine. `emit` is called from the engine thread."""

    def __init__(
        self, prompt: list[int], state: State | None, params: SamplingParams, emit: Callable[[object], None]
    ):
        if not prompt:
            raise ValueError("a job needs at least one prompt token")
        self.prompt, self.params, self.emit = list(prompt), params, emit
        self.state = None if state is None else share(state)  # the caller's State object stays as it is
        self.from_empty = state is None
        self.cancelled = False
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed)
        self.pos = 0  # prompt tokens read
        self.cached = 0  # of which came from the prefix cache
        self.keys: list[str] = []  # prefix-cache keys of the prompt's whole chunks
        self.logits: torch.Tensor | None = None  # (V,) after the prompt
        self.stream: TextStream | None = None
        self.pending = -1  # sampled, not yet consumed by the state
        self.finish_reason: str | None = None

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    def __init__(
        self,
        model,
        tokenizer,
        prefix_cache: PrefixCache,
        max_batch: int = 64,
        max_queue: int = 512,
        prefill_budget: int = 256,
        stop_ids: tuple[int, ...] = (),
        threads: int | None = None,
    ):
        self.model, self.tokenizer, self.cache = model.eval(), tokenizer, prefix_cache
        self.max_batch, self.max_queue, self.prefill_budget = max_batch, max_queue, prefill_budget
        self.stop_ids = frozenset(stop_ids)
        self.threads = threads
        self._cv = threading.Condition()
        self._inbox: collections.deque[Job] = collections.deque()
        self._prefilling: collections.deque[Job] = collections.deque()
        self._rows: list[Job] = []  # decoding jobs, one per row of self._batch
        self._batch: State | None = None
        self._stopping = False
        self.steps = self.tokens_generated = self.tokens_read = 0
        self._thread = threading.Thread(target=self._run, name="ssmkit-engine", daemon=True)
        self._thread.start()

    # ---- the server's side --------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cv:
            if len(self._inbox) >= self.max_queue:
                raise EngineBusy(f"{len(self._inbox)} requests are already waiting; try again later")
            self._inbox.append(job)
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def stats(self) -> dict:
        return {
            "decoding": len(self._rows),
            "prefilling": len(self._prefilling),
            "waiting": len(self._inbox),
            "steps": self.steps,
            "tokens_generated": self.tokens_generated,
            "tokens_read": self.tokens_read,
        }

    # ---- the engine thread --------------------------------------------------------------------
    def _run(self) -> None:
        if self.threads:
            use_threads(self.threads)
        while True:
            with self._cv:
                while not (self._stopping or self._inbox or self._prefilling or self._rows):
                    self._cv.wait()
                if self._stopping:
                    break
                while self._inbox and len(self._rows) + len(self._prefilling) < self.max_batch:
                    self._prefilling.append(self._inbox.popleft())
            try:
                with torch.no_grad():
                    self._prefill()
                    self._decode()
            except Exception as e:  # a bug must not hang every client: fail the jobs in flight
                log.exception("engine step failed")
                for job in [*self._prefilling, *self._rows]:
                    job.emit(Failed(f"internal error in the engine: {e}"))
                self._prefilling.clear()
                self._rows, self._batch = [], None

    def _prefill(self) -> None:
        budget = self.prefill_budget
        while budget > 0 and self._prefilling:
            job = self._prefilling[0]
            if job.cancelled:
                self._prefilling.popleft()
                continue
            budget -= self._read_chunk(job)
            if job.pos == len(job.prompt):
                self._prefilling.popleft()
                self._start_decoding(job)

    def _read_chunk(self, job: Job) -> int:
        """Run the next chunk of the job's prompt; returns the tokens read."""
        chunk = self.cache.chunk
        if job.state is None:  # first chunk of a prompt read from the empty state
            job.keys = self.cache.keys(job.prompt)
            job.cached, job.state = self.cache.lookup(job.prompt, job.keys)
            job.pos = job.cached
            if job.state is None:
                job.state = self.model.init_state(1)
        end = (job.pos // chunk + 1) * chunk if job.from_empty else job.pos + chunk
        end = min(end, len(job.prompt))
        ids = torch.tensor([job.prompt[job.pos : end]], dtype=torch.long)
        job.logits = self.model(ids, state=job.state, num_last_tokens=1).logits[0, -1]
        n, job.pos = end - job.pos, end
        self.tokens_read += n
        if job.from_empty and end % chunk == 0:
            self.cache.insert(job.keys[end // chunk - 1], job.state)
        return n

    def _start_decoding(self, job: Job) -> None:
        stop = job.params.stop
        job.stream = TextStream(self.tokenizer, stop)
        self._accept(job, self._sample(job, job.logits))
        job.logits = None
        # the batch owns its tensors (decoding writes them in place); the job's may be the prefix cache's
        self._batch = job.state.clone() if self._batch is None else State.cat([self._batch, job.state])
        job.state = None
        self._rows.append(job)

    def _sample(self, job: Job, logits: torch.Tensor, greedy: int | None = None) -> int:
        p = job.params
        if p.temperature == 0:
            return int(logits.argmax()) if greedy is None else greedy
        tok = sample_next(
            logits[None], do_sample=True, temperature=p.temperature, top_p=p.top_p, generator=job.generator
        )
        return int(tok[0])

    def _accept(self, job: Job, tok: int) -> None:
        """Hand out a sampled token's text; decide whether the job ends after its state consumes it."""
        job.pending = tok
        self.tokens_generated += 1
        if tok in self.stop_ids:
            job.finish_reason = "stop"
            return
        delta, stopped = job.stream.push(tok)
        if stopped:
            job.finish_reason = "stop"
        elif len(job.stream.ids) >= job.params.max_tokens:
            job.finish_reason = "length"
        if job.finish_reason:
            delta += job.stream.flush()
        if delta:
            job.emit(Token(delta))

    def _decode(self) -> None:
        gone = [i for i, job in enumerate(self._rows) if job.cancelled]
        if gone:
            self._leave(gone)
        if not self._rows:
            return
        tokens = torch.tensor([job.pending for job in self._rows], dtype=torch.long)
        logits = self.model.step_(tokens, self._batch)  # (b, V); the batch state consumed `tokens`, in place
        self.steps += 1
        greedy = logits.argmax(-1).tolist()
        finished = []
        for i, job in enumerate(self._rows):
            if job.finish_reason:
                finished.append(i)
            else:
                self._accept(job, self._sample(job, logits[i], greedy[i]))
        if finished:
            self._leave(finished)

    def _leave(self, rows: list[int]) -> None:
        """Take `rows` out of the batch; finished ones get their state in a Done event."""
        for i in rows:
            job = self._rows[i]
            if job.cancelled or not job.finish_reason:
                continue
            job.emit(
                Done(
                    text=job.stream.text,
                    ids=job.stream.ids + ([job.pending] if job.pending in self.stop_ids else []),
                    finish_reason=job.finish_reason,
                    prompt_tokens=len(job.prompt),
                    cached_tokens=job.cached,
                    state=self._batch.select([i]),
                )
            )
        leaving = set(rows)
        keep = [i for i in range(len(self._rows)) if i not in leaving]
        self._rows = [self._rows[i] for i in keep]
        self._batch = self._batch.select(keep) if keep else None
