"""Same weights -> same detections and the same training losses as torchvision's fasterrcnn_resnet50_fpn_v2
(Li et al., 2021: BatchNorm after the FPN's convs, two RPN convs, the 4conv1fc box head with BatchNorm).

The house technique of tests/test_model_parity.py: torchvision's builder without any download, seeded random
weights (`_randomise`), then BatchNorm statistics measured on seeded images (`_calibrate_batch_norm`: every BN of the
trunk, the FPN and the box head normalises what it sees); ours converted from its state dict. Images at a shorter
side of 192 and 50 proposals per image keep the file fast on CPU (the box head's four 3x3 convs run on every RoI).
"""
import copy
import functools

import pytest
import torch
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn_v2
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.rpn import RPNHead as RPNHeadV2
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from fpn import FasterRCNNConfig, FasterRCNNFPN, FeatureSpec, load_detector
from fpn.heads.box_head import ConvFCHead, ConvNormReLU
from fpn.heads.rpn import RPNHead
from fpn.io.convert import convert_torchvision_state_dict, torchvision_v2_config
from fpn.necks import LastLevelMaxPool as FPNLastLevelMaxPool
from fpn.necks.fpn import FPN, ConvNorm
from tests.test_model_parity import _randomise
from tests.test_inference import assert_same_detections
from tests.test_model_parity_mobilenet import blob_images

MIN_SIZE, MAX_SIZE = 192, 320
PROPOSALS = 50  # per image, after the RPN's NMS (torchvision: 1000 at inference, 2000 in training)
TOP_N = {"rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": PROPOSALS,
         "rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": PROPOSALS}
BOX_TOL, SCORE_TOL = 1e-3, 1e-6  # float64; measured: 4.9e-5 px, 4.3e-8


@pytest.fixture(autouse=True)
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


