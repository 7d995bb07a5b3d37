"""Modules a user wrote, handed to a detector in place of the configured ones (README, "Extending fpn"): a backbone
and a box head for Faster R-CNN, a neck and a head for FCOS. They train, are saved and reloaded (rebuild with the
same modules, then `load_state_dict`), and a module that breaks its contract is a ValueError naming what is wrong.
Nothing here touches fpn/: these are the classes a researcher would write in their own file."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpn
from fpn import FasterRCNNConfig, FasterRCNNFPN, FCOSConfig, FCOSFPN, FeatureSpec
from fpn.backbones import build_backbone
from fpn.engine.checkpoint import load_checkpoint, save_checkpoint
from fpn.errors import InputError
from fpn.heads.fcos_head import FCOSHead
from fpn.necks import FPN, LastLevelP6P7


class TinyTrunk(nn.Module):
    """A few strided convs: (N, 3, H, W) -> C2..C5 at strides 4, 8, 16, 32, declared in `out_specs`."""

    def __init__(self, widths=(16, 24, 32, 48)):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], kernel_size=3, stride=4, padding=1)
        self.stages = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1) for c_in, c_out in zip(widths, widths[1:])
        )
        self.out_specs = {f"c{i + 2}": FeatureSpec(width, 4 * 2**i) for i, width in enumerate(widths)}

    def forward(self, x):
        x = F.relu(self.stem(x))  # (N, 16, H/4, W/4)
        features = {"c2": x}
        for i, stage in enumerate(self.stages):
            x = F.relu(stage(x))
            features[f"c{i + 3}"] = x  # c3, c4, c5
        return features


class ConvBoxHead(nn.Module):
    """Pooled RoIs (R, C, S, S) -> a 3x3 conv, global average -> one fc: (R, out_features)."""

    def __init__(self, in_channels: int, out_features: int = 40):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.fc = nn.Linear(in_channels, out_features)
        self.out_features = out_features  # the contract: the width of the output, read by the predictors

    def forward(self, x):
        return F.relu(self.fc(F.relu(self.conv(x)).mean(dim=(2, 3))))


class TwoConvRPNHead(nn.Module):
    """An RPN head with two 3x3 convs instead of one; `num_anchors` is the anchors per location it predicts for."""

    def __init__(self, channels: int, num_anchors: int = 3):
        super().__init__()
        self.num_anchors = num_anchors
        self.convs = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, maps):
        towers = [self.convs(x) for x in maps]
        return [self.cls_logits(t) for t in towers], [self.bbox_pred(t) for t in towers]  # (N, A, H, W), (N, 4A, ..)


class LateralOnlyNeck(nn.Module):
    """FCOS's pyramid without the top-down pathway: a 1x1 conv of each of C3..C5, then P6, P7 from P5."""

    def __init__(self, in_specs, channels: int):
        super().__init__()
        self.in_specs = {name: in_specs[name] for name in ("c3", "c4", "c5")}  # checked against the backbone's
        self.laterals = nn.ModuleDict({name: nn.Conv2d(spec.channels, channels, 1)
                                       for name, spec in self.in_specs.items()})
        self.extra = LastLevelP6P7(channels)
        self.out_specs = {f"p{name[1:]}": FeatureSpec(channels, spec.stride) for name, spec in self.in_specs.items()}
        self.out_specs.update(p6=FeatureSpec(channels, 64), p7=FeatureSpec(channels, 128))

    def forward(self, features):
        outputs = {f"p{name[1:]}": conv(features[name]) for name, conv in self.laterals.items()}
        p6, p7 = self.extra(outputs["p5"])
        return {**outputs, "p6": p6, "p7": p7}


def _tiny_trunk(config) -> None:
    """The configured parts small (a narrow ResNet-18, 32 pyramid channels), for where a test keeps them."""
    config.backbone.depth, config.backbone.width, config.backbone.norm, config.backbone.gn_groups = 18, 16, "gn", 8
    config.fpn.out_channels = 32


def tiny_config() -> FasterRCNNConfig:
    config = FasterRCNNConfig()
    _tiny_trunk(config)
    config.input.min_size, config.input.max_size, config.input.train_min_sizes = 64, 96, (64,)
    config.roi_heads.score_thresh = 0.0  # an untrained model's detections, to compare before and after reloading
    config.rpn.pre_nms_top_n_train = config.rpn.post_nms_top_n_train = 200
    config.rpn.batch_size_per_image, config.roi_heads.batch_size_per_image = 64, 64
    return config


def tiny_fcos_config() -> FCOSConfig:
    config = FCOSConfig()
    _tiny_trunk(config)
    config.head = replace(config.head, gn_groups=8, score_thresh=0.0)
    config.input.min_size, config.input.max_size, config.input.train_min_sizes = 64, 96, (64,)
    return config


def _data():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 72, 64, generator=g)]
    targets = [  # boxes (M, 4) xyxy in each image's pixels
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0], [44.0, 4.0, 76.0, 30.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[5.0, 5.0, 50.0, 60.0]]), "labels": torch.tensor([2])},
    ]
    return images, targets


