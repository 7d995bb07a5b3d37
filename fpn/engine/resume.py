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

from fpn.engine.checkpoint import check_same_arch, checkpoint_arch, list_checkpoints, load_checkpoint
from fpn.errors import InputError, first_line
from fpn.engine.rng_state import restore_rng_state

# Training arguments whose change on --resume says nothing about the run (where it runs, how it logs).
OPERATIONAL = frozenset({
    "resume", "debug", "output_dir", "init_from", "backbone_weights", "model_config", "threads", "workers",
    "device", "log_every", "skip_bad_images", "keep_checkpoints", "dist_timeout_min", "synthetic_dir",
    "check_images", "tensorboard",
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
        raise InputError(f"the checkpoint's weights do not fit this model: {first_line(error)}") from error
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
    --gamma, warm-up, which live in the schedule's function) takes effect from the next iteration. The LR is set
    once, in the optimiser (what the loop reads); the scheduler's own record of it (`get_last_lr()`) follows at its
    next `step()`.
    """
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)
        group["momentum"] = momentum
        group["weight_decay"] = weight_decay


def check_resumable(checkpoint: Dict[str, Any], path: Path, model: torch.nn.Module,
                    label_to_category: Dict[int, int]) -> List[str]:
    """Before the first iteration: the checkpoint must be of the data's categories and its weights must fit
    `model`. Model config changes that keep the weights loadable are allowed and returned as notes.

    Raises:
        InputError: another architecture, other categories, or a changed model the weights do not fit (the
            changes named).
    """
    check_same_arch(checkpoint_arch(checkpoint), model, f"--resume: {path}")
    saved_parts, parts = list(checkpoint.get("given_modules") or []), list(getattr(model, "given_modules", ()))
    if saved_parts != parts:
        raise InputError(f"--resume: {path}'s detector was built with the parts passed in {saved_parts or 'none'}, "
                         f"this run's with {parts or 'none'}: resume with the same parts")
    saved_map = {int(k): int(v) for k, v in checkpoint["label_to_category"].items()}
    if saved_map != dict(label_to_category):
        raise InputError(
            f"--resume: {path} was trained on {len(saved_map)} categories {sorted(saved_map.values())}, the "
            f"training data has {len(label_to_category)}: {sorted(label_to_category.values())}. Resume with "
            "the same data, or start a new --output-dir with --init-from to fine-tune"
        )
    changes = config_differences(checkpoint["config"], model.config.to_dict())
    if not changes:
        return []
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError:
        raise InputError(f"--resume: the model config differs from {path}'s and its weights do not fit the "
                         f"changed model: {'; '.join(changes)}. Drop these flags to resume") from None
    return [f"model config changed from {path}'s, applied (the weights fit): {'; '.join(changes)}"]


def apply_changed_arguments(checkpoint: Dict[str, Any], current: Dict[str, Any], optimizer: torch.optim.Optimizer,
                            scheduler: torch.optim.lr_scheduler.LambdaLR, *, lr: float, momentum: float,
                            weight_decay: float) -> List[str]:
    """After `restore_training_state`: every training argument that changed since the checkpoint's run, as a
    note, and the optimiser set to this run's LR (scaled to the total batch), momentum and weight decay.

    Args:
        checkpoint: the restored checkpoint (its `args` and `iteration`).
        current: this run's arguments as plain values.
        optimizer, scheduler: restored; changed in place when the values differ.
        lr, momentum, weight_decay: this run's values.
    """
    start = int(checkpoint["iteration"]) + 1
    notes = [f"--{name.replace('_', '-')} changed from {_show(old)} to {_show(new)}: applied from iteration "
             f"{start} on" for name, old, new in changed_arguments(checkpoint.get("args") or {}, current)]
    if scheduler.base_lrs[0] != lr or any(g["momentum"] != momentum or g["weight_decay"] != weight_decay
                                          for g in optimizer.param_groups):
        was = scheduler.base_lrs[0]
        apply_hyperparameters(optimizer, scheduler, lr=lr, momentum=momentum, weight_decay=weight_decay)
        notes.append(f"base LR {lr:g} (was {was:g}), momentum {momentum}, weight decay {weight_decay}")
    return notes


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