def _targets():
    """Boxes in the images' own pixels (`images()` sizes): two objects, one object, each of its own class."""
    return [
        {"boxes": torch.tensor([[20.0, 30.0, 200.0, 180.0], [150.0, 100.0, 300.0, 230.0]]),
         "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[40.0, 30.0, 280.0, 240.0]]), "labels": torch.tensor([2])},
    ]


def images():
    # resized to 192 x 256 and 192 x 222: the padded batch (192 x 256) has a border, included in BN's batch statistics
    return blob_images([(240, 320), (260, 300)], seed=1)


def _calibrate_batch_norm(model: nn.Module) -> None:
    """Each BatchNorm's running statistics become the mean and variance of what it sees in one training forward
    on two seeded images (the box head's: on the sampled RoIs), so that eval mode normalises as a trained model
    does; the random affine terms are kept."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # the plain average over the calibration batch
    model.train()
    with torch.no_grad():
        model(blob_images([(256, 320), (288, 300)], seed=3), _targets())
    for norm in norms:
        norm.running_var.clamp_(min=0.01)  # no near-dead channel scaled up 100x, float noise with it
        norm.momentum = 0.1  # BatchNorm2d's default, as ours has
    model.eval()


@functools.lru_cache(maxsize=None)
def build_models():
    """torchvision's v2 detector with seeded random weights and measured BN statistics, and ours converted from
    its state dict, both in eval mode at (MIN_SIZE, MAX_SIZE) with PROPOSALS proposals per image."""
    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, min_size=MIN_SIZE, max_size=MAX_SIZE,
                                    **TOP_N)
    _randomise(tv)
    _calibrate_batch_norm(tv)
    return tv.eval(), as_test_model(FasterRCNNFPN.from_torchvision(tv.state_dict())).eval()


def as_test_model(ours: nn.Module) -> nn.Module:
    """Ours at the test's sizes, as torchvision's model was built: (MIN_SIZE, MAX_SIZE), PROPOSALS per image."""
    cfg = ours.config
    cfg.input.min_size, cfg.input.max_size, cfg.input.train_min_sizes = MIN_SIZE, MAX_SIZE, (MIN_SIZE,)
    for mode in ("test", "train"):
        setattr(ours.rpn.cfg, f"pre_nms_top_n_{mode}", TOP_N[f"rpn_pre_nms_top_n_{mode}"])
        setattr(ours.rpn.cfg, f"post_nms_top_n_{mode}", PROPOSALS)
    return ours


def test_converted_state_dict_is_ours_key_for_key():
    tv, ours = build_models()
    converted = convert_torchvision_state_dict(tv.state_dict())
    assert list(converted) == list(ours.state_dict())  # same keys, same order
    for key, value in ours.state_dict().items():
        assert torch.equal(value, converted[key]), key
    # torchvision's Conv2dNormActivation children 0 / 1 are our conv / norm
    theirs = tv.state_dict()
    assert torch.equal(converted["neck.lateral_convs.2.norm.running_var"],
                       theirs["backbone.fpn.inner_blocks.2.1.running_var"])
    assert torch.equal(converted["rpn.head.conv.1.weight"], theirs["rpn.head.conv.1.0.weight"])
    assert torch.equal(converted["roi_heads.box_head.convs.3.conv.weight"], theirs["roi_heads.box_head.3.0.weight"])
    assert torch.equal(converted["roi_heads.box_head.fc.weight"], theirs["roi_heads.box_head.5.weight"])


def test_the_v2_layout():
    """What from_torchvision builds from a v2 file: as torchvision's builder does with weights, BatchNorm2d (not
    frozen) in the trunk with its stem and C2 frozen; BatchNorm after every FPN conv; two RPN convs; 4conv1fc."""
    _, ours = build_models()
    cfg = ours.config
    assert (cfg.backbone.norm, cfg.backbone.trainable_stages, cfg.fpn.norm, cfg.rpn.conv_depth,
            cfg.roi_heads.box_head) == ("bn", 3, "bn", 2, "4conv1fc")
    assert isinstance(ours.backbone.bn1, nn.BatchNorm2d) and not ours.backbone.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in ours.backbone.layer1.parameters())
    assert all(p.requires_grad for p in ours.backbone.layer2.parameters())
    assert all(isinstance(m, ConvNorm) for m in [*ours.neck.lateral_convs, *ours.neck.output_convs])
    assert ours.neck.lateral_convs[0].conv.bias is None
    assert isinstance(ours.rpn.head.conv, nn.ModuleList) and len(ours.rpn.head.conv) == 2
    head = ours.roi_heads.box_head
    assert isinstance(head, ConvFCHead) and head.out_features == 1024 and len(head.convs) == 4
    assert all(isinstance(block, ConvNormReLU) for block in head.convs)
    assert (head.fc.in_features, ours.roi_heads.predictor.cls_score.in_features) == (256 * 7 * 7, 1024)
    v2 = torchvision_v2_config().resolved().to_dict()  # the test changed only the input sizes and proposal counts
    assert all(cfg.to_dict()[section] == v2[section] for section in ("backbone", "fpn", "anchors", "roi_heads"))


def test_same_detections():
    """float64: the same detections in the same order, boxes within BOX_TOL px, scores within SCORE_TOL (not
    closer: our RPN's anchors and box decoding run in float32 at any precision)."""
    tv, ours = build_models()
    tv, ours = copy.deepcopy(tv).double(), copy.deepcopy(ours).double()
    batch = [image.double() for image in images()]
    with torch.no_grad():
        expected, got = tv(batch), ours(batch)
    for theirs, mine in zip(expected, got):
        assert len(theirs["boxes"]) > 20  # the biased class logits make real detections
        assert torch.equal(mine["labels"], theirs["labels"])
        torch.testing.assert_close(mine["boxes"].double(), theirs["boxes"], rtol=0, atol=BOX_TOL)  # ours: float32
        torch.testing.assert_close(mine["scores"].double(), theirs["scores"], rtol=0, atol=SCORE_TOL)


def test_same_losses_in_training():
    """Training mode, every BatchNorm on batch statistics in both (torchvision's v2 trunk has BatchNorm2d, its
    frozen stem and C2 included). The samplers draw other random numbers than torchvision's
    (fpn/ops/sampler.py), so both take every anchor and every RoI: then the sampled sets are the same.

    float64, so that every loss, the small RPN box loss (1.6e-4) too, is compared relative to its value: measured
    6.4e-7 at most, on the Fast R-CNN box loss (ours computes its losses in float32); in float32, 1.5e-6."""
    tv, ours = build_models()
    tv, ours = copy.deepcopy(tv).double().train(), copy.deepcopy(ours).double().train()
    for sampler in (tv.rpn.fg_bg_sampler, tv.roi_heads.fg_bg_sampler, ours.rpn.sampler, ours.roi_heads.sampler):
        sampler.batch_size_per_image, sampler.positive_fraction = 10**6, 1.0
    batch = [image.double() for image in images()]
    targets = [{"boxes": t["boxes"].double(), "labels": t["labels"]} for t in _targets()]
    torch.manual_seed(0)
    expected = tv(batch, [dict(t) for t in targets])
    torch.manual_seed(0)
    got = ours(batch, [dict(t) for t in targets])
    assert set(got) == set(expected) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    for name in expected:
        assert abs(got[name].item() - expected[name].item()) <= 1e-5 * abs(expected[name].item()), name
    assert expected["loss_box_reg"].item() > 0  # the targets made foreground RoIs
    # BatchNorm's running statistics moved the same way (momentum 0.1), in the trunk, the FPN and the box head;
    # measured: 2e-12 in the trunk and FPN, 2e-8 in the box head (our RoIs come from float32 box decoding)
    theirs = convert_torchvision_state_dict(tv.state_dict())
    for key, value in ours.state_dict().items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            torch.testing.assert_close(value, theirs[key], rtol=0, atol=1e-7, msg=key)


def test_optimize_for_inference_folds_every_norm():
    """53 BatchNorms of the trunk, 8 of the FPN, 4 of the box head folded: the same detections in float32, in the
    same order, boxes within 1e-3 px and scores within 1e-5 (tests/test_inference.py; measured 3.3e-4 px, 1.4e-6)."""
    _, ours = build_models()
    fast = ours.optimize_for_inference()
    assert fast.folded_norms == 53 + 8 + 4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    batch = images()
    with torch.no_grad():
        expected, got = ours(batch), fast(batch)
    assert all(len(detections["boxes"]) > 20 for detections in expected)
    assert_same_detections(expected, got)


def test_load_detector_reads_a_v2_file(tmp_path):
    tv, ours = build_models()
    path = tmp_path / "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth"
    torch.save(tv.state_dict(), path)
    model, class_names = load_detector(path)
    assert not model.training and model.config.roi_heads.box_head == "4conv1fc" and len(class_names) == 91
    loaded, expected = model.state_dict(), ours.state_dict()
    assert list(loaded) == list(expected) and all(torch.equal(loaded[k], expected[k]) for k in expected)
    # a checkpoint of ours holding the v2 model rebuilds it from its config
    ours_path = tmp_path / "checkpoint.pth"
    torch.save({"model": expected, "config": ours.config.to_dict(), "num_classes": 91, "iteration": 0}, ours_path)
    rebuilt, _ = load_detector(ours_path)
    assert rebuilt.config.to_dict() == ours.config.to_dict()
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in expected.items())