def _train(model, steps: int = 3):
    images, targets = _data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for _ in range(steps):
        losses = model(images, targets)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return losses


def _assert_same_detections(model, reloaded):
    images, _ = _data()
    with torch.no_grad():
        expected, got = model.eval()(images), reloaded.eval()(images)
    assert sum(len(d["boxes"]) for d in expected) > 0
    for e, g in zip(expected, got):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(e[key], g[key]), key


def test_faster_rcnn_with_own_backbone_and_box_head_trains_saves_and_reloads(tmp_path):
    torch.manual_seed(0)
    config = tiny_config()
    model = FasterRCNNFPN(3, config, backbone=TinyTrunk(), box_head=ConvBoxHead(config.fpn.out_channels))
    assert model.given_modules == ("backbone", "box_head")
    assert model.roi_heads.predictor.cls_score.in_features == 40  # the predictors read the head's out_features
    before = {name: p.clone() for name, p in model.named_parameters()}
    losses = _train(model)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    for name in ("backbone.stem.weight", "roi_heads.box_head.conv.weight"):  # the user's modules learned
        assert not torch.equal(before[name], model.state_dict()[name]), name

    path = save_checkpoint(tmp_path / "checkpoint_0000003.pt", model=model, optimizer=None, scheduler=None,
                           scaler=None, iteration=3, label_to_category={1: 1, 2: 2}, class_names={1: "a", 2: "b"})
    # the documented way back: the same modules, the stored config, then the stored weights
    checkpoint = load_checkpoint(path)
    reloaded = FasterRCNNFPN(checkpoint["num_classes"], FasterRCNNConfig.from_dict(checkpoint["config"]),
                             backbone=TinyTrunk(), box_head=ConvBoxHead(config.fpn.out_channels))
    reloaded.load_state_dict(checkpoint["model"])
    _assert_same_detections(model, reloaded)
    # the config alone cannot rebuild the user's modules: loading it as a configured model fails, never guesses
    with pytest.raises(InputError):
        fpn.load_detector(path)
    # the inference copy folds what it knows (nothing in these modules) and runs the rest as written
    images, _ = _data()
    with torch.no_grad():
        expected, fast = model.eval()(images), model.optimize_for_inference()(images)
    assert all(torch.allclose(e["boxes"], f["boxes"], atol=1e-3) for e, f in zip(expected, fast))


def test_faster_rcnn_with_own_rpn_head_trains():
    torch.manual_seed(0)
    config = tiny_config()
    model = FasterRCNNFPN(3, config, rpn_head=TwoConvRPNHead(config.fpn.out_channels))
    assert isinstance(model.rpn.head, TwoConvRPNHead)
    before = model.rpn.head.convs[2].weight.clone()
    _train(model, steps=1)
    assert not torch.equal(before, model.rpn.head.convs[2].weight)


def test_handing_over_the_configured_modules_builds_the_configured_model():
    config = tiny_config()
    torch.manual_seed(0)
    built = FasterRCNNFPN(3, config)
    torch.manual_seed(0)
    given = FasterRCNNFPN(3, config, backbone=build_backbone(config.resolved().backbone))
    assert built.given_modules == () and given.given_modules == ("backbone",)
    expected = built.state_dict()
    assert list(given.state_dict()) == list(expected)
    assert all(torch.equal(value, expected[key]) for key, value in given.state_dict().items())
    _assert_same_detections(built, given)


def test_fcos_with_own_neck_and_head_trains_and_reloads():
    torch.manual_seed(0)
    config = tiny_fcos_config()
    trunk = TinyTrunk()
    neck = LateralOnlyNeck(trunk.out_specs, 32)
    one_conv = replace(config.head, num_convs=1)  # a head of the user's making: one conv per tower, not four
    model = FCOSFPN(3, config, backbone=trunk, neck=neck, head=FCOSHead(32, 3, [8, 16, 32, 64, 128], one_conv))
    assert model.given_modules == ("backbone", "neck", "head") and model.neck is neck
    assert not any(".conv.3." in name for name in model.state_dict())  # the given head, not the configured one
    assert set(_train(model)) == {"classification", "bbox_regression", "bbox_ctrness"}

    rebuilt_trunk = TinyTrunk()
    reloaded = FCOSFPN(3, FCOSConfig.from_dict(model.config.to_dict()), backbone=rebuilt_trunk,
                       neck=LateralOnlyNeck(rebuilt_trunk.out_specs, 32),
                       head=FCOSHead(32, 3, [8, 16, 32, 64, 128], one_conv))
    reloaded.load_state_dict(model.state_dict())
    _assert_same_detections(model, reloaded)


def test_fcos_builds_its_pyramid_and_head_on_a_given_backbone():
    torch.manual_seed(0)
    model = FCOSFPN(3, tiny_fcos_config(), backbone=TinyTrunk())
    assert list(model.neck.out_specs) == ["p3", "p4", "p5", "p6", "p7"]
    assert list(model.neck.in_specs) == ["c3", "c4", "c5"]
    _train(model, steps=1)


class NoSpecs(nn.Module):
    def forward(self, x):
        return {"c5": x}


