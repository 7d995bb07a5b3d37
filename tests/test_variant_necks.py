"""The necks of the paper's ablations (fpn/detectors/variants.py, Table 1(a)-(f)) on their own: what each level
of `BottomUpPyramid` (d), `NoLateralFPN` (e) and `FinestLevelFPN` (f) computes, that they build nothing unused,
and which neck `build_neck` gives each variant (the detectors' wiring is tested in tests/test_model_variants.py)."""
import pytest
import torch

from fpn.config import VARIANTS
from fpn.detectors.variants import BackboneMaps, BottomUpPyramid, FinestLevelFPN, NoLateralFPN, build_neck
from fpn.necks import FPN, LastLevelMaxPool
from fpn.spec import FeatureSpec

from test_neck_fpn import _identity_neck, _random_features, _specs


def _one_channel_features():
    return {"c2": torch.full((1, 1, 4, 6), 1000.0), "c3": torch.full((1, 1, 2, 3), 100.0),
            "c4": torch.tensor([[[[10.0, 20.0]]]]), "c5": torch.tensor([[[[-1.0]]]])}


def test_without_top_down_each_level_is_its_own_lateral():
    """Paper Table 1(d): a bottom-up pyramid, P_i = 3x3(1x1(C_i)); P6 still subsamples P5."""
    neck = _identity_neck(BottomUpPyramid, extra_levels=LastLevelMaxPool())
    features = _one_channel_features()
    pyramid = neck(features)
    assert list(pyramid) == ["p2", "p3", "p4", "p5", "p6"]
    for level in (2, 3, 4, 5):
        assert torch.equal(pyramid[f"p{level}"], features[f"c{level}"])
    assert torch.equal(pyramid["p6"], pyramid["p5"])


def test_without_laterals_finer_levels_are_the_upsampled_coarsest_map():
    """Paper Table 1(e): only C5 has a 1x1 lateral; each finer merged map is the upsampled coarser one alone."""
    neck = _identity_neck(NoLateralFPN, extra_levels=LastLevelMaxPool())
    assert len(neck.lateral_convs) == 1 and neck.lateral_convs[0].in_channels == 1
    assert len(neck.output_convs) == 4
    pyramid = neck(_one_channel_features())
    for level, size in zip((2, 3, 4, 5), ((4, 6), (2, 3), (1, 2), (1, 1))):
        assert torch.equal(pyramid[f"p{level}"], torch.full((1, 1, *size), -1.0)), level


def test_finest_only_outputs_the_full_pyramids_p2_alone():
    """Paper Table 1(f): P2 of the full top-down pathway; no 3x3 convs of P3..P5, no P6."""
    channels = (8, 16, 32, 64)
    torch.manual_seed(0)
    full = FPN(_specs(channels), out_channels=8, extra_levels=LastLevelMaxPool())
    finest = FinestLevelFPN(_specs(channels), out_channels=8)
    assert finest.out_specs == {"p2": FeatureSpec(8, 4)}
    assert len(finest.lateral_convs) == 4 and len(finest.output_convs) == 1
    finest.load_state_dict({k: v for k, v in full.state_dict().items() if k in finest.state_dict()}, strict=True)
    features = _random_features(channels, ((9, 11), (5, 6), (3, 3), (2, 2)))
    got = finest(features)
    assert list(got) == ["p2"]
    torch.testing.assert_close(got["p2"], full(features)["p2"], rtol=0, atol=0)


@pytest.mark.parametrize("neck_class", [BottomUpPyramid, NoLateralFPN, FinestLevelFPN])
def test_ablations_keep_every_parameter_in_use(neck_class):
    """Nothing is built that the output does not use (DistributedDataParallel requires it)."""
    channels = (8, 16, 32, 64)
    neck = neck_class(_specs(channels), out_channels=8)
    pyramid = neck(_random_features(channels, ((9, 11), (5, 6), (3, 3), (2, 2))))
    sum(p.square().mean() for p in pyramid.values()).backward()
    assert all(p.grad is not None for p in neck.parameters()), neck_class


def test_ablations_check_their_inputs_as_the_fpn():
    channels = (4, 4, 4, 4)
    features = _random_features(channels, ((8, 8), (4, 4), (2, 2), (1, 1)))
    for neck_class in (BottomUpPyramid, NoLateralFPN, FinestLevelFPN):
        with pytest.raises(ValueError, match=r"missing input levels \['c4'\]"):
            neck_class(_specs(channels), out_channels=4)({k: v for k, v in features.items() if k != "c4"})


@pytest.mark.parametrize("variant, neck_class, outputs", [
    ("fpn", FPN, ["p2", "p3", "p4", "p5", "p6"]),
    ("no_top_down", BottomUpPyramid, ["p2", "p3", "p4", "p5", "p6"]),
    ("no_lateral", NoLateralFPN, ["p2", "p3", "p4", "p5", "p6"]),
    ("p2_only", FinestLevelFPN, ["p2"]),
    ("c5", BackboneMaps, ["c2", "c3", "c4", "c5"]),
])
def test_build_neck_gives_each_variant_its_neck(variant, neck_class, outputs):
    neck = build_neck(variant, _specs((4, 8, 8, 16)), out_channels=8)
    assert type(neck) is neck_class and list(neck.out_specs) == outputs
    assert set(VARIANTS) == {"c4", "c5", "fpn", "no_top_down", "no_lateral", "p2_only"}
    with pytest.raises(ValueError, match="got 'fpn2'"):
        build_neck("fpn2", _specs((4, 8, 8, 16)), out_channels=8)


def test_backbone_maps_pass_the_features_through():
    specs = {"c4": FeatureSpec(8, 16)}
    neck = BackboneMaps(specs)
    features = {"c4": torch.randn(1, 8, 3, 3)}
    assert neck(features) is features and neck.out_specs == specs and list(neck.state_dict()) == []
