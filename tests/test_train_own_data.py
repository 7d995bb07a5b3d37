"""Training on one's own data (`--train-data` / `--val-data` in YOLO, Pascal VOC, LabelMe or COCO JSON): the flags,
the split rules, the united categories, the errors before any output, and two-iteration runs from each format."""
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from fpn.engine.training_data import DataSource, check_data_paths, own_data_sets, unite_categories
from fpn.errors import InputError
from test_train_script import job_of, load_train_script, tiny_args

# (class index, cx, cy, w, h) normalised: one or two shapes per 64x64 image
OBJECTS = [[(0, 0.3, 0.3, 0.3, 0.3)], [(1, 0.6, 0.5, 0.4, 0.5)], [(0, 0.5, 0.5, 0.5, 0.4), (1, 0.2, 0.8, 0.3, 0.3)],
           [(1, 0.4, 0.4, 0.5, 0.5)], [(0, 0.7, 0.3, 0.4, 0.3)], [(0, 0.5, 0.6, 0.6, 0.5)]]
SIZE = 64


def draw(path: Path, objects) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (SIZE, SIZE), (40, 40, 40))
    pen = ImageDraw.Draw(image)
    for cls, cx, cy, w, h in objects:
        box = [(cx - w / 2) * SIZE, (cy - h / 2) * SIZE, (cx + w / 2) * SIZE, (cy + h / 2) * SIZE]
        (pen.ellipse if cls == 0 else pen.rectangle)(box, fill=(220, 60, 60) if cls == 0 else (60, 200, 90))
    image.save(path)


