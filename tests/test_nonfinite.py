"""NaN/inf in a gradient or a parameter stops training like a NaN loss does, before anything is written, with
no extra host read per step."""
import pytest
import torch
from torch import nn

from fpn.engine.loop import build_grad_scaler, train_iterations, train_step
from fpn.ops.host_sync import HostSyncCounter
from fpn.engine.nonfinite import FiniteWatch, NonFiniteError
from fpn.engine.schedule import build_lr_scheduler

CPU = torch.device("cpu")


class Linear(nn.Module):
    """loss_a = w . x (gradient x), loss_b = sqrt(b) (gradient inf at b = 0 while the loss is 0, finite)."""

    def __init__(self, b=1.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -1.0]))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, images, targets):
        x = torch.stack([img.flatten()[:2] for img in images]).sum(0)  # (2,)
        return {"loss_a": (self.w * x).sum(), "loss_b": self.b.sqrt()}


def _batches(x):
    image = torch.tensor(x, dtype=torch.float32).view(1, 1, 2).expand(3, 1, 2).contiguous()
    while True:
        yield [image], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


def _run(model, lr, iters, *, amp="none"):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = build_lr_scheduler(optimizer, steps=(), gamma=0.1, warmup_iters=0, warmup_factor=1.0)
    watch = FiniteWatch(model, check_gradients=amp != "fp16")
    return train_iterations(model, optimizer, scheduler, build_grad_scaler(CPU, amp), _batches([4.0, 6.0]),
                            start_iter=0, end_iter=iters, device=CPU, watch=watch)


def test_a_huge_lr_overflowing_a_weight_stops_at_the_block_end():
    # step 1: w - 1e38 * (4, 6) overflows to -inf while the loss of step 1 was finite
    model = Linear()
    with pytest.raises(NonFiniteError, match="non-finite parameter w at iteration 1") as info:
        _run(model, lr=1e38, iters=1)
    assert (info.value.kind, info.value.name, info.value.iteration) == ("parameter", "w", 1)


def test_the_next_step_reports_the_previous_steps_weights_before_its_own_loss():
    # the non-finite weights of step 1 make step 2's loss non-finite too; the root cause (step 1) is named
    with pytest.raises(NonFiniteError, match="non-finite parameter w at iteration 1"):
        _run(Linear(), lr=1e38, iters=3)


def test_an_infinite_gradient_with_a_finite_loss_is_named():
    with pytest.raises(NonFiniteError, match="non-finite gradient of b at iteration 1") as info:
        _run(Linear(b=0.0), lr=0.1, iters=2)
    assert info.value.kind == "gradient"


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")  # the skipped step
def test_fp16_leaves_infinite_gradients_to_the_grad_scaler():
    # the scaler skips the step with inf gradients (the weights stay finite), so this is no error
    model = Linear(b=0.0)
    assert _run(model, lr=0.1, iters=2, amp="fp16") == 2
    assert torch.isfinite(model.w).all() and model.b.item() == 0.0


def test_finite_training_is_untouched():
    model = Linear()
    assert _run(model, lr=0.01, iters=3) == 3
    assert torch.allclose(model.w.detach(), torch.tensor([1.0 - 3 * 0.04, -1.0 - 3 * 0.06]))


def test_the_check_adds_no_host_read_per_step():
    def count_syncs(with_watch):
        model = Linear()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        watch = FiniteWatch(model) if with_watch else None
        batches = _batches([1.0, 2.0])
        with HostSyncCounter() as counter:
            for it in range(1, 4):
                train_step(model, *next(batches), optimizer, build_grad_scaler(CPU, "none"), iteration=it,
                           watch=watch)
        return counter.total, watch

    plain, _ = count_syncs(False)
    watched, watch = count_syncs(True)
    assert watched == plain == 3  # one read per step: the losses, with the previous step's flags
    with HostSyncCounter() as counter:
        watch.check_now()  # before a checkpoint: the last step's flags, one read
    assert counter.total == 1
