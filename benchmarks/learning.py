"""--learning: how much a CPU demo recipe learns per minute of training, this release's against the previous one's
(issue "Twice the learning per CPU-minute").

    python scripts/benchmark.py --learning --json runs/learning.json      # cpu-demo: two full demo runs, ~12 min
    python scripts/benchmark.py --learning --preset fcos-cpu-demo --budgets 4,8,16
    python scripts/benchmark.py --learning --only new                     # rerun "new", read "previous" from disk
    python scripts/benchmark.py --learning --quick --json /tmp/l.json     # 20 iterations each: a smoke test

Both recipes train the demo model on this machine, one right after the other (previous, then new), each as its own
`scripts/train.py` process on one shared synthetic set (generated before either starts): "new" is the preset as it
is, "previous" the preset plus PREVIOUS_RECIPES[preset]. Neither's iterations or schedule are changed (--quick
shortens both alike); an evaluation every --eval-every iterations draws the AP curve.

The clock is training time only: the sum over metrics.jsonl's training lines of `time` (mean seconds per iteration
since the previous line, data loading included) times their iterations (fpn/engine/loop.py, train_iterations).
Evaluations, checkpoints, data generation and process start are outside it; the process's wall time is recorded
for information. A recipe's AP at a budget of B minutes is that of its last evaluation whose clock is <= B (a run
that finished sooner: its final AP); "minutes to the previous final AP" is the new run's clock at its first
evaluation with AP >= the previous run's final AP (None: never reached).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from benchmarks.report import machine_info, write_json
from fpn.engine.checkpoint import checkpoint_path, load_checkpoint
from fpn.engine.presets import get_preset, synthetic_recipe
from fpn.engine.training_data import DataSource, dataset_paths

# The cpu-demo recipe of the previous release (800 iterations of fp32 on one compute thread, the data loader's
# worker on the second core, images decoded at every read), as flags on top of this release's cpu-demo: everything
# else (model, input size, synthetic set) is the current preset's.
PREVIOUS_DEMO_FLAGS = ("--amp", "none", "--threads", "1", "--workers", "1", "--cache-images", "false",
                       "--backbone.zero-init-residual", "true", "--iters", "800", "--steps", "600,750",
                       "--lr", "0.02", "--warmup-iters", "100", "--batch-size", "4")
# fcos-cpu-demo's recipe of the previous release: cpu-demo's, on two threads and twice the iterations.
PREVIOUS_FCOS_DEMO_FLAGS = ("--amp", "none", "--threads", "2", "--workers", "1", "--cache-images", "false",
                            "--backbone.zero-init-residual", "true", "--iters", "1600", "--steps", "1200,1500",
                            "--lr", "0.02", "--warmup-iters", "100", "--batch-size", "4")
PREVIOUS_RECIPES = {"cpu-demo": PREVIOUS_DEMO_FLAGS, "fcos-cpu-demo": PREVIOUS_FCOS_DEMO_FLAGS}
RUNS = ("previous", "new")  # the order they train in

DEFAULT_BUDGETS_MIN = (2.0, 4.0, 8.0)
DEFAULT_EVAL_EVERY = 100
QUICK_ITERS, QUICK_TRAIN_IMAGES, QUICK_VAL_IMAGES = 20, 16, 8  # --quick: both runs this short, on a tiny set
# after each recipe's own flags: the last of a flag wins in train.py's parser
QUICK_FLAGS = ("--iters", str(QUICK_ITERS), "--synthetic-train-images", str(QUICK_TRAIN_IMAGES),
               "--synthetic-val-images", str(QUICK_VAL_IMAGES))
QUICK_BUDGETS_MIN = (0.05, 0.1, 0.5)
QUICK_EVAL_EVERY = 10
TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train.py"

Curve = List[Tuple[int, float, float]]  # (iteration, training clock s, AP) per evaluation


def read_metrics(path: Path) -> List[dict]:
    """The records of a metrics.jsonl, in file order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def learning_curve(records: Sequence[dict]) -> Tuple[Curve, float, int]:
    """The AP curve on the training clock.

    Args:
        records: metrics.jsonl's lines: training lines {"iter", "time" (mean s/iteration since the previous
            training line), ...}, evaluation lines {"iter", "AP", ...} (no "time").
    Returns:
        (curve, training seconds, iterations): curve [(iter, clock s, AP)] per evaluation, the clock being the
        training time of the iterations logged before it.
    """
    curve: Curve = []
    clock, done = 0.0, 0
    for record in records:
        if "time" in record:
            clock += record["time"] * (record["iter"] - done)
            done = record["iter"]
        elif "AP" in record:
            curve.append((record["iter"], clock, float(record["AP"])))
    return curve, clock, done


