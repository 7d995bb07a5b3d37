"""Reading a weights file safely: `torch.load(weights_only=True)`, with every way it can fail named in one line.

A weights file can be missing, a folder, empty, truncated (a copy cut short), not a torch file at all, or a
pickle that asks to run code (refused by `weights_only=True`). Each of these raises `InputError` naming the file
and the reason, so the command-line tools report it as a usage error (exit code 2) instead of a traceback.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Union

import torch

from fpn.errors import InputError, first_line


def read_weights(path: Union[str, Path], what: str = "weights file", *, mmap: bool = False) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)`, or InputError("<what> <path>: <reason>").

    Args:
        path: the file.
        what: how the message names the file ("checkpoint", "--backbone-weights file", ...).
        mmap: memory-map the file (only the entries read are loaded); a legacy-format file is read whole.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path}: no such file")
    if not path.is_file():
        raise InputError(f"{what} {path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path}: the file is empty (an interrupted copy or write?)")
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        if "GLOBAL" in text or "Unsupported global" in text:  # a class or function loading would have to run
            raise InputError(
                f"{what} {path}: refused, the file holds Python objects that loading would have to execute "
                "(only tensors, dicts, lists, numbers and strings are read); re-save it as a plain state dict "
                "if you trust its source"
            ) from error
        raise InputError(f"{what} {path}: not a torch weights file (written by torch.save?)") from error
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, UnicodeDecodeError) as error:
        first = first_line(error).split(". ")[0]
        raise InputError(f"{what} {path}: unreadable or truncated torch file ({first})") from error
