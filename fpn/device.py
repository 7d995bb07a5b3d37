"""Picking the torch device a tool runs on, by name (`--device auto|cpu|cuda|cuda:N|mps`), and what it runs natively."""
import contextlib

import torch


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; any other value is passed to torch.device (ValueError if bad)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from error


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX), where bf16 pays."""
    with contextlib.suppress(AttributeError, RuntimeError):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False
