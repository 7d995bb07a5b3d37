"""`python -m fpn.predict` on a Mask R-CNN checkpoint: each detection's `segmentation` decodes to the model's mask
above 0.5, and the pictures fill the drawn detections' masks."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from fpn import MaskRCNNFPN, load_detector
from fpn.data.image_io import load_rgb_image, pil_to_tensor01
from fpn.deploy.predictions import RESULTS_FILE
from fpn.deploy.visualize import draw_detections
from fpn.engine.checkpoint import save_checkpoint
from fpn.tools.predict import main
from test_mask_rcnn import tiny_config
from test_predict import CLASS_NAMES, LABEL_TO_CATEGORY, _write_image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = tiny_config()
    config.roi_heads.detections_per_img = 12
    torch.manual_seed(0)
    model = MaskRCNNFPN(num_classes=4, config=config).eval()
    path = tmp_path_factory.mktemp("weights") / "mask.pt"
    save_checkpoint(path, model=model, optimizer=None, scheduler=None, scaler=None, iteration=3,
                    label_to_category=LABEL_TO_CATEGORY, class_names=CLASS_NAMES)
    return path


def test_segmentations_decode_to_the_model_masks_and_pictures_fill_them(checkpoint, tmp_path):
    inputs = [_write_image(tmp_path / f"{i}.png", i, size) for i, size in enumerate([(80, 60), (64, 72)])]
    out = tmp_path / "out"
    assert main([*map(str, inputs), "--weights", str(checkpoint), "--output-dir", str(out), "--no-progress",
                 "--score-threshold", "0.325"]) == 0
    results = json.loads((out / RESULTS_FILE).read_text())
    model, names = load_detector(checkpoint)
    for image_id, path in enumerate(inputs):
        image = load_rgb_image(path)
        with torch.no_grad():
            expected = model([pil_to_tensor01(image)])[0]
        entries = [r for r in results if r["image_id"] == image_id]
        assert len(entries) == len(expected["boxes"]) > 0
        decoded = np.stack([mask_utils.decode(e["segmentation"]) for e in entries])  # (D, H, W)
        assert decoded.shape == (len(entries), image.height, image.width) and decoded.any()
        np.testing.assert_array_equal(decoded, (expected["masks"][:, 0] > 0.5).numpy())
        # the picture: the boxes of the detections scoring >= 0.325, over their translucent masks
        scores = torch.tensor([e["score"] for e in entries])
        assert 0 < int((scores >= 0.325).sum()) < len(entries)
        picture = np.asarray(Image.open(out / path.name))
        drawn = draw_detections(image, expected["boxes"], expected["labels"], expected["scores"], names, 0.325,
                                masks=torch.from_numpy(decoded))
        np.testing.assert_array_equal(picture, np.asarray(drawn))
        boxes_only = draw_detections(image, expected["boxes"], expected["labels"], expected["scores"], names, 0.325)
        assert (picture != np.asarray(boxes_only)).any()
