"""FCOSFPN (fpn/detectors/fcos.py) and its head (fpn/heads/fcos_head.py) beyond the end-to-end parity of
tests/test_fcos_parity.py: its config, its layout and initialisation, its state-dict keys, the head as a stage of
its own, a training step, the batched post-processing and the losses' gradients against torchvision's own
functions, inputs without detections or boxes, the input errors, and `from_torchvision`.

Tiny models (ResNet-18 of width 16, 32 pyramid channels, GroupNorm of 8 groups, 64 px images) keep it fast.
"""
import inspect
import math
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torchvision.models.detection.fcos import FCOS, FCOSHead as TorchvisionFCOSHead

from fpn import FCOSConfig, FCOSFPN, FCOSHeadConfig
from fpn.heads.fcos_targets import fcos_losses
from fpn.ops.anchors import AnchorGenerator

TV_STRIDES = (8, 16, 32, 64, 128)


def tiny_config(**head) -> FCOSConfig:
    config = FCOSConfig(head=FCOSHeadConfig(**{"gn_groups": 8, **head}))
    config.backbone.depth, config.backbone.width = 18, 16
    config.fpn.out_channels = 32
    config.input.min_size, config.input.max_size, config.input.train_min_sizes = 64, 96, (64,)
    return config


def _fcos_anchors(image_size, shapes, dtype=torch.float32):
    """(L, 4) the locations' reference boxes of P3..P7 (side = stride), as FCOSFPN and torchvision place them."""
    generator = AnchorGenerator(tuple((s,) for s in TV_STRIDES), ((1.0,),) * 5)
    return generator.anchors_for(image_size, shapes, torch.device("cpu"), dtype)


def test_config_defaults_are_torchvisions_and_round_trip():
    defaults = {name: p.default for name, p in inspect.signature(FCOS.__init__).parameters.items()}
    head = FCOSHeadConfig()
    for name in ("center_sampling_radius", "score_thresh", "nms_thresh", "detections_per_img", "topk_candidates"):
        assert getattr(head, name) == defaults[name], name
    assert (head.num_convs, head.gn_groups, head.prior_probability) == (4, 32, 0.01)
    assert (head.focal_alpha, head.focal_gamma) == (0.25, 2.0)

    config = tiny_config(score_thresh=0.3, topk_candidates=50, center_sampling_radius=2.0)
    config.channels_last = False
    rebuilt = FCOSConfig.from_dict(config.to_dict())
    assert rebuilt == config and isinstance(rebuilt.head, FCOSHeadConfig)
    assert rebuilt.input.train_min_sizes == (64,)  # tuples come back as tuples
    model = FCOSFPN(3, config)
    assert model.num_classes == 3 and model.config is not config
    assert (model.config.backbone.norm, model.config.backbone.trainable_stages) == ("bn", 5)  # resolved
    assert config.backbone.norm is None  # the caller's config is untouched
    assert FCOSConfig.from_dict(model.config.to_dict()) == model.config
    with pytest.raises(ValueError, match=r"config\.head: unknown keys \['anchor_sizes'\]"):
        FCOSConfig.from_dict({**config.to_dict(), "head": {"anchor_sizes": 3}})


def test_layout_and_initialisation():
    torch.manual_seed(0)
    model = FCOSFPN(4, tiny_config())
    specs = model.neck.out_specs
    assert list(specs) == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in specs.values()] == list(TV_STRIDES)
    assert {s.channels for s in specs.values()} == {32}
    cls_head, reg_head = model.head.classification_head, model.head.regression_head
    for tower in (cls_head.conv, reg_head.conv):
        kinds = [type(layer).__name__ for layer in tower]
        assert kinds == ["Conv2d", "GroupNorm", "ReLU"] * 4
        assert tower[1].num_groups == 8
    assert cls_head.cls_logits.out_channels == 4  # one logit per class, background included, as torchvision
    assert torch.allclose(cls_head.cls_logits.bias, torch.full((4,), -math.log(99)))  # prior 0.01
    convs = [layer for layer in (*cls_head.conv, cls_head.cls_logits, *reg_head.conv, reg_head.bbox_reg,
                                 reg_head.bbox_ctrness) if isinstance(layer, torch.nn.Conv2d)]
    for conv in convs:
        assert 0.008 < conv.weight.std().item() < 0.012
    for conv in convs:
        if conv is not cls_head.cls_logits:
            assert conv.bias.abs().max() == 0, conv


