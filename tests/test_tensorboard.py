"""--tensorboard: the event files hold the metrics.jsonl numbers (read back with tensorboard's EventAccumulator), the
detections picture at each evaluation and the final plots; without the package, one line before training."""
import json
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fpn.engine.tensorboard import scalar_tags
from test_train_script import load_train_script, tiny_args


def test_scalar_tags_split_training_and_evaluation_lines_and_skip_what_is_not_a_number():
    assert scalar_tags({"iter": 5, "lr": 0.01, "loss": 2.5, "time": 0.1}) == \
        {"lr": 0.01, "train/loss": 2.5, "train/time": 0.1}
    assert scalar_tags({"iter": 5, "AP": 0.25, "val_loss": 1.0, "per_class": {"cat": {"AP": 0.5}}, "ok": True,
                        "note": "x"}) == {"val/AP": 0.25, "val/val_loss": 1.0}


def _events(run):
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_event_files_hold_the_metrics_jsonl_numbers_and_the_pictures(tmp_path):
    run = tmp_path / "run"
    assert load_train_script().main(tiny_args(run, "--eval-every", "2", "--tensorboard", iters=4)) == 0
    expected = {}  # tag -> {step: value}
    for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        for tag, value in scalar_tags(record).items():
            expected.setdefault(tag, {})[record["iter"]] = value
    events = _events(run)
    assert {"lr", "train/loss", "train/loss_classifier", "val/AP", "val/val_loss", "val/val_loss_objectness"} \
        <= set(expected) == set(events.Tags()["scalars"])
    for tag, points in expected.items():
        got = {event.step: event.value for event in events.Scalars(tag)}
        assert got == {step: np.float32(value) for step, value in points.items()}, tag  # stored as float32
    assert [event.step for event in events.Images("detections")] == [2, 4]
    assert {"plots/losses", "plots/lr", "plots/ap"} <= set(events.Tags()["images"])


def test_a_resumed_run_hides_the_events_after_its_checkpoint(tmp_path):
    train, run = load_train_script(), tmp_path / "run"
    assert train.main(tiny_args(run, "--checkpoint-every", "2", "--tensorboard", iters=3)) == 0  # lines 1..3
    (run / "checkpoint_0000003.pt").unlink()  # as if killed after iteration 3, before its checkpoint
    assert train.main(tiny_args(run, "--checkpoint-every", "2", "--tensorboard", "--resume", iters=4)) == 0
    losses = {}
    for event in _events(run).Scalars("train/loss"):
        losses.setdefault(event.step, []).append(event.value)
    logged = {r["iter"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if "loss" in r}
    assert sorted(losses) == sorted(logged) == [1, 2, 3, 4]
    assert losses == {k: [np.float32(v)] for k, v in logged.items()}  # step 3 once: the first run's is purged


def test_without_the_package_one_line_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    run = tmp_path / "run"
    assert load_train_script().main(tiny_args(run, "--tensorboard", iters=1)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['train.py: error: --tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"']
    assert not (run / "synthetic").exists()


@pytest.mark.parametrize("value, on", [("true", True), ("false", False)])
def test_the_flag_takes_an_optional_value(value, on):
    from test_train_script import job_of

    assert job_of(["--preset", "cpu-demo", "--tensorboard", value]).preset.tensorboard is on
    assert job_of(["--preset", "cpu-demo", "--tensorboard"]).preset.tensorboard is True
    assert job_of(["--preset", "cpu-demo"]).preset.tensorboard is False
