"""Bad inputs through the training entry point: corrupt image, no annotations, degenerate boxes, unknown
category, and a non-finite loss (which must leave the last good checkpoint intact)."""
import json
import re
import shutil

import pytest
import torch

from fpn.engine.checkpoint import load_checkpoint, load_detector
from fpn.data.synthetic import generate_synthetic_coco
from fpn.detectors.faster_rcnn import FasterRCNNFPN
from test_train_script import load_train_script, tiny_args


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_synthetic_coco(root, 6, num_val=2, seed=1, min_size=64, max_size=80, progress=False)
    return root


@pytest.fixture
def data(pristine, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    return root


def _data_flags(root):
    return ["--coco-root", str(root)]


def _edit_annotations(root, edit):
    path = root / "annotations" / "instances_train2017.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))
    return path


def _usage_error(argv, capsys, pattern):
    """The run stops with exit code 2 and one `error:` line matching `pattern`, without a traceback."""
    assert load_train_script().main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert "Traceback" not in err
    return lines[0]


def test_corrupt_image_is_named(data, tmp_path, capsys):
    bad = sorted((data / "train2017").iterdir())[2]
    bad.write_bytes(b"this is not a png")
    _usage_error(tiny_args(tmp_path / "run", *_data_flags(data)), capsys, re.escape(bad.name))


def test_corrupt_image_skipped_on_request(data, tmp_path):
    bad = sorted((data / "train2017").iterdir())[2]
    bad.write_bytes(b"")
    with pytest.warns(UserWarning, match=f"skipping bad image .*{bad.name}"):
        assert load_train_script().main(tiny_args(tmp_path / "run", *_data_flags(data), "--skip-bad-images")) == 0


def test_no_annotations_is_an_error(data, tmp_path, capsys):
    path = _edit_annotations(data, lambda doc: doc.update(annotations=[]))
    _usage_error(tiny_args(tmp_path / "run", *_data_flags(data)), capsys,
                 re.escape(f"{path}: no usable boxes to train on"))


def test_degenerate_boxes_are_dropped_with_a_warning(data, tmp_path):
    def flatten_two(doc):
        doc["annotations"][0]["bbox"][2] = 0  # zero width
        doc["annotations"][1]["bbox"][3] = -5  # negative height

    _edit_annotations(data, flatten_two)
    with pytest.warns(UserWarning, match="dropped 2 annotations whose box is empty"):
        assert load_train_script().main(tiny_args(tmp_path / "run", *_data_flags(data), iters=1)) == 0


def test_all_boxes_degenerate_is_an_error(data, tmp_path, capsys):
    def flatten_all(doc):
        for ann in doc["annotations"]:
            ann["bbox"][2] = 0

    _edit_annotations(data, flatten_all)
    with pytest.warns(UserWarning):
        _usage_error(tiny_args(tmp_path / "run", *_data_flags(data)), capsys, "no usable boxes .* empty after clipping")


def test_unknown_category_is_named(data, tmp_path, capsys):
    _edit_annotations(data, lambda doc: doc["annotations"][3].update(category_id=99))
    _usage_error(tiny_args(tmp_path / "run", *_data_flags(data)), capsys, "category_id 99")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    real_forward = FasterRCNNFPN.forward
    calls = {"train": 0}

    def forward(self, images, targets=None):
        output = real_forward(self, images, targets)
        if self.training:
            calls["train"] += 1
            if calls["train"] == 3:
                output["loss_box_reg"] = output["loss_box_reg"] * float("nan")
        return output

    monkeypatch.setattr(FasterRCNNFPN, "forward", forward)
    run = tmp_path / "run"
    code = load_train_script().main(tiny_args(run, *_data_flags(data), "--checkpoint-every", "2", iters=6))
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite loss term loss_box_reg = nan at iteration 3" in err
    assert f"the last good checkpoint is {run / 'checkpoint_0000002.pt'} (iteration 2)" in err
    assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_0000002.pt"]
    assert load_checkpoint(run / "checkpoint_0000002.pt")["iteration"] == 2
    model, names = load_detector(run / "checkpoint_0000002.pt")
    assert names[1] == "circle" and all(torch.isfinite(p).all() for p in model.parameters())
