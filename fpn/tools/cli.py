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
the exception propagates with its full traceback instead. This module is the tools' alone: the library raises
its errors from `fpn.errors` and never decides an exit code.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Optional, Sequence

from fpn.errors import InputError, error_line, first_line  # noqa: F401 (re-exported for the tools)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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
