"""Optimisation: SGD with momentum and the learning-rate schedule of the paper (linear warm-up, step decay).

The learning rate is a function of the iteration only, so a resumed run continues on exactly the same curve:

    lr(it) = base_lr * warmup(it) * gamma ** (number of steps <= it)
    warmup(it) = warmup_factor + (1 - warmup_factor) * it / warmup_iters   for it < warmup_iters, else 1

(Goyal et al. 2017 "linear warm-up"; detectron2 uses the same form.) `base_lr` follows the linear scaling rule:
0.02 for a total batch of 16 images, proportionally less or more for other batch sizes.

Weight decay is applied to every parameter, norm weights and biases included, as in Detectron and torchvision's
reference recipe (the paper's numbers were obtained that way); `norm_weight_decay` can switch it off for them.
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Optional, Sequence

import torch
from torch import nn

REFERENCE_BATCH_SIZE = 16  # the paper's total batch (8 GPUs x 2 images) for which LR 0.02 is defined


def scaled_lr(reference_lr: float, total_batch_size: int, reference_batch_size: int = REFERENCE_BATCH_SIZE) -> float:
    """Linear scaling rule: the LR for `total_batch_size` images given the LR for `reference_batch_size`.

    Args:
        reference_lr: learning rate tuned for `reference_batch_size` images per iteration (0.02 for 16).
        total_batch_size: images per iteration over all processes (per-process batch x world size).
        reference_batch_size: the batch size `reference_lr` belongs to.
    Returns:
        float, reference_lr * total_batch_size / reference_batch_size.
    """
    if total_batch_size < 1 or reference_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got total={total_batch_size}, reference={reference_batch_size}")
    return reference_lr * total_batch_size / reference_batch_size


def lr_factor(
    iteration: int,
    *,
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_iters: int = 1000,
    warmup_factor: float = 0.001,
) -> float:
    """Multiplier of the base LR at `iteration` (0-based: the factor used by the step that makes it iteration+1).

    Args:
        iteration: completed iterations before this step, >= 0.
        steps: iterations at which the LR is multiplied by `gamma` (sorted; the step at `s` is in force for
            iterations >= s).
        gamma: decay per step (0.1 in the paper).
        warmup_iters: length of the linear warm-up; 0 disables it.
        warmup_factor: multiplier at iteration 0, rising linearly to 1 at `warmup_iters`.
    Returns:
        float factor, > 0.
    """
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    if list(steps) != sorted(steps):
        raise ValueError(f"steps must be sorted, got {tuple(steps)}")
    factor = gamma ** bisect_right(list(steps), iteration)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1.0 - alpha) + alpha
    return factor


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    steps: Sequence[int],
    gamma: float = 0.1,
    warmup_iters: int = 1000,
    warmup_factor: float = 0.001,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping once per iteration along `lr_factor` (its state is saved in checkpoints)."""
    steps = tuple(int(s) for s in steps)

    def factor(iteration: int) -> float:
        return lr_factor(iteration, steps=steps, gamma=gamma, warmup_iters=warmup_iters, warmup_factor=warmup_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(
    model: nn.Module,
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    norm_weight_decay: Optional[float] = None,
) -> torch.optim.SGD:
    """SGD over the trainable parameters of `model`.

    Args:
        model: the detector (frozen parameters, requires_grad=False, are left out).
        lr: the (already scaled) learning rate.
        momentum, weight_decay: SGD settings (0.9 and 1e-4 in the paper).
        norm_weight_decay: weight decay of normalisation weights and of all biases; None uses `weight_decay`.
    Returns:
        torch.optim.SGD with one or two parameter groups.
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    if norm_weight_decay is None:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    no_decay = {id(p) for p in _norm_and_bias_parameters(model)}
    groups = [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": norm_weight_decay},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def _norm_and_bias_parameters(model: nn.Module) -> list:
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    found = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, norm_types):
                found.append(param)
    return found
