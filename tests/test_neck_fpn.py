"""FPN neck: parity with torchvision's FeaturePyramidNetwork, shapes/specs, P6 and other extra levels, init, errors.

The paper's ablations of the FPN (subclasses in fpn/detectors/variants.py) are tested in tests/test_variant_necks.py."""
import math

import pytest
import torch
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from fpn.backbones import ResNet
from fpn.necks import FPN, LastLevelMaxPool as MaxPoolP6
from fpn.spec import FeatureSpec

NAMES = ("c2", "c3", "c4", "c5")


def _specs(channels) -> dict:
    return {name: FeatureSpec(c, 4 * 2**i) for i, (name, c) in enumerate(zip(NAMES, channels))}


def _random_features(channels, sizes, seed=0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(2, c, *hw, generator=generator) for name, c, hw in zip(NAMES, channels, sizes)}


def _identity_neck(cls=FPN, **kwargs) -> FPN:
    """One channel, laterals x1 and 3x3 outputs passing the centre pixel: each P_i shows its merged map exactly."""
    neck = cls(_specs((1, 1, 1, 1)), out_channels=1, **kwargs)
    with torch.no_grad():
        for conv in neck.lateral_convs:
            conv.weight.fill_(1.0)
        for conv in neck.output_convs:
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
    return neck


def _torchvision_fpn_state(state: dict, prefix: str = "") -> dict:
    """torchvision's inner_blocks.{i}.0.* / layer_blocks.{i}.0.* -> lateral_convs.{i}.* / output_convs.{i}.*"""
    renamed = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        block, index, _, param = key[len(prefix):].split(".")
        ours = {"inner_blocks": "lateral_convs", "layer_blocks": "output_convs"}[block]
        renamed[f"{ours}.{index}.{param}"] = value
    return renamed


def test_parity_with_torchvision_on_odd_sizes():
    torch.manual_seed(0)
    channels, sizes = (16, 32, 64, 128), ((25, 38), (13, 19), (7, 10), (4, 5))
    theirs = FeaturePyramidNetwork(list(channels), 256, extra_blocks=LastLevelMaxPool())
    ours = FPN(_specs(channels), out_channels=256, extra_levels=MaxPoolP6())
    ours.load_state_dict(_torchvision_fpn_state(theirs.state_dict()), strict=True)
    features = _random_features(channels, sizes)
    with torch.no_grad():
        got, want = ours(features), theirs(features)
    assert list(got) == ["p2", "p3", "p4", "p5", "p6"]
    assert list(want) == ["c2", "c3", "c4", "c5", "pool"]
    expected_sizes = (*sizes, (2, 3))
    for (name, p), w, hw in zip(got.items(), want.values(), expected_sizes):
        assert p.shape == (2, 256, *hw), name
        torch.testing.assert_close(p, w, rtol=1e-6, atol=1e-6)


def test_parity_with_torchvision_resnet18_fpn_backbone():
    """Image (2, 3, 100, 150) through torchvision's resnet_fpn_backbone and through ResNet + FPN."""
    torch.manual_seed(0)
    theirs = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5).eval()
    generator = torch.Generator().manual_seed(1)
    for name, buffer in theirs.body.named_buffers():
        if name.endswith(("running_mean", "bias")):
            buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
        elif name.endswith(("running_var", "weight")):
            buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
    state = theirs.state_dict()
    backbone = ResNet(depth=18, norm="frozen_bn", trainable_stages=5).eval()
    backbone.load_state_dict({k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}, strict=True)
    neck = FPN(backbone.out_specs, out_channels=theirs.out_channels, extra_levels=MaxPoolP6())
    neck.load_state_dict(_torchvision_fpn_state(state, prefix="fpn."), strict=True)

    image = torch.randn(2, 3, 100, 150, generator=generator)
    with torch.no_grad():
        got, want = neck(backbone(image)), theirs(image)
    assert [tuple(p.shape[-2:]) for p in got.values()] == [(25, 38), (13, 19), (7, 10), (4, 5), (2, 3)]
    for p, w in zip(got.values(), want.values()):
        torch.testing.assert_close(p, w, rtol=1e-5, atol=1e-5 * w.abs().max().item())


