"""best.pt and early stopping: BestMetric's counting on hand-written values, the --best-metric check, best.pt written
from the live model and never pruned, early stop with its checkpoint and final outputs, and the same best.pt and
stop decision after --resume."""
import json
import math

import pytest
import torch

import fpn
from fpn.engine.best import BestMetric, check_best_metric
from fpn.engine.checkpoint import checkpoint_path, list_checkpoints, prune_checkpoints
from fpn.errors import InputError
from test_evaluate_script import load_evaluate_script
from test_train_script import load_train_script, tiny_args


def _updates(best, values):
    return [best.update({best.metric: value, "per_class": {"a": 1.0}}, it) for it, value in enumerate(values, 1)]


def test_higher_ap_is_better_ties_keep_the_earlier_and_patience_counts_evaluations():
    best = BestMetric("AP", patience=3)
    assert _updates(best, [0.1, 0.3, 0.2]) == [True, True, False]
    assert (best.value, best.iteration, best.since, best.exhausted) == (0.3, 2, 1, False)
    assert _updates(best, [0.3, 0.25]) == [False, False]  # a tie is no improvement
    assert (best.iteration, best.since, best.exhausted) == (2, 3, True)
    assert best.stop_line(5) == "early stop at iteration 5: AP did not improve for 3 evaluations (best 0.300 at " \
                                "iteration 2)"


def test_last_chance_is_the_evaluation_that_stops_the_run_unless_it_improves():
    best = BestMetric("AP", patience=2)
    assert not best.last_chance
    _updates(best, [0.3])
    assert not best.last_chance  # one evaluation without improvement still leaves another
    _updates(best, [0.2])
    assert best.last_chance and not best.exhausted
    _updates(best, [0.1])
    assert best.exhausted
    assert not BestMetric("AP", patience=0).last_chance  # no early stopping: no evaluation is the last by it


def test_lower_loss_is_better_and_a_non_finite_value_never_improves():
    best = BestMetric("val_loss")
    assert _updates(best, [float("nan"), 2.0, 1.5, math.inf, 1.6]) == [False, True, True, False, False]
    assert (best.value, best.iteration, best.since, best.exhausted) == (1.5, 3, 2, False)  # patience 0: never
    assert best.update({"AP": 0.5}, 6) is False  # the key missing: counted, not better


def test_state_round_trips_and_another_metric_starts_afresh(tmp_path):
    best = BestMetric("AP", patience=2)
    _updates(best, [0.2, 0.1])
    restored = BestMetric("AP", patience=2)
    restored.load_state_dict(best.state_dict())
    assert restored == best
    other = BestMetric("AP50")
    other.load_state_dict(best.state_dict())
    assert (other.value, other.iteration, other.since) == (None, None, 0)
    assert best.summary(tmp_path / "best.pt") == f"best AP 0.200 at iteration 1: {tmp_path / 'best.pt'}"
    assert best.record(tmp_path / "best.pt") == {"metric": "AP", "value": 0.2, "iter": 1,
                                                 "path": str(tmp_path / "best.pt")}


def test_an_unknown_metric_names_the_valid_keys():
    with pytest.raises(InputError) as caught:
        check_best_metric("mAP", ("AP", "AP50", "val_loss"))
    assert str(caught.value) == "--best-metric 'mAP' is not a key of this run's evaluation; valid for this " \
                                "detector: AP, AP50, val_loss"


def test_pruning_never_removes_best_pt(tmp_path):
    for it in (1, 2, 3):
        checkpoint_path(tmp_path, it).write_bytes(b"x")
    (tmp_path / "best.pt").write_bytes(b"best")
    prune_checkpoints(tmp_path, keep=1)
    assert [it for it, _ in list_checkpoints(tmp_path)] == [3] and (tmp_path / "best.pt").read_bytes() == b"best"


def test_a_bad_best_metric_stops_before_training(tmp_path, capsys):
    run = tmp_path / "run"
    assert load_train_script().main(tiny_args(run, "--best-metric", "mask_AP", iters=1)) == 2
    assert "--best-metric 'mask_AP' is not a key of this run's evaluation; valid for this detector: AP, AP50, " \
           "AP75, APs, APm, APl, val_loss" in capsys.readouterr().err
    assert not (run / "synthetic").exists()


