"""FCOSFPN against torchvision's fcos_resnet50_fpn: the same seeded random weights (loaded with
`FCOSFPN.from_torchvision`), the same images and targets -> the same detections and the same three losses.

Small images (shorter side 160) keep it fast. Random weights score every location near the classification prior
(0.01), below the 0.2 threshold; the class logits layer is re-drawn wider (std 0.05, bias 0) so that both models
return detections to compare.
"""
import pytest
import torch
import torchvision
from torch import nn

from fpn import FCOSFPN

MIN_SIZE, MAX_SIZE = 160, 240


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    reference = torchvision.models.detection.fcos_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=5, min_size=MIN_SIZE, max_size=MAX_SIZE)
    nn.init.normal_(reference.head.classification_head.cls_logits.weight, std=0.05)
    nn.init.zeros_(reference.head.classification_head.cls_logits.bias)
    for module in reference.modules():  # random but not trivial BN statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    ours = FCOSFPN.from_torchvision(reference.state_dict())
    ours.config.input.min_size, ours.config.input.max_size = MIN_SIZE, MAX_SIZE
    ours.config.input.train_min_sizes = (MIN_SIZE,)
    return reference, ours


def _images():
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, 200, 260, generator=generator), torch.rand(3, 170, 150, generator=generator)]


def test_same_detections(models):
    reference, ours = models
    images = _images()
    with torch.no_grad():
        expected = reference.eval()(images)
        found = ours.eval()(images)
    for e, f in zip(expected, found):
        assert e["boxes"].shape[0] > 10  # something to compare
        assert f["boxes"].shape == e["boxes"].shape
        assert torch.equal(f["labels"], e["labels"])
        assert torch.allclose(f["boxes"], e["boxes"], rtol=0, atol=1e-3)
        assert torch.allclose(f["scores"], e["scores"], rtol=0, atol=1e-5)


def test_same_losses(models):
    reference, ours = models
    images = _images()
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 120.0, 150.0], [30.0, 40.0, 60.0, 90.0], [150.0, 10.0, 250.0, 60.0]]),
         "labels": torch.tensor([1, 3, 4])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
    ]
    reference.train()
    for module in reference.modules():  # BatchNorm with its running statistics, as our frozen BN
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    expected = reference(images, [dict(t) for t in targets])
    found = ours.train()(images, [dict(t) for t in targets])
    assert set(found) == set(expected) == {"classification", "bbox_regression", "bbox_ctrness"}
    for name in expected:
        assert abs(found[name].item() - expected[name].item()) <= 1e-5 * max(1.0, abs(expected[name].item())), name
    assert expected["bbox_regression"].item() > 0  # the boxes produced positives
