"""How the command-line tools end: one clear line and an exit code, a traceback only with `--debug`.

    sys.exit(run_cli(main, prog="train"))

Exit codes (the same for every script):
    0  done
    1  done, but something failed along the way (e.g. some images of a predict run), or training stopped
       part-way (a non-finite value, a failed write, a process that stopped answering), saying where to resume
    2  a usage or input error: a bad flag value, a missing or unreadable file, an unwritable output directory,
       a checkpoint that does not fit; nothing was computed on wrong inputs
  130  interrupted (Ctrl-C)

A usage/input error is any `InputError` and any `ValueError` or `OSError` that reaches the top: the library
raises those for bad inputs with a message naming the bad value or file. With `--debug` on the command line
the exception propagates with its full traceback instead.
"""
from __future__ import annotations

import argparse
import signal
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, NoReturn, Optional, Sequence

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class InputError(ValueError):
    """A bad flag, file or value, found before (or instead of) doing the work; its message says what to do."""


class Interrupted(Exception):
    """Raised by a tool that handled Ctrl-C itself, carrying the one line to print (e.g. how to resume)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line (not the usage block of every flag), exit code 2.

    `tool` is the name the tool's error lines start with (`<tool>: error: ...`, the same as `run_cli`'s `prog`);
    it defaults to `prog`, which the usage line shows (e.g. "python -m fpn.predict").
    """

    def __init__(self, *args, tool: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tool = tool or self.prog

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.tool}: error: {message} (see --help)\n")


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def error_line(error: BaseException) -> str:
    """The one-line message of `error`.

    An exception re-raised by a DataLoader from a worker process carries the worker's whole traceback in its
    message ("Caught ValueError in DataLoader worker process 0. Original Traceback ..."); its last line is the
    original message, which is what the user needs.
    """
    text = str(error).strip() or type(error).__name__
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        name, _, message = last.partition(": ")
        text = message if message and name.replace(".", "").replace("_", "").isalnum() else last
    if isinstance(error, OSError) and not isinstance(error, InputError) and error.filename and \
            str(error.filename) not in text:
        text = f"{error.filename}: {text}"
    return text


def run_cli(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None, *,
            prog: str = "", quiet: Callable[[], bool] = lambda: False) -> int:
    """Run `main(argv)`, turning input errors and Ctrl-C into one line on stderr and an exit code.

    Args:
        main: the tool's entry point; returns its exit code.
        argv: the arguments (None: sys.argv[1:]); `--debug` among them lets every exception through.
        prog: the tool's name, printed before the message.
        quiet: True where this process should not print the message (the other ranks of a distributed run,
            which stop with the same error as rank 0).
    Returns:
        the exit code: main's own, or EXIT_USAGE / EXIT_INTERRUPTED.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        return main(argv)
    prefix = f"{prog}: " if prog else ""

    def say(line: str) -> None:
        if not quiet():
            print(line, file=sys.stderr, flush=True)

    try:
        return main(argv)
    except Interrupted as stop:
        say(f"\n{prefix}{stop}")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        say(f"\n{prefix}interrupted")
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as error:
        say(f"{prefix}error: {error_line(error)}")
        return EXIT_USAGE


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