def ap_at(curve: Curve, seconds: float) -> Optional[float]:
    """AP of the last evaluation whose clock is <= `seconds`; None when even the first came later."""
    reached = [ap for _, clock, ap in curve if clock <= seconds]
    return reached[-1] if reached else None


def seconds_to_reach(curve: Curve, target: float) -> Optional[float]:
    """The clock at the first evaluation with AP >= `target`; None when none reached it."""
    return next((clock for _, clock, ap in curve if ap >= target), None)


def compare(previous: dict, new: dict, budgets_min: Sequence[float]) -> dict:
    """The budget rows and the time-to-target comparison of two runs' summaries (`summarize`)."""
    rows = []
    for minutes in budgets_min:
        old_ap, new_ap = ap_at(previous["curve"], minutes * 60), ap_at(new["curve"], minutes * 60)
        ratio = new_ap / old_ap if old_ap and new_ap is not None else None
        rows.append({"minutes": minutes, "previous_ap": old_ap, "new_ap": new_ap, "ratio": ratio})
    target = previous["final_ap"]
    reached = seconds_to_reach(new["curve"], target) if target is not None else None
    return {"budgets": rows, "target_ap": target, "new_s_to_target": reached,
            "speedup_to_target": previous["train_s"] / reached if reached else None}


def summarize(run_dir: Path, log_path: Path) -> dict:
    """One finished run: its curve, training clock, final AP and what amp and threads became (the trainer's
    "speed:" log line, and the final checkpoint's record)."""
    curve, train_s, iters = learning_curve(read_metrics(run_dir / "metrics.jsonl"))
    args = load_checkpoint(checkpoint_path(run_dir, iters))["args"]
    log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.is_file() else ""
    speed = re.findall(r"speed: ([^\r\n]*)", log)
    counted = re.search(r"(\d+) CPU threads?", speed[-1]) if speed else None
    # threads 0 is torch's default, here as in the run: nothing in this process sets it
    threads = int(counted.group(1)) if counted else args.get("threads") or torch.get_num_threads()
    return {"curve": curve, "train_s": train_s, "iters": iters, "final_ap": curve[-1][2] if curve else None,
            "amp": args.get("amp"), "threads": threads, "speed": speed[-1] if speed else None}


