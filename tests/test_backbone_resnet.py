"""ResNet backbone: torchvision parity, shapes/specs, norms, freezing, ImageNet checkpoint loading."""
import os
import re

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBatchNorm2d

from fpn.backbones import FrozenBatchNorm2d, ResNet, build_resnet, load_imagenet_weights, make_norm
from fpn.errors import InputError
from fpn.config import BackboneConfig
from fpn.spec import FeatureSpec

TV_RESNETS = {
    18: torchvision.models.resnet18,
    34: torchvision.models.resnet34,
    50: torchvision.models.resnet50,
    101: torchvision.models.resnet101,
}


def _randomise_frozen_bn(model: nn.Module, generator: torch.Generator) -> None:
    """Random but tame BN statistics/affines, so a mismatch in any of them shows in the outputs."""
    for module in model.modules():
        if isinstance(module, TVFrozenBatchNorm2d):
            n = module.weight.numel()
            module.weight.copy_(0.5 + torch.rand(n, generator=generator))
            module.bias.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def _backbone_state(tv_model: nn.Module) -> dict:
    return {k: v for k, v in tv_model.state_dict().items() if not k.startswith("fc.")}


def _tv_stage_outputs(tv_model: nn.Module, x: torch.Tensor) -> list:
    x = tv_model.maxpool(tv_model.relu(tv_model.bn1(tv_model.conv1(x))))
    outputs = []
    for stage in (tv_model.layer1, tv_model.layer2, tv_model.layer3, tv_model.layer4):
        x = stage(x)
        outputs.append(x)
    return outputs


# ---------------------------------------------------------------- norms


def test_frozen_bn_matches_torchvision():
    generator = torch.Generator().manual_seed(0)
    ours, theirs = FrozenBatchNorm2d(5), TVFrozenBatchNorm2d(5)
    theirs.weight.copy_(torch.randn(5, generator=generator))
    theirs.bias.copy_(torch.randn(5, generator=generator))
    theirs.running_mean.copy_(torch.randn(5, generator=generator))
    theirs.running_var.copy_(torch.rand(5, generator=generator) + 0.1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 5, 3, 4, generator=generator)
    # one fused multiply-add vs torchvision's multiply then add: equal up to the last bit
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    assert list(ours.parameters()) == []
    assert sorted(dict(ours.named_buffers())) == ["bias", "running_mean", "running_var", "weight"]


def test_frozen_bn_loads_batchnorm_state_with_step_counter():
    bn = nn.BatchNorm2d(3)
    bn.running_mean.fill_(0.5)
    bn.running_var.fill_(4.0)
    frozen = FrozenBatchNorm2d(3)
    frozen.load_state_dict(bn.state_dict(), strict=True)  # has num_batches_tracked
    bn.eval()
    x = torch.randn(1, 3, 2, 2)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-6, atol=1e-6)
    exact = FrozenBatchNorm2d(3, eps=0.0)
    exact.load_state_dict(bn.state_dict())
    # (2.5 - 0.5) / sqrt(4) = 1, computed as 2.5 * 0.5 + (0 - 0.5 * 0.5)
    assert torch.equal(exact(torch.full((1, 3, 1, 1), 2.5)), torch.ones(1, 3, 1, 1))


def test_make_norm_kinds_and_errors():
    assert isinstance(make_norm("frozen_bn", 8, 4), FrozenBatchNorm2d)
    assert isinstance(make_norm("bn", 8, 4), nn.BatchNorm2d)
    gn = make_norm("gn", 8, 4)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 4 and gn.num_channels == 8
    with pytest.raises(ValueError, match="'layernorm'"):
        make_norm("layernorm", 8, 4)
    with pytest.raises(ValueError, match="gn_groups=3 .* 8 channels"):
        make_norm("gn", 8, 3)


# ---------------------------------------------------------------- parity with torchvision


