"""RegNetX trunks (fpn/backbones/regnet.py) against torchvision's regnet_x_* (the reference): the stage widths,
depths and group widths of every size, the same C2..C5 on the same weights, ImageNet checkpoints in
torchvision's layout, norms and frozen stages, the C4 split, and use by both detectors through
`BackboneConfig(name=...)`."""
import pytest
import torch
import torchvision
from torch import nn

from fpn import FasterRCNNFPN, FCOSFPN
from fpn.backbones import BACKBONES, REGNET_X, FrozenBatchNorm2d, RegNetX, build_backbone
from fpn.backbones.regnet import block_widths, stage_settings
from fpn.config import BackboneConfig, FasterRCNNConfig
from fpn.detectors.build import convert_config

STAGES = ("stem", "trunk_output.block1", "trunk_output.block2", "trunk_output.block3", "trunk_output.block4")


def torchvision_regnet(name: str, seed: int = 0) -> nn.Module:
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


def trunk_state(model: nn.Module) -> dict:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def _stage_of(parameter_name: str) -> str:
    return next(stage for stage in STAGES if parameter_name.startswith(stage + "."))


def test_block_widths_follow_the_quantised_linear_rule():
    # X-400MF (d=22, w_0=24, w_a=24.48, w_m=2.54): u_j = 24 + 24.48 j; exponents 0, 1, 1, 2 x 7, 3 x 12 (rounded
    # log_2.54(u_j / 24)) give 24, 60.96, 154.84, 393.29 -> multiples of 8: 24, 64, 152, 392
    assert block_widths(22, 24, 24.48, 2.54) == [24] + [64] * 2 + [152] * 7 + [392] * 12
    # group width 16: 24 -> 32 (1.5 groups round up), 152 -> 160 (9.5 groups), 392 -> 400 (24.5 groups)
    assert stage_settings(22, 24, 24.48, 2.54, 16) == [(32, 1, 16), (64, 2, 16), (160, 7, 16), (400, 12, 16)]


@pytest.mark.parametrize("name", sorted(REGNET_X))
def test_every_size_has_torchvisions_stages_and_structure(name):
    reference = getattr(torchvision.models, name)(weights=None)
    expected = []
    for stage in reference.trunk_output:  # (width, blocks, group width) read off torchvision's modules
        conv3x3 = stage[0].f.b[0]
        expected.append((stage[-1].f.c[0].out_channels, len(stage), conv3x3.out_channels // conv3x3.groups))
    assert stage_settings(*REGNET_X[name]) == expected
    ours = RegNetX(name, norm="bn")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in trunk_state(reference).items()}
    convs = [(m.stride, m.padding, m.groups) for m in ours.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [(m.stride, m.padding, m.groups) for m in reference.modules() if isinstance(m, nn.Conv2d)]
    assert [(k, s.channels, s.stride) for k, s in ours.out_specs.items()] == [
        (f"c{i + 2}", width, 4 * 2**i) for i, (width, _, _) in enumerate(expected)
    ]


@pytest.mark.parametrize("name, norm", [("regnet_x_400mf", "frozen_bn"), ("regnet_x_400mf", "bn"),
                                        ("regnet_x_800mf", "frozen_bn")])
def test_same_features_as_torchvision(name, norm):
    # measured: max |difference| 0 with "bn" (the same ops), <= 2.2e-6 with "frozen_bn" (one fused multiply-add
    # instead of BatchNorm's kernel) on maps of magnitude up to ~5
    reference = torchvision_regnet(name)
    ours = RegNetX(name, norm=norm).eval()
    ours.load_state_dict(trunk_state(reference), strict=norm == "bn")
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
    reference = torchvision_regnet("regnet_x_400mf", seed=3)
    path = tmp_path / "regnet_x_400mf.pth"
    torch.save(reference.state_dict(), path)  # with its fc classifier, ignored
    model = build_backbone(BackboneConfig(name="regnet_x_400mf", weights=str(path)))
    assert model.norm == "frozen_bn" and model.trainable_stages == 3 and model.loaded_weights  # the fine-tuning rule
    own = model.state_dict()
    trunk = {k: v for k, v in trunk_state(reference).items() if not k.endswith("num_batches_tracked")}
    assert set(own) == set(trunk) and all(torch.equal(own[k], v) for k, v in trunk.items())
    assert model.untrainable_parts() == []
    wrapped = tmp_path / "wrapped.pth"  # a training checkpoint holding the trunk alone under "model"
    torch.save({"model": trunk, "epoch": 90}, wrapped)
    again = build_backbone(BackboneConfig(name="regnet_x_400mf", weights=str(wrapped), norm="bn"))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in trunk.items()) and again.loaded_weights
    resnet_file = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet_file)
    with pytest.raises(ValueError, match=r"resnet18.pth' does not match the backbone: 355 missing keys \[stem.0.weight"
                                         r".*unexpected keys \[bn1.bias"):
        build_backbone(BackboneConfig(name="regnet_x_400mf", weights=str(resnet_file)))
    other_size = tmp_path / "regnet_x_800mf.pth"
    torch.save(torchvision.models.regnet_x_800mf(weights=None).state_dict(), other_size)
    with pytest.raises(ValueError, match=r"regnet_x_800mf.pth' does not match the backbone: 105 missing keys .* "
                                         r"shape mismatches \[trunk_output.block1.block1-0.f.a.0.weight: checkpoint "
                                         r"\(64, 32, 1, 1\) vs model \(32, 32, 1, 1\)"):
        build_backbone(BackboneConfig(name="regnet_x_400mf", weights=str(other_size)))


