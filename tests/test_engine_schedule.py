"""The LR schedule (warm-up + steps), the linear scaling rule and the SGD parameter groups."""
import math

import pytest
import torch
from torch import nn

from fpn.engine.schedule import build_lr_scheduler, build_optimizer, lr_factor, scaled_lr


def test_warmup_is_linear_from_factor_to_one():
    kwargs = dict(steps=(), warmup_iters=10, warmup_factor=0.001)
    assert lr_factor(0, **kwargs) == pytest.approx(0.001)
    assert lr_factor(5, **kwargs) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(9, **kwargs) == pytest.approx(0.001 * 0.1 + 0.9)
    assert lr_factor(10, **kwargs) == 1.0
    assert lr_factor(10_000, **kwargs) == 1.0


def test_steps_decay_by_gamma_from_the_step_iteration_on():
    kwargs = dict(steps=(60_000, 80_000), warmup_iters=1000, warmup_factor=0.001)
    assert lr_factor(59_999, **kwargs) == 1.0
    assert lr_factor(60_000, **kwargs) == pytest.approx(0.1)
    assert lr_factor(79_999, **kwargs) == pytest.approx(0.1)
    assert lr_factor(80_000, **kwargs) == pytest.approx(0.01)
    assert lr_factor(89_999, **kwargs) == pytest.approx(0.01)


def test_step_inside_warmup_multiplies_both():
    assert lr_factor(4, steps=(2,), gamma=0.5, warmup_iters=8, warmup_factor=0.0) == pytest.approx(0.5 * 0.5)


def test_no_warmup():
    assert lr_factor(0, steps=(3,), warmup_iters=0) == 1.0
    assert lr_factor(3, steps=(3,), warmup_iters=0) == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [dict(iteration=-1), dict(iteration=0, steps=(5, 2))])
def test_bad_arguments_raise(bad):
    with pytest.raises(ValueError):
        lr_factor(**bad)


def test_scaled_lr_is_linear_in_total_batch():
    assert scaled_lr(0.02, 16) == pytest.approx(0.02)
    assert scaled_lr(0.02, 2) == pytest.approx(0.0025)
    assert scaled_lr(0.02, 32) == pytest.approx(0.04)
    assert scaled_lr(0.04, 4, reference_batch_size=4) == pytest.approx(0.04)
    with pytest.raises(ValueError, match="total=0"):
        scaled_lr(0.02, 0)


def test_scheduler_follows_lr_factor_and_resumes_from_its_state():
    steps, warmup = (6, 9), 4
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.5)
    scheduler = build_lr_scheduler(optimizer, steps=steps, warmup_iters=warmup, warmup_factor=0.25)
    seen = []
    for it in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        if it == 6:
            state = scheduler.state_dict()
    expected = [0.5 * lr_factor(it, steps=steps, warmup_iters=warmup, warmup_factor=0.25) for it in range(12)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(0.125) and seen[10] == pytest.approx(0.005)

    # A fresh optimiser + scheduler loaded with the state after 7 steps continues on the same curve.
    optimizer2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler2 = build_lr_scheduler(optimizer2, steps=steps, warmup_iters=warmup, warmup_factor=0.25)
    scheduler2.load_state_dict(state)
    for group in optimizer2.param_groups:
        group["lr"] = scheduler2.get_last_lr()[0]
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(expected[7])
    optimizer2.step()
    scheduler2.step()
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(expected[8])


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.GroupNorm(2, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_optimizer_skips_frozen_parameters_and_uses_sgd_settings():
    model = _Tiny()
    optimizer = build_optimizer(model, 0.02)
    assert isinstance(optimizer, torch.optim.SGD)
    (group,) = optimizer.param_groups
    assert group["momentum"] == 0.9 and group["weight_decay"] == 1e-4 and group["lr"] == 0.02
    trained = {id(p) for p in group["params"]}
    assert trained == {id(model.conv.weight), id(model.conv.bias), id(model.norm.weight), id(model.norm.bias)}


def test_optimizer_norm_and_bias_group():
    model = _Tiny()
    optimizer = build_optimizer(model, 0.02, norm_weight_decay=0.0)
    decay, no_decay = optimizer.param_groups
    assert [id(p) for p in decay["params"]] == [id(model.conv.weight)]
    assert {id(p) for p in no_decay["params"]} == {id(model.conv.bias), id(model.norm.weight), id(model.norm.bias)}
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        build_optimizer(model, 0.0)
    assert math.isclose(no_decay["lr"], 0.02)
