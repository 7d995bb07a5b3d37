"""The FPN with `extra_levels=LastLevelP6P7(d)` (FCOS, RetinaNet): P3..P5 from C3..C5, then P6 = 3x3 stride-2 conv
of P5 and P7 = 3x3 stride-2 conv of ReLU(P6); the same outputs as torchvision's FeaturePyramidNetwork with
LastLevelP6P7(d, d), its initialisation, its checkpoint key names, and the paper's P6 (`LastLevelMaxPool`) beside it."""
import math

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7 as TorchvisionP6P7

from fpn.necks import FPN, LastLevelMaxPool, LastLevelP6P7
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
    neck = FPN(_specs(), out_channels=16, extra_levels=LastLevelP6P7(16))
    reference = FeaturePyramidNetwork(list(CHANNELS.values()), 16, extra_blocks=TorchvisionP6P7(16, 16))
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
    neck = FPN(_specs(), out_channels=16, extra_levels=LastLevelP6P7(16))
    features = {name: torch.randn(1, c, 16 // 2**i, 16 // 2**i) for i, (name, c) in enumerate(CHANNELS.items())}
    out = neck(features)
    assert (out["p6"] < 0).any()  # so the ReLU matters
    p7 = neck.extra_convs[1](torch.relu(out["p6"]))
    assert torch.equal(out["p7"], p7)
    assert not torch.allclose(neck.extra_convs[1](out["p6"]), p7)


def test_p6p7_initialisation_is_torchvisions():
    torch.manual_seed(0)
    neck = FPN(_specs(), out_channels=64, extra_levels=LastLevelP6P7(64))
    for conv in neck.extra_convs:
        bound = math.sqrt(3.0 / (64 * 9))  # kaiming_uniform_(a=1): sqrt(6 / ((1 + a^2) fan_in))
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound
        assert conv.bias.abs().max() == 0


def test_max_pool_p6_and_the_checkpoint_keys_of_p6p7():
    max_pool = FPN(_specs(), out_channels=16, extra_levels=LastLevelMaxPool())
    assert list(max_pool.out_specs) == ["p3", "p4", "p5", "p6"] and list(max_pool.extra_convs.state_dict()) == []
    p6p7 = FPN(_specs(), out_channels=16, extra_levels=LastLevelP6P7(16))
    assert len(p6p7.extra_convs) == 2
    # the names saved checkpoints and fpn/io/convert.py use for torchvision's extra_blocks.{p6,p7}
    assert [key for key in p6p7.state_dict() if key.startswith("extra_convs")] == [
        "extra_convs.0.weight", "extra_convs.0.bias", "extra_convs.1.weight", "extra_convs.1.bias"]


def test_seeded_p6p7_neck_is_initialised_as_before():
    """The P6/P7 convs are built before the FPN's own (an argument), yet every conv gets the values it got when the
    FPN built them itself: the FPN draws all kaiming inits after every conv exists, in the order laterals,
    outputs, extra levels."""
    torch.manual_seed(0)
    neck = FPN(_specs(), out_channels=16, extra_levels=LastLevelP6P7(16))
    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(c, 16, 1) for c in CHANNELS.values()]
    convs += [torch.nn.Conv2d(16, 16, 3, padding=1) for _ in CHANNELS]
    convs += [torch.nn.Conv2d(16, 16, 3, stride=2, padding=1) for _ in range(2)]
    for conv in convs:
        torch.nn.init.kaiming_uniform_(conv.weight, a=1)
    ours = [*neck.lateral_convs, *neck.output_convs, *neck.extra_convs]
    for mine, expected in zip(ours, convs):
        assert torch.equal(mine.weight, expected.weight)


def test_p6_p7_run_in_float32_under_bf16_autocast_and_keep_the_input_dtype():
    # the CPU's bf16 backward of the stride-2 conv over a map smaller than its kernel gave random garbage weight
    # gradients; the two extra levels are computed in float32 instead
    torch.manual_seed(0)
    levels = LastLevelP6P7(8)
    top = torch.randn(2, 8, 1, 1).to(torch.bfloat16).requires_grad_()  # P5 of a 32 px image
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p6, p7 = levels(top)
    assert p6.dtype == p7.dtype == torch.bfloat16 and p6.shape == p7.shape == (2, 8, 1, 1)
    expected6 = levels[0](top.detach().float())
    assert torch.equal(p6, expected6.to(torch.bfloat16))
    assert torch.equal(p7, levels[1](torch.relu(expected6)).to(torch.bfloat16))
    grads = []
    for _ in range(3):  # the same step gives the same, finite gradients every time
        levels.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            p6, p7 = levels(top)
        (p6.float().sum() + p7.float().sum()).backward()
        grads.append(levels[1].weight.grad.clone())
    assert all(torch.isfinite(g).all() and torch.equal(g, grads[0]) for g in grads)
