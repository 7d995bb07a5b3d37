"""`python -m fpn.predict --tile SIZE --overlap F`: the detections are `model.predict(image, tile=SIZE, overlap=F)`'s,
with --fast too; a Mask R-CNN's segmentations are at the image's size; bad values are one line, exit code 2."""
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from fpn import MaskRCNNFPN, load_detector
from fpn.data.image_io import load_rgb_image, pil_to_tensor01
from fpn.deploy.predictions import RESULTS_FILE
from fpn.engine.checkpoint import save_checkpoint
from fpn.tools.predict import main
from test_mask_rcnn import tiny_config
from test_predict import CLASS_NAMES, LABEL_TO_CATEGORY, _write_image, tiny_model
from test_predict_errors import one_error_line


def _save(model, path):
    model.config.rpn.pre_nms_top_n_test = model.config.rpn.post_nms_top_n_test = 50  # fast: few RoIs per tile
    save_checkpoint(path, model=model, optimizer=None, scheduler=None, scaler=None, iteration=3,
                    label_to_category=LABEL_TO_CATEGORY, class_names=CLASS_NAMES)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """test_predict's tiny Faster R-CNN (every image has detections) as a checkpoint, 50 RoIs per image."""
    return _save(tiny_model(), tmp_path_factory.mktemp("weights") / "tiny.pt")


def _boxes_of(results, image_id):
    return torch.tensor([r["bbox"] for r in results if r["image_id"] == image_id]).reshape(-1, 4)  # xywh


def test_tile_flags_give_model_predict_tiled_detections(weights, tmp_path, capsys):
    image_path = _write_image(tmp_path / "big.png", 5, size=(120, 90))
    out = tmp_path / "out"
    args = [str(image_path), "--weights", str(weights), "--output-dir", str(out), "--no-progress", "--tile", "64",
            "--overlap", "0.3", "--tile-batch", "2"]
    assert main(args) == 0
    tiled = json.loads((out / RESULTS_FILE).read_text())
    model, _ = load_detector(weights)
    image = pil_to_tensor01(load_rgb_image(image_path))
    expected = model.predict(image, tile=64, overlap=0.3, tile_batch=2)[0]
    whole = model.predict(image)[0]
    xywh = torch.cat([expected["boxes"][:, :2], expected["boxes"][:, 2:] - expected["boxes"][:, :2]], dim=1)
    assert len(tiled) == len(expected["boxes"]) > 0
    assert torch.allclose(_boxes_of(tiled, 0), xywh, atol=0.011)  # the file rounds to 0.01 px
    assert [r["score"] for r in tiled] == pytest.approx(expected["scores"].tolist(), abs=1e-5)
    assert len(whole["boxes"]) != len(expected["boxes"]) or not torch.equal(whole["boxes"], expected["boxes"])


def test_tiles_with_the_fast_model_and_without_the_whole_image(weights, tmp_path, capsys):
    image_path = _write_image(tmp_path / "big.png", 6, size=(130, 100))
    out = tmp_path / "out"
    assert main([str(image_path), "--weights", str(weights), "--output-dir", str(out), "--no-progress",
                 "--tile", "64", "--no-tile-whole", "--fast"]) == 0
    results = json.loads((out / RESULTS_FILE).read_text())
    model, _ = load_detector(weights)
    expected = model.predict(pil_to_tensor01(load_rgb_image(image_path)), tile=64, tile_whole=False)[0]
    assert len(results) == len(expected["boxes"]) > 0
    xy = torch.tensor([r["bbox"][:2] for r in results])
    assert torch.allclose(xy, expected["boxes"][:, :2], atol=0.02)  # folded norms: float rounding apart


def test_mask_rcnn_tiles_give_image_size_segmentations(tmp_path):
    config = tiny_config()
    config.roi_heads.detections_per_img = 8
    torch.manual_seed(0)
    model = MaskRCNNFPN(num_classes=4, config=config).eval()
    weights = _save(model, tmp_path / "mask.pt")
    image_path = _write_image(tmp_path / "big.png", 7, size=(120, 90))
    out = tmp_path / "out"
    assert main([str(image_path), "--weights", str(weights), "--output-dir", str(out), "--no-progress",
                 "--tile", "64"]) == 0
    results = json.loads((out / RESULTS_FILE).read_text())
    expected = model.predict(pil_to_tensor01(load_rgb_image(image_path)), tile=64)[0]
    assert len(results) == len(expected["boxes"]) > 0
    decoded = np.stack([mask_utils.decode(r["segmentation"]) for r in results])  # (D, H, W)
    assert decoded.shape == (len(results), 90, 120)
    np.testing.assert_array_equal(decoded, (expected["masks"][:, 0] > 0.5).numpy())


@pytest.mark.parametrize("flags, message", [
    (["--tile", "16"], "--tile must be an integer >= 32 px, got 16"),
    (["--tile", "64", "--overlap", "1"], "--overlap must be in [0, 1), got 1.0"),
    (["--tile", "64", "--tile-batch", "0"], "--tile-batch must be an integer >= 1, got 0"),
    (["--overlap", "0.2", "--no-tile-whole"], "--overlap, --no-tile-whole needs --tile SIZE"),
])
def test_bad_tiling_flags_exit_two_with_one_line(flags, message, weights, tmp_path, capsys):
    image = _write_image(tmp_path / "one.png", 0)
    assert main([str(image), "--weights", str(weights), "--output-dir", str(tmp_path / "out"), *flags]) == 2
    assert one_error_line(capsys) == f"predict: error: {message}"
    assert not (tmp_path / "out").exists()
