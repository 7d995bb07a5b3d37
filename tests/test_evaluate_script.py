"""scripts/evaluate.py: the training's batching by default (same AP as the training's final evaluation),
categories checked against the data before inference, one-line input errors with exit code 2."""
import json
from argparse import Namespace

import pytest
import torch

from fpn.engine.checkpoint import save_checkpoint
from fpn.errors import InputError
from fpn.data.coco import CocoDetection
from fpn.data.coco_names import COCO_CLASS_NAMES
from fpn.data.synthetic import generate_synthetic_coco
from fpn.engine.evaluation import MASK_METRIC_NAMES, METRIC_NAMES, format_metrics
from fpn.detectors.faster_rcnn import FasterRCNNFPN
from fpn.detectors.mask_rcnn import MaskRCNNFPN
from fpn.engine.proposal_eval import RECALL_NAMES, format_recall
from test_checkpoint import tiny_config
from test_mask_rcnn import tiny_config as tiny_mask_config
from test_predict_errors import one_error_line
from test_train_script import load_train_script, tiny_args


def load_evaluate_script():
    """The evaluation tool, fpn.tools.evaluate (scripts/evaluate.py is its door)."""
    from fpn.tools import evaluate

    return evaluate


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    paths = generate_synthetic_coco(root, 2, num_val=3, seed=3, min_size=64, max_size=96, progress=False)
    return CocoDetection(paths["val_images"], paths["val_annotations"], train=False)


def _checkpoint(path, label_to_category, class_names, args=None):
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=len(label_to_category) + 1, config=tiny_config())
    return save_checkpoint(path, model=model, optimizer=None, scheduler=None, scaler=None, iteration=0,
                           label_to_category=label_to_category, class_names=class_names, args=args)


@pytest.fixture(scope="module")
def checkpoint(val_set, tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "c.pt", val_set.label_to_category, val_set.class_names)


def _data_flags(val_set):
    return ["--images", str(val_set.images_dir), "--annotations", str(val_set.annotations_file)]


def _run(argv, tmp_path):
    return load_evaluate_script().main([*argv, "--device", "cpu", "--workers", "0", "--output-dir",
                                        str(tmp_path / "out")])


def test_evaluation_gives_the_training_final_ap(tmp_path, capsys):
    # 5 validation images, the 5th the only landscape one: evaluated 3 at a time (the training's batching)
    # images 4 and 5 are padded to one square size; 2 at a time, image 5 is alone and padded less.
    run = tmp_path / "run"
    assert load_train_script().main(
        tiny_args(run, "--eval-batch-size", "3", "--synthetic-val-images", "5", iters=2)) == 0
    final = json.loads((run / "final_metrics.json").read_text())
    assert final.pop("iter") == 2 and final.pop("best")["iter"] == 2
    final = {key: value for key, value in final.items() if not key.startswith("val_")}  # the training's own
    capsys.readouterr()
    checkpoint = run / "checkpoint_0000002.pt"
    assert _run([str(checkpoint), "--coco-root", str(run / "synthetic")], tmp_path) == 0
    out = capsys.readouterr().out
    ran = torch.load(checkpoint, weights_only=True)["args"]  # --amp auto and --threads 0, as they were resolved
    assert ran["amp"] in ("none", "bf16") and ran["threads"] >= 1
    assert (f"evaluating with batch size 3 (the training's --eval-batch-size), amp {ran['amp']} (the training's "
            f"--amp), threads {ran['threads']} (the training's --threads)") in out
    assert json.loads((tmp_path / "out" / "evaluate_metrics.json").read_text()) == final
    assert (tmp_path / "out" / "evaluate_results.json").read_text() == (run / "eval_final_results.json").read_text()
    # the batching matters: 2 at a time (the former default) scores differently
    assert _run([str(checkpoint), "--coco-root", str(run / "synthetic"), "--batch-size", "2"], tmp_path) == 0
    assert json.loads((tmp_path / "out" / "evaluate_metrics.json").read_text()) != final