def test_early_stop_without_periodic_evaluations_stops_before_training(tmp_path, capsys):
    run = tmp_path / "run"
    assert load_train_script().main(tiny_args(run, "--early-stop", "2", "--eval-every", "0", iters=1)) == 2
    assert "--early-stop 2 counts evaluations, and with --eval-every 0 there is only the final one: give " \
           "--eval-every N" in capsys.readouterr().err
    assert not run.exists()


def test_best_pt_is_the_best_evaluation_kept_by_keep_checkpoints_and_readable(tmp_path, capsys):
    run = tmp_path / "run"
    argv = tiny_args(run, "--eval-every", "1", "--checkpoint-every", "1", "--keep-checkpoints", "1",
                     "--best-metric", "val_loss", iters=4)
    assert load_train_script().main(argv) == 0
    out = capsys.readouterr().out
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert [r["iter"] for r in evals] == [1, 2, 3, 4]
    winner = min(evals, key=lambda r: (r["val_loss"], r["iter"]))
    best = torch.load(run / "best.pt", weights_only=True)
    record = {"metric": "val_loss", "value": winner["val_loss"], "iter": winner["iter"], "path": str(run / "best.pt")}
    assert best["best"] == record and best["iteration"] == winner["iter"] and best["optimizer"] is None
    assert json.loads((run / "final_metrics.json").read_text())["best"] == record
    assert f"best val_loss {winner['val_loss']:.3f} at iteration {winner['iter']}: {run / 'best.pt'}" in out
    assert [it for it, _ in list_checkpoints(run)] == [3, 4]  # the newest periodic one and the final one
    model, names = fpn.load_detector(run / "best.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best["model"].items())
    assert names == {int(k): v for k, v in best["class_names"].items()}
    assert load_evaluate_script().main([str(run / "best.pt"), "--images", str(run / "synthetic" / "val2017"),
                                        "--annotations", str(run / "synthetic" / "annotations" /
                                                             "instances_val2017.json"),
                                        "--device", "cpu", "--workers", "0", "--output-dir", str(tmp_path)]) == 0


def _early_stop_args(run, synthetic, iters):
    # LR 1e-12 (0 is refused): the weights stay as they are to float precision, every evaluation ties with the
    # first, which stays the best
    return tiny_args(run, "--synthetic-dir", str(synthetic), "--lr", "1e-12", "--eval-every", "1", "--checkpoint-every",
                     "2", "--early-stop", "2", iters=iters)


def test_early_stop_writes_a_checkpoint_and_the_final_outputs_and_resumes_to_the_same_decision(tmp_path, capsys):
    train, synthetic = load_train_script(), tmp_path / "synthetic"
    full, part = tmp_path / "full", tmp_path / "part"
    assert train.main(_early_stop_args(full, synthetic, 6)) == 0
    out = capsys.readouterr().out
    ap = json.loads((full / "eval_0000001_metrics.json").read_text())["AP"]
    assert f"early stop at iteration 3: AP did not improve for 2 evaluations (best {ap:.3f} at iteration 1)" in out
    assert [it for it, _ in list_checkpoints(full)] == [2, 3]  # the stopped iteration's checkpoint
    final = json.loads((full / "final_metrics.json").read_text())
    assert final["iter"] == 3 and final["best"]["iter"] == 1
    assert all((full / name).is_file() for name in ("detections.png", "losses.png", "ap.png"))
    best = torch.load(full / "best.pt", weights_only=True)
    assert best["iteration"] == 1 and not checkpoint_path(full, 1).exists()  # written from the live model
    stopped = torch.load(checkpoint_path(full, 3), weights_only=True)
    assert stopped["best"] == {"metric": "AP", "patience": 2, "value": ap, "iteration": 1, "since": 2}

    # killed after iteration 2 (a run of 2 iterations), then resumed: the same best.pt and the same stop
    assert train.main(_early_stop_args(part, synthetic, 2)) == 0
    assert train.main([*_early_stop_args(part, synthetic, 6), "--resume"]) == 0
    assert "early stop at iteration 3" in capsys.readouterr().out
    resumed = torch.load(part / "best.pt", weights_only=True)
    assert resumed["best"]["iter"] == best["best"]["iter"] == 1 and resumed["best"]["value"] == ap
    assert all(torch.equal(resumed["model"][k], v) for k, v in best["model"].items())
    assert torch.load(checkpoint_path(part, 3), weights_only=True)["best"] == stopped["best"]
