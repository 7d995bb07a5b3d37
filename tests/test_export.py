"""torch.export of the eval-mode detector (fpn/export.py): dynamic image height and width, save/load, parity; the
CLI's output without torch's notices that are not about the model.

A narrow ResNet-18 model (cpu-demo's layout) with seeded random weights, its RPN objectness and class logits
spread (larger initial weights) so that it returns detections to compare: random-noise images give a few
detections above its score threshold 0.97, a white image none (its best score is 0.96).
"""
import logging
import subprocess
import sys
from unittest import mock

import pytest
import torch

from fpn import FasterRCNNFPN
from fpn.engine.checkpoint import save_checkpoint
from fpn.engine.presets import cpu_demo
from fpn.deploy.export import (
    ONNX_REGISTRY_LOGGER, DetectorGraph, _without_torchvision_notice, export_program, save_program,
)


def small_detector(seed: int = 0) -> FasterRCNNFPN:
    """cpu-demo's narrow model (3 classes + background) with random weights that yield detections."""
    config = cpu_demo().model
    config.backbone.zero_init_residual = True  # the random model these expectations were written for
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
    save_program(export_program(model), path)
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


# `python -m fpn.export` in a venv with the `export` extra but not torchvision (sys.modules[name] = None: an import
# fails and importlib.util.find_spec says "not installed"), once per format, in one process
CLI_WITHOUT_TORCHVISION = """
import runpy, sys
sys.modules["torchvision"] = None
weights, *outputs = sys.argv[1:]
for output in outputs:
    sys.argv = ["fpn.export", "--weights", weights, "--output", output]
    try:
        runpy.run_module("fpn.export", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code:
            raise
"""


def test_cli_prints_no_exporter_notices_that_are_not_about_the_model(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "small.pt", model=small_detector(), optimizer=None, scheduler=None,
                                 scaler=None, iteration=0, label_to_category={}, class_names={})
    outputs = [tmp_path / "small.pt2", tmp_path / "small.onnx"]
    run = subprocess.run([sys.executable, "-c", CLI_WITHOUT_TORCHVISION, str(checkpoint), *map(str, outputs)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    output = run.stdout + run.stderr
    assert output.count("export: wrote") == 2 and all(path.is_file() for path in outputs), output
    assert "torchvision is not installed" not in output and "No complete tensor found" not in output, output


def test_only_the_torchvision_notice_is_dropped(caplog):
    # the ONNX exporter's own call, with torchvision looking absent as above
    from torch.onnx._internal.exporter import _registration

    logger = logging.getLogger(ONNX_REGISTRY_LOGGER)
    with caplog.at_level(logging.WARNING, logger=ONNX_REGISTRY_LOGGER):
        with mock.patch.dict(sys.modules, {"torchvision": None}):
            with _without_torchvision_notice():
                assert _registration._get_overload("torchvision::nms") is None
                logger.warning("another notice")
            assert _registration._get_overload("torchvision::roi_align") is None  # outside: logged as before
    assert [record.getMessage() for record in caplog.records] == [
        "another notice", "torchvision is not installed. Skipping torchvision::roi_align"]
