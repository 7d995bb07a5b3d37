"""The FPN's `extra_levels="p6p7"` (FCOS, RetinaNet): P3..P5 from C3..C5, then P6 = 3x3 stride-2 conv of P5 and
P7 = 3x3 stride-2 conv of ReLU(P6); the same outputs as torchvision's FeaturePyramidNetwork with
LastLevelP6P7(d, d), its initialisation, and the default "max_pool" left as it was."""
import math

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from fpn.necks import FPN
from fpn.spec import FeatureSpec

CHANNELS = {"c3": 12, "c4": 20, "c5": 24}


def _specs() -> dict:
    return {name: FeatureSpec(c, 8 * 2**i) for i, (name, c) in enumerate(CHANNELS.items())}


def _torchvision_state(neck: FPN) -> dict:
    """fpn's names -> torchvision's: lateral_convs.{i} -> inner_blocks.{i}.0, output_convs.{i} -> layer_blocks.{i}.0,
    extra_convs.{0,1} -> extra_blocks.{p6,p7}."""
    renamed = {}
    for key, value in neck.state_dict().items():
        part, index, rest = key.split(".", 2)
        if part == "extra_convs":
            renamed[f"extra_blocks.{('p6', 'p7')[int(index)]}.{rest}"] = value
        else:
            renamed[f"{dict(lateral_convs='inner_blocks', output_convs='layer_blocks')[part]}.{index}.0.{rest}"] = value
    return renamed


@pytest.mark.parametrize("size", [(40, 48), (27, 33)])  # even, and odd sizes down the pyramid
def test_p6p7_matches_torchvision(size):
    torch.manual_seed(0)
    neck = FPN(_specs(), out_channels=16, extra_levels="p6p7")
    reference = FeaturePyramidNetwork(list(CHANNELS.values()), 16, extra_blocks=LastLevelP6P7(16, 16))
    reference.load_state_dict(_torchvision_state(neck))
    generator = torch.Generator().manual_seed(1)
    height, width = size
    features = {}
    for name, channels in CHANNELS.items():
        features[name] = torch.randn(2, channels, height, width, generator=generator)
        height, width = (height + 1) // 2, (width + 1) // 2
    found = neck(features)
    expected = reference(features)
    assert list(found) == ["p3", "p4", "p5", "p6", "p7"]
    assert [tuple(v.shape) for v in found.values()] == [tuple(v.shape) for v in expected.values()]
    for mine, theirs in zip(found.values(), expected.values()):
        assert torch.allclose(mine, theirs, rtol=0, atol=1e-5)
    assert {name: spec.stride for name, spec in neck.out_specs.items()} == dict(p3=8, p4=16, p5=32, p6=64, p7=128)


def test_p7_sees_the_relu_of_p6():
    torch.manual_seed(0)
    neck = FPN(_specs(), out_channels=16, extra_levels="p6p7")
    features = {name: torch.randn(1, c, 16 // 2**i, 16 // 2**i) for i, (name, c) in enumerate(CHANNELS.items())}
    out = neck(features)
    assert (out["p6"] < 0).any()  # so the ReLU matters
    p7 = neck.extra_convs[1](torch.relu(out["p6"]))
    assert torch.equal(out["p7"], p7)
    assert not torch.allclose(neck.extra_convs[1](out["p6"]), p7)


def test_p6p7_initialisation_is_torchvisions():
    torch.manual_seed(0)
    neck = FPN(_specs(), out_channels=64, extra_levels="p6p7")
    for conv in neck.extra_convs:
        bound = math.sqrt(3.0 / (64 * 9))  # kaiming_uniform_(a=1): sqrt(6 / ((1 + a^2) fan_in))
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound
        assert conv.bias.abs().max() == 0


def test_max_pool_default_and_bad_extra_levels():
    default = FPN(_specs(), out_channels=16)
    assert list(default.out_specs) == ["p3", "p4", "p5", "p6"] and len(default.extra_convs) == 0
    assert len(FPN(_specs(), out_channels=16, extra_levels="p6p7").extra_convs) == 2
    with pytest.raises(ValueError, match="extra_levels must be 'max_pool' or 'p6p7', got 'p6'"):
        FPN(_specs(), out_channels=16, extra_levels="p6")
