"""Defaults a newcomer meets: the backbone set-up without ImageNet weights, the [0, 1] image range, the versions
the package asks for."""
import ast
import sys
import warnings
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from fpn import FasterRCNNConfig, FasterRCNNFPN
from fpn.detectors import validation
from fpn.backbones import FrozenBatchNorm2d, ResNet
from fpn.engine.checkpoint import build_from_checkpoint
from fpn.ops.host_sync import HostSyncCounter

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**backbone) -> FasterRCNNConfig:
    cfg = FasterRCNNConfig()
    cfg.backbone.depth, cfg.backbone.width = 18, 16
    for name, value in backbone.items():
        setattr(cfg.backbone, name, value)
    cfg.fpn.out_channels, cfg.roi_heads.representation_size = 32, 64
    cfg.input.min_size, cfg.input.max_size, cfg.input.train_min_sizes = 64, 96, (64,)
    return cfg


def _norm_kinds(model: nn.Module) -> set:
    return {type(m).__name__ for m in model.backbone.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))}


def _train_step_inputs():
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0))]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 50.0]]), "labels": torch.tensor([1])}]
    return images, targets


@pytest.fixture
def imagenet_file(tmp_path):
    """A ResNet-18 (width 16) classification checkpoint in torchvision's layout (BatchNorm2d, with counters)."""
    path = tmp_path / "resnet18.pth"
    torch.save(ResNet(depth=18, width=16, norm="bn").state_dict(), path)
    return str(path)


# ---------------------------------------------------------------- backbone without / with ImageNet weights


def test_default_model_without_weights_trains_every_layer_with_batch_norm():
    # torchvision's rule: neither detector nor backbone weights -> BatchNorm2d and all five stages trained
    model = FasterRCNNFPN(num_classes=3)
    assert _norm_kinds(model) == {"BatchNorm2d"}
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert (model.config.backbone.norm, model.config.backbone.trainable_stages) == ("bn", 5)


def test_imagenet_weights_keep_frozen_batch_norm_and_frozen_stem(imagenet_file):
    model = FasterRCNNFPN(num_classes=3, config=tiny_config(weights=imagenet_file))
    assert _norm_kinds(model) == {"FrozenBatchNorm2d"}
    assert not model.backbone.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    assert (model.config.backbone.norm, model.config.backbone.trainable_stages) == ("frozen_bn", 3)


def test_model_keeps_a_resolved_copy_and_leaves_the_callers_config_alone():
    cfg = tiny_config()
    model = FasterRCNNFPN(num_classes=3, config=cfg)
    assert (cfg.backbone.norm, cfg.backbone.trainable_stages) == (None, None)  # still "auto" for the next model
    assert model.config is not cfg and model.config == cfg.resolved()


def test_explicit_choices_are_kept_whatever_the_weights(imagenet_file):
    frozen = FasterRCNNFPN(num_classes=3, config=tiny_config(norm="frozen_bn", trainable_stages=3))
    assert _norm_kinds(frozen) == {"FrozenBatchNorm2d"} and not frozen.backbone.conv1.weight.requires_grad
    bn = FasterRCNNFPN(num_classes=3, config=tiny_config(norm="bn", trainable_stages=5, weights=imagenet_file))
    assert _norm_kinds(bn) == {"BatchNorm2d"} and bn.backbone.conv1.weight.requires_grad


def test_checkpoint_of_an_imagenet_initialised_model_rebuilds_the_same_architecture(imagenet_file):
    trained = FasterRCNNFPN(num_classes=3, config=tiny_config(weights=imagenet_file))
    # what save_checkpoint stores; build_from_checkpoint then drops the ImageNet path
    checkpoint = {"config": trained.config.to_dict(), "num_classes": 3, "model": trained.state_dict()}
    rebuilt = build_from_checkpoint(checkpoint)
    assert _norm_kinds(rebuilt) == {"FrozenBatchNorm2d"} and not rebuilt.backbone.conv1.weight.requires_grad
    assert rebuilt.config.backbone.weights is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the loaded weights make the frozen parts meaningful: no warning
        rebuilt.train()(*_train_step_inputs())


def test_from_torchvision_builds_torchvisions_pretrained_layout():
    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)  # BatchNorm2d, as saved
    model = FasterRCNNFPN.from_torchvision(tv.state_dict())
    assert _norm_kinds(model) == {"FrozenBatchNorm2d"} and not model.backbone.conv1.weight.requires_grad
    assert (model.config.backbone.norm, model.config.backbone.trainable_stages) == ("frozen_bn", 3)