def test_specs_and_channels_follow_the_backbone():
    backbone = ResNet(depth=18, width=32)
    neck = FPN(backbone.out_specs, out_channels=64, extra_levels=MaxPoolP6())
    assert [conv.in_channels for conv in neck.lateral_convs] == [32, 64, 128, 256]
    assert all(conv.out_channels == 64 and conv.kernel_size == (1, 1) for conv in neck.lateral_convs)
    assert all(conv.kernel_size == (3, 3) and conv.padding == (1, 1) for conv in neck.output_convs)
    assert neck.out_specs == {f"p{k}": FeatureSpec(64, 2**k) for k in range(2, 7)}
    pyramid = neck(backbone(torch.randn(1, 3, 64, 96)))
    assert {k: tuple(v.shape) for k, v in pyramid.items()} == {
        "p2": (1, 64, 16, 24), "p3": (1, 64, 8, 12), "p4": (1, 64, 4, 6), "p5": (1, 64, 2, 3), "p6": (1, 64, 1, 2)
    }


def test_p6_subsamples_p5_and_handles_one_pixel_maps():
    channels = (4, 4, 4, 4)
    neck = FPN(_specs(channels), out_channels=8, extra_levels=MaxPoolP6())
    pyramid = neck(_random_features(channels, ((8, 7), (4, 4), (2, 2), (1, 1))))
    assert pyramid["p5"].shape == (2, 8, 1, 1) and pyramid["p6"].shape == (2, 8, 1, 1)
    assert torch.equal(pyramid["p6"], pyramid["p5"])
    odd = neck(_random_features(channels, ((20, 28), (10, 14), (5, 7), (3, 5)), seed=1))
    assert torch.equal(odd["p6"], odd["p5"][..., ::2, ::2])


def test_top_down_uses_nearest_upsampling_without_nonlinearity():
    """One channel, identity laterals and outputs: P_i = C_i + nearest-upsampled P_(i+1), exactly."""
    neck = _identity_neck(extra_levels=MaxPoolP6())
    c5 = torch.tensor([[[[-1.0, 2.0]]]])  # (1, 1, 1, 2)
    c4 = torch.tensor([[[[10.0, 20.0, 30.0]]]])  # (1, 1, 1, 3): odd width
    features = {"c2": torch.zeros(1, 1, 3, 10), "c3": torch.zeros(1, 1, 2, 5), "c4": c4, "c5": c5}
    pyramid = neck(features)
    assert torch.equal(pyramid["p5"], c5)
    # nearest from width 2 to width 3 picks source columns floor(j * 2 / 3) = 0, 0, 1
    assert torch.equal(pyramid["p4"], torch.tensor([[[[9.0, 19.0, 32.0]]]]))
    assert torch.equal(pyramid["p3"], torch.tensor([[[[9.0, 9.0, 19.0, 19.0, 32.0]] * 2]]))


def test_init_kaiming_uniform_and_zero_bias():
    torch.manual_seed(0)
    neck = FPN(_specs((64, 128, 256, 512)), out_channels=256)
    for conv in [*neck.lateral_convs, *neck.output_convs]:
        fan_in = conv.weight[0].numel()
        bound = math.sqrt(3.0 / fan_in)  # kaiming uniform with a=1: gain sqrt(2 / (1 + 1)) = 1
        assert conv.weight.abs().max() <= bound
        assert conv.weight.abs().max() > 0.99 * bound
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


def test_gradients_reach_every_parameter():
    channels = (8, 16, 32, 64)
    neck = FPN(_specs(channels), out_channels=16)
    sum(p.square().mean() for p in neck(_random_features(channels, ((9, 11), (5, 6), (3, 3), (2, 2)))).values()).backward()
    for name, parameter in neck.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_subset_of_levels():
    specs = {"c3": FeatureSpec(8, 8), "c4": FeatureSpec(16, 16), "c5": FeatureSpec(32, 32)}
    neck = FPN(specs, out_channels=4, extra_levels=MaxPoolP6())
    assert neck.out_specs == {"p3": FeatureSpec(4, 8), "p4": FeatureSpec(4, 16), "p5": FeatureSpec(4, 32),
                              "p6": FeatureSpec(4, 64)}
    assert len(neck.lateral_convs) == 3


