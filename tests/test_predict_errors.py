"""`python -m fpn.predict` with weights that cannot be loaded and bad flags: one line, exit code 2, no traceback."""
import json
import shutil

import pytest
import torch

import fpn.deploy.predictions
from fpn.errors import InputError
from fpn.deploy.predictions import RESULTS_FILE, read_label_map
from fpn.tools.predict import build_parser, main
from test_predict import LABEL_TO_CATEGORY, _write_image, checkpoint  # noqa: F401 (a fixture)


class _RunsCode:
    """Unpickling this would call print: a file holding it must be refused, not executed."""

    def __reduce__(self):
        return (print, ("unpickling ran code",))


def _empty(path, checkpoint):
    path.write_bytes(b"")


def _foreign_torch_file(path, checkpoint):
    torch.save({"foo": 1}, path)


def _text(path, checkpoint):
    path.write_text("model weights are in the other folder\n")


def _refused_pickle(path, checkpoint):
    torch.save({"model": _RunsCode()}, path)


def _truncated(path, checkpoint):
    data = checkpoint.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut short


def _wrong_tensors(path, checkpoint):
    obj = torch.load(checkpoint, weights_only=True)
    obj["model"] = {k: v for i, (k, v) in enumerate(obj["model"].items()) if i % 2}  # half the tensors lost
    torch.save(obj, path)


def _folder(path, checkpoint):
    path.mkdir()


BAD_WEIGHTS = {  # how the file is made -> what the message says about it
    "empty": (_empty, "the file is empty"),
    "foreign torch file": (_foreign_torch_file, "neither a training checkpoint of this project nor a torchvision"),
    # (the reason's wording for a text file depends on its first byte: torch's unpickler names it as an
    # unsupported operand, which fpn.io.weights_file reports as "refused" or "not a torch weights file")
    "text file": (_text, ""),
    "refused pickle": (_refused_pickle, "refused, the file holds Python objects"),
    "truncated": (_truncated, "unreadable or truncated torch file"),
    "tensors missing": (_wrong_tensors, "cannot build a detector from it"),
    "folder": (_folder, "not a file"),
    "missing": (lambda path, checkpoint: None, "no such file"),
}


