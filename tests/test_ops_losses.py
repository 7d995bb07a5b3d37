"""fpn/ops/losses.py against torchvision.ops: the sigmoid focal loss and the generalized IoU loss give the same
values and the same gradients, on ordinary inputs and on the edge cases a detector meets (no elements, saturated
logits, zero-area boxes, identical, nested and far-apart boxes)."""
import pytest
import torch
import torchvision

from fpn.ops import generalized_box_iou_loss, sigmoid_focal_loss


def _boxes(count, generator, min_side=0.0):
    """(count, 4) xyxy boxes in a 100 px square with sides in [min_side, min_side + 40)."""
    xy = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 100
    return torch.cat([xy, xy + min_side + torch.rand(count, 2, generator=generator, dtype=torch.float64) * 40], 1)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.5), (0.75, 0.0)])
def test_focal_loss_values_and_gradients_match_torchvision(alpha, gamma):
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, 5, generator=generator, dtype=torch.float64) * 4).requires_grad_()
    targets = (torch.rand(64, 5, generator=generator, dtype=torch.float64) > 0.7).to(torch.float64)
    found = sigmoid_focal_loss(logits, targets, alpha, gamma)
    (found_grad,) = torch.autograd.grad(found.sum(), logits)
    expected = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha, gamma, reduction="none")
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    assert found.shape == (64, 5)
    assert torch.allclose(found, expected, rtol=1e-12, atol=1e-14)
    assert torch.allclose(found_grad, expected_grad, rtol=1e-12, atol=1e-14)


def test_focal_loss_without_weighting_or_focusing_is_the_binary_cross_entropy():
    logits, targets = torch.tensor([-3.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 1.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(sigmoid_focal_loss(logits, targets, alpha=-1.0, gamma=0.0), bce)
    # alpha weighs the positives by alpha and the negatives by 1 - alpha
    assert torch.allclose(sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=0.0), bce * torch.tensor([0.75, 0.25, 0.25]))


def test_focal_loss_edge_cases():
    empty = sigmoid_focal_loss(torch.zeros(0, 7), torch.zeros(0, 7))
    assert empty.shape == (0, 7) and empty.sum().item() == 0
    # saturated logits: finite, and as torchvision's (the cross entropy is computed from the logits)
    logits = torch.tensor([-100.0, 100.0, -100.0, 100.0, 30.0], requires_grad=True)
    targets = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0])
    found = sigmoid_focal_loss(logits, targets)
    expected = torchvision.ops.sigmoid_focal_loss(logits, targets, reduction="none")
    assert torch.isfinite(found).all() and torch.allclose(found, expected)
    assert found[:2].abs().max() == 0  # confident and right: nothing to learn
    # confident and wrong: |logit| times the weight (alpha for a positive, 1 - alpha for a negative)
    assert found[2].item() == pytest.approx(25.0) and found[3].item() == pytest.approx(75.0)
    found.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_giou_loss_values_and_gradients_match_torchvision():
    generator = torch.Generator().manual_seed(1)
    boxes1 = _boxes(200, generator, min_side=1.0).requires_grad_()
    boxes2 = _boxes(200, generator, min_side=1.0).requires_grad_()
    found = generalized_box_iou_loss(boxes1, boxes2)
    found_grads = torch.autograd.grad(found.sum(), (boxes1, boxes2))
    expected = torchvision.ops.generalized_box_iou_loss(boxes1, boxes2, reduction="none")
    expected_grads = torch.autograd.grad(expected.sum(), (boxes1, boxes2))
    assert found.shape == (200,)
    assert ((found >= 0) & (found < 2)).all()
    assert (found < 1).any() and (found > 1).any()  # overlapping pairs and disjoint ones
    assert torch.allclose(found, expected, rtol=1e-12, atol=1e-14)
    for mine, theirs in zip(found_grads, expected_grads):
        assert torch.allclose(mine, theirs, rtol=1e-10, atol=1e-12)


def test_giou_loss_known_values():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert generalized_box_iou_loss(box, box).item() == pytest.approx(0.0, abs=1e-6)
    inner = torch.tensor([[0.0, 0.0, 5.0, 10.0]])  # half of `box`, inside it: IoU 1/2, enclosing = union
    assert generalized_box_iou_loss(box, inner).item() == pytest.approx(0.5, abs=1e-6)
    # side by side, a gap of 10: IoU 0, enclosing 30 x 10 of which 200 is covered -> GIoU -1/3
    apart = torch.tensor([[20.0, 0.0, 30.0, 10.0]])
    assert generalized_box_iou_loss(box, apart).item() == pytest.approx(4 / 3, abs=1e-6)
    far = torch.tensor([[1e4, 1e4, 1e4 + 10, 1e4 + 10]])  # tends to 2 as the boxes move apart
    assert 1.99 < generalized_box_iou_loss(box, far).item() < 2


def test_giou_loss_edge_cases_match_torchvision():
    assert generalized_box_iou_loss(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)
    point, line = torch.tensor([5.0, 5.0, 5.0, 5.0]), torch.tensor([0.0, 5.0, 10.0, 5.0])
    box = torch.tensor([0.0, 0.0, 10.0, 10.0])
    boxes1 = torch.stack([point, point, line, line, box, point]).requires_grad_()
    boxes2 = torch.stack([point, box, line, box, line, torch.tensor([7.0, 9.0, 7.0, 9.0])])
    found = generalized_box_iou_loss(boxes1, boxes2)  # zero-area boxes: finite, thanks to eps
    expected = torchvision.ops.generalized_box_iou_loss(boxes1, boxes2, reduction="none")
    assert torch.isfinite(found).all()
    assert torch.allclose(found, expected, rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(found.sum(), boxes1)
    assert torch.isfinite(grad).all()
    # integer boxes are taken as float, as torchvision upcasts them
    ints = torch.tensor([[0, 0, 10, 10], [2, 2, 4, 8]])
    found = generalized_box_iou_loss(ints, ints.flip(0))
    assert found.is_floating_point()
    assert torch.allclose(found, torchvision.ops.generalized_box_iou_loss(ints, ints.flip(0)))
