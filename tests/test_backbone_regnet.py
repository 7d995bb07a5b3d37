"""RegNetX trunks (fpn/backbones/regnet.py) against torchvision's regnet_x_* (the reference): the same module
structure for every size, the same C2..C5 on the same weights, ImageNet checkpoints in torchvision's layout,
and use by both detectors through `BackboneConfig(name=...)`."""
import pytest
import torch
import torchvision
from torch import nn

from fpn import FasterRCNNFPN, FCOSFPN
from fpn.backbones import REGNET_X, RegNetX, build_backbone
from fpn.config import BackboneConfig, FasterRCNNConfig
from fpn.detectors.build import convert_config
from fpn.inference import optimize_for_inference


def _reference(name: str, seed: int = 0) -> nn.Module:
    """torchvision's trunk with seeded random weights and non-trivial BN statistics, in eval mode."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def _trunk_state(model: nn.Module) -> dict:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


@pytest.mark.parametrize("name", sorted(REGNET_X))
def test_every_size_has_torchvisions_structure(name):
    reference = getattr(torchvision.models, name)(weights=None)
    ours = RegNetX(name, norm="bn")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in _trunk_state(reference).items()}
    groups = [m.groups for m in ours.modules() if isinstance(m, nn.Conv2d)]
    assert groups == [m.groups for m in reference.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name, norm", [("regnet_x_400mf", "frozen_bn"), ("regnet_x_400mf", "bn"),
                                        ("regnet_x_800mf", "frozen_bn")])
def test_same_features_as_torchvision(name, norm):
    reference = _reference(name)
    ours = RegNetX(name, norm=norm).eval()
    ours.load_state_dict(_trunk_state(reference), strict=norm == "bn")
    x = torch.randn(2, 3, 100, 132, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y, expected = reference.stem(x), []
        for stage in reference.trunk_output:
            y = stage(y)
            expected.append(y)
        found = ours(x)
    assert list(found) == ["c2", "c3", "c4", "c5"]
    for (key, value), target in zip(found.items(), expected):
        assert value.shape == target.shape
        assert torch.allclose(value, target, rtol=0, atol=1e-5), (key, (value - target).abs().max())
        assert ours.out_specs[key].channels == value.shape[1]
    assert [s.stride for s in ours.out_specs.values()] == [4, 8, 16, 32]


def test_imagenet_checkpoint_in_torchvision_layout_loads(tmp_path):
    reference = _reference("regnet_x_400mf", seed=3)
    path = tmp_path / "regnet_x_400mf.pth"
    torch.save(reference.state_dict(), path)  # with its fc classifier, ignored
    model = build_backbone(BackboneConfig(name="regnet_x_400mf", weights=str(path)))
    assert model.norm == "frozen_bn" and model.trainable_stages == 3 and model.loaded_weights  # the fine-tuning rule
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in _trunk_state(reference).items() if not k.endswith("tracked"))
    assert model.untrainable_parts() == []
    resnet_file = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet_file)
    with pytest.raises(ValueError, match=r"resnet18.pth' does not match the backbone: 355 missing keys \[stem.0.weight"):
        build_backbone(BackboneConfig(name="regnet_x_400mf", weights=str(resnet_file)))


def test_trainable_stages_and_norms():
    model = RegNetX("regnet_x_400mf", norm="frozen_bn", trainable_stages=3)
    trained = {name.split(".")[0] + "." + name.split(".")[1] if name.startswith("trunk") else name.split(".")[0]
               for name, p in model.named_parameters() if p.requires_grad}
    assert trained == {"trunk_output.block2", "trunk_output.block3", "trunk_output.block4"}
    assert "stem, trunk_output.block1 are frozen" in model.untrainable_parts()[1]
    assert all(p.requires_grad for p in RegNetX("regnet_x_400mf", trainable_stages=5).parameters())
    gn = RegNetX("regnet_x_400mf", norm="gn", gn_groups=8)
    assert isinstance(gn.stem[1], nn.GroupNorm)
    with pytest.raises(ValueError, match="gn_groups=32 must be a positive divisor of the 400 channels"):
        RegNetX("regnet_x_400mf", norm="gn", gn_groups=32)
    with pytest.raises(ValueError, match="backbone.name must be one of resnet, regnet_x_400mf"):
        build_backbone(BackboneConfig(name="regnet_y_400mf"))


def _small_config(name="regnet_x_400mf"):
    config = FasterRCNNConfig()
    config.backbone.name, config.backbone.norm, config.backbone.gn_groups = name, "gn", 8
    config.fpn.out_channels, config.roi_heads.representation_size = 32, 64
    config.input.min_size, config.input.max_size, config.input.train_min_sizes = 96, 128, (96,)
    return config


@pytest.mark.parametrize("arch", ["faster_rcnn", "fcos"])
def test_both_detectors_train_and_detect_on_regnet(arch):
    config = convert_config(_small_config(), arch)
    if arch == "fcos":
        config.head.gn_groups = 8
    torch.manual_seed(0)
    model = (FasterRCNNFPN if arch == "faster_rcnn" else FCOSFPN)(3, config)
    images = [torch.rand(3, 100, 120), torch.rand(3, 90, 110)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 20.0, 50.0, 80.0]]), "labels": torch.tensor([2])}]
    losses = model.train()(images, targets)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and model.backbone.stem[0].weight.grad.abs().sum() > 0
    detections = model.eval()(images)
    assert len(detections) == 2 and all(set(d) == {"boxes", "scores", "labels"} for d in detections)


def test_folded_frozen_bn_regnet_gives_the_same_detections():
    config = _small_config()
    config.backbone.norm, config.backbone.trainable_stages = "frozen_bn", 5
    torch.manual_seed(0)
    model = FasterRCNNFPN(3, config).eval()
    reference = _reference("regnet_x_400mf", seed=5)
    model.backbone.load_state_dict({k: v for k, v in _trunk_state(reference).items() if not k.endswith("tracked")})
    torch.nn.init.normal_(model.roi_heads.predictor.cls_score.weight, std=0.3)  # spread scores: detections
    fast = optimize_for_inference(model)
    assert fast.folded_norms == sum(1 for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
    image = torch.rand(3, 100, 120, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, found = model([image])[0], fast([image])[0]
    assert expected["boxes"].shape[0] > 0 and torch.equal(found["labels"], expected["labels"])
    assert torch.allclose(found["boxes"], expected["boxes"], rtol=0, atol=1e-3)
    assert torch.allclose(found["scores"], expected["scores"], rtol=0, atol=1e-5)
