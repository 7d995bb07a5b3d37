"""Label 0 is the background: no detector returns it, whatever its training state (an untrained FCOS's class-0
logit can be its largest), through the eval-mode forward, `model.predict` and the exported ONNX model.

Models whose class-0 bias is huge (+30: sigmoid 1, softmax ~1) score the background above every real class at
every location; a label 0 anywhere in their output would reach the COCO conversion, which has no category for it.
"""
import pytest
import torch
from torch import nn

from fpn import FasterRCNNFPN, FCOSFPN
from test_checkpoint import tiny_config as tiny_faster_rcnn_config
from test_fcos import tiny_config as tiny_fcos_config

BACKGROUND_BIAS = 30.0


def fcos_favouring_background() -> FCOSFPN:
    """A tiny FCOS (3 classes + background) whose real classes score ~0.5 (above the 0.2 threshold) and class 0
    higher still everywhere."""
    torch.manual_seed(0)
    model = FCOSFPN(4, tiny_fcos_config())
    logits = model.head.classification_head.cls_logits
    nn.init.normal_(logits.weight, std=0.05)  # locations and classes score differently
    with torch.no_grad():
        logits.bias.copy_(torch.tensor([BACKGROUND_BIAS, 0.0, 0.0, 0.0]))
    return model.eval()


def _images():
    generator = torch.Generator().manual_seed(2)
    return [torch.rand(3, 64, 80, generator=generator), torch.rand(3, 72, 64, generator=generator)]


def _assert_real_labels_only(detections, num_classes):
    for d in detections:
        assert d["labels"].numel() > 0, "the real classes have detections"
        assert d["labels"].min() >= 1 and d["labels"].max() < num_classes, d["labels"]


def test_fcos_forward_and_predict_never_return_the_background():
    model = fcos_favouring_background()
    with torch.no_grad():
        _assert_real_labels_only(model(_images()), 4)
    uint8 = [(image * 255).to(torch.uint8) for image in _images()]
    _assert_real_labels_only(model.predict(uint8), 4)
    _assert_real_labels_only(model.predict(uint8, score_threshold=0.3), 4)


def test_fcos_exported_onnx_never_returns_the_background(tmp_path):
    pytest.importorskip("onnxruntime")
    from fpn.deploy.export import export_onnx, run_onnx

    model = fcos_favouring_background()
    path = tmp_path / "fcos.onnx"
    export_onnx(model, path)  # ~25 s on a 2-core CPU
    image = _images()[0]
    with torch.no_grad():
        expected = model([image])[0]
    boxes, scores, labels = run_onnx(path, image)
    _assert_real_labels_only([{"labels": labels}], 4)
    assert torch.equal(labels, expected["labels"])
    assert torch.allclose(boxes, expected["boxes"], rtol=0, atol=1e-3)
    assert torch.allclose(scores, expected["scores"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("background_bias", [0.0, BACKGROUND_BIAS])
def test_faster_rcnn_never_returns_the_background(background_bias):
    """Random weights, with or without a class-0 bias that wins every RoI's softmax: the box head's
    post-processing drops class 0 before the threshold (fpn/heads/roi_heads.py), so even at threshold 0, where
    every class of every RoI is a candidate, no label 0 comes out."""
    config = tiny_faster_rcnn_config()
    config.roi_heads.score_thresh = 0.0
    torch.manual_seed(0)
    model = FasterRCNNFPN(4, config).eval()
    with torch.no_grad():
        model.roi_heads.predictor.cls_score.bias[0] = background_bias
        detections = model(_images())
    _assert_real_labels_only(detections, 4)


def test_evaluate_and_predict_a_checkpoint_of_such_a_model(tmp_path, capsys):
    """scripts/evaluate.py and `python -m fpn.predict` on its checkpoint (once both stopped at "label 0 has no
    COCO category"): exit 0, every result of a real category."""
    import json

    from fpn.data.coco import CocoDetection
    from fpn.data.synthetic import generate_synthetic_coco
    from fpn.engine.checkpoint import save_checkpoint
    from fpn.tools.predict import main as predict_main
    from test_evaluate_script import load_evaluate_script

    paths = generate_synthetic_coco(tmp_path / "data", 1, num_val=2, seed=1, min_size=64, max_size=80,
                                    num_classes=3, progress=False)
    dataset = CocoDetection(paths["val_images"], paths["val_annotations"], train=False)
    weights = save_checkpoint(tmp_path / "fcos.pt", model=fcos_favouring_background(), optimizer=None,
                              scheduler=None, scaler=None, iteration=4, label_to_category=dataset.label_to_category,
                              class_names=dataset.class_names)
    categories = set(dataset.label_to_category.values())
    assert load_evaluate_script().main([str(weights), "--images", str(paths["val_images"]), "--annotations",
                                        str(paths["val_annotations"]), "--device", "cpu", "--workers", "0",
                                        "--output-dir", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "evaluate_results.json").read_text())
    assert results and {r["category_id"] for r in results} <= categories
    assert predict_main([str(paths["val_images"]), "--weights", str(weights), "--output-dir", str(tmp_path / "out"),
                         "--device", "cpu", "--no-progress"]) == 0
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert results and {r["category_id"] for r in results} <= categories
    err = capsys.readouterr().err
    assert "no COCO category" not in err and "predict: warning" not in err  # no label 0 to leave out