def test_invalid_construction():
    with pytest.raises(ValueError, match="out_channels .* got 0"):
        FPN(_specs((8, 8, 8, 8)), out_channels=0)
    with pytest.raises(ValueError, match="empty"):
        FPN({}, out_channels=8)
    with pytest.raises(ValueError, match="'res4'"):
        FPN({"c3": FeatureSpec(8, 8), "res4": FeatureSpec(8, 16)}, out_channels=8)
    with pytest.raises(ValueError, match="c3 .*stride 8.* c4 .*stride 32"):
        FPN({"c3": FeatureSpec(8, 8), "c4": FeatureSpec(8, 32)}, out_channels=8)
    with pytest.raises(ValueError, match="c3 .* c5"):
        FPN({"c3": FeatureSpec(8, 8), "c5": FeatureSpec(8, 16)}, out_channels=8)


def test_invalid_features():
    channels = (4, 4, 4, 4)
    neck = FPN(_specs(channels), out_channels=4)
    features = _random_features(channels, ((8, 8), (4, 4), (2, 2), (1, 1)))
    with pytest.raises(ValueError, match=r"missing input levels \['c4'\]"):
        neck({k: v for k, v in features.items() if k != "c4"})
    features["c3"] = torch.zeros(2, 5, 4, 4)
    with pytest.raises(ValueError, match=r"c3 must be \(N, 4, H, W\), got \(2, 5, 4, 4\)"):
        neck(features)


def test_without_extra_levels_the_pyramid_is_p2_to_p5():
    channels = (4, 8, 8, 16)
    neck = FPN(_specs(channels), out_channels=8)
    assert neck.extra_convs is None and list(neck.out_specs) == ["p2", "p3", "p4", "p5"]
    with_p6 = FPN(_specs(channels), out_channels=8, extra_levels=MaxPoolP6())
    with_p6.load_state_dict(neck.state_dict(), strict=True)  # P6 adds no parameters
    features = _random_features(channels, ((8, 8), (4, 4), (2, 2), (1, 1)))
    got, full = neck(features), with_p6(features)
    assert list(got) == ["p2", "p3", "p4", "p5"] and list(full) == [*got, "p6"]
    for name in got:
        torch.testing.assert_close(got[name], full[name], rtol=0, atol=0)


class _TwoMaxPools(torch.nn.Module):
    """A researcher's extra levels: P6 and P7 by repeated subsampling (the README's example)."""

    num_levels = 2

    def forward(self, top):
        p6 = torch.nn.functional.max_pool2d(top, kernel_size=1, stride=2)
        return [p6, torch.nn.functional.max_pool2d(p6, kernel_size=1, stride=2)]


def test_any_module_can_make_the_extra_levels():
    channels = (4, 4, 4, 4)
    neck = FPN(_specs(channels), out_channels=8, extra_levels=_TwoMaxPools())
    assert {name: spec.stride for name, spec in neck.out_specs.items()} == dict(p2=4, p3=8, p4=16, p5=32, p6=64,
                                                                                p7=128)
    pyramid = neck(_random_features(channels, ((20, 28), (10, 14), (5, 7), (3, 5))))
    assert [tuple(p.shape[-2:]) for p in pyramid.values()] == [(20, 28), (10, 14), (5, 7), (3, 5), (2, 3), (1, 2)]
    assert torch.equal(pyramid["p7"], pyramid["p5"][..., ::4, ::4])


def test_two_levels_of_one_stride_as_mobilenet_v3s():
    """C4 and C5 both of stride 32 (MobileNetV3): the top-down map is added at its own size; P6 at stride 64."""
    specs = {"c4": FeatureSpec(6, 32), "c5": FeatureSpec(10, 32)}
    neck = FPN(specs, out_channels=4, extra_levels=MaxPoolP6())
    assert {name: spec.stride for name, spec in neck.out_specs.items()} == {"p4": 32, "p5": 32, "p6": 64}
    features = {"c4": torch.randn(1, 6, 3, 5), "c5": torch.randn(1, 10, 3, 5)}
    pyramid = neck(features)
    with torch.no_grad():
        merged = neck.lateral_convs[0](features["c4"]) + neck.lateral_convs[1](features["c5"])
        torch.testing.assert_close(pyramid["p4"], neck.output_convs[0](merged))
    assert pyramid["p6"].shape == (1, 4, 2, 3)