@pytest.mark.parametrize("depth, size", [(18, (65, 97)), (50, (33, 49))])
def test_parity_with_torchvision(depth, size):
    torch.manual_seed(depth)
    generator = torch.Generator().manual_seed(depth)
    tv_model = TV_RESNETS[depth](weights=None, norm_layer=TVFrozenBatchNorm2d).eval()
    _randomise_frozen_bn(tv_model, generator)
    ours = ResNet(depth=depth, norm="frozen_bn").eval()
    state = _backbone_state(tv_model)
    assert set(ours.state_dict()) == set(state)
    ours.load_state_dict(state, strict=True)

    x = torch.randn(2, 3, *size, generator=generator)  # odd size: every stage rounds up
    with torch.no_grad():
        outputs = ours(x)
        expected = _tv_stage_outputs(tv_model, x)
    assert list(outputs) == ["c2", "c3", "c4", "c5"]
    for (name, got), want in zip(outputs.items(), expected):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_parameter_names_match_torchvision_for_every_norm():
    tv_names = set(_backbone_state(torchvision.models.resnet50(weights=None)))
    tv_affine = {k for k in tv_names if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    tv_frozen = {k for k in tv_names if not k.endswith("num_batches_tracked")}
    assert set(ResNet(depth=50, norm="bn", width=16).state_dict()) == tv_names
    assert set(ResNet(depth=50, norm="frozen_bn", width=16).state_dict()) == tv_frozen
    assert set(ResNet(depth=50, norm="gn", width=16, gn_groups=8).state_dict()) == tv_affine


# ---------------------------------------------------------------- shapes, specs, gradients


@pytest.mark.parametrize(
    "depth, size, channels",
    [(18, (64, 96), (64, 128, 256, 512)), (34, (32, 64), (64, 128, 256, 512)),
     (50, (32, 64), (256, 512, 1024, 2048)), (101, (32, 32), (256, 512, 1024, 2048))],
)
def test_all_depths_forward_backward(depth, size, channels):
    torch.manual_seed(0)
    model = ResNet(depth=depth, norm="frozen_bn", trainable_stages=5)
    x = torch.randn(2, 3, *size)
    outputs = model(x)
    strides = (4, 8, 16, 32)
    assert model.out_specs == {f"c{i + 2}": FeatureSpec(c, s) for i, (c, s) in enumerate(zip(channels, strides))}
    for (name, out), c, s in zip(outputs.items(), channels, strides):
        assert out.shape == (2, c, size[0] // s, size[1] // s), name
    sum(out.mean() for out in outputs.values()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_width_scales_every_stage():
    model = ResNet(depth=18, width=32)
    assert [spec.channels for spec in model.out_specs.values()] == [32, 64, 128, 256]
    assert model.conv1.out_channels == 32
    outputs = model(torch.randn(1, 3, 32, 32))
    assert [out.shape[1] for out in outputs.values()] == [32, 64, 128, 256]
    assert ResNet(depth=50, width=16).out_specs["c5"] == FeatureSpec(512, 32)


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_trainable_norms_learn_from_scratch(norm):
    torch.manual_seed(0)
    model = ResNet(depth=18, norm=norm, width=16, gn_groups=8, trainable_stages=5).train()
    # zero-init of each residual block's last norm: every block starts as its shortcut
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            assert torch.equal(block.bn2.weight, torch.zeros_like(block.bn2.weight))
            assert torch.equal(block.bn1.weight, torch.ones_like(block.bn1.weight))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 64, 64)
    for step in range(2):
        optimizer.zero_grad()
        sum(out.square().mean() for out in model(x).values()).backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        optimizer.step()
    # after one step the zeroed norms have moved, so the second step reaches every parameter
    for name, parameter in model.named_parameters():
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("depth, last", [(18, "bn2"), (50, "bn3")])
def test_zero_init_residual_false_starts_every_branch_open(depth, last):
    """BackboneConfig.zero_init_residual=False (the ablation preset): torchvision's initialisation, every norm at 1,
    so each block's output differs from its shortcut from the first step; the convs are drawn as with zero-init."""
    torch.manual_seed(0)
    closed = ResNet(depth=depth, norm="gn", width=16, gn_groups=8, trainable_stages=5)
    torch.manual_seed(0)
    opened = ResNet(depth=depth, norm="gn", width=16, gn_groups=8, trainable_stages=5, zero_init_residual=False)
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for shut, open_ in zip(getattr(closed, stage), getattr(opened, stage)):
            assert torch.equal(getattr(shut, last).weight, torch.zeros_like(getattr(shut, last).weight))
            assert torch.equal(getattr(open_, last).weight, torch.ones_like(getattr(open_, last).weight))
            assert torch.equal(shut.conv1.weight, open_.conv1.weight)
    x = torch.randn(1, opened.layer1[1].conv1.in_channels, 16, 16)  # layer1[1]: no downsample, shortcut = x
    assert not torch.allclose(opened.layer1[1](x), torch.relu(x))  # an open branch: not the identity
    assert torch.allclose(closed.layer1[1](x), torch.relu(x))  # a shut one: relu(x + 0)
    config = BackboneConfig(depth=18, norm="gn", gn_groups=8, width=16, zero_init_residual=False)
    assert torch.equal(build_resnet(config).layer4[1].bn2.weight, torch.ones(128))


def test_frozen_bn_keeps_unit_last_norm():
    model = ResNet(depth=50, norm="frozen_bn")
    assert torch.equal(model.layer1[0].bn3.weight, torch.ones(256))


# ---------------------------------------------------------------- freezing


@pytest.mark.parametrize(
    "trainable_stages, trained",
    [(0, set()), (1, {"layer4"}), (3, {"layer2", "layer3", "layer4"}),
     (4, {"layer1", "layer2", "layer3", "layer4"}),
     (5, {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"})],
)
def test_freezing_follows_torchvision_trainable_layers(trainable_stages, trained):
    model = ResNet(depth=18, norm="bn", width=8, trainable_stages=trainable_stages)
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (name.split(".")[0] in trained), name
    # torchvision's own rule on its layout gives the same set
    tv_trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_stages]
    tv_trained += ["bn1"] if trainable_stages == 5 else []
    expected = {n for n, _ in model.named_parameters() if any(n.startswith(t) for t in tv_trained)}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected


def test_frozen_stages_get_no_gradient():
    model = ResNet(depth=18, norm="frozen_bn", width=8, trainable_stages=3)
    sum(out.sum() for out in model(torch.randn(1, 3, 32, 32)).values()).backward()
    assert model.conv1.weight.grad is None and model.layer1[0].conv1.weight.grad is None
    assert model.layer2[0].conv1.weight.grad is not None


@pytest.mark.parametrize("bad", [-1, 6])
def test_trainable_stages_out_of_range(bad):
    with pytest.raises(ValueError, match=f"trainable_stages .* got {bad}"):
        ResNet(depth=18, trainable_stages=bad)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="depth 152"):
        ResNet(depth=152)
    with pytest.raises(ValueError, match="width .* got 0"):
        ResNet(depth=18, width=0)
    with pytest.raises(ValueError, match="gn_groups=32 .* 16 channels"):
        ResNet(depth=18, norm="gn", width=16)
    with pytest.raises(ValueError, match=r"\(2, 1, 32, 32\)"):
        ResNet(depth=18, width=8)(torch.zeros(2, 1, 32, 32))


# ---------------------------------------------------------------- ImageNet checkpoints


@pytest.fixture(scope="module")
def tv_resnet18_state():
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None)  # plain BatchNorm2d, with fc and num_batches_tracked
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(0.5 + torch.rand(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model.state_dict()


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_load_checkpoint_file(tmp_path, tv_resnet18_state, wrap):
    path = tmp_path / "resnet18.pth"
    torch.save(tv_resnet18_state if wrap is None else {wrap: tv_resnet18_state, "epoch": 3}, path)
    model = ResNet(depth=18, norm="frozen_bn")
    load_imagenet_weights(model, str(path))
    for name, value in model.state_dict().items():
        assert torch.equal(value, tv_resnet18_state[name]), name


def test_build_resnet_loads_config_weights(tmp_path, tv_resnet18_state):
    path = tmp_path / "resnet18.pth"
    torch.save(tv_resnet18_state, path)
    model = build_resnet(BackboneConfig(depth=18, norm="bn", trainable_stages=2, weights=str(path)))
    assert torch.equal(model.layer3[1].bn2.running_var, tv_resnet18_state["layer3.1.bn2.running_var"])
    assert torch.equal(model.conv1.weight, tv_resnet18_state["conv1.weight"])
    assert model.layer3[0].conv1.weight.requires_grad and not model.layer2[0].conv1.weight.requires_grad


def test_load_into_groupnorm_keeps_affine_terms(tmp_path, tv_resnet18_state):
    path = tmp_path / "resnet18.pth"
    torch.save(tv_resnet18_state, path)
    model = ResNet(depth=18, norm="gn", gn_groups=32)
    load_imagenet_weights(model, path)
    assert torch.equal(model.layer4[1].bn2.weight, tv_resnet18_state["layer4.1.bn2.weight"])


def test_missing_checkpoint_names_path(tmp_path):
    missing = tmp_path / "nope" / "resnet50.pth"
    with pytest.raises(InputError, match=r"ImageNet weights file .*resnet50.pth: no such file"):
        load_imagenet_weights(ResNet(depth=18, width=8), str(missing))
    with pytest.raises(InputError, match=r"resnet50.pth: no such file"):
        build_resnet(BackboneConfig(depth=18, width=8, weights=str(missing)))


class _RunsCode:  # a pickle of this object asks the loader to call os.system
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("damage, reason", [
    ("folder", "not a file"), ("empty", "the file is empty"), ("truncated", "unreadable or truncated torch file"),
    ("pickle", "refused, the file holds Python objects"),
])
def test_bad_imagenet_file_is_one_line_naming_it(tmp_path, damage, reason):
    path = tmp_path / "resnet18.pth"
    if damage == "folder":
        path.mkdir()
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        torch.save(ResNet(depth=18, width=8).state_dict(), path)
        path.write_bytes(path.read_bytes()[:1000])
    else:
        torch.save({"conv1.weight": _RunsCode()}, path)
    with pytest.raises(InputError, match=re.escape(f"ImageNet weights file {path}: {reason}")):
        load_imagenet_weights(ResNet(depth=18, width=8), str(path))


def test_wrong_checkpoint_lists_keys(tmp_path, tv_resnet18_state):
    path = tmp_path / "renamed.pth"
    state = dict(tv_resnet18_state)
    state["backbone.extra.weight"] = state.pop("layer1.0.conv1.weight")
    torch.save(state, path)
    with pytest.raises(ValueError, match="renamed.pth") as error:
        load_imagenet_weights(ResNet(depth=18), str(path))
    message = str(error.value)
    assert "1 missing keys [layer1.0.conv1.weight]" in message
    assert "1 unexpected keys [backbone.extra.weight]" in message


def test_checkpoint_of_other_architecture_lists_shapes_and_keys(tmp_path, tv_resnet18_state):
    path = tmp_path / "resnet18.pth"
    torch.save(tv_resnet18_state, path)
    with pytest.raises(ValueError, match=r"conv1.weight: checkpoint \(64, 3, 7, 7\) vs model \(32, 3, 7, 7\)"):
        load_imagenet_weights(ResNet(depth=18, width=32), str(path))
    with pytest.raises(ValueError, match=r"resnet18.pth.* missing keys \[layer1.2.bn1.bias"):
        load_imagenet_weights(ResNet(depth=34), str(path))


def test_checkpoint_without_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="list.pth.* no state dict"):
        load_imagenet_weights(ResNet(depth=18, width=8), str(path))



def test_split_off_last_stage_leaves_a_c4_trunk_and_returns_conv5():
    """The C4 baseline (FPN paper Tables 1-3 row (a)) runs conv5 on RoIs: the trunk stops at C4."""
    torch.manual_seed(0)
    net = ResNet(depth=18, width=8, norm="bn", trainable_stages=3).eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        full = net(image)
    stage = net.split_off_last_stage()
    assert list(net.out_specs) == ["c2", "c3", "c4"] and not hasattr(net, "layer4")
    assert not any(key.startswith("layer4.") for key in net.state_dict())
    assert all(p.requires_grad for p in stage.parameters())  # frozen flags are kept (trainable_stages 3)
    with torch.no_grad():
        trunk = net(image)
        c5 = stage(trunk["c4"])
    assert list(trunk) == ["c2", "c3", "c4"]
    for name in trunk:
        assert torch.equal(trunk[name], full[name])
    assert torch.equal(c5, full["c5"])
    with pytest.raises(ValueError, match="already split off"):
        net.split_off_last_stage()
