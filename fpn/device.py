"""Picking the torch device a tool runs on, by name (`--device auto|cpu|cuda|cuda:N|mps`)."""
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
