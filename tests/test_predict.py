import json

import numpy as np
import pytest
import torch
from PIL import Image

from fpn.engine.checkpoint import save_checkpoint
from fpn.config import FasterRCNNConfig
from fpn.detectors.faster_rcnn import FasterRCNNFPN
from fpn.deploy.predictions import (
    RESULTS_FILE,
    detections_to_results,
    image_ids_for,
    picture_path_for,
    predict_files,
    read_label_map,
    resolve_inputs,
)
from fpn.tools.predict import main

CLASS_NAMES = {1: "circle", 2: "square", 3: "triangle"}
LABEL_TO_CATEGORY = {1: 11, 2: 22, 3: 33}


def tiny_model() -> FasterRCNNFPN:
    cfg = FasterRCNNConfig()
    cfg.backbone.depth, cfg.backbone.width, cfg.backbone.norm = 18, 16, "gn"
    cfg.backbone.gn_groups, cfg.backbone.trainable_stages = 8, 5
    cfg.fpn.out_channels, cfg.roi_heads.representation_size = 32, 64
    cfg.input.min_size, cfg.input.max_size, cfg.input.train_min_sizes = 64, 96, (64,)
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=4, config=cfg)
    with torch.no_grad():  # class 2 wins every RoI with probability ~0.9, so every image has detections
        model.roi_heads.predictor.cls_score.bias.copy_(torch.tensor([0.0, -2.0, 4.0, -2.0]))
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(path, model=tiny_model(), optimizer=None, scheduler=None, scaler=None, iteration=7,
                    label_to_category=LABEL_TO_CATEGORY, class_names=CLASS_NAMES)
    return path


