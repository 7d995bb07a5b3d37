"""benchmarks/learning.py (scripts/benchmark.py --learning): the training clock and AP curve read from
metrics.jsonl, the AP at a budget, the time to a target AP, and a --quick run of both recipes."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.detector import main
from benchmarks.learning import ap_at, compare, learning_curve, read_metrics, seconds_to_reach
from fpn.engine.checkpoint import load_checkpoint
from fpn.engine.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]

# Training lines (mean s/iteration since the previous training line) and evaluation lines, as the trainer writes
# them: log_every 10, evaluations every 20 and at the end (50), one block ending off the log grid (35).
PREVIOUS_METRICS = [
    {"iter": 10, "lr": 0.01, "loss": 2.0, "time": 0.5, "data_time": 0.125},  # clock 5.0
    {"iter": 20, "lr": 0.01, "loss": 1.5, "time": 0.25, "data_time": 0.125},  # 7.5
    {"iter": 20, "AP": 0.1, "AP50": 0.2, "val_loss": 1.0},
    {"iter": 30, "lr": 0.01, "loss": 1.0, "time": 1.0, "data_time": 0.125},  # 17.5
    {"iter": 35, "lr": 0.01, "loss": 1.0, "time": 2.0, "data_time": 0.125},  # 27.5
    {"iter": 40, "lr": 0.01, "loss": 0.9, "time": 0.5, "data_time": 0.125},  # 30.0
    {"iter": 40, "AP": 0.3, "AP50": 0.5, "val_loss": 0.8},
    {"iter": 50, "lr": 0.001, "loss": 0.8, "time": 1.0, "data_time": 0.125},  # 40.0
    {"iter": 50, "AP": 0.25, "AP50": 0.45, "val_loss": 0.8},
]
NEW_METRICS = [
    {"iter": 10, "lr": 0.02, "loss": 1.0, "time": 0.25, "data_time": 0.0},  # 2.5
    {"iter": 10, "AP": 0.125},
    {"iter": 20, "lr": 0.02, "loss": 0.5, "time": 0.25, "data_time": 0.0},  # 5.0
    {"iter": 20, "AP": 0.5},
]


def summary(records):
    curve, train_s, _ = learning_curve(records)
    return {"curve": curve, "train_s": train_s, "final_ap": curve[-1][2]}


def test_the_clock_sums_time_times_iterations_and_skips_evaluations(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in PREVIOUS_METRICS) + "\n")
    curve, train_s, iters = learning_curve(read_metrics(path))
    assert curve == [(20, 7.5, 0.1), (40, 30.0, 0.3), (50, 40.0, 0.25)]
    assert (train_s, iters) == (40.0, 50)
    assert learning_curve([]) == ([], 0.0, 0)


def test_ap_at_a_budget_is_the_last_evaluation_within_it():
    curve, _, _ = learning_curve(PREVIOUS_METRICS)
    assert ap_at(curve, 7.4) is None  # before the first evaluation
    assert ap_at(curve, 7.5) == 0.1  # an evaluation exactly at the budget counts
    assert ap_at(curve, 29.9) == 0.1
    assert ap_at(curve, 30.0) == 0.3
    assert ap_at(curve, 39.0) == 0.3
    assert ap_at(curve, 600.0) == 0.25  # finished before the budget: its final AP


def test_seconds_to_reach_is_the_first_evaluation_at_or_above_the_target():
    curve, _, _ = learning_curve(PREVIOUS_METRICS)
    assert seconds_to_reach(curve, 0.1) == 7.5
    assert seconds_to_reach(curve, 0.25) == 30.0  # 0.3 at 40 iterations, before the final 0.25
    assert seconds_to_reach(curve, 0.31) is None


def test_compare_gives_the_budget_rows_and_the_speedup():
    previous, new = summary(PREVIOUS_METRICS), summary(NEW_METRICS)
    result = compare(previous, new, [0.0625, 0.5, 2.0])  # 3.75 s, 30 s, 120 s
    assert result["budgets"] == [
        {"minutes": 0.0625, "previous_ap": None, "new_ap": 0.125, "ratio": None},
        {"minutes": 0.5, "previous_ap": 0.3, "new_ap": 0.5, "ratio": 0.5 / 0.3},
        {"minutes": 2.0, "previous_ap": 0.25, "new_ap": 0.5, "ratio": 2.0},  # both finished: final APs
    ]
    # new reaches the previous final 0.25 at its 20-iteration evaluation, 5 s: 40 / 5 = 8x sooner
    assert (result["target_ap"], result["new_s_to_target"], result["speedup_to_target"]) == (0.25, 5.0, 8.0)
    swapped = compare(new, previous, [0.5])  # the previous run's best 0.3 never reaches 0.5
    assert (swapped["target_ap"], swapped["new_s_to_target"], swapped["speedup_to_target"]) == (0.5, None, None)
    assert swapped["budgets"][0]["ratio"] == 0.3 / 0.5


@pytest.mark.parametrize("argv, message", [
    (["--learning", "--amp", "--deploy"], "drop --amp, --deploy"),
    (["--learning", "--budgets", "2,0"], "--budgets must be minutes > 0"),
    (["--learning", "--budgets", "2,x"], "--budgets must be minutes > 0"),
    (["--learning", "--eval-every", "0"], "--eval-every must be >= 1"),
    (["--budgets", "2", "--only", "new"], "--budgets, --only: flag(s) of --learning"),
])
def test_learning_flags_are_checked_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_quick_learning_run_without_torchvision_writes_both_runs(tmp_path):
    """Both recipes train (20 iterations each) with torchvision unimportable in the benchmark's process; the JSON
    holds both curves, read back from each run's metrics.jsonl, and the previous recipe's flags reached train.py."""
    out, runs = tmp_path / "learning.json", tmp_path / "runs"
    argv = ["benchmark.py", "--learning", "--quick", "--output-dir", str(runs), "--json", str(out)]
    code = (f"import runpy, sys; sys.modules['torchvision'] = None; sys.argv = {argv!r}; "
            f"runpy.run_path({str(ROOT / 'scripts' / 'benchmark.py')!r}, run_name='__main__')")
    # One compute thread (threads 0 resolves to it): several OpenMP threads crawl on cores other jobs keep busy
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "\nLearning per CPU-minute, cpu-demo: " in done.stdout  # after the synthetic set's generation line
    assert report["machine"]["torch"] and report["machine"]["torchvision"] is None
    assert set(report["runs"]) == {"previous", "new"}
    for name, run in report["runs"].items():
        curve, train_s, _ = learning_curve(read_metrics(runs / name / "metrics.jsonl"))
        assert run["curve"] == [list(point) for point in curve] and [p[0] for p in curve] == [10, 20]
        assert (run["train_s"], run["iters"]) == (train_s, 20) and train_s > 0
        final = json.loads((runs / name / "final_metrics.json").read_text())
        assert run["final_ap"] == final["AP"] and math.isfinite(run["final_ap"])
        assert all(math.isfinite(ap) for _, _, ap in run["curve"])
    assert [row["minutes"] for row in report["budgets"]] == [0.05, 0.1, 0.5]
    assert report["target_ap"] == report["runs"]["previous"]["final_ap"]
    checkpoint = load_checkpoint(runs / "previous" / "checkpoint_0000020.pt")
    previous = checkpoint["args"]
    assert checkpoint["config"]["backbone"]["zero_init_residual"] is True
    assert (previous["amp"], previous["threads"], previous["workers"], previous["cache_images"]) == ("none", 1, 1,
                                                                                                       False)
    assert (previous["steps"], previous["warmup_iters"], previous["lr"]) == ([600, 750], 100, 0.02)
    new, preset = load_checkpoint(runs / "new" / "checkpoint_0000020.pt")["args"], get_preset("cpu-demo")
    assert (new["steps"], new["workers"], new["cache_images"]) == (list(preset.steps), preset.workers,
                                                                   preset.cache_images)
