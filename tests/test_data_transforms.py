"""fpn.data.transforms: flip maths (exact, and against torchvision.transforms.v2), random flip draws, Compose."""
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from fpn.data.transforms import Compose, RandomHorizontalFlip, hflip


def test_hflip_maths():
    image = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10)
    boxes = torch.tensor([[1.0, 2.0, 4.0, 6.0], [0.0, 0.0, 10.0, 3.0], [9.5, 1.0, 10.0, 2.0]])
    flipped_image, flipped_boxes = hflip(image, boxes)
    expected = torch.tensor([[6.0, 2.0, 9.0, 6.0], [0.0, 0.0, 10.0, 3.0], [0.0, 1.0, 0.5, 2.0]])
    assert torch.equal(flipped_boxes, expected)
    assert torch.equal(flipped_image[:, :, 0], image[:, :, 9])
    assert torch.equal(flipped_image[:, :, 9], image[:, :, 0])
    twice_image, twice_boxes = hflip(flipped_image, flipped_boxes)
    assert torch.equal(twice_image, image) and torch.equal(twice_boxes, boxes)
    assert torch.equal(boxes[0], torch.tensor([1.0, 2.0, 4.0, 6.0]))  # input not modified


def test_hflip_matches_torchvision_v2():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 7, 13, generator=generator)
    xy = torch.rand(5, 2, generator=generator) * torch.tensor([8.0, 4.0])
    boxes = torch.cat([xy, xy + torch.rand(5, 2, generator=generator) * 4], dim=1)  # xyxy inside 13 x 7
    reference_boxes = TF.horizontal_flip(tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(7, 13)))
    flipped_image, flipped_boxes = hflip(image, boxes)
    torch.testing.assert_close(flipped_boxes, reference_boxes.as_subclass(torch.Tensor), rtol=0, atol=1e-6)
    assert torch.equal(flipped_image, TF.horizontal_flip(image))


def test_hflip_empty_boxes_and_bad_shapes():
    image, boxes = hflip(torch.zeros(3, 4, 5), torch.zeros(0, 4))
    assert boxes.shape == (0, 4) and image.shape == (3, 4, 5)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        hflip(torch.zeros(3, 4, 5), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        hflip(torch.zeros(4, 5), torch.zeros(0, 4))


def _sample():
    image = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4).expand(3, 3, 4).clone()
    return image, {"boxes": torch.tensor([[0.0, 0.0, 1.0, 2.0]]), "labels": torch.tensor([3])}


def test_random_flip_probability_edges_and_generator_determinism():
    image, target = _sample()
    never_image, never_target = RandomHorizontalFlip(0.0)(image, target, torch.Generator().manual_seed(1))
    assert never_image is image and never_target is target
    always_image, always_target = RandomHorizontalFlip(1.0)(image, target, torch.Generator().manual_seed(1))
    assert torch.equal(always_image, image.flip(-1))
    assert torch.equal(always_target["boxes"], torch.tensor([[3.0, 0.0, 4.0, 2.0]]))
    assert always_target["labels"] is target["labels"]
    assert torch.equal(target["boxes"], torch.tensor([[0.0, 0.0, 1.0, 2.0]]))  # the input target is not modified

    flip = RandomHorizontalFlip(0.5)
    outcomes = []
    for seed in range(16):
        flipped, _ = flip(image, target, torch.Generator().manual_seed(seed))
        expected_flip = torch.rand((), generator=torch.Generator().manual_seed(seed)).item() < 0.5
        assert torch.equal(flipped, image.flip(-1) if expected_flip else image)
        outcomes.append(expected_flip)
    assert any(outcomes) and not all(outcomes)
    with pytest.raises(ValueError, match="1.5"):
        RandomHorizontalFlip(1.5)


def test_compose_applies_in_order_with_one_generator():
    image, target = _sample()
    twice = Compose([RandomHorizontalFlip(1.0), RandomHorizontalFlip(1.0)])
    out_image, out_target = twice(image, target, torch.Generator().manual_seed(0))
    assert torch.equal(out_image, image) and torch.equal(out_target["boxes"], target["boxes"])
    once = Compose([RandomHorizontalFlip(1.0)])
    out_image, out_target = once(image, target)
    assert torch.equal(out_target["boxes"], torch.tensor([[3.0, 0.0, 4.0, 2.0]]))
