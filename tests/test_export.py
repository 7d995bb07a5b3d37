"""torch.export of the eval-mode detector (fpn/export.py): dynamic image height and width, save/load, parity.

A narrow ResNet-18 model (cpu-demo's layout) with seeded random weights, its RPN objectness and class logits
spread (larger initial weights) so that it returns detections to compare: random-noise images give a few
detections above its score threshold 0.97, a white image none (its best score is 0.96).
"""
import pytest
import torch

from fpn import FasterRCNNFPN
from fpn.export import DetectorGraph, export_program
from fpn.engine.presets import cpu_demo


def small_detector(seed: int = 0) -> FasterRCNNFPN:
    """cpu-demo's narrow model (3 classes + background) with random weights that yield detections."""
    config = cpu_demo().model
    config.roi_heads.score_thresh = 0.97
    torch.manual_seed(seed)
    model = FasterRCNNFPN(num_classes=4, config=config)
    torch.nn.init.normal_(model.rpn.head.cls_logits.weight, std=1.0)
    torch.nn.init.normal_(model.roi_heads.predictor.cls_score.weight, std=0.3)
    return model.eval()


def image(height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model_and_program(tmp_path_factory):
    model = small_detector()
    path = tmp_path_factory.mktemp("export") / "detector.pt2"
    torch.export.save(export_program(model), str(path))
    return model, torch.export.load(str(path))


def test_graph_module_gives_the_eager_detections():
    model = small_detector()
    x = image(200, 300)
    with torch.no_grad():
        expected = model([x])[0]
        boxes, scores, labels = DetectorGraph(model)(x)
    assert torch.equal(boxes, expected["boxes"]) and torch.equal(scores, expected["scores"])
    assert torch.equal(labels, expected["labels"])


def test_exported_program_has_dynamic_height_and_width_and_the_fpn_ops(model_and_program):
    _, program = model_and_program
    targets = {str(node.target) for node in program.graph.nodes}
    assert {"fpn.batched_nms.default", "fpn.roi_align.default"} <= targets
    (image_node,) = [n for n in program.graph.nodes if n.op == "placeholder" and n.name == "image"]
    channels, height, width = image_node.meta["val"].shape
    assert channels == 3 and isinstance(height, torch.SymInt) and isinstance(width, torch.SymInt)


@pytest.mark.parametrize("size", [(200, 300), (480, 360), (100, 200)])
def test_reloaded_program_matches_eager_at_several_sizes(model_and_program, size):
    model, program = model_and_program
    x = image(*size, seed=size[0])
    with torch.no_grad():
        expected = model([x])[0]
        boxes, scores, labels = program.module()(x)
    assert expected["boxes"].shape[0] > 0
    assert torch.equal(labels, expected["labels"])
    assert torch.allclose(boxes, expected["boxes"], rtol=0, atol=1e-3)
    assert torch.allclose(scores, expected["scores"], rtol=0, atol=1e-5)


def test_reloaded_program_gives_no_detections_where_eager_has_none(model_and_program):
    model, program = model_and_program
    white = torch.ones(3, 200, 300)
    with torch.no_grad():
        assert model([white])[0]["boxes"].shape == (0, 4)
        boxes, scores, labels = program.module()(white)
    assert boxes.shape == (0, 4) and scores.shape == labels.shape == (0,)