def train_run(name: str, flags: Sequence[str], preset: str, output_dir: Path, eval_every: int) -> dict:
    """Train one recipe in its own process into output_dir/name (emptied first), its log in output_dir/name.log.

    Raises:
        RuntimeError: the training process failed (its exit code and the end of its log).
    """
    run_dir, log_path = output_dir / name, output_dir / f"{name}.log"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: no checkpoints or metrics of an earlier one
    command = [sys.executable, str(TRAIN_SCRIPT), "--preset", preset, "--output-dir", str(run_dir),
               "--synthetic-dir", str(output_dir / "synthetic"), "--eval-every", str(eval_every), *flags]
    print(f"training {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    # another process busy on the cores slows a run (more so one of several threads): the 1-minute load says so
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    wall_s = time.perf_counter() - start
    if code != 0:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
        raise RuntimeError(f"the {name} run failed (exit {code}); the end of {log_path}:\n{tail}")
    run = {"preset": preset, "eval_every": eval_every, "flags": list(flags), "command": command, "wall_s": wall_s,
           "load_before": load_before, "log": str(log_path), **summarize(run_dir, log_path)}
    write_json(str(output_dir / f"{name}.json"), run, indent=2)  # what --only reads back for the other run
    return run


def prepare_synthetic(preset: str, output_dir: Path, quick: bool) -> None:
    """Generate the shared synthetic set the way train.py would (once per recipe), so neither run does."""
    chosen = get_preset(preset)
    if quick:
        chosen.synthetic_train_images, chosen.synthetic_val_images = QUICK_TRAIN_IMAGES, QUICK_VAL_IMAGES
    dataset_paths(DataSource(synthetic_dir=str(output_dir / "synthetic")), output_dir, synthetic_recipe(chosen))


def _ap(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def _run_line(name: str, run: dict) -> str:
    speed = run["speed"] or f"amp {run['amp']}, {run['threads']} CPU thread(s)"
    load = "" if run["load_before"] is None else f"; load average {run['load_before']:.2f} as it started"
    return (f"{name}: final AP {_ap(run['final_ap'])} after {run['iters']} iterations, {run['train_s'] / 60:.2f} "
            f"training minutes ({run['wall_s'] / 60:.2f} min of process wall time, evaluations included); {speed}"
            + load)


def learning_markdown(report: dict) -> str:
    """The budget table, then a line per run and the time to the previous recipe's final AP."""
    info, runs = report["machine"], report["runs"]
    title = (f"Learning per CPU-minute, {report['preset']}: this release's recipe (new) against the previous "
             f"release's (previous), trained one after the other. Machine: {info['cpu']}, {info['cpu_cores']} "
             f"cores; torch {info['torch']}. Evaluations every {report['eval_every']} iterations (their time not "
             "counted)" + ("; AP at a budget of training minutes:" if "budgets" in report else "."))
    lines = [title, ""]
    if "budgets" in report:
        lines += ["| budget | previous AP | new AP | new / previous |", "|---|---|---|---|"]
        lines += [f"| {row['minutes']:g} min | {_ap(row['previous_ap'])} | {_ap(row['new_ap'])} | "
                  + ("-" if row["ratio"] is None else f"{row['ratio']:.2f}") + " |" for row in report["budgets"]]
        lines.append("")
    for name in RUNS:
        if name not in runs:  # --only, and no earlier run of the other recipe to read
            lines.append(f"{name}: no run with the same preset, --eval-every and --quick in {report['output_dir']}")
        else:
            read_from = runs[name]["read_from"]
            lines.append(_run_line(name, runs[name]) + (f" (not rerun: {read_from})" if read_from else ""))
    if "budgets" in report:
        reached, target = report["new_s_to_target"], report["target_ap"]
        lines.append(f"new never reaches the previous final AP {_ap(target)}" if reached is None else
                     f"new reaches the previous final AP {_ap(target)} after {reached / 60:.2f} training minutes, "
                     f"previous after its {runs['previous']['train_s'] / 60:.2f}: "
                     f"{report['speedup_to_target']:.2f}x as fast")
    return "\n".join(lines)


def run_learning(preset: str, budgets_min: Sequence[float], eval_every: int, output_dir: str,
                 only: Optional[str], quick: bool, json_path: Optional[str]) -> int:
    """--learning: train (both recipes, or `only` one of them, reading the other's last results from output_dir),
    print the table and write the JSON to json_path when given. Exit code 1 when a training run fails."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    prepare_synthetic(preset, folder, quick)
    runs: Dict[str, dict] = {}
    for name in RUNS:
        flags = (PREVIOUS_RECIPES[preset] if name == "previous" else ()) + (QUICK_FLAGS if quick else ())
        if only in (None, name):
            try:
                runs[name] = {**train_run(name, flags, preset, folder, eval_every), "read_from": None}
            except RuntimeError as error:
                print(f"benchmark.py --learning: error: {error}", file=sys.stderr)
                return 1
        elif (folder / f"{name}.json").is_file():  # the other recipe's last run here, if it trained the same way
            saved = folder / f"{name}.json"
            run = json.loads(saved.read_text(encoding="utf-8"))
            if (run.get("preset"), run.get("eval_every"), run.get("flags")) == (preset, eval_every, list(flags)):
                runs[name] = {**run, "read_from": str(saved)}
    report = {"machine": machine_info(), "preset": preset, "eval_every": eval_every, "quick": quick,
              "output_dir": output_dir, "budgets_min": list(budgets_min), "runs": runs}
    if len(runs) == len(RUNS):
        report.update(compare(runs["previous"], runs["new"], budgets_min))
    print(learning_markdown(report))
    if json_path:
        write_json(json_path, report, indent=2)
    return 0
