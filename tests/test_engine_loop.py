"""The training step and loop on a toy model with exactly known gradients, plus device/AMP helpers."""
import json

import pytest
import torch
from torch import nn

from fpn.engine.loop import (
    MetricsLog, autocast_factory, build_grad_scaler, select_device,
    train_iterations, train_step,
)
from fpn.engine.nonfinite import NonFiniteError
from fpn.engine.schedule import build_lr_scheduler

CPU = torch.device("cpu")


class Toy(nn.Module):
    """loss_a = w . x, loss_b = 2 * b: gradients are x for w and 2 for b (per call, summed over images)."""

    def __init__(self, poison=None):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -1.0]))
        self.b = nn.Parameter(torch.tensor(0.5))
        self.poison = poison  # (call number, term): that term becomes NaN on that call
        self.calls = 0

    def forward(self, images, targets):
        self.calls += 1
        x = torch.stack([img.flatten()[:2] for img in images]).sum(0)  # (2,)
        losses = {"loss_a": (self.w * x).sum(), "loss_b": 2 * self.b}
        if self.poison and self.poison[0] == self.calls:
            losses[self.poison[1]] = losses[self.poison[1]] * float("nan")
        return losses


def _batch(values):
    images = [torch.tensor(v, dtype=torch.float32).view(1, 1, 2).expand(3, 1, 2).contiguous() for v in values]
    return images, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in values]


def test_train_step_applies_one_sgd_step_and_returns_the_losses():
    model = Toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, targets = _batch([[1.0, 2.0], [3.0, 4.0]])  # x = (4, 6)
    losses = train_step(model, images, targets, optimizer, build_grad_scaler(CPU, "none"), iteration=1)
    assert losses == pytest.approx({"loss_a": 4.0 - 6.0, "loss_b": 1.0, "loss": -1.0})
    assert torch.allclose(model.w.detach(), torch.tensor([1.0 - 0.4, -1.0 - 0.6]))
    assert model.b.item() == pytest.approx(0.5 - 0.2)


def test_clip_grad_norm_clips_the_global_norm():
    model = Toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    images, targets = _batch([[3.0, 0.0]])  # grads: w (3, 0), b 2 -> norm sqrt(13)
    train_step(model, images, targets, optimizer, build_grad_scaler(CPU, "none"), iteration=1, clip_grad_norm=1.0)
    scale = 1.0 / 13 ** 0.5
    assert torch.allclose(model.w.detach(), torch.tensor([1.0 - 3 * scale, -1.0]), atol=1e-6)
    assert model.b.item() == pytest.approx(0.5 - 2 * scale, abs=1e-6)


def test_fp16_grad_scaler_gives_the_unscaled_update():
    model = Toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = build_grad_scaler(CPU, "fp16")
    assert scaler.is_enabled() and not build_grad_scaler(CPU, "bf16").is_enabled()
    images, targets = _batch([[1.0, 2.0]])
    train_step(model, images, targets, optimizer, scaler, iteration=1, clip_grad_norm=100.0)
    assert torch.allclose(model.w.detach(), torch.tensor([0.9, -1.2]))
    assert model.b.item() == pytest.approx(0.3)


@pytest.mark.parametrize("term", ["loss_a", "loss_b"])
def test_non_finite_loss_raises_before_touching_the_weights(term):
    model = Toy(poison=(1, term))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, targets = _batch([[1.0, 2.0]])
    with pytest.raises(NonFiniteError, match=f"non-finite loss term {term} = nan at iteration 7") as info:
        train_step(model, images, targets, optimizer, build_grad_scaler(CPU, "none"), iteration=7)
    assert (info.value.iteration, info.value.kind, info.value.name) == (7, "loss", term)
    assert torch.equal(model.w.detach(), torch.tensor([1.0, -1.0])) and model.b.item() == 0.5
    assert model.w.grad is None


def test_train_iterations_logs_window_means_and_steps_the_schedule(tmp_path):
    model = Toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the losses stay constant and known
    scheduler = build_lr_scheduler(optimizer, steps=(3,), warmup_iters=0)
    batches = iter([_batch([[float(i), 0.0]]) for i in range(10)])

    class Bar:
        updates, postfix = 0, None

        def update(self, n):
            self.updates += n

        def set_postfix(self, values, refresh=True):
            self.postfix = values

    bar = Bar()
    metrics = MetricsLog(tmp_path / "m.jsonl")
    end = train_iterations(model, optimizer, scheduler, build_grad_scaler(CPU, "none"), batches, start_iter=0,
                           end_iter=5, device=CPU, log_every=2, metrics=metrics, progress=bar)
    assert end == 5 and scheduler.last_epoch == 5 and bar.updates == 5
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [line["iter"] for line in lines] == [2, 4, 5]
    # loss_a = w . x = x0 for image i: means over the windows {0, 1}, {2, 3}, {4}
    assert [line["loss_a"] for line in lines] == pytest.approx([0.5, 2.5, 4.0])
    assert all(line["loss_b"] == pytest.approx(1.0) for line in lines)
    assert all(line["time"] >= line["data_time"] >= 0 for line in lines)
    assert bar.postfix["loss"] == "5.000"
    with pytest.raises(ValueError, match="start_iter <= end_iter"):
        train_iterations(model, optimizer, scheduler, build_grad_scaler(CPU, "none"), batches, start_iter=3,
                         end_iter=2, device=CPU)


def test_autocast_factory_and_device_selection():
    with autocast_factory(CPU, "bf16")():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast_factory(CPU, "none")():
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="amp must be one of"):
        autocast_factory(CPU, "fp8")
    assert select_device("cpu") == CPU
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert select_device("auto").type == expected
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        select_device("gpu0")
