"""Stopping a training run cleanly: SIGINT (Ctrl-C) and SIGTERM ask the loop to finish the step in
progress, write a checkpoint and stop; a second signal stops at once.

    with StopSignals() as stop:
        for step in ...:
            ...                       # one whole optimizer step
            if stop.requested: ...    # checkpoint, then raise TrainingInterrupted(...)

A step is never cut in the middle (the optimizer could be half-way through an update), so the
checkpoint always holds the weights after a whole step.
"""

from __future__ import annotations

import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing a checkpoint; `exit_code` is 128 + the signal."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        where = (
            f"checkpoint written to {checkpoint}; run the same command again to resume"
            if checkpoint
            else "no checkpoint written (no output directory)"
        )
        super().__init__(f"{signal.Signals(signum).name} at step {step}: stopped; {where}")


class StopSignals:
    """Within `with`: SIGINT and SIGTERM set `requested` (the signal number) instead of killing the
    process; a second one restores the previous handlers and raises KeyboardInterrupt. Signals this
    process ignores stay ignored; outside the main thread (where Python cannot catch signals) it
    does nothing."""

    def __init__(self, announce: bool = True):
        self.requested: int | None = None
        self.announce = announce
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            self._restore()
            raise KeyboardInterrupt
        self.requested = signum
        if self.announce:
            print(
                f"ssmkit: {signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
                "(again to stop at once, without one)",
                file=sys.stderr,
                flush=True,
            )

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()
