"""Training-mode contract of FasterRCNNFPN: four finite losses, gradients everywhere, input errors."""
import math

import pytest
import torch
from PIL import Image

from fpn import FasterRCNNConfig, FasterRCNNFPN

LOSS_NAMES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


def tiny_config(depth: int = 18) -> FasterRCNNConfig:
    cfg = FasterRCNNConfig()
    cfg.backbone.depth, cfg.backbone.width = depth, 16
    cfg.backbone.norm, cfg.backbone.gn_groups, cfg.backbone.trainable_stages = "gn", 8, 5
    cfg.fpn.out_channels = 32
    cfg.roi_heads.representation_size = 64
    cfg.input.min_size, cfg.input.max_size, cfg.input.train_min_sizes = 96, 128, (96,)
    return cfg


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 90, 120, generator=g), torch.rand(3, 110, 85, generator=g)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 70.0], [70.0, 5.0, 115.0, 40.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[5.0, 5.0, 80.0, 100.0]]), "labels": torch.tensor([2])},
    ]
    return images, targets


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_every_depth_trains_and_every_trainable_parameter_gets_a_gradient(depth):
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=3, config=tiny_config(depth)).train()
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == LOSS_NAMES
    assert all(math.isfinite(v.item()) and v.item() >= 0 for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_image_without_boxes_is_legal_and_all_background():
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=3, config=tiny_config()).train()
    images, targets = _batch()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(images, targets)
    assert all(math.isfinite(v.item()) for v in losses.values())
    only_empty = model([images[1]], [targets[1]])
    # no foreground anywhere: no box regression loss, only "background" classification
    assert only_empty["loss_box_reg"].item() == 0.0 and only_empty["loss_rpn_box_reg"].item() == 0.0
    assert only_empty["loss_classifier"].item() > 0.0
    sum(only_empty.values()).backward()


def test_frozen_bn_config_freezes_stem_and_first_stage():
    cfg = tiny_config()
    cfg.backbone.norm, cfg.backbone.trainable_stages = "frozen_bn", 3  # the ImageNet fine-tuning set-up
    model = FasterRCNNFPN(num_classes=3, config=cfg)
    assert not model.backbone.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())


def test_eval_returns_detections_in_input_pixels():
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=3, config=tiny_config()).eval()
    images, _ = _batch()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, img in zip(out, images):
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].shape[1] == 4 and det["boxes"].shape[0] == det["scores"].shape[0] <= 100
        if det["boxes"].numel():
            assert det["boxes"][:, 2].max() <= img.shape[2] + 1e-3 and det["boxes"][:, 3].max() <= img.shape[1] + 1e-3
            assert torch.all(det["scores"][:-1] >= det["scores"][1:])


def test_predict_accepts_uint8_and_pil_and_restores_mode():
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=3, config=tiny_config()).train()
    image = (torch.rand(3, 64, 80) * 255).to(torch.uint8)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    a, b = model.predict([image, pil], score_threshold=0.0)
    torch.testing.assert_close(a["boxes"], b["boxes"])
    assert model.training
    with pytest.raises(ValueError, match="images\\[0\\]"):
        model.predict(["not an image"])


@pytest.mark.parametrize(
    "images, targets, message",
    [
        (torch.rand(1, 3, 64, 64), None, "list of \\(3, H, W\\) tensors"),
        ([torch.rand(1, 64, 64)], None, "images\\[0\\] must have shape \\(3, H, W\\)"),
        ([torch.rand(64, 64)], None, "images\\[0\\] must have shape"),
        ([(torch.rand(3, 64, 64) * 255).to(torch.uint8)], None, "dtype torch.uint8"),
        ([torch.rand(3, 64, 64)], None, "targets are required"),
        ([torch.rand(3, 64, 64)], [{"boxes": torch.rand(2, 5), "labels": torch.tensor([1, 1])}], "\\(N, 4\\)"),
        ([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([3])}], "label 3"),
        ([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([0])}], "label 0"),
        ([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[9.0, 1, 1, 9]]), "labels": torch.tensor([1])}], "positive width"),
        ([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([1, 2])}], "labels"),
        ([torch.rand(3, 64, 64)], [], "one dict per image"),
    ],
)
def test_bad_training_inputs_raise_clear_errors(images, targets, message):
    model = FasterRCNNFPN(num_classes=3, config=tiny_config()).train()
    with pytest.raises(ValueError, match=message):
        model(images, targets)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        FasterRCNNFPN(num_classes=1)
    cfg = tiny_config()
    cfg.anchors.sizes = (32, 64)
    with pytest.raises(ValueError, match="one anchor size per level"):
        FasterRCNNFPN(num_classes=3, config=cfg)


def test_bf16_autocast_trains_and_detects():
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=3, config=tiny_config()).train()
    images, targets = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert all(v.dtype == torch.float32 and math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    assert all(d["boxes"].dtype == torch.float32 and torch.isfinite(d["boxes"]).all() for d in out)
