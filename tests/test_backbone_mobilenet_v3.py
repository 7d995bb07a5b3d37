"""MobileNetV3-Large: torchvision's module names and features on the same weights, stages, freezing, norms."""
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBN

from fpn.backbones import BACKBONES, FrozenBatchNorm2d, MobileNetV3, build_backbone
from fpn.backbones.mobilenet_v3 import round_to_8
from fpn.config import BackboneConfig
from fpn.spec import FeatureSpec


def _random_statistics(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith("running_mean") or (tensor.dim() == 1 and name.endswith("bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)
            elif tensor.dim() == 1 and name.endswith("weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) * 0.5 + 0.75)


@pytest.mark.parametrize("norm, eps", [("frozen_bn", 1e-5), ("bn", 1e-3)], ids=["detector", "classifier"])
def test_features_equal_torchvision_on_the_same_weights(tmp_path, norm, eps):
    """The detector's trunk (FrozenBatchNorm2d, eps 1e-5) and the ImageNet classifier (BatchNorm2d, eps 1e-3):
    an ImageNet file in torchvision's layout loads (classifier ignored) and every stage's map is torchvision's."""
    torch.manual_seed(0)
    layer = TorchvisionFrozenBN if norm == "frozen_bn" else (lambda c: nn.BatchNorm2d(c, eps=eps))
    theirs = torchvision.models.mobilenet_v3_large(norm_layer=layer).eval()
    _random_statistics(theirs)
    torch.save(theirs.state_dict(), tmp_path / "mobilenet_v3_large.pth")
    config = BackboneConfig(name="mobilenet_v3_large", norm=norm, weights=str(tmp_path / "mobilenet_v3_large.pth"))
    ours = build_backbone(config).eval()
    assert ours.loaded_weights and list(ours.out_specs) == ["c4", "c5"]
    all_stages = MobileNetV3(norm=norm, returned_stages=range(6), norm_eps=eps).eval()
    all_stages.load_state_dict(ours.state_dict())
    getter = IntermediateLayerGetter(theirs.features, {str(i): f"c{k}" for k, i in enumerate((0, 2, 4, 7, 13, 16))})
    x = torch.randn(2, 3, 96, 130, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = getter(x), all_stages(x)
        if norm == "frozen_bn":
            assert all(torch.equal(a, b) for a, b in zip(ours(x).values(), [got["c4"], got["c5"]]))
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].shape == tensor.shape
        torch.testing.assert_close(got[name], tensor, atol=2e-5 * tensor.abs().max().item(), rtol=0)
    strides = {name: 96 // tensor.shape[-2] for name, tensor in got.items()}
    assert strides == {"c0": 2, "c1": 4, "c2": 8, "c3": 16, "c4": 32, "c5": 32} == {
        name: spec.stride for name, spec in all_stages.out_specs.items()}
    assert all_stages.out_specs["c4"] == FeatureSpec(160, 32) and all_stages.out_specs["c5"] == FeatureSpec(960, 32)


@pytest.mark.parametrize("trainable", [0, 3, 6])
def test_trainable_stages_freeze_as_torchvision(trainable):
    """trainable_stages is torchvision's trainable_backbone_layers for this trunk (_mobilenet_extractor)."""
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor

    theirs = _mobilenet_extractor(torchvision.models.mobilenet_v3_large(), True, trainable)
    expected = {name.removeprefix("body.") for name, p in theirs.named_parameters()
                if p.requires_grad and name.startswith("body.")}
    ours = MobileNetV3(trainable_stages=trainable)
    got = {name.removeprefix("features.") for name, p in ours.named_parameters() if p.requires_grad}
    assert got == expected


def test_config_norms_and_errors():
    auto = BackboneConfig(name="mobilenet_v3_large").resolved()
    assert (auto.norm, auto.trainable_stages) == ("bn", 6)  # from scratch: everything trains
    assert BackboneConfig(name="mobilenet_v3_large", weights="x.pth").resolved().trainable_stages == 3
    assert "mobilenet_v3_large" in BACKBONES
    frozen = MobileNetV3(norm="frozen_bn", trainable_stages=3)
    assert isinstance(frozen.features[5].block[1][1], FrozenBatchNorm2d)
    assert frozen.untrainable_parts() == [
        "frozen BatchNorm is the identity (its statistics are constants, never learned)",
        "features.0-1, features.2-3 and features.4-6 are frozen at their random initialisation (trainable_stages=3)"]
    assert isinstance(MobileNetV3(norm="gn", gn_groups=8).features[16][1], nn.GroupNorm)
    assert [round_to_8(c / 4) for c in (72, 120, 480, 672, 960)] == [24, 32, 120, 168, 240]
    with pytest.raises(ValueError, match="trainable_stages must be in 0..6 for MobileNetV3, got 7"):
        MobileNetV3(trainable_stages=7)
    with pytest.raises(ValueError, match="expected input of shape"):
        MobileNetV3()(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="the c4 variant needs a ResNet or RegNetX"):
        MobileNetV3().split_off_last_stage()


def test_folded_norms_give_the_same_features():
    """optimize_for_inference's folding finds all 46 conv -> norm pairs of the trunk (the stem, 2 in the first
    block, 3 in each of the other 14, the last conv; the SE convs have none)."""
    from fpn.deploy.inference import fold_norms

    model = MobileNetV3(norm="frozen_bn").eval()
    _random_statistics(model)
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)
        assert fold_norms(model) == 46
        got = model(x)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-4 * tensor.abs().max().item(), rtol=0)