def test_evaluate_script_writes_results_and_metrics(val_set, checkpoint, tmp_path, capsys):
    assert _run([str(checkpoint), *_data_flags(val_set)], tmp_path) == 0
    metrics = json.loads((tmp_path / "out" / "evaluate_metrics.json").read_text())
    assert list(metrics) == [*METRIC_NAMES, "per_class"]
    results = json.loads((tmp_path / "out" / "evaluate_results.json").read_text())
    assert all(r["category_id"] in val_set.label_to_category.values() for r in results)
    out = capsys.readouterr().out
    assert "|    AP |" in out
    assert "batch size 2 (the checkpoint does not say), amp none (the checkpoint does not say)" in out
    names = [val_set.class_names[k] for k in sorted(val_set.label_to_category)]
    assert list(metrics["per_class"]) == names and format_metrics(metrics) in out  # the per-class table too
    assert "per class:\n| class " in out
    confusion = json.loads((tmp_path / "out" / "confusion.json").read_text())
    assert confusion["classes"] == [*names, "background"] and confusion["score_threshold"] == 0.5
    assert sum(map(sum, confusion["matrix"])) >= sum(e["instances"] for e in metrics["per_class"].values())
    assert (tmp_path / "out" / "pr_curves.png").is_file() and (tmp_path / "out" / "confusion.png").is_file()
    assert f"evaluation plots: {tmp_path / 'out' / 'confusion.json'}, " in out


def test_curve_flags(val_set, checkpoint, tmp_path):
    assert _run([str(checkpoint), *_data_flags(val_set), "--confusion-threshold", "0.01"], tmp_path) == 0
    assert json.loads((tmp_path / "out" / "confusion.json").read_text())["score_threshold"] == 0.01
    assert _run([str(checkpoint), *_data_flags(val_set), "--no-curves"], tmp_path / "plain") == 0
    assert (tmp_path / "plain" / "out" / "evaluate_metrics.json").is_file()
    assert not any((tmp_path / "plain" / "out" / name).exists()
                   for name in ("confusion.json", "pr_curves.png", "confusion.png"))


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", ["missing checkpoint", "empty checkpoint", "foreign torch file", "no annotations",
                                  "malformed annotations", "no images folder", "no data flags", "batch size 0",
                                  "confusion threshold"])
def test_input_errors_exit_two_with_one_line(case, val_set, checkpoint, tmp_path, capsys):
    data, weights = _data_flags(val_set), str(checkpoint)
    if case == "missing checkpoint":
        weights, expected = str(tmp_path / "absent.pt"), f"checkpoint {tmp_path / 'absent.pt'}: no such file"
    elif case == "empty checkpoint":
        weights, expected = str(_write(tmp_path / "empty.pt", "")), "the file is empty"
    elif case == "foreign torch file":
        torch.save({"foo": 1}, tmp_path / "foo.pt")
        weights, expected = str(tmp_path / "foo.pt"), "neither a training checkpoint of this project nor"
    elif case == "no annotations":
        data[3], expected = str(tmp_path / "absent.json"), f"annotations file not found: {tmp_path / 'absent.json'}"
    elif case == "malformed annotations":
        data[3], expected = str(_write(tmp_path / "bad.json", "{")), "malformed JSON"
    elif case == "no images folder":
        data[1], expected = str(tmp_path / "nowhere"), f"images folder {tmp_path / 'nowhere'}: no such directory"
    elif case == "no data flags":
        data, expected = [], "give --coco-root, or both --images and --annotations"
    elif case == "confusion threshold":
        data, expected = data + ["--confusion-threshold", "1.5"], "--confusion-threshold must be in [0, 1], got 1.5"
    else:
        data, expected = data + ["--batch-size", "0"], "--batch-size must be >= 1, got 0"
    assert _run([weights, *data], tmp_path) == 2
    assert expected in one_error_line(capsys, "evaluate.py")
    assert not (tmp_path / "out").exists()  # nothing was evaluated


