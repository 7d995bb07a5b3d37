"""The training loop: one optimiser step (`train_step`) and a block of iterations (`train_iterations`).

Shape shorthand: N images per process per iteration. `scripts/train.py` calls `train_iterations` for the
iterations between two checkpoints/evaluations; everything a resumed run needs to continue exactly (model,
optimiser, scheduler, grad scaler, RNG states, iteration) lives outside the loop, in the checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Callable, ContextManager, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from fpn.engine import distributed
from fpn.device import select_device  # noqa: F401 (re-exported: its old home)
from fpn.engine.nonfinite import FiniteWatch, check_losses

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_factory(device: torch.device, amp: str) -> Callable[[], ContextManager]:
    """A zero-argument factory of the autocast context for `amp` in {"none", "bf16", "fp16"}."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if AMP_DTYPES[amp] is None:
        return contextlib.nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=AMP_DTYPES[amp])


def build_grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 (bf16 has fp32's range and needs no loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def move_to_device(
    images: List[Tensor], targets: List[Dict[str, Tensor]], device: torch.device
) -> Tuple[List[Tensor], List[Dict[str, Tensor]]]:
    """Images and the tensors of each target dict on `device` (non-tensor values are kept as they are)."""
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [
        {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets
    ]
    return images, targets


def train_step(
    model: nn.Module,
    images: List[Tensor],
    targets: List[Dict[str, Tensor]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    iteration: int,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    clip_grad_norm: Optional[float] = None,
    watch: Optional[FiniteWatch] = None,
) -> Dict[str, float]:
    """One forward/backward/step on this process's N images (DDP averages the gradients over ranks).

    Args:
        model: the detector in training mode, possibly wrapped in DistributedDataParallel.
        images: N float (3, H, W) tensors on the model's device.
        targets: N dicts with `boxes` (M, 4) xyxy and `labels` (M,) on the same device.
        optimizer, scaler: SGD and the GradScaler (a disabled scaler is a no-op).
        iteration: the 1-based number of this step, used in error messages.
        autocast: factory of the mixed-precision context.
        clip_grad_norm: clip the global gradient norm to this value (None: no clipping).
        watch: checks the gradients and updated parameters for NaN/inf; the previous step's flags are read
            with this step's losses (no extra host read). None: losses only.
    Returns:
        {loss term: value averaged over ranks, ..., "loss": their sum}, Python floats.
    Raises:
        NonFiniteError: a loss term (averaged over ranks, so every rank raises together) is NaN/inf — raised
            before backward, so no parameter changes — or the previous step's gradients or parameters were.
    """
    with autocast():
        loss_dict = model(images, targets)
    names = sorted(loss_dict)
    # (T,) one value per loss term, then the previous step's finite flags (2,): one host read for all of them.
    # The mean over ranks is what is logged, and checking it keeps the ranks in step.
    values = torch.stack([loss_dict[name].detach().float() for name in names])
    flags = watch.pending() if watch is not None else None
    if flags is not None:
        values = torch.cat([values, flags.to(values.device)])
    read = distributed.all_reduce_mean(values).tolist()
    if flags is not None:
        watch.raise_if_bad(read[len(names):])
    check_losses(names, read[:len(names)], iteration)
    total = sum(loss_dict[name].float() for name in names)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    grad_norm = None
    if clip_grad_norm is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    if watch is not None:
        watch.record(iteration, grad_norm)
    logged = dict(zip(names, read[:len(names)]))
    logged["loss"] = float(sum(logged.values()))
    return logged


class MetricsLog:
    """Appends JSON lines to `metrics.jsonl` on rank 0 (a no-op on the other ranks and when path is None).

    `board`: anything with `add_record(record)` (fpn.engine.tensorboard.TrainingBoard) that gets every record
    written too, so the event files hold the same numbers as the file.
    """

    def __init__(self, path: Optional[Union[str, Path]], board=None):
        self.path = Path(path) if path is not None and distributed.is_main_process() else None
        self.board = board if distributed.is_main_process() else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Dict[str, object]) -> None:
        if self.path is not None:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        if self.board is not None:
            self.board.add_record(record)

    def drop_after(self, iteration: int) -> int:
        """Remove the lines of iterations after `iteration` (and any line cut short by a crash); returns how many.

        A run resumed from the checkpoint of `iteration` redoes the iterations after it, and logs them again.
        The file is rewritten atomically, so a crash here leaves the old file or the new one.
        """
        if self.path is None or not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                keep = int(json.loads(line)["iter"]) <= iteration
            except (ValueError, KeyError, TypeError):  # a partial last line of a killed run, or not ours
                keep = False
            kept += [line] if keep else []
            dropped += not keep
        if dropped:
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            temporary.write_text("".join(line + "\n" for line in kept))
            os.replace(temporary, self.path)
        return dropped


def train_iterations(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    batches: Iterator[Tuple[List[Tensor], List[Dict[str, Tensor]]]],
    *,
    start_iter: int,
    end_iter: int,
    device: torch.device,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    clip_grad_norm: Optional[float] = None,
    log_every: int = 20,
    metrics: Optional[MetricsLog] = None,
    progress=None,
    watch: Optional[FiniteWatch] = None,
    postfix: Optional[Dict[str, str]] = None,
) -> int:
    """Train from `start_iter` completed iterations up to `end_iter`; the scheduler steps once per iteration.

    Args:
        model: the detector (or its DDP wrapper), put in training mode here.
        optimizer, scheduler, scaler: optimisation state, advanced in place.
        batches: an endless iterator of (images, targets) lists for this process.
        start_iter, end_iter: completed iterations before and after this block.
        device: where the batches go.
        autocast, clip_grad_norm: see `train_step`.
        log_every: a metrics line every this many iterations (and at `end_iter`).
        metrics: where the lines go (None: nowhere).
        progress: a tqdm-like bar (update(n), set_postfix(dict)) or None.
        watch: NaN/inf check of gradients and parameters (see `train_step`); the last step's flags are read
            before returning, so whatever the caller saves next is finite.
        postfix: more values shown after the loss and LR on the progress bar (e.g. the last `val_loss`).
    Returns:
        int, `end_iter`.
    Raises:
        NonFiniteError: see `train_step`.
    """
    if not 0 <= start_iter <= end_iter:
        raise ValueError(f"need 0 <= start_iter <= end_iter, got {start_iter} and {end_iter}")
    model.train()
    window: Dict[str, List[float]] = {}
    tic = time.perf_counter()
    for iteration in range(start_iter, end_iter):
        images, targets = next(batches)
        data_time = time.perf_counter() - tic
        images, targets = move_to_device(images, targets, device)
        lr = optimizer.param_groups[0]["lr"]
        losses = train_step(
            model, images, targets, optimizer, scaler,
            iteration=iteration + 1, autocast=autocast, clip_grad_norm=clip_grad_norm, watch=watch,
        )
        scheduler.step()
        step_time = time.perf_counter() - tic
        tic = time.perf_counter()
        for key, value in {**losses, "time": step_time, "data_time": data_time}.items():
            window.setdefault(key, []).append(value)
        if progress is not None:
            progress.update(1)
            progress.set_postfix({"loss": f"{losses['loss']:.3f}", "lr": f"{lr:.2e}", **(postfix or {})},
                                 refresh=False)
        done = iteration + 1
        if metrics is not None and (done % log_every == 0 or done == end_iter):
            record = {"iter": done, "lr": lr}
            record.update({key: sum(vals) / len(vals) for key, vals in window.items()})
            metrics.write(record)
            window.clear()
    if watch is not None:
        watch.check_now()
    return end_iter
