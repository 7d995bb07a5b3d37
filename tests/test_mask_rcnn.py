"""MaskRCNNFPN: the mask branch on the box branch's pyramid levels (He et al., 2017). Training returns Faster
R-CNN's losses plus `loss_mask`, every parameter of the branch gets a gradient; inference returns masks pasted into
each input image; targets without fitting masks are a ValueError naming them. Parity with torchvision's
maskrcnn_resnet50_fpn: tests/test_mask_rcnn_parity.py."""
import pytest
import torch

from fpn import MaskRCNNConfig, MaskRCNNFPN
from fpn.detectors.build import arch_of, build_detector, convert_config
from fpn.engine.presets import cpu_demo


def tiny_config() -> MaskRCNNConfig:
    config = MaskRCNNConfig()
    config.backbone.depth, config.backbone.width, config.backbone.norm, config.backbone.gn_groups = 18, 16, "gn", 8
    config.fpn.out_channels = config.mask.conv_channels = 32
    config.input.min_size, config.input.max_size, config.input.train_min_sizes = 64, 96, (64,)
    config.roi_heads.score_thresh = 0.0  # an untrained model's detections
    return config


def ellipse(height: int, width: int, box) -> torch.Tensor:
    """uint8 (height, width): 1 inside the ellipse inscribed in the box (x1, y1, x2, y2), pixel centres."""
    x1, y1, x2, y2 = box
    yy, xx = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    return ((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) <= 1).to(torch.uint8)


def data():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 72, 64, generator=g)]
    boxes = [[[8.0, 10.0, 40.0, 50.0], [44.0, 4.0, 76.0, 30.0]], [[5.0, 5.0, 50.0, 60.0]]]
    targets = [
        {"boxes": torch.tensor(b), "labels": torch.tensor(labels),
         "masks": torch.stack([ellipse(image.shape[1], image.shape[2], box) for box in b])}
        for image, b, labels in zip(images, boxes, [[1, 2], [2]])
    ]
    return images, targets


def test_training_returns_five_losses_and_the_mask_branch_learns():
    torch.manual_seed(0)
    model = MaskRCNNFPN(3, tiny_config())
    images, targets = data()
    losses = model(images, targets)
    assert list(losses) == ["loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"]
    assert all(torch.isfinite(value) for value in losses.values())
    assert losses["loss_mask"] > 0.1  # BCE of untrained logits against real 0/1 targets
    sum(losses.values()).backward()
    for name, parameter in model.mask_branch.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_no_objects_gives_a_zero_mask_loss_attached_to_the_graph():
    torch.manual_seed(0)
    model = MaskRCNNFPN(3, tiny_config())
    images = [torch.rand(3, 64, 80)]
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 64, 80, dtype=torch.uint8)}]
    losses = model(images, targets)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_mask"].requires_grad


def test_eval_returns_masks_pasted_into_each_input_image():
    torch.manual_seed(0)
    model = MaskRCNNFPN(3, tiny_config()).eval()
    images, _ = data()
    with torch.no_grad():
        detections = model(images)
    for image, detection in zip(images, detections):
        count = detection["boxes"].shape[0]
        assert count > 0 and set(detection) == {"boxes", "scores", "labels", "masks"}
        assert detection["masks"].shape == (count, 1, *image.shape[1:]) and detection["masks"].dtype == torch.float32
        assert 0.0 <= detection["masks"].min() and detection["masks"].max() <= 1.0
        # a mask lies inside its (slightly grown) box: nothing far outside it
        x1, y1, x2, y2 = detection["boxes"][0].tolist()
        mask = detection["masks"][0, 0]
        assert mask[:, : max(int(x1) - 2, 0)].abs().sum() == 0 and mask[: max(int(y1) - 2, 0)].abs().sum() == 0


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("masks"), "has no 'masks'"),
    (lambda t: t.update(masks=t["masks"][:1]), r"targets\[0\]\['masks'\] must have shape \(2, 64, 80\)"),
    (lambda t: t.update(masks=t["masks"][:, :32]), r"must have shape \(2, 64, 80\) .* got \(2, 32, 80\)"),
    (lambda t: t.update(masks=t["masks"].float()), "must be uint8 or bool"),
])
def test_targets_without_fitting_masks_are_named(change, message):
    model = MaskRCNNFPN(3, tiny_config())
    images, targets = data()
    change(targets[0])
    with pytest.raises(ValueError, match=message):
        model(images, targets)


