"""Resuming a run: the newest usable checkpoint, every process's random streams, and flags changed on --resume.

What a resumed run keeps exact: with the same number of processes, N iterations + resume + M more give the same
weights and logged losses as N + M uninterrupted (model, optimiser, schedule, grad scaler, iteration and each
rank's RNG states are restored; the data order is a function of the seed, rank and iteration). With another
number of processes, the weights, optimiser state and schedule continue, but the data order and random draws
differ from either uninterrupted run; `restore_training_state` says so.

A flag given on --resume that differs from the checkpoint's run is never ignored silently: the optimisation and
bookkeeping flags are applied from the resumed iteration on (and listed), and a model config change is applied
only if the checkpoint's weights load into the changed model, refused otherwise (`config_differences`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from fpn.checkpoint import list_checkpoints, load_checkpoint
from fpn.cli import InputError
from fpn.rng_state import restore_rng_state

# Training arguments whose change on --resume says nothing about the run (where it runs, how it logs).
OPERATIONAL = frozenset({
    "resume", "debug", "output_dir", "init_from", "backbone_weights", "model_config", "threads", "workers",
    "device", "log_every", "skip_bad_images", "keep_checkpoints", "dist_timeout_min", "synthetic_dir",
    "check_images",
})


def first_non_finite(state: Dict[str, Tensor]) -> Optional[str]:
    """The name of the first floating-point tensor of a state dict holding a NaN or inf, or None."""
    for name, tensor in state.items():
        if isinstance(tensor, Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def find_resume_checkpoint(output_dir: Path) -> Tuple[Optional[Path], Optional[Dict[str, Any]], List[str]]:
    """The newest checkpoint of `output_dir` that loads and holds finite weights.

    Returns:
        (path, checkpoint, skipped): path and contents (None, None when the directory has no checkpoint), and
        one line per newer checkpoint passed over, naming it and why.
    Raises:
        InputError: there are checkpoints but none of them is usable.
    """
    skipped: List[str] = []
    found = list_checkpoints(output_dir)
    for _, path in reversed(found):
        try:
            checkpoint = load_checkpoint(path)
        except InputError as error:
            skipped.append(f"{path} cannot be loaded ({error})")
            continue
        bad = first_non_finite(checkpoint["model"])
        if bad is not None:
            skipped.append(f"{path} holds non-finite weights ({bad})")
            continue
        return path, checkpoint, skipped
    if found:
        raise InputError(f"--resume: none of the {len(found)} checkpoints in {output_dir} is usable: "
                         + "; ".join(skipped))
    return None, None, skipped


def restore_training_state(
    checkpoint: Dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: Optional[torch.amp.GradScaler],
    rank: int = 0,
    world_size: int = 1,
) -> List[str]:
    """Load model, optimiser, scheduler, grad scaler and this rank's RNG states from `checkpoint`.

    Returns:
        notes on what could not be restored exactly (another number of processes), one line each.
    Raises:
        InputError: the weights or optimiser state do not fit the model (another architecture).
    """
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise InputError(f"the checkpoint's weights do not fit this model: {str(error).splitlines()[0]}") from error
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler") is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    states = checkpoint.get("rng_per_rank") or [checkpoint["rng"]]
    if len(states) == world_size:
        restore_rng_state(states[rank])
        return []
    return [f"the checkpoint was written by {len(states)} process(es) and this run has {world_size}: weights, "
            "optimiser and LR schedule continue exactly, but the data order and the random draws (training sizes, "
            "anchor/RoI sampling) differ from an uninterrupted run"]


def changed_arguments(saved: Dict[str, Any], current: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    """(name, value in the checkpoint's run, value now) of every training argument that changed.

    Lists and tuples compare equal by value (checkpoints store tuples as lists); OPERATIONAL names are left out,
    and so are arguments the checkpoint's run did not have.
    """
    changes = []
    for name, value in sorted(current.items()):
        if name in OPERATIONAL or name not in saved:
            continue
        old = saved[name]
        normal = list(value) if isinstance(value, tuple) else value
        if normal != old and not (isinstance(old, float) and isinstance(normal, (int, float)) and old == normal):
            changes.append((name, old, value))
    return changes


def config_differences(saved: Dict[str, Any], current: Dict[str, Any], prefix: str = "") -> List[str]:
    """`--section.field old -> new` for every model config value that differs (weights paths left out)."""
    lines = []
    for name in sorted(set(saved) | set(current)):
        old, new = saved.get(name), current.get(name)
        flag = f"{prefix}.{name}" if prefix else name
        if isinstance(old, dict) and isinstance(new, dict):
            lines += config_differences(old, new, flag)
        elif name != "weights" and _plain(old) != _plain(new):
            lines.append(f"--{flag.replace('_', '-')} {_show(old)} -> {_show(new)}")
    return lines


def apply_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, *,
                          lr: float, momentum: float, weight_decay: float) -> None:
    """Set the base LR, momentum and weight decay of a restored optimiser to this run's values.

    The current LR is recomputed from the schedule at the restored iteration, so a changed --lr (or --steps,
    --gamma, warm-up, which live in the schedule's function) takes effect from the next iteration.
    """
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)
        group["momentum"] = momentum
        group["weight_decay"] = weight_decay
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
