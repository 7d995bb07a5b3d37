"""The paper's ablation models (config.variant, Tables 1-3 rows (a)-(f)) and the RPN alone (config.rpn_only).

Every variant, as a detector and as an RPN alone, trains on a tiny fixed batch with a falling loss, evaluates
to the output contract and rebuilds from a checkpoint; then the wiring of each variant is checked (which maps
the RPN and the RoI pooling see, at which stride, what each pyramid level depends on).
"""
import argparse
import math

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from fpn import FasterRCNNConfig, FasterRCNNFPN
from fpn.backbones import ResNet
from fpn.engine.checkpoint import build_from_checkpoint
from fpn.config import VARIANTS
from fpn.io.convert import convert_torchvision_state_dict
from fpn.tools.config_flags import add_config_flags, apply_config_flags

RPN_LOSSES = {"loss_objectness", "loss_rpn_box_reg"}
ALL_LOSSES = RPN_LOSSES | {"loss_classifier", "loss_box_reg"}
MIN_SIZE = 64  # images are resized to a shorter side of 64: P2 is 16x16, C4 4x4, C5 2x2


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: a second intra-op thread only adds hand-offs (and stalls on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(variant: str, rpn_only: bool = False) -> FasterRCNNConfig:
    cfg = FasterRCNNConfig(variant=variant, rpn_only=rpn_only)
    cfg.backbone.depth, cfg.backbone.width = 18, 8
    cfg.backbone.norm, cfg.backbone.gn_groups, cfg.backbone.trainable_stages = "gn", 4, 5
    cfg.fpn.out_channels = 16
    cfg.roi_heads.representation_size = 32
    cfg.roi_heads.batch_size_per_image = 64
    cfg.rpn.pre_nms_top_n_train = cfg.rpn.post_nms_top_n_train = 200
    cfg.rpn.pre_nms_top_n_test, cfg.rpn.post_nms_top_n_test = 200, 50
    cfg.input.min_size, cfg.input.max_size, cfg.input.train_min_sizes = MIN_SIZE, 96, (MIN_SIZE,)
    return cfg


def _batch():
    """Two images of their own sizes (in pixels twice the resized frame's), three boxes."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 160, generator=g), torch.rand(3, 150, 128, generator=g)]
    targets = [
        {"boxes": torch.tensor([[16.0, 20.0, 90.0, 100.0], [100.0, 10.0, 150.0, 60.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[8.0, 30.0, 120.0, 140.0]]), "labels": torch.tensor([2])},
    ]
    return images, targets


def _train(model: FasterRCNNFPN, steps: int = 8):
    images, targets = _batch()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    model.train()
    history = []
    for _ in range(steps):
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    return losses, history, params


@pytest.mark.parametrize("rpn_only", [False, True], ids=["faster_rcnn", "rpn_only"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_evaluates_and_rebuilds_from_a_checkpoint(variant, rpn_only):
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=3, config=tiny_config(variant, rpn_only))
    assert (model.roi_heads is None) == rpn_only
    losses, history, params = _train(model)
    assert set(losses) == (RPN_LOSSES if rpn_only else ALL_LOSSES)
    assert all(math.isfinite(value) for value in history)
    assert history[-1] < 0.98 * history[0], history  # seeded: 2-5% less for RPNs alone, 30% or more with heads
    assert [p for p in params if p.grad is None] == []  # every parameter is used (DDP needs it)

    images, _ = _batch()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for out, image in zip(outputs, images):
        assert set(out) == {"boxes", "scores", "labels"}
        count = out["boxes"].shape[0]
        assert out["boxes"].shape == (count, 4) and out["scores"].shape == out["labels"].shape == (count,)
        assert out["labels"].dtype == torch.int64 and out["boxes"].dtype == torch.float32
        assert torch.all(out["scores"][:-1] >= out["scores"][1:])
        height, width = image.shape[-2:]
        assert torch.all(out["boxes"] >= 0)
        assert torch.all(out["boxes"][:, 0::2] <= width) and torch.all(out["boxes"][:, 1::2] <= height)
        if rpn_only:
            assert 0 < count <= model.config.rpn.post_nms_top_n_test
            assert torch.all((out["scores"] >= 0) & (out["scores"] <= 1)) and torch.all(out["labels"] == 1)

    checkpoint = {"config": model.config.to_dict(), "num_classes": 3, "model": model.state_dict()}
    rebuilt = build_from_checkpoint(checkpoint).eval()
    assert rebuilt.config.variant == variant and rebuilt.config.rpn_only == rpn_only
    with torch.no_grad():
        again = rebuilt(images)
    for a, b in zip(outputs, again):
        torch.testing.assert_close(a, b)


def _seen_maps(model: FasterRCNNFPN, images):
    """{"rpn": {name: shape}, "pooled": {name: shape}, "batch": padded (H, W)}: the maps the RPN and the RoI
    pooling receive in one eval forward."""
    seen = {}

    def rpn_hook(module, args):
        seen["batch"] = tuple(args[0].tensor.shape[-2:])
        seen["rpn"] = {name: tuple(f.shape) for name, f in args[1].items()}

    def pool_hook(module, args):
        seen["pooled"] = {name: tuple(f.shape) for name, f in args[0].items()}

    hooks = [model.rpn.register_forward_pre_hook(rpn_hook)]
    if model.roi_heads is not None:
        hooks.append(model.roi_heads.pooler.register_forward_pre_hook(pool_hook))
    with torch.no_grad():
        model.eval()(images)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize(
    "variant, rpn_maps, pooled_maps",
    [
        ("c4", {"c4": 16}, {"c4": 16}),
        ("c5", {"c5": 32}, {"c5": 32}),
        ("fpn", {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}, {"p2": 4, "p3": 8, "p4": 16, "p5": 32}),
        ("no_top_down", {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}, {"p2": 4, "p3": 8, "p4": 16, "p5": 32}),
        ("no_lateral", {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}, {"p2": 4, "p3": 8, "p4": 16, "p5": 32}),
        ("p2_only", {"p2": 4}, {"p2": 4}),
    ],
)
def test_rpn_and_roi_pooling_see_the_maps_of_the_variant(variant, rpn_maps, pooled_maps):
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=3, config=tiny_config(variant))
    seen = _seen_maps(model, [torch.rand(3, 128, 192)])
    height, width = seen["batch"]  # (64, 96)
    for name, shapes, expected in (("rpn", seen["rpn"], rpn_maps), ("pooled", seen["pooled"], pooled_maps)):
        assert list(shapes) == list(expected), name
        for level, stride in expected.items():
            assert shapes[level][-2:] == (math.ceil(height / stride), math.ceil(width / stride)), (name, level)
    anchor_sizes = model.rpn.anchor_generator.sizes
    if len(rpn_maps) == 1:  # a single map carries every anchor size (paper Sec. 5.1.1)
        assert anchor_sizes == ((32, 64, 128, 256, 512),)
    else:
        assert anchor_sizes == ((32,), (64,), (128,), (256,), (512,))
    assert model.roi_heads.pooler.featmap_names == list(pooled_maps)


def test_c4_runs_conv5_on_rois_not_on_the_image():
    model = FasterRCNNFPN(num_classes=3, config=tiny_config("c4"))
    assert not hasattr(model.backbone, "layer4") and list(model.backbone.out_specs) == ["c2", "c3", "c4"]
    keys = list(model.state_dict())
    assert not any(key.startswith("backbone.layer4") for key in keys)
    assert "roi_heads.box_head.res5.0.conv1.weight" in keys  # torchvision's layer4.0.conv1
    assert model.roi_heads.pooler.output_size == (14, 14)  # 14x14 RoIs, 7x7 after conv5's strided first block
    rois = torch.randn(5, model.backbone.out_specs["c4"].channels, 14, 14)
    assert model.roi_heads.box_head(rois).shape == (5, model.roi_heads.box_head.out_features)
    rpn_only = FasterRCNNFPN(num_classes=3, config=tiny_config("c4", rpn_only=True))
    assert not any(".layer4." in key or "res5" in key for key in rpn_only.state_dict())


def test_c4_with_imagenet_weights_gives_their_conv5_to_the_box_head(tmp_path):
    torch.manual_seed(1)
    imagenet = ResNet(depth=18, width=8, norm="bn").state_dict()
    torch.save(imagenet, tmp_path / "resnet18.pth")
    cfg = tiny_config("c4")
    cfg.backbone.norm, cfg.backbone.trainable_stages = None, None  # auto: frozen BN, stem and C2 frozen
    cfg.backbone.weights = str(tmp_path / "resnet18.pth")
    model = FasterRCNNFPN(num_classes=3, config=cfg)
    res5 = model.roi_heads.box_head.res5
    assert torch.equal(res5[1].bn2.running_var, imagenet["layer4.1.bn2.running_var"])
    assert torch.equal(model.backbone.layer3[0].conv1.weight, imagenet["layer3.0.conv1.weight"])
    assert all(p.requires_grad for p in res5.parameters())
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())


def _pyramid_of(model: FasterRCNNFPN, features):
    with torch.no_grad():
        return model.neck(features)


def _c_features(model: FasterRCNNFPN, seed: int):
    g = torch.Generator().manual_seed(seed)
    sizes = {"c2": (16, 24), "c3": (8, 12), "c4": (4, 6), "c5": (2, 3)}
    return {name: torch.randn(1, spec.channels, *sizes[name], generator=g)
            for name, spec in model.backbone.out_specs.items()}


def test_no_top_down_levels_depend_on_their_own_input_only():
    model = FasterRCNNFPN(num_classes=3, config=tiny_config("no_top_down"))
    features = _c_features(model, seed=0)
    base = _pyramid_of(model, features)
    changed_c5 = _pyramid_of(model, {**features, "c5": torch.randn_like(features["c5"])})
    torch.testing.assert_close(changed_c5["p2"], base["p2"], rtol=0, atol=0)  # no top-down pathway
    assert not torch.equal(changed_c5["p5"], base["p5"])
    changed_c2 = _pyramid_of(model, {**features, "c2": torch.randn_like(features["c2"])})
    for level in ("p3", "p4", "p5", "p6"):
        torch.testing.assert_close(changed_c2[level], base[level], rtol=0, atol=0)
    assert not torch.equal(changed_c2["p2"], base["p2"])


def test_no_lateral_levels_ignore_c2_to_c4():
    model = FasterRCNNFPN(num_classes=3, config=tiny_config("no_lateral"))
    assert [key for key in model.state_dict() if key.startswith("neck.lateral_convs")] == [
        "neck.lateral_convs.0.weight", "neck.lateral_convs.0.bias"]  # C5's only
    features = _c_features(model, seed=0)
    base = _pyramid_of(model, features)
    changed = {**features, **{name: torch.randn_like(features[name]) for name in ("c2", "c3", "c4")}}
    after = _pyramid_of(model, changed)
    assert list(after) == ["p2", "p3", "p4", "p5", "p6"]
    for level in after:
        torch.testing.assert_close(after[level], base[level], rtol=0, atol=0)
        assert after[level].shape[-2:] == base[level].shape[-2:]
    after_c5 = _pyramid_of(model, {**features, "c5": torch.randn_like(features["c5"])})
    assert not torch.equal(after_c5["p2"], base["p2"])  # everything comes down from C5


def test_p2_only_pyramid_is_p2_of_the_full_top_down_pathway():
    model = FasterRCNNFPN(num_classes=3, config=tiny_config("p2_only"))
    full = FasterRCNNFPN(num_classes=3, config=tiny_config("fpn"))
    assert list(model.neck.out_specs) == ["p2"]
    own = model.neck.state_dict()  # every lateral, and the 3x3 conv of P2 alone
    assert [key for key in own if key.startswith("output_convs")] == ["output_convs.0.weight", "output_convs.0.bias"]
    model.neck.load_state_dict({k: v for k, v in full.neck.state_dict().items() if k in own})
    features = _c_features(model, seed=1)
    torch.testing.assert_close(_pyramid_of(model, features)["p2"], _pyramid_of(full, features)["p2"], rtol=0, atol=0)


def test_default_variant_has_todays_state_dict_keys():
    """Exactly the keys of torchvision's fasterrcnn_resnet50_fpn renamed (what from_torchvision loads)."""
    theirs = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    expected = list(convert_torchvision_state_dict(theirs.state_dict()))
    ours = list(FasterRCNNFPN(num_classes=91).state_dict())
    # without weights the default backbone has trainable BatchNorm, whose step counters torchvision's file lacks
    counters = [key for key in ours if key.endswith(".num_batches_tracked")]
    assert len(counters) == len([key for key in expected if key.endswith(".running_mean")])
    assert sorted(set(ours) - set(counters)) == sorted(expected)
    assert ours == list(FasterRCNNFPN(num_classes=91, config=FasterRCNNConfig(variant="fpn")).state_dict())


def test_rpn_only_eval_gives_proposals_in_input_pixels():
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=3, config=tiny_config("fpn", rpn_only=True)).eval()
    images, _ = _batch()
    captured = {}
    hook = model.rpn.register_forward_hook(lambda module, args, out: captured.update(proposals=out[0],
                                                                                     sizes=args[0].image_sizes))
    with torch.no_grad():
        outputs = model(images)
    hook.remove()
    for out, proposals, size, image in zip(outputs, captured["proposals"], captured["sizes"], images):
        # resized frame -> the image's own pixels: x by W / w, y by H / h
        scale = torch.tensor([image.shape[-1] / size[1], image.shape[-2] / size[0]] * 2)
        torch.testing.assert_close(out["boxes"], proposals["boxes"] * scale)
        assert out["boxes"][:, 2].max() > size[1]  # beyond the resized frame: really in input pixels
        torch.testing.assert_close(out["scores"], proposals["scores"])
        assert torch.all((out["scores"] >= 0) & (out["scores"] <= 1))