class SpecsAsTuples(NoSpecs):
    def __init__(self):
        super().__init__()
        self.out_specs = {"c5": (64, 32)}


class SkipsAStride(TinyTrunk):
    def __init__(self):
        super().__init__()
        self.out_specs = {**self.out_specs, "c3": FeatureSpec(24, 16)}  # c2 at 4, c3 at 16: not a pyramid


class WidthUndeclared(nn.Module):
    def forward(self, x):
        return x.flatten(1)


@pytest.mark.parametrize("modules, config_edit, message", [
    (dict(backbone=NoSpecs()), None, "backbone NoSpecs must declare `out_specs`"),
    (dict(backbone=SpecsAsTuples()), None, "must map str names to fpn.spec.FeatureSpec"),
    (dict(backbone=SkipsAStride()), None, r"FPN: levels must be consecutive .* c2 \(stride 4\) then c3 \(stride 16\)"),
    (dict(backbone=TinyTrunk()), lambda c: setattr(c, "variant", "c4"),
     r"config.variant 'c4' needs a backbone with a 'c5' map and split_off_last_stage\(\) .*; TinyTrunk has not"),
    (dict(backbone=TinyTrunk()), lambda c: setattr(c.backbone, "weights", "imagenet.pth"),
     "config.backbone.weights is 'imagenet.pth' but a backbone module was given"),
    (dict(backbone=TinyTrunk((16, 24, 32, 64)), neck=FPN(TinyTrunk().out_specs, 32)), None,
     r"neck FPN cannot read the backbone's maps .* c5 \(48 channels, stride 32\): the backbone's is 64 channels"),
    (dict(neck=NoSpecs()), None, "neck NoSpecs must declare `out_specs`"),
    (dict(neck=FPN(TinyTrunk().out_specs, 32)), lambda c: setattr(c, "variant", "c5"),
     "config.variant 'c5' chooses the neck"),
    (dict(box_head=WidthUndeclared()), None, "box_head WidthUndeclared must declare `out_features`"),
    (dict(box_head=ConvBoxHead(32)), lambda c: setattr(c, "rpn_only", True), "config.rpn_only has no RoI heads"),
    (dict(rpn_head=TwoConvRPNHead(32, num_anchors=5)), None,
     r"rpn_head TwoConvRPNHead must declare `num_anchors`.* make 3 .*; got 5"),
])
def test_faster_rcnn_names_what_a_given_module_gets_wrong(modules, config_edit, message):
    config = tiny_config()
    if config_edit is not None:
        config_edit(config)
    with pytest.raises(ValueError, match=message):
        FasterRCNNFPN(3, config, **modules)


def test_fcos_names_what_a_given_module_or_trunk_gets_wrong():
    config = tiny_fcos_config()
    config.backbone.name = "mobilenet_v3_large"  # C4 and C5 both at stride 32: no stride-8 and -16 maps
    with pytest.raises(ValueError, match=r"declares c4 \(stride 32\), c5 \(stride 32\): missing c3 \(stride 8\), "
                                         r"c4 \(stride 16\)"):
        FCOSFPN(3, config)
    uneven = LateralOnlyNeck(TinyTrunk().out_specs, 32)
    uneven.out_specs["p7"] = FeatureSpec(16, 128)
    with pytest.raises(ValueError, match=r"FCOS's head is shared by the maps .* needs one channel count"):
        FCOSFPN(3, tiny_fcos_config(), backbone=TinyTrunk(), neck=uneven)
    with pytest.raises(ValueError, match="head must be an nn.Module, got str"):
        FCOSFPN(3, tiny_fcos_config(), head="fcos")


def test_the_trainer_takes_parts_you_wrote_and_checkpoints_name_them(tmp_path):
    """`TrainingJob.modules`: the library's training run with a box head of one's own; its checkpoints say so
    (`given_modules`), `load_detector` refuses them (the config cannot rebuild the part), and --resume needs the
    same parts."""
    from test_train_script import job_of, tiny_args

    from fpn.engine.trainer import run_training

    run = tmp_path / "run"
    job = job_of(tiny_args(run, iters=2))
    width = job.preset.model.fpn.out_channels
    job.modules = {"box_head": lambda: ConvBoxHead(width)}
    run_training(job)
    checkpoint = load_checkpoint(run / "checkpoint_0000002.pt")
    assert checkpoint["given_modules"] == ["box_head"] and checkpoint["args"]["modules"] == ["box_head"]
    assert "roi_heads.box_head.conv.weight" in checkpoint["model"]
    with pytest.raises(InputError, match=r"built with parts passed in by their author \(box_head\)"):
        fpn.load_detector(run / "checkpoint_0000002.pt")

    resumed = job_of(tiny_args(run, "--resume", iters=3))
    resumed.modules = job.modules
    run_training(resumed)
    assert load_checkpoint(run / "checkpoint_0000003.pt")["iteration"] == 3
    with pytest.raises(InputError, match=r"passed in \['box_head'\], this run's with none: resume with the same"):
        run_training(job_of(tiny_args(run, "--resume", iters=4)))
    assert not (run / "checkpoint_0000004.pt").exists()
