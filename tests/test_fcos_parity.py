"""FCOSFPN against torchvision's fcos_resnet50_fpn: the same seeded random weights (loaded with
`FCOSFPN.from_torchvision`), the same images and targets -> the same detections and the same three losses.

Small images (shorter side 160) keep it fast. Random weights score every location near the classification prior
(0.01), below the 0.2 threshold; the class logits layer is re-drawn wider (std 0.05, bias 0) so that both models
return detections to compare. Its class-0 bias is set to -30 (probability ~1e-13): torchvision's FCOS treats
class 0 as any other class and would return label 0 (the background) from such weights, ours never does, so
only weights that never favour class 0 can show the two are otherwise the same (`test_same_detections`);
`test_class_0_favoured` shows what each does with weights that do favour it.
"""
import copy

import pytest
import torch
import torchvision
from torch import nn

from fpn import FCOSFPN

MIN_SIZE, MAX_SIZE = 160, 240
BACKGROUND_BIAS = 30.0  # |class-0 logit bias|: sigmoid(-30) ~ 1e-13, sigmoid(30) = 1 in float32


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    reference = torchvision.models.detection.fcos_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=5, min_size=MIN_SIZE, max_size=MAX_SIZE)
    nn.init.normal_(reference.head.classification_head.cls_logits.weight, std=0.05)
    nn.init.zeros_(reference.head.classification_head.cls_logits.bias)
    with torch.no_grad():  # class 0 never above the threshold: torchvision would not return it either
        reference.head.classification_head.cls_logits.bias[0] = -BACKGROUND_BIAS
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


def _favour_class_0(model):
    """A copy of `model` whose class-0 logit is +30 everywhere: class 0 outscores every other class."""
    model = copy.deepcopy(model)
    for name, bias in model.named_parameters():
        if name.endswith("classification_head.cls_logits.bias"):
            with torch.no_grad():
                bias[0] = BACKGROUND_BIAS
    return model.eval()


def test_class_0_favoured(models):
    """With weights that score class 0 above every real class, torchvision returns label 0 (its top-k candidates
    and detections are mostly class 0); ours returns no label 0 and exactly the real classes' detections of the
    weights that never favour class 0: class 0 is left out before the top k, so it takes no candidate's place."""
    reference, ours = models
    images = _images()
    with torch.no_grad():
        expected = ours.eval()(images)  # class 0 at -30: the real classes' detections
        found = _favour_class_0(ours)(images)
        theirs = _favour_class_0(reference)(images)
    assert all((t["labels"] == 0).any() for t in theirs)  # torchvision's FCOS does return the background
    for e, f in zip(expected, found):
        assert e["boxes"].shape[0] > 10 and not (f["labels"] == 0).any()
        assert torch.equal(f["labels"], e["labels"])
        assert torch.equal(f["boxes"], e["boxes"]) and torch.equal(f["scores"], e["scores"])


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