def test_unknown_variant_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="c4, c5, fpn, no_top_down, no_lateral, p2_only; got 'fpn2'"):
        FasterRCNNConfig(variant="fpn2")
    cfg = FasterRCNNConfig()
    cfg.variant = "C4"  # set after construction, as the command-line flags do
    with pytest.raises(ValueError, match="got 'C4'"):
        FasterRCNNFPN(num_classes=3, config=cfg)
    with pytest.raises(ValueError, match="variant"):
        FasterRCNNConfig.from_dict({**FasterRCNNConfig().to_dict(), "variant": "p3_only"})


def test_variant_and_rpn_only_have_command_line_flags():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, FasterRCNNConfig())
    help_text = parser.format_help()
    assert "--variant" in help_text and "--rpn-only" in help_text and "no_top_down" in help_text
    config = apply_config_flags(FasterRCNNConfig(), parser.parse_args(["--variant", "p2_only", "--rpn-only", "true"]))
    assert config.variant == "p2_only" and config.rpn_only is True


@pytest.mark.parametrize("variant, factor", [("fpn", 1), ("c4", 5), ("c5", 5), ("p2_only", 5)])
def test_a_one_map_rpn_keeps_as_many_candidates_before_nms_as_the_pyramid(variant, factor):
    config = FasterRCNNConfig()
    config.variant = variant
    model = FasterRCNNFPN(num_classes=3, config=config)
    assert model.rpn.cfg.pre_nms_top_n_test == 1000 * factor and model.rpn.cfg.pre_nms_top_n_train == 2000 * factor
    assert model.config.rpn.pre_nms_top_n_test == 1000  # the config itself is unchanged
