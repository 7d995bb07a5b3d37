"""Stopping training on the first NaN/inf — in a loss term, a gradient or a parameter — before anything is saved.

A diverging run shows up in one of three places: a loss term (checked on the value every step reads anyway), a
gradient (e.g. a huge loss on one box), or a parameter (a finite gradient times a huge LR overflows to inf while
that step's loss was still finite). Checking the gradients and parameters with a host read of their own every
step would add a device sync per step, so `FiniteWatch` keeps two device-side flags per step and they travel
with the next step's loss read; before a checkpoint is written, `check_now` reads them (one read per
checkpoint). So a checkpoint never holds a non-finite weight, and the error names the iteration and the first
parameter concerned.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn


class NonFiniteError(RuntimeError):
    """Training produced a NaN or inf; raised before anything more is written.

    Attributes:
        iteration: the 1-based iteration whose loss, gradient or update went non-finite.
        kind: "loss", "gradient" or "parameter".
        name: the loss term or the parameter's name.
        value: the loss value (None for gradients and parameters).
    """

    def __init__(self, iteration: int, kind: str, name: str, value: Optional[float] = None):
        self.iteration, self.kind, self.name, self.value = iteration, kind, name, value
        what = {"loss": "loss term", "gradient": "gradient of", "parameter": "parameter"}[kind]
        shown = f" = {value}" if value is not None else ""
        super().__init__(f"non-finite {what} {name}{shown} at iteration {iteration}")


class FiniteWatch:
    """Device-side "all finite" flags of the last step's gradients and updated parameters, read lazily.

    Use: `record(iteration, grad_norm)` right after the optimiser step; `pending()` returns the (2,) flags
    tensor to read together with the next step's losses (or None), and `raise_if_bad(flags)` interprets the
    values read; `check_now()` does both at once (one host read) before a checkpoint.
    """

    def __init__(self, model: nn.Module, check_gradients: bool = True):
        """`check_gradients=False` for fp16 with a GradScaler, where inf gradients are expected: the scaler
        skips those steps and lowers its scale."""
        self.named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.check_gradients = check_gradients
        self._flags: Optional[Tensor] = None  # (2,) float32: 1.0 where [gradients, parameters] are finite
        self._iteration = 0

    def record(self, iteration: int, grad_norm: Optional[Tensor] = None) -> None:
        """Flags of step `iteration`; `grad_norm` is a norm of all gradients if one was computed (clipping)."""
        params = [p.detach() for _, p in self.named]
        if not params:
            return
        if not self.check_gradients:
            grads_ok = torch.ones((), dtype=torch.bool, device=params[0].device)
        else:
            if grad_norm is None:
                grads = [p.grad.detach() for _, p in self.named if p.grad is not None]
                grad_norm = summed(grads) if grads else params[0].new_zeros(())
            grads_ok = torch.isfinite(grad_norm)
        params_ok = torch.isfinite(summed(params))
        self._flags = torch.stack([grads_ok, params_ok]).float()
        self._iteration = iteration

    def pending(self) -> Optional[Tensor]:
        """The (2,) flags not read yet, or None; they are handed over once."""
        flags, self._flags = self._flags, None
        return flags

    def raise_if_bad(self, flags: Sequence[float]) -> None:
        """NonFiniteError naming the first non-finite gradient or parameter if `flags` (read values) say so."""
        grads_ok, params_ok = (v >= 1.0 for v in flags)  # DDP averages the flags: below 1 on any rank is bad
        if not grads_ok:
            raise NonFiniteError(self._iteration, "gradient", self._first_bad(lambda p: p.grad))
        if not params_ok:
            raise NonFiniteError(self._iteration, "parameter", self._first_bad(lambda p: p))

    def check_now(self) -> None:
        """Read the pending flags (one host read) and raise if they are bad."""
        flags = self.pending()
        if flags is not None:
            self.raise_if_bad(flags.tolist())

    def _first_bad(self, tensor_of) -> str:
        # the error path: reads values freely to name the culprit
        for name, p in self.named:
            t = tensor_of(p)
            if t is not None and not bool(torch.isfinite(t).all()):
                return name
        return "(on another process)"


def summed(tensors: Sequence[Tensor]) -> Tensor:
    """The sum of every element of `tensors`, 0-dim: NaN or inf when any element is, so one isfinite on it checks
    them all. (A max of |x| would say the same without overflow, but costs ~10x more on the CPU, a few ms per step
    of the demo model; the float32 sum of finite values overflows only when they reach ~1e32, a run long diverged.)
    """
    return torch.stack([t.sum(dtype=torch.float32) for t in tensors]).sum()


def check_losses(names: List[str], values: List[float], iteration: int) -> None:
    """NonFiniteError for the first loss term whose (rank-averaged) value is NaN or inf."""
    for name, value in zip(names, values):
        if not math.isfinite(value):
            raise NonFiniteError(iteration, "loss", name, value)