def test_state_dict_keys_are_torchvisions_renamed():
    """Exactly the keys of torchvision's fcos_resnet50_fpn renamed (what from_torchvision and checkpoints load)."""
    from fpn.io.convert import convert_torchvision_fcos_state_dict

    theirs = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    expected = list(convert_torchvision_fcos_state_dict(theirs.state_dict()))
    ours = [key for key in FCOSFPN(91).state_dict() if not key.endswith(".num_batches_tracked")]
    assert sorted(ours) == sorted(expected)


def test_the_head_is_a_stage_of_its_own():
    """`model.head(batch, features, targets)` gives the detector's losses and detections from the pyramid: the
    detector itself is transform -> backbone -> FPN -> head."""
    from fpn.detectors.transform import preprocess

    torch.manual_seed(0)
    model = FCOSFPN(3, tiny_config())
    with torch.no_grad():
        model.head.classification_head.cls_logits.bias.zero_()  # probability 0.5: detections to compare
    images = [torch.rand(3, 64, 80), torch.rand(3, 70, 64)]
    batch, targets = preprocess(images, _targets(), model.config.input, False)
    with torch.no_grad():
        features = model.eval().features(batch)
        detections, losses = model.head(batch, features)
        assert losses == {} and len(detections) == 2 and detections[0]["boxes"].shape[0] > 0
        for mine, whole in zip(detections, model.forward_batch(batch)):
            for name in ("boxes", "scores", "labels"):
                assert torch.equal(mine[name], whole[name]), name
        model.train()  # trainable BatchNorm: the training-mode pyramid differs
        features = model.features(batch)
        detections, losses = model.head(batch, features, targets)
        assert detections == [] and set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
        whole = model.forward_batch(batch, targets)
        assert all(torch.equal(losses[name], whole[name]) for name in losses)
        with pytest.raises(ValueError, match="targets are required in training mode"):
            model.head(batch, features)


def _targets():
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 60.0, 30.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without boxes
    ]


def test_one_training_step_gives_finite_losses_and_gradients():
    torch.manual_seed(0)
    model = FCOSFPN(3, tiny_config()).train()
    images = [torch.rand(3, 64, 80), torch.rand(3, 70, 64)]
    losses = model(images, _targets())
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value) and value > 0, name
    total = sum(losses.values())
    total.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    for part in (model.head.classification_head.cls_logits, model.head.regression_head.bbox_reg,
                 model.head.regression_head.bbox_ctrness, *model.neck.extra_convs):
        assert part.weight.grad.abs().sum() > 0  # P6 / P7 and every output of the head learn
    before = model.head.regression_head.bbox_reg.weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    assert not torch.equal(model.head.regression_head.bbox_reg.weight, before)


def test_a_batch_of_images_without_boxes_trains_the_classifier_alone():
    torch.manual_seed(0)
    model = FCOSFPN(3, tiny_config()).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([torch.rand(3, 64, 64)] * 2, [dict(empty), dict(empty)])
    assert losses["bbox_regression"].item() == 0 and losses["bbox_ctrness"].item() == 0
    assert losses["classification"] > 0  # every location is a negative, divided by max(1, 0)


def test_eval_without_detections_returns_empty_tensors():
    torch.manual_seed(0)
    model = FCOSFPN(3, tiny_config()).eval()  # random weights: sqrt(0.01 x 0.5) = 0.07 < 0.2 everywhere
    with torch.no_grad():
        detections = model([torch.rand(3, 64, 80), torch.rand(3, 50, 40)])
    assert len(detections) == 2
    for d in detections:
        assert d["boxes"].shape == (0, 4) and d["scores"].shape == (0,) and d["labels"].shape == (0,)
        assert d["boxes"].dtype == torch.float32 and d["labels"].dtype == torch.int64