def _write_image(path, seed, size=(80, 60)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_resolve_inputs_files_folders_globs_and_bad_paths(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    b, a = _write_image(folder / "b.png", 0), _write_image(folder / "a.jpg", 1)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    nested = _write_image(folder / "sub" / "c.png", 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    single = _write_image(tmp_path / "single.bmp", 3)
    paths, failures = resolve_inputs([
        str(folder), str(single), str(tmp_path / "photos" / "**" / "*.png"), str(tmp_path / "missing.png"),
        str(tmp_path / "*.gif"), str(empty), str(a),
    ])
    # Folder: sorted, not recursing, text file left out; the glob adds only the nested file (b.png is a duplicate).
    assert paths == [a, b, single, nested]
    assert failures == [
        (str(tmp_path / "missing.png"), "no such file or directory"),
        (str(tmp_path / "*.gif"), "glob pattern matches no image files"),
        (str(empty), "folder contains no image files (.jpg, .jpeg, .png, .bmp, .gif, .tif, .tiff, .webp, .ppm, .pgm)"),
    ]


def test_image_ids_from_numeric_names_else_positions(tmp_path):
    coco = [tmp_path / "000000397133.jpg", tmp_path / "000000000139.jpg"]
    assert image_ids_for(coco) == [397133, 139]
    assert image_ids_for(coco + [tmp_path / "cat.jpg"]) == [0, 1, 2]
    assert image_ids_for([tmp_path / "1.jpg", tmp_path / "01.png"]) == [0, 1]  # same number twice
    assert image_ids_for([]) == []


def test_detections_to_results_schema_and_boxes():
    detection = {
        "boxes": torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.5, 2.25]]),
        "scores": torch.tensor([0.9, 0.1234567]),
        "labels": torch.tensor([2, 7]),
    }
    with_map = detections_to_results(detection, 5, "a.jpg", CLASS_NAMES, {2: 22, 7: 77})
    assert with_map == [
        {"image_id": 5, "file_name": "a.jpg", "category_id": 22, "category_name": "square",
         "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.9},
        {"image_id": 5, "file_name": "a.jpg", "category_id": 77, "category_name": "7",
         "bbox": [0.0, 0.0, 1.5, 2.25], "score": 0.12346},
    ]
    without_map = detections_to_results(detection, 5, "a.jpg", CLASS_NAMES)
    assert [e["label"] for e in without_map] == [2, 7]
    assert all("category_id" not in e for e in without_map)
    with pytest.raises(ValueError, match="label 7 has no category id"):
        detections_to_results(detection, 5, "a.jpg", CLASS_NAMES, {2: 22})
    empty = {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    assert detections_to_results(empty, 0, "x.png", CLASS_NAMES) == []


def test_picture_names_are_unique_and_never_the_input(tmp_path):
    taken = set()
    first = picture_path_for(tmp_path / "a" / "cat.jpeg", tmp_path / "out", taken)
    second = picture_path_for(tmp_path / "b" / "cat.JPG", tmp_path / "out", taken)
    third = picture_path_for(tmp_path / "c" / "cat.tiff", tmp_path / "out", taken)
    assert [first.name, second.name, third.name] == ["cat.jpg", "cat-1.jpg", "cat.png"]
    source = _write_image(tmp_path / "dog.png", 0)
    assert picture_path_for(source, tmp_path, set()).name == "dog-1.png"


def test_label_map_from_checkpoint_or_identity_for_torchvision(checkpoint, tmp_path):
    assert read_label_map(checkpoint, 4) == LABEL_TO_CATEGORY
    torchvision_like = tmp_path / "tv.pth"
    torch.save({"roi_heads.box_predictor.cls_score.weight": torch.zeros(5, 2)}, torchvision_like)
    assert read_label_map(torchvision_like, 5) == {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}


def test_predict_files_batches_match_single_images(tmp_path):
    model = tiny_model()
    paths = [_write_image(tmp_path / f"{i}.png", i) for i in range(3)]
    single = predict_files(model, paths, CLASS_NAMES, tmp_path / "one", progress=False)
    batched = predict_files(model, paths, CLASS_NAMES, tmp_path / "three", batch_size=3, progress=False)
    assert single.failures == [] and len(single.pictures) == 3
    assert [e["image_id"] for e in single.results] == sorted(e["image_id"] for e in single.results)
    assert {e["image_id"] for e in single.results} == {0, 1, 2}
    assert len(batched.results) == len(single.results)
    for one, many in zip(single.results, batched.results):
        assert (one["image_id"], one["label"]) == (many["image_id"], many["label"])
        np.testing.assert_allclose(one["bbox"], many["bbox"], atol=0.05)
        assert one["score"] == pytest.approx(many["score"], abs=1e-4)
    with pytest.raises(ValueError, match="batch_size"):
        predict_files(model, paths, CLASS_NAMES, tmp_path, batch_size=0, progress=False)


def test_command_line_end_to_end_with_bad_inputs(checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    good = [_write_image(images / "first.png", 1), _write_image(images / "second.jpg", 2, size=(50, 70))]
    corrupt = images / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    out = tmp_path / "out"
    code = main([str(images), str(tmp_path / "nowhere.jpg"), str(tmp_path / "*.webp"), "--weights",
                 str(checkpoint), "--output-dir", str(out), "--score-threshold", "0.3", "--batch-size", "2",
                 "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    # Every bad input is named, in the immediate messages and in the summary at the end.
    assert "nowhere.jpg: no such file or directory" in err
    assert "*.webp: glob pattern matches no image files" in err
    assert "broken.png" in err and "cannot decode" in err
    assert "3 input(s) failed" in err

    results = json.loads((out / RESULTS_FILE).read_text())
    assert results, "the biased classifier gives detections on every image"
    assert {e["file_name"] for e in results} == {str(p) for p in good}
    for entry in results:
        assert set(entry) == {"image_id", "file_name", "category_id", "category_name", "bbox", "score"}
        assert entry["category_id"] in LABEL_TO_CATEGORY.values()
        assert entry["category_name"] == CLASS_NAMES[{v: k for k, v in LABEL_TO_CATEGORY.items()}[entry["category_id"]]]
        x, y, w, h = entry["bbox"]
        assert w >= 0 and h >= 0 and x >= 0 and y >= 0
        width, height = (80, 60) if entry["file_name"].endswith("first.png") else (50, 70)
        assert x + w <= width + 0.01 and y + h <= height + 0.01
        assert 0.05 < entry["score"] <= 1.0  # the model's own threshold, not --score-threshold
    # One picture per readable image, the same size as the input, with boxes drawn on it.
    assert sorted(p.name for p in out.iterdir()) == [RESULTS_FILE, "first.png", "second.jpg"]
    for source in good:
        with Image.open(source) as original, Image.open(out / source.name) as drawn:
            assert drawn.size == original.size and drawn.format == original.format
    with Image.open(good[0]) as original, Image.open(out / "first.png") as drawn:  # lossless: exact comparison
        changed = (np.asarray(drawn) != np.asarray(original)).any(axis=2)
        assert changed.sum() > 50  # boxes above 0.3 were drawn


def test_command_line_all_good_exits_zero_and_nothing_exits_two(checkpoint, tmp_path, capsys):
    image = _write_image(tmp_path / "only.png", 4)
    out = tmp_path / "out"
    assert main([str(image), "--weights", str(checkpoint), "--output-dir", str(out), "--no-progress"]) == 0
    assert (out / "only.png").is_file() and (out / RESULTS_FILE).is_file()
    assert main([str(tmp_path / "nothing-*.png"), "--weights", str(checkpoint), "--output-dir", str(out)]) == 2
    assert "no image to process" in capsys.readouterr().err
    assert main([str(image), "--weights", str(tmp_path / "absent.pt"), "--output-dir", str(out)]) == 2
    assert f"predict: error: weights file {tmp_path / 'absent.pt'}: no such file" in capsys.readouterr().err


def test_results_load_into_coco_evaluation(checkpoint, tmp_path):
    from pycocotools.coco import COCO

    folder = tmp_path / "val2017"
    folder.mkdir()
    for image_id in (7, 139):
        _write_image(folder / f"{image_id:012d}.png", image_id)
    gt = {
        "images": [{"id": i, "file_name": f"{i:012d}.png", "width": 80, "height": 60} for i in (7, 139)],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 22, "bbox": [5, 5, 20, 20], "area": 400,
                         "iscrowd": 0}],
        "categories": [{"id": c, "name": CLASS_NAMES[label]} for label, c in LABEL_TO_CATEGORY.items()],
    }
    gt_file = tmp_path / "instances.json"
    gt_file.write_text(json.dumps(gt))
    out = tmp_path / "out"
    assert main([str(folder), "--weights", str(checkpoint), "--output-dir", str(out), "--no-progress"]) == 0
    coco = COCO(str(gt_file))
    detections = coco.loadRes(str(out / RESULTS_FILE))
    # loadRes asserts every result's image is in the ground truth: ids come from the COCO-style file names.
    assert {a["image_id"] for a in detections.dataset["annotations"]} == {7, 139}
    assert {a["category_id"] for a in detections.dataset["annotations"]} <= {11, 22, 33}
    assert len(detections.getAnnIds()) == len(json.loads((out / RESULTS_FILE).read_text()))
