"""ONNX export (fpn/export.py, fpn/deploy/onnx_ops.py) run by onnxruntime against the eager model, and its CLI.

One export serves every test: `python -m fpn.export` in a subprocess writes the ONNX model of a saved small
checkpoint (cpu-demo's narrow ResNet-18 with random weights that give detections, see tests/test_export.py).
"""
import subprocess
import sys

import pytest
import torch

from fpn.engine.checkpoint import load_detector, save_checkpoint
from fpn.deploy.export import run_onnx
from tests.test_export import image, small_detector


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    checkpoint = save_checkpoint(folder / "small.pt", model=small_detector(), optimizer=None, scheduler=None,
                                 scaler=None, iteration=0, label_to_category={}, class_names={})
    output = folder / "small.onnx"
    run = subprocess.run([sys.executable, "-m", "fpn.export", "--weights", str(checkpoint), "--output", str(output)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return checkpoint, output, run


def test_cli_writes_an_opset_18_model_of_standard_ops_and_reports_the_difference(exported):
    import onnx

    _, output, run = exported
    assert "wrote" in run.stdout and "max box difference" in run.stdout, run.stdout
    model = onnx.load(str(output))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    op_types = {node.op_type for node in model.graph.node}
    functions = {f.name for f in model.functions}
    for function in model.functions:
        op_types |= {node.op_type for node in function.node}
    assert {"NonMaxSuppression", "RoiAlign"} <= op_types
    assert all(node.domain in ("", "ai.onnx") or node.op_type in functions for node in model.graph.node)
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["boxes", "scores", "labels"]


@pytest.mark.parametrize("size", [
    (256, 256), (192, 256), (100, 200), (200, 300),
    (150, 159),  # resized to 241 x 256 (the width is 255 if the size is computed in float32, not Python's float64)
    (360, 500),  # a downscale of a noise image: a last-bit move of the resize's sampling points shows
])
def test_onnxruntime_matches_eager_at_several_sizes(exported, size):
    checkpoint, output, _ = exported
    model, _ = load_detector(checkpoint)
    x = image(*size, seed=size[0])
    with torch.no_grad():
        expected = model([x])[0]
    boxes, scores, labels = run_onnx(output, x)
    assert expected["boxes"].shape[0] > 0
    assert labels.dtype == torch.int64 and torch.equal(labels, expected["labels"])
    assert torch.allclose(boxes, expected["boxes"], rtol=0, atol=1e-3)
    assert torch.allclose(scores, expected["scores"], rtol=0, atol=1e-4)


def test_onnxruntime_returns_no_detections_where_eager_has_none(exported):
    checkpoint, output, _ = exported
    model, _ = load_detector(checkpoint)
    white = torch.ones(3, 200, 300)
    with torch.no_grad():
        assert model([white])[0]["boxes"].shape == (0, 4)
    boxes, scores, labels = run_onnx(output, white)
    assert boxes.shape == (0, 4) and scores.shape == labels.shape == (0,)
    assert labels.dtype == torch.int64


def test_missing_weights_file_is_one_line_and_exit_code_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "fpn.export", "--weights", str(tmp_path / "none.pt"), "--output",
                          str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.startswith("export: error:") and "none.pt" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_missing_onnx_packages_name_the_install_command(monkeypatch):
    from fpn.errors import InputError
    from fpn.deploy.export import require_onnx

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(InputError, match=r'onnxruntime, not installed: run pip install -e "\.\[export\]"'):
        require_onnx()