def test_batched_detect_is_torchvisions_per_image_postprocessing():
    """`FCOSHead.detect` on the whole batch against torchvision's `postprocess_detections` image by image, with a
    small top-k so that it cuts (P3, P4), a per-image cap that cuts, an image with no candidate at all, and boxes
    that need clipping. On these inputs NMS at 0.5 would keep fewer than the cap: the threshold matters. Class 0
    scores low everywhere: torchvision would return it as a label, `detect` never does
    (`test_detect_never_returns_the_background`)."""
    torch.manual_seed(0)
    model = FCOSFPN(5, tiny_config(topk_candidates=30, detections_per_img=64))
    shapes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    anchors = _fcos_anchors((64, 96), shapes)  # (L, 4)
    counts = [h * w for h, w in shapes]
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, anchors.shape[0], 4, generator=generator) * 3  # (N, L, 4): the real classes 1..4
    logits[1] = -10.0  # nothing above the threshold
    # the background: never above the threshold, so that torchvision does not return it either
    logits = torch.cat([torch.full_like(logits[..., :1], -10.0), logits], dim=-1)  # (N, L, C = 5)
    distances = torch.rand(3, anchors.shape[0], 4, generator=generator) * 3  # (N, L, 4), up to 3 strides
    centerness = torch.randn(3, anchors.shape[0], generator=generator)  # (N, L)
    image_sizes = [(60, 90), (64, 96), (40, 96)]
    found = model.head.detect(logits, distances, centerness, anchors, counts, image_sizes)

    head = model.config.head
    reference = SimpleNamespace(score_thresh=head.score_thresh, topk_candidates=head.topk_candidates,
                                nms_thresh=head.nms_thresh, detections_per_img=head.detections_per_img,
                                box_coder=torchvision.models.detection._utils.BoxLinearCoder(normalize_by_size=True))
    outputs = {"cls_logits": list(logits.split(counts, 1)), "bbox_regression": list(distances.split(counts, 1)),
               "bbox_ctrness": list(centerness[..., None].split(counts, 1))}
    expected = FCOS.postprocess_detections(reference, outputs, [list(anchors.split(counts))] * 3, image_sizes)
    assert found[1]["boxes"].shape == (0, 4)
    assert found[0]["boxes"].shape[0] == found[2]["boxes"].shape[0] == 64  # the per-image cap
    for e, f in zip(expected, found):
        assert torch.equal(f["labels"], e["labels"])
        assert torch.equal(f["scores"], e["scores"])
        assert torch.allclose(f["boxes"], e["boxes"], rtol=0, atol=1e-5)
    assert found[2]["boxes"][:, 3].max() <= 40  # clipped to the image's own size


def test_detect_never_returns_the_background():
    """Class 0 scoring above every real class (an untrained model can): no label 0 comes out, and the real classes'
    detections are exactly those of the same logits with class 0 at -inf, also where the top k cuts (30 of a
    level's 96 x 4 candidates, which class 0 alone would fill): class 0 takes no candidate's place."""
    torch.manual_seed(0)
    model = FCOSFPN(4, tiny_config(topk_candidates=30, detections_per_img=64))
    shapes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    anchors = _fcos_anchors((64, 96), shapes)  # (L, 4)
    counts = [h * w for h, w in shapes]
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, anchors.shape[0], 4, generator=generator) * 3  # (N, L, C)
    distances = torch.rand(2, anchors.shape[0], 4, generator=generator) * 3  # (N, L, 4)
    centerness = torch.randn(2, anchors.shape[0], generator=generator)  # (N, L)
    favoured, hidden = logits.clone(), logits.clone()
    favoured[..., 0] = 20.0  # sigmoid = 1: above every real class at every location
    hidden[..., 0] = -float("inf")
    sizes = [(64, 96), (50, 80)]
    found = model.head.detect(favoured, distances, centerness, anchors, counts, sizes)
    expected = model.head.detect(hidden, distances, centerness, anchors, counts, sizes)
    for e, f in zip(expected, found):
        assert f["labels"].shape[0] > 30 and (f["labels"] > 0).all()
        for name in ("boxes", "scores", "labels"):
            assert torch.equal(f[name], e[name]), name
    # a model with only the background class beside one real class, the background everywhere first
    model = FCOSFPN(2, tiny_config())
    two = torch.stack([torch.full_like(logits[..., 0], 20.0), logits[..., 1]], dim=-1)  # (N, L, 2)
    found = model.head.detect(two, distances, centerness, anchors, counts, sizes)
    assert all(f["labels"].numel() > 0 and (f["labels"] == 1).all() for f in found)


