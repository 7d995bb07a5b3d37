"""The library's error types and how an error reads in one line; no command-line code here.

The library raises `InputError` (a `ValueError`) for a bad flag value, file or input, with a message that names the
bad value or file and what to do; `OSError` for a failed read or write, naming the path. Whoever calls the library
decides what to do with them: the command-line tools (`fpn.tools.cli`) print one line and pick an exit code.
"""
from __future__ import annotations


class InputError(ValueError):
    """A bad flag, file or value, found before (or instead of) doing the work; its message says what to do."""


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


def describe_os_error(error: OSError) -> str:
    """"<path>: <OS reason> [Errno N]" for an OSError that names its file, else its one-line message."""
    if error.filename and error.strerror:
        return f"{error.filename}: {error.strerror} [Errno {error.errno}]"
    return error_line(error)


class TrainingStopped(Exception):
    """A training run stopped part-way (a non-finite value, a failed write, a process that stopped answering).

    The message is one line: the cause, the last good checkpoint and the command that resumes. `report` is True
    on the one process of a multi-process run that should say it (rank 0, or after a failed collective the lowest
    rank still answering).
    """

    def __init__(self, message: str, report: bool = True):
        super().__init__(message)
        self.report = report


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped a training run; the message says how many iterations were done and where to resume."""