@pytest.mark.parametrize("trainable_stages", range(6))
def test_trainable_stages_count_from_c5_down(trainable_stages):
    model = RegNetX("regnet_x_400mf", norm="bn", trainable_stages=trainable_stages)
    trained = {_stage_of(name) for name, p in model.named_parameters() if p.requires_grad}
    assert trained == set(STAGES[5 - trainable_stages:])
    frozen = STAGES[:5 - trainable_stages]
    assert all(not p.requires_grad for name, p in model.named_parameters() if _stage_of(name) in frozen)
    assert bool(model.untrainable_parts()) == (trainable_stages < 5)  # nothing loaded: frozen means random


def test_norm_kinds_and_bad_arguments():
    frozen = RegNetX("regnet_x_400mf", norm="frozen_bn", trainable_stages=5)
    num_frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    assert num_frozen == sum(isinstance(m, nn.Conv2d) for m in frozen.modules())  # one norm after every conv
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in frozen.modules())
    assert not any("running_mean" in name for name, _ in frozen.named_parameters())  # statistics stay buffers
    assert frozen.untrainable_parts() == ["frozen BatchNorm is the identity (its statistics are constants, never "
                                          "learned)"]
    assert isinstance(RegNetX("regnet_x_400mf", norm="bn").trunk_output.block3[0].f.b[1], nn.BatchNorm2d)
    gn = RegNetX("regnet_x_400mf", norm="gn", gn_groups=8)
    assert isinstance(gn.stem[1], nn.GroupNorm) and gn.stem[1].num_groups == 8
    with pytest.raises(ValueError, match="gn_groups=64 must be a positive divisor of the 32 channels"):
        RegNetX("regnet_x_400mf", norm="gn", gn_groups=64)
    with pytest.raises(ValueError, match="trainable_stages must be in 0..5, got 6"):
        RegNetX("regnet_x_400mf", trainable_stages=6)
    with pytest.raises(ValueError, match="unknown RegNetX 'regnet_x_1gf'"):
        RegNetX("regnet_x_1gf")
    with pytest.raises(ValueError, match="expected input of shape"):
        RegNetX("regnet_x_400mf")(torch.zeros(1, 1, 32, 32))
    torchvisions = [name for name in torchvision.models.list_models(torchvision.models) if name.startswith("regnet_x")]
    assert sorted(BACKBONES) == sorted(["resnet", *torchvisions, "mobilenet_v3_large"]) and len(torchvisions) == 7
    with pytest.raises(ValueError, match="must be one of resnet, regnet_x_400mf.*; got 'regnet_y_400mf'"):
        build_backbone(BackboneConfig(name="regnet_y_400mf"))


def test_split_off_last_stage_leaves_the_trunk_at_c4():
    model = RegNetX("regnet_x_400mf", norm="bn").eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        stage = model.split_off_last_stage()
        trunk = model(x)
        assert torch.equal(stage(trunk["c4"]), full["c5"])  # the stage maps C4 to C5 as it did inside the trunk
    assert list(trunk) == list(model.out_specs) == ["c2", "c3", "c4"] and torch.equal(trunk["c4"], full["c4"])
    assert not any(name.startswith("trunk_output.block4") for name in model.state_dict())
    with pytest.raises(ValueError, match="already split off"):
        model.split_off_last_stage()


def _small_config(name="regnet_x_400mf"):
    config = FasterRCNNConfig()
    config.backbone.name, config.backbone.norm, config.backbone.gn_groups = name, "gn", 8
    config.fpn.out_channels, config.roi_heads.representation_size = 32, 64
    config.input.min_size, config.input.max_size, config.input.train_min_sizes = 96, 128, (96,)
    config.rpn.post_nms_top_n_train, config.roi_heads.batch_size_per_image = 200, 64
    return config


@pytest.mark.parametrize("arch, variant", [("faster_rcnn", "fpn"), ("faster_rcnn", "c4"), ("fcos", "fpn")])
def test_detectors_train_a_step_and_detect_on_regnet(arch, variant):
    config = convert_config(_small_config(), arch)
    if arch == "fcos":
        config.head.gn_groups = 8
    else:
        config.variant = variant
    torch.manual_seed(0)
    model = (FasterRCNNFPN if arch == "faster_rcnn" else FCOSFPN)(3, config)
    images = [torch.rand(3, 100, 120), torch.rand(3, 90, 110)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 20.0, 50.0, 80.0]]), "labels": torch.tensor([2])}]
    stem_before = model.backbone.stem[0].weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(model.backbone.stem[0].weight, stem_before)  # gradients reach the stem (5 stages trained)
    if variant == "c4":
        assert "c5" not in model.backbone.out_specs and not hasattr(model.backbone.trunk_output, "block4")
    detections = model.eval()(images)
    assert len(detections) == 2 and all(set(d) == {"boxes", "scores", "labels"} for d in detections)
    assert all(torch.isfinite(d["boxes"]).all() and d["boxes"].shape[1] == 4 for d in detections)
