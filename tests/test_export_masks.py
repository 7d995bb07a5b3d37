"""Mask R-CNN exported (fpn/deploy/export.py): the torch.export program and the ONNX model (onnxruntime) return
`masks` (D, 1, H, W) pasted into the input image beside boxes, scores and labels, as the eager model does."""
from pathlib import Path

import pytest
import torch

from fpn import MaskRCNNFPN
from fpn.deploy.export import export_onnx, export_program, output_names, run_onnx
from test_mask_rcnn import tiny_config

MASK_TOL = 1e-5  # onnxruntime against eager, mean absolute difference per detection (measured 1.8e-8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = tiny_config()
    config.roi_heads.score_thresh = 0.05
    # every pyramid level at least 2 x 2 after resizing (the .pt2 program's limit, fpn/deploy/export.py)
    config.input.min_size, config.input.max_size = 128, 192
    model = MaskRCNNFPN(3, config).eval()
    with torch.no_grad():  # an untrained model's scores sit at 1/3: lift class 1 so that some pass and some not
        model.roi_heads.predictor.cls_score.bias.copy_(torch.tensor([0.0, 3.0, -3.0]))
    return model


def _images():
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, 90, 120, generator=g), torch.rand(3, 130, 70, generator=g)]


def _eager(model, image):
    with torch.no_grad():
        return model([image])[0]


def test_the_program_returns_the_eager_masks_for_any_image_size(model):
    assert output_names(model) == ("boxes", "scores", "labels", "masks")
    program = export_program(model).module()
    for image in _images():
        expected = _eager(model, image)
        with torch.no_grad():
            boxes, scores, labels, masks = program(image)
        assert expected["boxes"].shape[0] > 0
        assert torch.equal(boxes, expected["boxes"]) and torch.equal(labels, expected["labels"])
        assert torch.equal(scores, expected["scores"])
        assert masks.shape == (boxes.shape[0], 1, *image.shape[1:]) and torch.equal(masks, expected["masks"])


def test_onnxruntime_gives_the_eager_masks(model, tmp_path):
    path = tmp_path / "mask_rcnn.onnx"
    export_onnx(model, Path(path))
    for image in _images():
        expected = _eager(model, image)
        boxes, scores, labels, masks = run_onnx(path, image)
        assert torch.equal(labels, expected["labels"])
        assert torch.allclose(boxes, expected["boxes"], atol=1e-3) and torch.allclose(scores, expected["scores"],
                                                                                        atol=1e-5)
        assert masks.shape == expected["masks"].shape
        assert (masks - expected["masks"]).abs().mean(dim=(1, 2, 3)).max() < MASK_TOL
