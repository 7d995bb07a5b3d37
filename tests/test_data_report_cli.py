"""python -m fpn.data.report: exit codes, the files written, the model the flags choose, and dataset.png."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpn.config import FasterRCNNConfig
from fpn.data.statistics import describe_dataset
from fpn.engine.dataset_plot import save_dataset_plot
from fpn.tools.data_report import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_coco(path: Path) -> Path:
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                   {"id": 2, "file_name": "b.png", "width": 64, "height": 64}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 12], "iscrowd": 0, "area": 240},
            {"id": 8, "image_id": 1, "category_id": 2, "bbox": [30, 5, 0.5, 0.5], "iscrowd": 0, "area": 0.25},
            {"id": 9, "image_id": 2, "category_id": 2, "bbox": [0, 0, 64, 64], "iscrowd": 1, "area": 4096}],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
    }
    path.write_text(json.dumps(data))
    return path


def test_report_of_a_coco_json(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(write_coco(tmp_path / "train.json")), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("2 images (1 without objects), 2 objects in 2 classes; left out: 1 crowd regions")
    # the default model is the paper preset's (800 px): a 64 x 48 image is scaled by 800 / 48
    report = json.loads((out / "dataset_report.json").read_text())
    assert report["arch"] == "faster_rcnn" and report["input"]["min_size"] == 800
    assert report["levels"] == ["P2", "P3", "P4", "P5"]
    # the 0.5 px box becomes 8.3 px (x by 1066 / 64, y by 800 / 48): far below the 32 px anchors; the other is 258 px
    (poor,) = report["poorly_covered"]
    assert (poor["annotation_id"], poor["file_name"], poor["bbox"]) == (8, "a.png", [30, 5, 0.5, 0.5])
    assert poor["input_box"] == [499.69, 83.33, 508.02, 91.67] and poor["best_iou"] < 0.3
    assert report["below_bg_iou_thresh"] == 1 and report["instances_per_class"] == {"circle": 1, "square": 1}
    assert (out / "dataset.png").read_bytes()[:8] == PNG_SIGNATURE
    assert f"wrote {out / 'dataset_report.json'}, {out / 'dataset.png'}" in printed


def test_preset_arch_and_model_flags(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(write_coco(tmp_path / "train.json")), "--output", str(out), "--preset", "cpu-demo", "--arch", "fcos",
            "--input.min-size", "128"]
    assert main(argv) == 0
    report = json.loads((out / "dataset_report.json").read_text())
    assert report["arch"] == "fcos" and report["input"]["min_size"] == 128 and "poorly_covered" not in report
    assert report["levels"] == ["P3", "P4", "P5", "P6", "P7"]
    assert "anchor-free" in capsys.readouterr().out


def test_a_folder_goes_through_read_dataset(tmp_path, capsys):
    folder = tmp_path / "set"
    folder.mkdir()
    write_coco(folder / "labels.json")
    for name, size in (("a.png", (64, 48)), ("b.png", (64, 64))):
        Image.new("RGB", size).save(folder / name)
    assert main([str(folder), "--output", str(tmp_path / "out"), "--max-images", "1"]) == 0
    assert capsys.readouterr().out.startswith("1 images (0 without objects), 2 objects in 2 classes")


def exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's usage errors
        return stop.code


@pytest.mark.parametrize("argv, message", [
    (["{missing}"], "report: error: {missing}: no such file or folder"),
    (["{bad}"], "report: error: {bad}:1: not valid JSON"),
    (["{good}", "--max-images", "0"], "report: error: --max-images must be >= 1, got 0"),
    (["{good}", "--preset", "nope"], "report: error: argument --preset: invalid choice: 'nope'"),
    (["{good}", "--data-format", "voc"], "report: error: {good}: "),
])
def test_usage_and_input_errors_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "bad.json").write_text("{not json")
    paths = {"missing": tmp_path / "missing.json", "bad": tmp_path / "bad.json",
             "good": write_coco(tmp_path / "good.json")}
    argv = [a.format(**paths) for a in argv] + ["--output", str(tmp_path / "out")]
    assert exit_code(argv) == 2
    assert message.format(**paths) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_python_m_door(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "fpn.data.report", str(write_coco(tmp_path / "t.json")), "--output",
                           str(out), "--preset", "cpu-demo"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "RoI level" in done.stdout and (out / "dataset_report.json").is_file()


def test_plot_is_a_png_and_says_without_matplotlib(tmp_path, monkeypatch):
    data = json.loads(write_coco(tmp_path / "t.json").read_text())
    report = describe_dataset(data, FasterRCNNConfig())
    written = save_dataset_plot(report, tmp_path / "d.png")
    assert written == tmp_path / "d.png" and written.read_bytes()[:8] == PNG_SIGNATURE
    assert np.asarray(Image.open(written)).shape[:2] == (900, 1600)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(ImportError, match=r'pip install -e "\.\[viz\]"'):
        save_dataset_plot(report, tmp_path / "e.png")


def test_without_matplotlib_the_numbers_are_still_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "out"
    assert main([str(write_coco(tmp_path / "t.json")), "--output", str(out)]) == 0
    assert capsys.readouterr().err == ('report: the dataset plot needs matplotlib, which is not installed: '
                                       'pip install -e ".[viz]"\n')
    assert (out / "dataset_report.json").is_file() and not (out / "dataset.png").exists()


def test_the_trainer_draws_the_picture_once_per_data_set(tmp_path, monkeypatch):
    """write_dataset_report leaves both files alone when they already show this report (a resumed run), draws
    again for another report, and draws when the picture is missing (a run stopped between the two writes)."""
    import fpn.engine.dataset_plot as dataset_plot

    drawn = []
    real = dataset_plot.save_dataset_plot
    monkeypatch.setattr(dataset_plot, "save_dataset_plot",
                        lambda report, path: drawn.append(path) or real(report, path))
    coco = json.loads(write_coco(tmp_path / "train.json").read_text())
    report = describe_dataset(coco, FasterRCNNConfig())
    paths, missing = dataset_plot.write_dataset_report(report, tmp_path / "run")
    assert missing is None and [p.name for p in paths] == ["dataset_report.json", "dataset.png"] and len(drawn) == 1
    assert dataset_plot.write_dataset_report(report, tmp_path / "run") == (paths, None) and len(drawn) == 1
    coco["annotations"].pop(0)
    assert dataset_plot.write_dataset_report(describe_dataset(coco, FasterRCNNConfig()), tmp_path / "run")[1] is None
    assert len(drawn) == 2
    (tmp_path / "run" / "dataset.png").unlink()
    dataset_plot.write_dataset_report(describe_dataset(coco, FasterRCNNConfig()), tmp_path / "run")
    assert len(drawn) == 3 and (tmp_path / "run" / "dataset.png").read_bytes().startswith(PNG_SIGNATURE)