def test_seeded_parts_draw_torchvisions_initial_weights():
    """Built after the same seed, the v2 FPN, RPN head and box head hold torchvision's initial weights (its
    initialisation, in its order), key for key in the converter's order."""
    pairs = [
        (lambda: FeaturePyramidNetwork([256, 512, 1024, 2048], 256, LastLevelMaxPool(), norm_layer=nn.BatchNorm2d),
         lambda: FPN({f"c{i + 2}": FeatureSpec(c, 4 * 2**i) for i, c in enumerate([256, 512, 1024, 2048])}, 256,
                     norm="bn", extra_levels=FPNLastLevelMaxPool())),
        (lambda: RPNHeadV2(256, 3, conv_depth=2), lambda: RPNHead(256, 3, conv_depth=2)),
        (lambda: FastRCNNConvFCHead((256, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d),
         lambda: ConvFCHead(256, 7, 1024)),
    ]
    for build_theirs, build_ours in pairs:
        torch.manual_seed(0)
        theirs = build_theirs().state_dict()
        torch.manual_seed(0)
        mine = build_ours().state_dict()
        assert len(mine) == len(theirs)
        for (key, value), expected in zip(mine.items(), theirs.values()):
            assert torch.equal(value, expected), key


def _tiny(**changes) -> FasterRCNNConfig:
    cfg = FasterRCNNConfig()
    cfg.backbone.depth, cfg.backbone.width = 18, 8
    cfg.fpn.out_channels, cfg.roi_heads.representation_size = 16, 32
    for path, value in changes.items():
        section, name = path.split("__")
        setattr(getattr(cfg, section) if section else cfg, name, value)
    return cfg


def test_v1_defaults_build_the_v1_modules():
    model = FasterRCNNFPN(num_classes=3, config=_tiny())
    assert isinstance(model.neck.lateral_convs[0], nn.Conv2d) and model.neck.lateral_convs[0].bias is not None
    assert isinstance(model.rpn.head.conv, nn.Conv2d)
    assert hasattr(model.roi_heads.box_head, "fc6")


@pytest.mark.parametrize("changes, message", [
    ({"roi_heads__box_head": "4conv"}, "config.roi_heads.box_head must be one of 2fc, 4conv1fc; got '4conv'"),
    ({"fpn__norm": "gn"}, "config.fpn.norm\\) must be one of none, bn; got 'gn'"),
    ({"rpn__conv_depth": 0}, "config.rpn.conv_depth\\) must be >= 1, got 0"),
    ({"fpn__norm": "bn", "__variant": "no_lateral"}, "config.fpn.norm 'bn' needs config.variant 'fpn'"),
    ({"roi_heads__box_head": "4conv1fc", "__variant": "c4"}, "variant 'c4' uses the trunk's conv5 stage"),
])
def test_bad_v2_settings_are_value_errors_naming_them(changes, message):
    with pytest.raises(ValueError, match=message):
        FasterRCNNFPN(num_classes=3, config=_tiny(**changes))