def test_bool_masks_train_like_uint8():
    images, targets = data()
    losses = []
    for dtype in (torch.uint8, torch.bool):
        torch.manual_seed(0)
        model = MaskRCNNFPN(3, tiny_config())
        torch.manual_seed(1)
        losses.append(model(images, [dict(t, masks=t["masks"].to(dtype)) for t in targets])["loss_mask"])
    assert torch.equal(losses[0], losses[1])


def test_the_architecture_by_name_and_from_a_preset():
    config = convert_config(cpu_demo().model, "mask_rcnn")
    assert isinstance(config, MaskRCNNConfig) and config.roi_heads == cpu_demo().model.roi_heads
    model = build_detector(3, config)
    assert isinstance(model, MaskRCNNFPN) and arch_of(model) == arch_of(config) == "mask_rcnn"
    assert arch_of(convert_config(config, "faster_rcnn")) == "faster_rcnn"
    with pytest.raises(ValueError, match="MaskRCNNConfig"):
        MaskRCNNFPN(3, cpu_demo().model)
    config.variant = "c4"
    with pytest.raises(ValueError, match="Mask R-CNN needs config.variant 'fpn'"):
        MaskRCNNFPN(3, config)


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_the_inference_copy_folds_the_mask_heads_batchnorm_and_keeps_the_masks(norm):
    torch.manual_seed(0)
    config = tiny_config()
    config.mask.norm = norm
    model = MaskRCNNFPN(3, config)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for module in model.mask_branch.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    model.eval()
    fast = model.optimize_for_inference()
    images, _ = data()
    with torch.no_grad():
        expected, got = model(images), fast(images)
    left = [m for m in fast.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert left == []  # every BatchNorm of the mask head folded into its conv
    for e, g in zip(expected, got):
        assert torch.equal(e["labels"], g["labels"]) and torch.allclose(e["boxes"], g["boxes"], atol=1e-3)
        assert (e["masks"] - g["masks"]).abs().max() < 1e-4


def test_predict_keeps_each_detections_mask_with_its_box():
    torch.manual_seed(0)
    model = MaskRCNNFPN(3, tiny_config())
    images, _ = data()
    everything = model.predict(images)
    threshold = everything[0]["scores"].median().item()  # keeps about half
    kept = model.predict(images, score_threshold=threshold)
    for all_of_them, some in zip(everything, kept):
        count = int((all_of_them["scores"] >= threshold).sum())
        assert some["masks"].shape[0] == some["boxes"].shape[0] == count
        assert torch.equal(some["masks"], all_of_them["masks"][:count])
    assert 0 < kept[0]["boxes"].shape[0] < everything[0]["boxes"].shape[0]


def test_bf16_autocast_trains_and_detects_with_float32_mask_targets():
    """Under bf16 autocast the mask targets stay float32 (their products would otherwise run in bf16) and the mask
    loss is within bf16's rounding of the float32 one."""
    images, targets = data()
    losses = []
    for autocast in (False, True):
        torch.manual_seed(0)
        model = MaskRCNNFPN(3, tiny_config())
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses.append(model(images, targets))
    assert all(value.dtype == torch.float32 and torch.isfinite(value) for value in losses[1].values())
    assert abs(losses[1]["loss_mask"].item() - losses[0]["loss_mask"].item()) < 0.05 * losses[0]["loss_mask"].item()
    sum(losses[1].values()).backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    assert all(d["masks"].dtype == torch.float32 and torch.isfinite(d["masks"]).all() for d in out)