def test_losses_and_their_gradients_are_torchvisions():
    """`fcos_losses` against torchvision's FCOS.compute_loss (assignment + head loss) on the same head outputs, in
    float64: the same three values and the same gradients for the logits, distances and centerness."""
    shapes = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]  # a 256 x 320 padded batch
    anchors = _fcos_anchors((256, 320), shapes, torch.float64)
    counts = [h * w for h, w in shapes]
    generator = torch.Generator().manual_seed(5)
    num_classes, size = 3, (3, anchors.shape[0])
    logits = (torch.randn(*size, num_classes, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    distances = (torch.rand(*size, 4, generator=generator, dtype=torch.float64) * 4).requires_grad_()
    centerness = torch.randn(*size, generator=generator, dtype=torch.float64).requires_grad_()
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0], [20.0, 30.0, 200.0, 250.0], [0.0, 0.0, 310.0, 256.0],
                                [100.0, 100.0, 120.0, 118.0]], dtype=torch.float64),
         "labels": torch.tensor([1, 2, 0, 2])},
        {"boxes": torch.zeros(0, 4, dtype=torch.float64), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[150.0, 60.0, 300.0, 90.0]], dtype=torch.float64), "labels": torch.tensor([1])},
    ]
    found = fcos_losses(logits, distances, centerness, anchors, targets, counts)
    reference = SimpleNamespace(center_sampling_radius=1.5, head=TorchvisionFCOSHead(8, 1, num_classes, num_convs=0))
    outputs = {"cls_logits": logits, "bbox_regression": distances, "bbox_ctrness": centerness[..., None]}
    expected = FCOS.compute_loss(reference, targets, outputs, [anchors] * 3, counts)
    assert set(found) == set(expected)
    for name in expected:
        assert torch.allclose(found[name], expected[name], rtol=1e-12, atol=0), name
        grads = [torch.autograd.grad(result[name], (logits, distances, centerness), allow_unused=True)
                 for result in (found, expected)]
        for mine, theirs in zip(*grads):
            if theirs is None:
                assert mine is None or mine.abs().max() == 0, name
            else:
                assert torch.allclose(mine, theirs, rtol=1e-9, atol=1e-15), name
    assert expected["bbox_regression"] > 0 and expected["bbox_ctrness"] > 0  # the boxes made positives


@pytest.mark.parametrize("call, message", [
    (lambda m: m([torch.rand(3, 32, 32)]), r"targets are required in training mode"),
    (lambda m: m(torch.rand(1, 3, 32, 32), [{}]), r"images must be a list of \(3, H, W\) tensors"),
    (lambda m: m([torch.rand(1, 32, 32)], _targets()[:1]), r"images\[0\] must have shape \(3, H, W\)"),
    (lambda m: m([torch.rand(3, 32, 32)], [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]),
                                            "labels": torch.tensor([3])}]), r"labels"),
    (lambda m: m([torch.rand(3, 32, 32)], [{"boxes": torch.tensor([[5.0, 1.0, 5.0, 9.0]]),
                                            "labels": torch.tensor([1])}]), r"boxes"),
    (lambda m: m([torch.rand(3, 32, 32)] * 2, _targets()[:1]), r"one dict per image: 2 images, got 1"),
])
def test_bad_inputs_are_value_errors(call, message):
    model = FCOSFPN(3, tiny_config()).train()
    with pytest.raises(ValueError, match=message):
        call(model)


def test_bad_construction_is_a_value_error():
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        FCOSFPN(1, tiny_config())
    with pytest.raises(ValueError, match="GroupNorm groups 12 must divide the 32 pyramid channels"):
        FCOSFPN(3, tiny_config(gn_groups=12))


def test_from_torchvision_reads_the_classes_and_can_fine_tune(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5)
    state = reference.state_dict()
    path = tmp_path / "fcos.pth"
    torch.save({"model": state}, path)  # as torchvision's reference scripts save it
    model = FCOSFPN.from_torchvision(str(path))
    assert model.num_classes == 5
    assert (model.config.backbone.norm, model.config.backbone.trainable_stages) == ("frozen_bn", 3)
    ours = model.state_dict()
    assert torch.equal(ours["neck.extra_convs.1.weight"], state["backbone.fpn.extra_blocks.p7.weight"])
    assert torch.equal(ours["head.classification_head.cls_logits.weight"],
                       state["head.classification_head.cls_logits.weight"])
    tuned = FCOSFPN.from_torchvision(state, num_classes=3)
    assert tuned.head.classification_head.cls_logits.weight.shape[0] == 3
    assert torch.equal(tuned.state_dict()["head.regression_head.bbox_reg.weight"],
                       state["head.regression_head.bbox_reg.weight"])
    with pytest.raises(ValueError, match="not a torchvision fcos_resnet50_fpn checkpoint"):
        FCOSFPN.from_torchvision({"roi_heads.box_predictor.cls_score.weight": torch.zeros(2, 4)})