def test_debug_shows_the_exception(val_set, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        _run([str(tmp_path / "absent.pt"), *_data_flags(val_set), "--debug"], tmp_path)


def test_checkpoint_with_fewer_classes_than_the_data(val_set, tmp_path, capsys):
    few = _checkpoint(tmp_path / "few.pt", {1: 1, 2: 2}, {0: "__background__", 1: "circle", 2: "square"})
    assert _run([str(few), *_data_flags(val_set)], tmp_path) == 2
    line = one_error_line(capsys, "evaluate.py")
    assert f"{few} predicts 2 categories, {val_set.annotations_file} has 6" in line
    assert "no output for 4 of the data's categories, ids 3 (triangle), 4 (cross), 5 (ring), 6 (diamond)" in line
    assert "their AP would be 0 (--allow-missing-categories evaluates anyway)" in line
    assert not (tmp_path / "out").exists()

    assert _run([str(few), *_data_flags(val_set), "--allow-missing-categories"], tmp_path) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == [f"evaluate.py: warning: {few} predicts 2 categories, {val_set.annotations_file} has 6: the "
                        "model has no output for 4 of the data's categories, ids 3 (triangle), 4 (cross), 5 (ring), "
                        "6 (diamond); they are scored as AP 0"]
    results = json.loads((tmp_path / "out" / "evaluate_results.json").read_text())
    assert {r["category_id"] for r in results} <= {1, 2}


def test_checkpoint_with_more_classes_than_the_data(val_set, tmp_path, capsys):
    names = {**val_set.class_names, 7: "pentagon"}
    more = _checkpoint(tmp_path / "more.pt", {**val_set.label_to_category, 7: 77}, names)
    assert _run([str(more), *_data_flags(val_set), "--allow-missing-categories"], tmp_path) == 2
    line = one_error_line(capsys, "evaluate.py")
    assert f"{more} predicts 7 categories, {val_set.annotations_file} has 6: the data lacks 1 of the model's " \
           "categories, ids 77 (pentagon)" in line


def _dataset(tmp_path, categories):
    document = {"images": [{"id": 1, "file_name": "1.png", "width": 64, "height": 64}], "annotations": [],
                "categories": [{"id": c, "name": COCO_CLASS_NAMES.get(c, str(c))} for c in categories]}
    path = tmp_path / f"instances_{len(categories)}.json"
    path.write_text(json.dumps(document))
    return CocoDetection(tmp_path, path, train=False)


def test_torchvision_files_keep_the_identity_map(tmp_path):
    script = load_evaluate_script()
    torchvision_file = {"backbone.body.conv1.weight": torch.zeros(1)}  # not one of our checkpoints
    coco_ids = [c for c, name in COCO_CLASS_NAMES.items() if c and name != "N/A"]
    mapping, warning = script.label_map(torchvision_file, 91, COCO_CLASS_NAMES, _dataset(tmp_path, coco_ids),
                                        checkpoint="tv.pth")
    assert mapping == {label: label for label in range(1, 91)} and warning is None  # "N/A" ids are not categories
    with pytest.raises(InputError, match=r"tv.pth predicts 80 categories, .* has 1: the data lacks 79 of the "
                                         r"model's categories, ids 2 \(bicycle\), .* and 69 more"):
        script.label_map(torchvision_file, 91, COCO_CLASS_NAMES, _dataset(tmp_path, [1]), checkpoint="tv.pth")
    mapping, _ = script.label_map(torchvision_file, 4, {}, _dataset(tmp_path, [1, 2, 3]), checkpoint="tv.pth")
    assert mapping == {1: 1, 2: 2, 3: 3}
    with pytest.raises(InputError, match=r"no output for 1 of the data's categories, ids 4 \(motorcycle\)"):
        script.label_map(torchvision_file, 4, {}, _dataset(tmp_path, [1, 2, 3, 4]), checkpoint="tv.pth")


def test_batching_defaults_to_the_training_settings():
    script = load_evaluate_script()
    given = Namespace(batch_size=None, amp=None, threads=None)
    ours = {"model": {}, "config": {}, "num_classes": 3, "iteration": 5,
            "args": {"eval_batch_size": 4, "amp": "bf16", "threads": 1}}
    batching = script.evaluation_batching(ours, given)
    assert (batching.batch_size, batching.amp, batching.threads) == (4, "bf16", 1)
    assert batching.described == ("batch size 4 (the training's --eval-batch-size), amp bf16 (the training's "
                                  "--amp), threads 1 (the training's --threads)")
    flags = script.evaluation_batching(ours, Namespace(batch_size=1, amp="none", threads=2))
    assert (flags.batch_size, flags.amp, flags.threads) == (1, "none", 2)
    assert flags.described == "batch size 1 (--batch-size), amp none (--amp), threads 2 (--threads)"
    for weights in ({"roi_heads.box_predictor.cls_score.weight": torch.zeros(2, 1)}, {**ours, "args": {}}):
        fallback = script.evaluation_batching(weights, given)
        assert (fallback.batch_size, fallback.amp, fallback.threads) == (2, "none", 0)


class _OracleProposer(torch.nn.Module):
    """An RPN-only stand-in: the ground-truth boxes of whichever image it is given, as proposals (labels 1)."""

    def __init__(self, dataset):
        super().__init__()
        self.samples = [dataset[i] for i in range(len(dataset))]
        self.config = tiny_config()
        self.config.rpn_only = True

    def forward(self, images):
        outputs = []
        for image in images:
            target = next(t for img, t in self.samples if img.shape == image.shape and torch.equal(img, image))
            n = len(target["boxes"])
            outputs.append({"boxes": target["boxes"], "scores": torch.ones(n),
                            "labels": torch.ones(n, dtype=torch.int64)})
        return outputs


def test_proposals_are_scored_without_comparing_categories(val_set, tmp_path, capsys, monkeypatch):
    script = load_evaluate_script()
    given = []
    monkeypatch.setattr(script, "rpn_only_model", lambda model: given.append(model) or _OracleProposer(val_set))
    few = _checkpoint(tmp_path / "few.pt", {1: 1, 2: 2}, {0: "__background__", 1: "circle", 2: "square"})
    assert _run([str(few), *_data_flags(val_set), "--proposals"], tmp_path) == 0  # no category check: exit 0
    assert isinstance(given[0], FasterRCNNFPN) and given[0].num_classes == 3  # the checkpoint's detector
    metrics = json.loads((tmp_path / "out" / "proposals_metrics.json").read_text())
    assert set(metrics) == set(RECALL_NAMES) and metrics["AR1k"] == metrics["AR100"] == 1.0
    assert not (tmp_path / "out" / "evaluate_metrics.json").exists()
    out = capsys.readouterr().out
    assert f"evaluating proposals ({tiny_config().rpn.post_nms_top_n_test} per image at most) with batch size 2" in out
    assert format_recall(metrics) in out


def test_proposals_of_a_full_checkpoint(val_set, checkpoint, tmp_path, capsys):
    assert _run([str(checkpoint), *_data_flags(val_set), "--proposals", "--prefix", "rpn"], tmp_path) == 0
    metrics = json.loads((tmp_path / "out" / "rpn_metrics.json").read_text())
    assert set(metrics) == set(RECALL_NAMES) and all(-1.0 <= v <= 1.0 for v in metrics.values())
    assert "|  AR1k |" in capsys.readouterr().out


def test_fast_evaluates_the_optimized_model(val_set, checkpoint, tmp_path, capsys):
    assert _run([str(checkpoint), *_data_flags(val_set)], tmp_path) == 0
    eager = json.loads((tmp_path / "out" / "evaluate_results.json").read_text())
    assert _run([str(checkpoint), *_data_flags(val_set), "--fast"], tmp_path) == 0
    fast = json.loads((tmp_path / "out" / "evaluate_results.json").read_text())
    out = capsys.readouterr().out
    assert "fast: folded" in out and "dtype float32" in out
    assert len(eager) > 0 and len(fast) == len(eager)  # fp32: the same detections, to float rounding
    for a, b in zip(eager, fast):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert max(abs(x - y) for x, y in zip(a["bbox"], b["bbox"])) < 1e-3 and abs(a["score"] - b["score"]) < 1e-5


@pytest.mark.parametrize("flags, expected", [
    (["--fast-dtype", "bf16"], "--fast-dtype bf16 needs --fast"),
    (["--fast", "--amp", "bf16"], "--amp bf16 and --fast: give the precision of the optimized model as --fast-dtype"),
])
def test_fast_flag_errors(flags, expected, val_set, checkpoint, tmp_path, capsys):
    assert _run([str(checkpoint), *_data_flags(val_set), *flags], tmp_path) == 2
    assert expected in one_error_line(capsys, "evaluate.py")


@pytest.fixture
def set_with_a_corrupt_image(tmp_path):
    """A copy of the 3-image validation set (same categories) whose second image file is not an image."""
    paths = generate_synthetic_coco(tmp_path / "data", 2, num_val=3, seed=3, min_size=64, max_size=96,
                                    progress=False)
    bad = sorted(paths["val_images"].iterdir())[1]
    bad.write_bytes(b"\x89PNG not really")
    return CocoDetection(paths["val_images"], paths["val_annotations"], train=False), bad


def test_a_corrupt_image_is_named_with_the_flag_that_skips_it(set_with_a_corrupt_image, checkpoint, tmp_path,
                                                              capsys):
    dataset, bad = set_with_a_corrupt_image
    assert _run([str(checkpoint), *_data_flags(dataset)], tmp_path) == 2
    line = one_error_line(capsys, "evaluate.py")
    assert f"1 of 3 images in {dataset.images_dir} cannot be read, e.g. {bad.name}" in line
    assert line.endswith("or pass --skip-bad-images to leave them out")  # a flag evaluate.py accepts
    assert not (tmp_path / "out").exists()  # checked before any inference


def test_skip_bad_images_evaluates_the_others_and_counts_the_bad(set_with_a_corrupt_image, checkpoint, tmp_path,
                                                                 capsys):
    dataset, bad = set_with_a_corrupt_image
    with pytest.warns(UserWarning, match=f"skipping bad image files: 1 of 3 images .* {bad.name}"):
        assert _run([str(checkpoint), *_data_flags(dataset), "--skip-bad-images"], tmp_path) == 0
    assert "(2 images, 1 unreadable left out)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "out" / "evaluate_metrics.json").read_text())
    assert list(metrics) == [*METRIC_NAMES, "per_class"]
    results = json.loads((tmp_path / "out" / "evaluate_results.json").read_text())
    bad_id = next(i["id"] for i in dataset.coco.dataset["images"] if i["file_name"] == bad.name)
    assert results and bad_id not in {r["image_id"] for r in results}


@pytest.fixture(scope="module")
def mask_checkpoint(val_set, tmp_path_factory):
    torch.manual_seed(0)
    model = MaskRCNNFPN(val_set.num_classes, tiny_mask_config())
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "mask.pt", model=model, optimizer=None, scheduler=None,
                           scaler=None, iteration=0, label_to_category=val_set.label_to_category,
                           class_names=val_set.class_names)


