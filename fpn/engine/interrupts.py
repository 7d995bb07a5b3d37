"""Ctrl-C and SIGTERM during training: SIGTERM (what torchrun and SLURM send to stop a job) raised as
KeyboardInterrupt("SIGTERM"), and both held back while a checkpoint is being written."""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

_HELD = {"depth": 0, "pending": None}  # interrupts_deferred's state: nesting depth, the interrupt held back


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Within `sigterm_as_interrupt`, hold back Ctrl-C and SIGTERM until the block is done, then raise them.

    For work that must not stop half-way: an interrupt inside torch.save leaves its zip writer failing on close
    with an error that hides the interrupt, so a checkpoint write is completed first.
    """
    _HELD["depth"] += 1
    try:
        yield
    finally:
        _HELD["depth"] -= 1
        if _HELD["depth"] == 0 and _HELD["pending"] is not None:
            reason, _HELD["pending"] = _HELD["pending"], None
            raise KeyboardInterrupt(reason)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (what torchrun and SLURM send to stop a job) raises KeyboardInterrupt("SIGTERM"),
    so the tool stops as on Ctrl-C: `finally` blocks run and it can say where to resume from. Both are held back
    inside `interrupts_deferred` (a checkpoint being written). Outside the main thread the signals are left alone."""
    def stop(signum, frame):
        reason = "SIGTERM" if signum == signal.SIGTERM else ""
        if _HELD["depth"]:
            _HELD["pending"] = reason
            return
        raise KeyboardInterrupt(reason)

    try:
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