@pytest.mark.parametrize(
    "backbone, says",
    [
        ({"norm": "frozen_bn", "trainable_stages": 3}, ["frozen BatchNorm", "conv1 and layer1"]),
        ({"norm": "frozen_bn", "trainable_stages": 5}, ["frozen BatchNorm"]),
        ({"norm": "gn", "gn_groups": 8, "trainable_stages": 4}, ["conv1"]),
    ],
)
def test_training_frozen_parts_without_weights_warns_once(backbone, says):
    model = FasterRCNNFPN(num_classes=3, config=tiny_config(**backbone)).train()
    with pytest.warns(UserWarning, match="no pretrained weights") as record:
        model(*_train_step_inputs())
    message = str(record[0].message)
    assert all(part in message for part in says), message
    assert "trainable_stages" in message and "config.backbone.weights" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(*_train_step_inputs())  # said once per model


def test_frozen_parts_after_loading_weights_or_in_eval_do_not_warn():
    cfg = tiny_config(norm="frozen_bn", trainable_stages=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FasterRCNNFPN(num_classes=3, config=cfg).eval()([torch.rand(3, 64, 64)])  # inference: nothing trained
        model = FasterRCNNFPN(num_classes=3, config=cfg)
        model.load_state_dict(FasterRCNNFPN(num_classes=3, config=cfg).state_dict())  # e.g. --init-from
        model.train()(*_train_step_inputs())
        FasterRCNNFPN(num_classes=3, config=tiny_config()).train()(*_train_step_inputs())  # auto: bn, 5


# ---------------------------------------------------------------- image value range


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return FasterRCNNFPN(num_classes=3, config=tiny_config(norm="gn", gn_groups=8, trainable_stages=5)).eval()


def test_images_above_one_warn_naming_index_and_maximum(small_model):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 64, generator=g) * 255]
    expected = f"images\\[1\\] has values up to {images[1].max().item():g}.*\\[0, 1\\].*255.*model.predict"
    with torch.no_grad(), pytest.warns(UserWarning, match=expected) as record:
        small_model(images)
    assert len(record) == 1  # images[0] is fine


def test_images_in_unit_range_and_uint8_predict_do_not_warn(small_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            small_model([torch.rand(3, 64, 64), torch.ones(3, 40, 50), torch.zeros(3, 30, 30)])
        small_model.predict([(torch.rand(3, 64, 64) * 255).to(torch.uint8)])


def test_accelerator_images_are_read_on_the_first_call_only(monkeypatch):
    # Stand-in for an accelerator: no device counts as free to read, as CUDA tensors are not.
    monkeypatch.setattr(validation, "HOST_READABLE_DEVICES", ())
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=3, config=tiny_config(norm="gn", gn_groups=8, trainable_stages=5)).eval()
    bright = [torch.rand(3, 64, 64) * 255, torch.rand(3, 48, 64) * 255]
    with torch.no_grad():
        with pytest.warns(UserWarning) as record:
            model(bright)
        assert [str(w.message)[:9] for w in record] == ["images[0]", "images[1]"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(bright)  # not read again: a steady stream of images pays no sync for the check
    with pytest.warns(UserWarning), HostSyncCounter() as first:
        assert validation.check_value_range(bright, read_accelerator_images=True)
    with HostSyncCounter() as later:
        assert not validation.check_value_range(bright, read_accelerator_images=False)
    assert (first.total, later.total) == (1, 0)  # one read for the whole batch, then none


# ---------------------------------------------------------------- declared versions


def _setup_arguments() -> dict:
    """The keyword arguments of setup() in setup.py that are literals."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    arguments = {}
    for keyword in call.keywords:
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            pass
    return arguments


def _pins() -> dict:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = Version(version.strip())
    return pins


def _floor(specifier: SpecifierSet) -> Version:
    floors = [Version(s.version) for s in specifier if s.operator == ">="]
    assert floors, f"no lower bound in {specifier}"
    return max(floors)


def test_every_requirement_floor_is_the_tested_release():
    # Only the stack in constraints.txt is tested, so nothing older may be promised.
    arguments, pins = _setup_arguments(), _pins()
    requirements = arguments["install_requires"] + [r for extra in arguments["extras_require"].values() for r in extra]
    for text in requirements:
        requirement = Requirement(text)
        pin = pins[requirement.name.lower()]
        floor = _floor(requirement.specifier)
        assert floor <= pin and floor.release[:2] == pin.release[:2], f"{text}: constraints.txt tests {pin}"


def test_python_floor_admits_this_interpreter_and_is_no_looser_than_torchs():
    floor = _floor(SpecifierSet(_setup_arguments()["python_requires"]))
    assert floor.release[:2] <= sys.version_info[:2]
    torch_needs = _floor(SpecifierSet(metadata.metadata("torch")["Requires-Python"]))
    assert floor >= torch_needs, f"python_requires {floor} is looser than torch's {torch_needs}"