def yolo_set(root: Path, splits=(None,), polygons: bool = False) -> Path:
    """A YOLO folder of the six images (in each split subfolder named, or flat), class names in classes.txt."""
    for split in splits:
        for i, objects in enumerate(OBJECTS):
            name = f"{split}/img{i}" if split else f"img{i}"
            draw(root / "images" / f"{name}.png", objects)
            lines = []
            for cls, cx, cy, w, h in objects:
                x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
                lines.append(f"{cls} {x0} {y0} {x1} {y0} {x1} {y1} {x0} {y1}" if polygons else f"{cls} {cx} {cy} {w} {h}")
            (root / "labels" / f"{name}.txt").parent.mkdir(parents=True, exist_ok=True)
            (root / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("circle\nsquare\n")
    return root


def voc_set(root: Path) -> Path:
    """A Pascal VOC folder of the six images, with ImageSets/Main train.txt and val.txt."""
    (root / "Annotations").mkdir(parents=True)
    for i, objects in enumerate(OBJECTS):
        draw(root / "JPEGImages" / f"img{i}.png", objects)
        xml = "".join(f"<object><name>{'circle' if cls == 0 else 'square'}</name><difficult>0</difficult><bndbox>"
                      f"<xmin>{round((cx - w / 2) * SIZE) + 1}</xmin><ymin>{round((cy - h / 2) * SIZE) + 1}</ymin>"
                      f"<xmax>{round((cx + w / 2) * SIZE)}</xmax><ymax>{round((cy + h / 2) * SIZE)}</ymax></bndbox>"
                      "</object>" for cls, cx, cy, w, h in objects)
        (root / "Annotations" / f"img{i}.xml").write_text(
            f"<annotation><filename>img{i}.png</filename><size><width>{SIZE}</width><height>{SIZE}</height>"
            f"<depth>3</depth></size>{xml}</annotation>")
    (root / "ImageSets/Main").mkdir(parents=True)
    (root / "ImageSets/Main/train.txt").write_text("img0\nimg1\nimg2\nimg3\n")
    (root / "ImageSets/Main/val.txt").write_text("img4\nimg5\n")
    return root


def labelme_set(root: Path) -> Path:
    """A LabelMe folder: each image beside its .json (one rectangle and, for squares, one polygon shape)."""
    root.mkdir(parents=True)
    for i, objects in enumerate(OBJECTS):
        draw(root / f"img{i}.png", objects)
        shapes = []
        for cls, cx, cy, w, h in objects:
            x0, y0, x1, y1 = [v * SIZE for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)]
            if cls == 0:
                shapes.append({"label": "circle", "shape_type": "rectangle", "points": [[x0, y0], [x1, y1]],
                               "group_id": None, "flags": {}})
            else:
                shapes.append({"label": "square", "shape_type": "polygon", "group_id": None, "flags": {},
                               "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]})
        (root / f"img{i}.json").write_text(json.dumps({
            "version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": f"img{i}.png", "imageData": None,
            "imageHeight": SIZE, "imageWidth": SIZE}))
    return root


def train_on(tmp_path, *flags, iters=2):
    """Run fpn.tools.train.main on a tiny model; (exit code, output dir)."""
    run = tmp_path / "run"
    return load_train_script().main(tiny_args(run, *flags, iters=iters)), run


def written(run: Path):
    return [json.loads((run / "data" / f"{name}.json").read_text()) for name in ("train", "val")]


def test_two_iterations_from_a_yolo_folder_with_the_default_split(tmp_path, capsys):
    root = yolo_set(tmp_path / "shapes")
    code, run = train_on(tmp_path, "--train-data", str(root))
    out = capsys.readouterr().out
    assert code == 0 and (run / "checkpoint_0000002.pt").is_file()
    assert f"{root}: yolo format (detected)" in out
    assert "has no val split: 1 of 6 images for validation (--val-split 0.2, --split-seed 0) (the default" in out
    train, val = written(run)
    assert len(train["images"]) == 5 and len(val["images"]) == 1
    assert train["categories"] == val["categories"] == [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    checkpoint = torch.load(run / "checkpoint_0000002.pt", weights_only=False)
    assert checkpoint["args"]["train_data"] == str(root) and checkpoint["args"]["split_seed"] == 0


def test_two_iterations_from_a_voc_folder_with_its_own_splits(tmp_path, capsys):
    code, run = train_on(tmp_path, "--train-data", str(voc_set(tmp_path / "voc")))
    assert code == 0, capsys.readouterr().err
    train, val = written(run)
    assert [i["file_name"] for i in val["images"]] == ["img4.png", "img5.png"] and len(train["images"]) == 4
    assert "voc format (detected)" in capsys.readouterr().out


def test_two_iterations_from_a_labelme_folder_as_mask_rcnn(tmp_path, capsys):
    code, run = train_on(tmp_path, "--train-data", str(labelme_set(tmp_path / "lm")), "--val-split", "0.34",
                         "--arch", "mask_rcnn", "--mask.conv-channels", "16")
    assert code == 0, capsys.readouterr().err
    train, val = written(run)
    assert len(val["images"]) == 2 and len(train["images"]) == 4


def test_two_iterations_of_mask_rcnn_from_yolo_polygons(tmp_path, capsys):
    root = yolo_set(tmp_path / "poly", splits=("train", "val"), polygons=True)
    code, run = train_on(tmp_path, "--train-data", str(root), "--arch", "mask_rcnn", "--mask.conv-channels", "16")
    assert code == 0, capsys.readouterr().err
    train, val = written(run)
    assert all(len(ann["segmentation"][0]) == 8 for ann in train["annotations"])
    assert [i["file_name"] for i in val["images"]] == [f"val/img{i}.png" for i in range(6)]


def test_val_data_takes_the_train_split_and_the_val_split(tmp_path):
    yolo = yolo_set(tmp_path / "y", splits=("train", "val"))
    train, val, notes = own_data_sets(DataSource(train_data=str(yolo), val_data=str(voc_set(tmp_path / "voc"))))
    assert [i["file_name"] for i in train.coco["images"]] == [f"train/img{i}.png" for i in range(6)]
    assert [i["file_name"] for i in val.coco["images"]] == ["img4.png", "img5.png"]  # VOC's val split
    assert train.coco["categories"] == val.coco["categories"]
    assert notes[:2] == [f"{yolo}: yolo format (detected)", "class names from classes.txt"]


def test_the_split_follows_split_seed_not_the_training_seed(tmp_path):
    root = yolo_set(tmp_path / "y")

    def val_names(*flags):
        job = job_of(["--preset", "cpu-demo", "--train-data", str(root), "--val-split", "0.5", *flags])
        return [i["file_name"] for i in own_data_sets(job.data)[1].coco["images"]]

    first = val_names()
    assert len(first) == 3 and val_names("--seed", "7") == first
    assert val_names("--split-seed", "3") != first


def test_categories_are_united_by_name():
    train = {"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 5}],
             "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}]}
    val = {"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1},
                                         {"id": 2, "image_id": 1, "category_id": 2}],
           "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "bird"}]}
    new_train, new_val, note = unite_categories(train, val)
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]
    assert new_train["categories"] == new_val["categories"] == categories
    assert [a["category_id"] for a in new_train["annotations"]] == [1]
    assert [a["category_id"] for a in new_val["annotations"]] == [2, 3]  # dog stays dog
    assert note == "the training and validation categories are united by name: 3 categories (bird only in the " \
                   "validation set)"
    assert unite_categories(train, train) == (train, train, "")


@pytest.mark.parametrize("flags, message", [
    (["--train-data", "{yolo}", "--coco-root", "{yolo}"], "--train-data and --coco-root both name the training data"),
    (["--train-data", "{yolo}", "--val-data", "{yolo}", "--val-split", "0.3"],
     "--val-split and --val-data both say what to validate on: give one of them"),
    (["--val-data", "{yolo}"], "--val-data goes with --train-data, which is not given"),
    (["--train-data", "{yolo}", "--val-split", "0"], "--val-split must be between 0 and 1"),
    (["--train-data", "{yolo}", "--data-format", "voc"], r"y: not a Pascal VOC folder: Annotations/ is missing$"),
    (["--train-data", "{split}", "--val-split", "0.2"], "has its own train and val splits; leave --val-split out"),
    (["--train-data", "{bad}"], r"labels/img1.txt:1: 'x' is not a number$"),
])
def test_data_errors_exit_2_before_the_output_folder_exists(tmp_path, capsys, flags, message):
    sets = {"yolo": yolo_set(tmp_path / "y"), "split": yolo_set(tmp_path / "s", splits=("train", "val")),
            "bad": yolo_set(tmp_path / "b")}
    (sets["bad"] / "labels/img1.txt").write_text("0 x 0.5 0.5 0.5\n")
    code, run = train_on(tmp_path, *[flag.format(**sets) for flag in flags])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and re.search(message, lines[0]), err
    assert not run.exists()


def test_check_data_paths_reads_the_labels(tmp_path):
    root = yolo_set(tmp_path / "y")
    (root / "labels/img3.txt").write_text("0 0.5 0.5 0.5 0.5\n9 0.5 0.5 0.5 0.5\n")
    with pytest.raises(InputError, match=r"^labels/img3.txt:2: class 9 is not among the 2 classes \(0 to 1\)$"):
        check_data_paths(DataSource(train_data=str(root)))


def test_an_unreadable_image_is_left_to_the_image_check(tmp_path, capsys):
    root = yolo_set(tmp_path / "y")
    (root / "images/img2.png").write_bytes(b"not a png")
    code, run = train_on(tmp_path, "--train-data", str(root), "--val-split", "0.34")
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"train.py: error: 1 of 4 images in {root / 'images'} cannot be read, e.g. img2.png: not an image file "
        f"Pillow can read; fix them or remove them from {run / 'data/train.json'}, or pass --skip-bad-images to "
        "leave them out")
    with pytest.warns(UserWarning, match=r"skipping bad image files: 1 of 4 images"):
        code, run = train_on(tmp_path, "--train-data", str(root), "--val-split", "0.34", "--skip-bad-images")
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "1 image(s) whose header Pillow cannot read (e.g. images/img2.png) are listed with size 0" in out.out


def test_resume_notes_a_changed_split_seed(tmp_path, capsys):
    root = yolo_set(tmp_path / "y")
    assert train_on(tmp_path, "--train-data", str(root))[0] == 0
    code, _ = train_on(tmp_path, "--train-data", str(root), "--split-seed", "1", "--resume", iters=3)
    out = capsys.readouterr().out
    assert code == 0 and "--split-seed changed from 0 to 1: applied from iteration 3 on" in out


def test_two_iterations_from_a_converted_coco_json_beside_its_images_folder(tmp_path, capsys):
    from fpn.tools.convert_data import main as convert

    root = yolo_set(tmp_path / "y")
    assert convert([str(root), str(root / "shapes.json")]) == 0  # file names relative to y/images
    code, run = train_on(tmp_path, "--train-data", str(root / "shapes.json"), "--val-split", "0.34")
    assert code == 0, capsys.readouterr().err
    train, val = written(run)
    assert len(train["images"]) == 4 and len(val["images"]) == 2
    assert f"{root / 'shapes.json'}: coco format (detected)" in capsys.readouterr().out


def test_evaluate_reads_the_folder_the_run_trained_on_and_matches_classes_by_name(tmp_path, capsys):
    """scripts/evaluate.py --data: the VOC folder's val split gives exactly the AP of the training's final
    evaluation; a folder numbering its classes otherwise (only 'square', so id 1 in its own numbering) is matched
    to the checkpoint's ids by name, and the checkpoint's other class is listed (without ground truth)."""
    from fpn.tools.evaluate import main as evaluate

    root = voc_set(tmp_path / "voc")
    code, run = train_on(tmp_path, "--train-data", str(root))
    assert code == 0, capsys.readouterr().err
    final = json.loads((run / "final_metrics.json").read_text())
    assert evaluate([str(run / "best.pt"), "--data", str(root), "--output-dir", str(tmp_path / "eval"),
                     "--workers", "0"]) == 0
    got = json.loads((tmp_path / "eval" / "evaluate_metrics.json").read_text())
    assert {key: got[key] for key in ("AP", "AP50", "per_class")} == {key: final[key] for key in ("AP", "AP50",
                                                                                                   "per_class")}
    assert "voc, 2 images (split val)" in capsys.readouterr().out

    squares = voc_set(tmp_path / "squares")  # the same images, the circles removed from every label file
    for xml in (squares / "Annotations").glob("*.xml"):
        text = re.sub(r"<object><name>circle</name>.*?</object>", "", xml.read_text())
        xml.write_text(text)
    assert evaluate([str(run / "best.pt"), "--data", str(squares), "--split", "train", "--output-dir",
                     str(tmp_path / "eval2"), "--workers", "0", "--no-curves"]) == 0
    data = json.loads((tmp_path / "eval2" / "evaluate_data.json").read_text())
    assert data["categories"] == [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    assert len(data["images"]) == 4
    assert {a["category_id"] for a in data["annotations"]} == {2}
    assert evaluate([str(run / "best.pt"), "--data", str(squares), "--coco-root", str(tmp_path)]) == 2
    assert "--data and --coco-root / --images / --annotations both name the data" in capsys.readouterr().err
