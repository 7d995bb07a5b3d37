"""Tests of scripts/train.py (flags, data paths) and the helpers the other training tests share."""
import json
import sys
from pathlib import Path

import pytest

from fpn.engine.presets import synthetic_recipe
from fpn.engine.training_data import dataset_paths



def load_train_script():
    """The training tool, fpn.tools.train (scripts/train.py is its door): parse_args, training_job, main."""
    from fpn.tools import train

    return train


def job_of(argv):
    """The TrainingJob of a command line."""
    train = load_train_script()
    return train.training_job(train.parse_args(argv))


def paths_of(job):
    """The data paths of a job (the synthetic set generated when it has no data)."""
    return dataset_paths(job.data, Path(job.output_dir), synthetic_recipe(job.preset))


TINY_MODEL = [
    "--backbone.depth", "18", "--backbone.width", "16", "--backbone.gn-groups", "8",
    "--fpn.out-channels", "32", "--roi-heads.representation-size", "64",
    "--rpn.pre-nms-top-n-train", "200", "--rpn.post-nms-top-n-train", "100",
    "--rpn.pre-nms-top-n-test", "100", "--rpn.post-nms-top-n-test", "50",
    "--rpn.batch-size-per-image", "64", "--roi-heads.batch-size-per-image", "32",
    "--input.min-size", "64", "--input.max-size", "96", "--input.train-min-sizes", "64,72",
]


def tiny_args(output_dir, *extra, iters=4):
    """Command line of a short CPU run on a 6-image synthetic set generated in OUTPUT_DIR/synthetic."""
    return [
        "--preset", "cpu-demo", "--output-dir", str(output_dir), "--device", "cpu", "--iters", str(iters),
        "--batch-size", "2", "--workers", "0", "--log-every", "1", "--warmup-iters", "2", "--steps", "3",
        "--synthetic-train-images", "6", "--synthetic-val-images", "2", "--synthetic-image-size", "64",
        "--eval-batch-size", "2", *TINY_MODEL, *extra,
    ]


def test_preset_values_are_defaults_and_flags_override_them():
    job = job_of(["--preset", "1x", "--coco-root", "/data/coco"])
    preset = job.preset
    assert (preset.iters, preset.lr, preset.steps, preset.batch_size, preset.amp) == (90_000, 0.02, (60_000, 80_000), 2, "none")
    assert preset.model.input.train_min_sizes == (640, 672, 704, 736, 768, 800)
    assert job.preset_name == "1x" and job.data.coco_root == "/data/coco"
    preset = job_of(["--preset", "1x", "--coco-root", "/data/coco", "--iters", "100", "--steps", "50,80", "--amp", "bf16",
                     "--backbone.depth", "101", "--backbone-weights", "r101.pth", "--channels-last", "false"]).preset
    assert (preset.iters, preset.steps, preset.amp, preset.model.channels_last) == (100, (50, 80), "bf16", False)
    assert preset.model.backbone.depth == 101 and preset.model.backbone.weights == "r101.pth"
    assert preset.model.input.min_size == 800  # untouched: the preset's


def test_bad_flag_values_exit_with_a_message(capsys):
    train = load_train_script()
    for argv, message in ((["--preset", "cpu-demo", "--amp", "fp8"], "--amp must be none, bf16, fp16 or auto, got 'fp8'"),
                          (["--preset", "cpu-demo", "--iters", "0"], "--iters must be >= 1, got 0"),
                          (["--preset", "2x"], "invalid choice: '2x'")):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert message in capsys.readouterr().err


def test_block_ends_stop_at_checkpoints_evaluations_and_the_end():
    from fpn.engine.trainer import block_ends

    assert block_ends(0, 10, (4, 0)) == [4, 8, 10]
    assert block_ends(0, 12, (4, 6)) == [4, 6, 8, 12]
    assert block_ends(5, 12, (4, 6)) == [6, 8, 12]
    assert block_ends(12, 12, (4, 6)) == [12]


def test_partial_data_flags_are_an_error(tmp_path):
    job = job_of(["--preset", "cpu-demo", "--output-dir", str(tmp_path), "--train-images", "x"])
    with pytest.raises(ValueError, match="give all of --train-images"):
        paths_of(job)
    job = job_of(["--preset", "1x", "--coco-root", "/data/coco"])
    assert paths_of(job)["val_annotations"] == Path("/data/coco/annotations/instances_val2017.json")


def test_synthetic_set_is_generated_once_per_recipe(tmp_path):
    job = job_of(tiny_args(tmp_path))
    paths = paths_of(job)
    assert paths["train_images"] == tmp_path / "synthetic" / "train2017"
    assert len(list(paths["train_images"].iterdir())) == 6 and len(list(paths["val_images"].iterdir())) == 2
    stamp = paths["train_annotations"].stat().st_mtime_ns
    paths_of(job)
    assert paths["train_annotations"].stat().st_mtime_ns == stamp  # same recipe: reused
    paths_of(job_of(tiny_args(tmp_path, "--synthetic-val-images", "3")))
    assert len(list(paths["val_images"].iterdir())) == 3


def test_a_preset_is_required_and_a_coco_preset_needs_data(capsys):
    train = load_train_script()
    for argv, message in (([], "choose a --preset: cpu-demo"),
                          (["--preset", "paper"], "--preset paper trains ResNet-50 at 800 px on COCO: give --coco-root")):
        with pytest.raises(SystemExit) as info:
            train.parse_args(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_the_preset_help_and_the_missing_preset_error_name_every_preset(capsys):
    from fpn.engine.presets import PRESETS

    train = load_train_script()
    with pytest.raises(SystemExit):
        train.parse_args([])
    err = capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps after hyphens
    preset_help = help_text[help_text.index("--preset NAME defaults"):][:300]
    listed = err.split("choose a --preset: ")[1].split(" (see --help)")[0].replace(" or ", ", ").split(", ")
    assert sorted(listed) == sorted(PRESETS), err
    for name in PRESETS:
        assert name in preset_help, (name, preset_help)


def test_help_says_whose_values_it_shows(capsys):
    train = load_train_script()
    for argv, title in ((["--help"], "training (defaults shown: --preset cpu-demo's, as no --preset was given;"),
                        (["--preset", "paper", "--help"], "training (defaults: --preset paper's values)")):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert title in capsys.readouterr().out


def test_missing_matplotlib_skips_the_plots_with_a_line_saying_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    run = tmp_path / "run"
    assert load_train_script().main(tiny_args(run, iters=1)) == 0
    out = capsys.readouterr().out
    assert "plots skipped (losses.png, lr.png, ap.png): matplotlib is not installed; pip install -e \".[viz]\"" in out
    assert not (run / "losses.png").exists() and (run / "detections.png").exists()


def test_an_rpn_only_run_is_scored_by_proposal_recall(tmp_path):
    run = tmp_path / "run"
    assert load_train_script().main(tiny_args(run, "--rpn-only", "true", "--variant", "c5", iters=2)) == 0
    final = json.loads((run / "final_metrics.json").read_text())
    recall = {"AR100", "AR1k", "AR_s", "AR_m", "AR_l"}
    assert set(final) == {"iter", "best", "val_loss_objectness", "val_loss_rpn_box_reg", "val_loss", *recall}
    assert all(-1.0 <= final[k] <= 1.0 for k in recall)
    assert final["best"]["metric"] == "AR1k" and final["best"]["iter"] == 2  # an RPN's default: AR1k, not AP
    assert not (run / "detections.png").exists()  # proposals have no classes to draw