def one_error_line(capsys, prog="predict"):
    """The single line a tool wrote to stderr, checked to be `<prog>: error: ...` without a traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ")
    return lines[0]


@pytest.mark.parametrize("kind", sorted(BAD_WEIGHTS))
def test_weights_that_cannot_be_loaded_exit_two_with_one_line(kind, checkpoint, tmp_path, capsys):
    make, reason = BAD_WEIGHTS[kind]
    weights = tmp_path / "weights.pt"
    make(weights, checkpoint)
    image = _write_image(tmp_path / "one.png", 0)
    code = main([str(image), "--weights", str(weights), "--output-dir", str(tmp_path / "out"), "--device", "cpu",
                 "--no-progress"])
    line = one_error_line(capsys)
    assert code == 2
    assert str(weights) in line and reason in line
    assert not (tmp_path / "out").exists()  # stopped before any work
    assert "unpickling ran code" not in capsys.readouterr().out


def test_debug_shows_the_exception(tmp_path):
    weights = tmp_path / "empty.pt"
    weights.write_bytes(b"")
    with pytest.raises(InputError, match="the file is empty"):
        main([str(_write_image(tmp_path / "one.png", 0)), "--weights", str(weights), "--debug"])


@pytest.mark.parametrize("flags, message", [
    (["--device", "gpu0"], "unknown device 'gpu0'"),
    (["--score-threshold", "1.5"], "--score-threshold must be in [0, 1], got 1.5"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
])
def test_bad_flag_values_exit_two_with_one_line(flags, message, checkpoint, tmp_path, capsys):
    image = _write_image(tmp_path / "one.png", 0)
    assert main([str(image), "--weights", str(checkpoint), "--output-dir", str(tmp_path / "out"), *flags]) == 2
    assert message in one_error_line(capsys)


def test_label_map_read_memory_mapped_and_bad_files_named(checkpoint, tmp_path, monkeypatch):
    calls = []

    def spy(path, what="weights file", *, mmap=False):
        calls.append(mmap)
        return real(path, what, mmap=mmap)

    real = fpn.deploy.predictions.read_weights
    monkeypatch.setattr(fpn.deploy.predictions, "read_weights", spy)
    assert read_label_map(checkpoint, 4) == LABEL_TO_CATEGORY
    assert calls == [True]
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=f"weights file {empty}: the file is empty"):
        read_label_map(empty, 4)


def test_default_output_dir_is_under_runs(checkpoint, tmp_path, monkeypatch):
    assert build_parser().parse_args(["a.png", "--weights", "w.pt"]).output_dir == "runs/predict"
    image = _write_image(tmp_path / "one.png", 0)
    shutil.copy(checkpoint, tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    assert main([str(image), "--weights", "w.pt", "--device", "cpu", "--no-progress"]) == 0
    assert isinstance(json.loads((tmp_path / "runs" / "predict" / RESULTS_FILE).read_text()), list)
    assert (tmp_path / "runs" / "predict" / "one.png").is_file()


def test_an_rpn_only_checkpoint_predicts_class_agnostic_proposals(tmp_path, capsys):
    from fpn.engine.checkpoint import save_checkpoint
    from fpn.detectors.faster_rcnn import FasterRCNNFPN
    from test_checkpoint import tiny_config

    config = tiny_config()
    config.rpn_only = True
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=3, config=config)
    weights = save_checkpoint(tmp_path / "rpn.pt", model=model, optimizer=None, scheduler=None, scaler=None,
                              iteration=0, label_to_category={1: 7, 2: 9}, class_names={1: "cat", 2: "dog"})
    image = _write_image(tmp_path / "img.png", seed=0)
    out = tmp_path / "out"
    assert main([str(image), "--weights", str(weights), "--output-dir", str(out), "--no-progress"]) == 0
    results = json.loads((out / "detections.json").read_text())
    assert results and {r["category_name"] for r in results} == {"object"}
    assert all("label" in r and "category_id" not in r for r in results)


def test_labels_without_a_category_are_named_and_left_out(tmp_path, capsys):
    """Weights whose label map lacks a label the model returns (here label 2, which wins every RoI; a barely
    trained FCOS once returned label 0): the run completes, one warning names the label and the count."""
    from fpn.engine.checkpoint import save_checkpoint
    from test_predict import CLASS_NAMES, tiny_model

    weights = save_checkpoint(tmp_path / "w.pt", model=tiny_model(), optimizer=None, scheduler=None, scaler=None,
                              iteration=0, label_to_category={1: 11, 3: 33}, class_names=CLASS_NAMES)
    images = [_write_image(tmp_path / f"{i}.png", i) for i in range(2)]
    out = tmp_path / "out"
    assert main([*map(str, images), "--weights", str(weights), "--output-dir", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if line.startswith("predict: warning:")]
    assert len(warning) == 1 and "(label 2: " in warning[0] and "known labels: [1, 3]" in warning[0], captured.err
    results = json.loads((out / RESULTS_FILE).read_text())
    assert {r["category_id"] for r in results} <= {11, 33}
    left_out = int(warning[0].split("left out ")[1].split()[0])
    assert left_out > 0 and f"{len(results)} detection(s)" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", RESULTS_FILE]


@pytest.mark.parametrize("error, code", [(OSError("No space left on device"), 2), (KeyboardInterrupt(), 130)])
@pytest.mark.parametrize("existing", [False, True])
def test_a_run_stopped_mid_way_leaves_the_output_folder_as_it_was(error, code, existing, checkpoint, tmp_path,
                                                                  monkeypatch, capsys):
    """An error while the second of three images is drawn: no partial folder (pictures without detections.json)
    is left, and an output folder of an earlier run keeps its files untouched."""
    images = [_write_image(tmp_path / f"{i}.png", i) for i in range(3)]
    out = tmp_path / "runs" / "out"
    if existing:
        out.mkdir(parents=True)
        (out / RESULTS_FILE).write_text("[]")
        (out / "0.png").write_bytes(b"an earlier picture")
    drawn = []
    real_draw = fpn.deploy.predictions.draw_detections

    def draw_then_fail(*args, **kwargs):
        drawn.append(1)
        if len(drawn) == 2:
            raise error
        return real_draw(*args, **kwargs)

    monkeypatch.setattr(fpn.deploy.predictions, "draw_detections", draw_then_fail)
    assert main([*map(str, images), "--weights", str(checkpoint), "--output-dir", str(out), "--no-progress"]) == code
    assert len(drawn) == 2
    if existing:
        assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no staging folder beside it
        assert (out / RESULTS_FILE).read_text() == "[]" and (out / "0.png").read_bytes() == b"an earlier picture"
        assert sorted(p.name for p in out.iterdir()) == ["0.png", RESULTS_FILE]
    else:
        assert not (tmp_path / "runs").exists()  # nor the parent folder made for it
    capsys.readouterr()
    monkeypatch.setattr(fpn.deploy.predictions, "draw_detections", real_draw)
    assert main([*map(str, images), "--weights", str(checkpoint), "--output-dir", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "2.png", RESULTS_FILE]
    assert len(json.loads((out / RESULTS_FILE).read_text())) > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]
