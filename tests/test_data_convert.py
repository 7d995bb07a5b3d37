"""`python -m fpn.data.convert SRC OUT.json`: the written COCO JSON, its summary paragraph and the exit codes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fpn.tools.convert_data import main
from test_data_formats_yolo import FLAT_COCO, flat_yolo, write_image, write_text

REPO = Path(__file__).resolve().parents[1]


def test_converts_a_yolo_folder_to_the_expected_json_and_says_what_it_read(tmp_path, capsys):
    root = flat_yolo(tmp_path / "set")
    out = tmp_path / "out.json"
    assert main([str(root), str(out)]) == 0
    assert json.loads(out.read_text()) == FLAT_COCO
    assert out.read_text().startswith('{\n "images": [\n  {\n   "id": 1,')  # indented, keys in a stable order
    assert capsys.readouterr().out == (
        f"yolo data: 2 images (1 without objects); 2 annotations, per category: circle 1, square 1; 0 crowd / "
        f"difficult regions (left out of training, ignored by COCO evaluation); file_name is relative to "
        f"{root / 'images'}; written to {out}. Note: {root}: yolo format (detected). Note: class names from "
        "classes.txt.\n")
    assert not (tmp_path / "out.json.tmp").exists()


def test_one_split_and_a_named_format(tmp_path, capsys):
    root = tmp_path / "set"
    write_image(root / "images/train/a.png", 16, 16)
    write_image(root / "images/val/b.png", 20, 10)
    write_text(root / "labels/val/b.txt", "0 0.5 0.5 0.5 0.5\n")
    out = tmp_path / "val.json"
    assert main([str(root), str(out), "--split", "val", "--format", "yolo"]) == 0
    assert json.loads(out.read_text()) == {
        "images": [{"id": 2, "file_name": "val/b.png", "width": 20, "height": 10}],  # ids of the whole set
        "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [5.0, 2.5, 10.0, 5.0], "area": 50.0,
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "0"}],
    }
    assert "splits" not in capsys.readouterr().out  # the split written has none of its own


def test_input_errors_exit_2_with_one_line_and_write_nothing(tmp_path, capsys):
    root = flat_yolo(tmp_path / "set", "0 0.5 0.5 0.25\n")
    out = tmp_path / "out.json"
    assert main([str(root), str(out)]) == 2
    assert capsys.readouterr().err == ("convert: error: labels/a.txt:1: 4 fields, expected 5 (class cx cy w h) or a "
                                       "polygon (class x1 y1 x2 y2 x3 y3 ..., an odd count of 7 or more)\n")
    assert not out.exists()
    assert main([str(tmp_path / "none"), str(out)]) == 2
    assert capsys.readouterr().err == f"convert: error: {tmp_path / 'none'}: no such file or folder\n"
    write_text(root / "labels/a.txt", "0 0.5 0.5 0.25 0.5\n")
    assert main([str(root), str(out), "--split", "train"]) == 2
    assert "no 'train' split in this yolo data (splits: none)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse's own usage errors exit directly, as in every tool
        main([str(root), str(out), "--format", "kitti"])
    assert usage.value.code == 2 and "argument --format: invalid choice: 'kitti'" in capsys.readouterr().err


def test_the_module_door_runs_the_tool(tmp_path):
    root = flat_yolo(tmp_path / "set")
    done = subprocess.run([sys.executable, "-m", "fpn.data.convert", str(root), str(tmp_path / "o.json")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and json.loads((tmp_path / "o.json").read_text()) == FLAT_COCO
    assert done.stdout.startswith("yolo data: 2 images")