def test_a_mask_rcnn_checkpoint_gets_box_and_mask_ap(val_set, mask_checkpoint, tmp_path, capsys):
    assert _run([str(mask_checkpoint), *_data_flags(val_set)], tmp_path) == 0
    metrics = json.loads((tmp_path / "out" / "evaluate_metrics.json").read_text())
    assert list(metrics) == [*METRIC_NAMES, *MASK_METRIC_NAMES, "per_class"]
    assert all(set(entry) == {"AP", "AP50", "AP75", "instances", "mask_AP", "mask_AP50"}
               for entry in metrics["per_class"].values())
    assert format_metrics(metrics) in capsys.readouterr().out  # two rows: box, mask; the per-class table
    results = json.loads((tmp_path / "out" / "evaluate_results.json").read_text())
    assert results and all(set(r["segmentation"]) == {"size", "counts"} for r in results)


def test_a_box_only_annotation_file_gives_box_ap_after_one_warning_line(val_set, mask_checkpoint, tmp_path, capsys):
    data = json.loads(val_set.annotations_file.read_text())
    for annotation in data["annotations"]:
        del annotation["segmentation"]
    boxes = _write(tmp_path / "boxes.json", json.dumps(data))
    assert _run([str(mask_checkpoint), "--images", str(val_set.images_dir), "--annotations", str(boxes)],
                tmp_path) == 0
    captured = capsys.readouterr()
    count = len(data["annotations"])
    assert [line for line in captured.err.splitlines() if "warning" in line] == [
        f"evaluate.py: warning: {boxes}: annotation id 1 has no segmentation ({count} of the {count} annotations of "
        "the 3 images evaluated lack a usable one): the masks cannot be scored, box AP only"]
    assert list(json.loads((tmp_path / "out" / "evaluate_metrics.json").read_text())) == [*METRIC_NAMES, "per_class"]
    assert "| mask |" not in captured.out and "|    AP |" in captured.out


def test_proposals_of_a_mask_rcnn_checkpoint_are_its_rpns(val_set, mask_checkpoint, tmp_path, capsys):
    """--proposals scores the RPN of Mask R-CNN's box part, as of a Faster R-CNN."""
    assert _run([str(mask_checkpoint), *_data_flags(val_set), "--proposals", "--prefix", "rpn"], tmp_path) == 0
    metrics = json.loads((tmp_path / "out" / "rpn_metrics.json").read_text())
    assert set(metrics) == set(RECALL_NAMES) and all(-1.0 <= v <= 1.0 for v in metrics.values())
    assert "|  AR1k |" in capsys.readouterr().out
