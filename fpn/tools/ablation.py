"""Reproduce the ablations of Lin et al. (2017): Table 1 (RPN proposals) and Table 3 (Faster R-CNN) for the six
architectures (a)..(f), trained on one data set with the same preset, budget and seed, ours beside the paper's.

On a laptop (2 CPU cores; the synthetic multi-scale shapes set, 12 runs, ~37 minutes: see ablation_cpu in
fpn/engine/presets.py for the measured budget):

    python scripts/ablation.py                                    # -> runs/ablation/ablation.{md,json,png}
    python scripts/ablation.py --variants c5,fpn --modes rpn      # a subset; the other rows show only the paper's
    python scripts/ablation.py --quick --output-dir runs/ablation_quick   # the pipeline in ~15 s (CI)

Full scale (COCO, ResNet-50, 8 GPUs per run as in the paper): twelve 8-GPU jobs are a cluster's business, not
one script's, so this prints them, one torchrun command per run, to submit to your scheduler; rerunning a job
continues it (--resume). When they have finished, the same command with --collect writes the report:

    python scripts/ablation.py --preset paper --coco-root /data/coco --print-commands -- \\
        --backbone-weights resnet50.pth
    python scripts/ablation.py --preset paper --coco-root /data/coco --collect

Each (mode, variant) trains with scripts/train.py into OUTPUT_DIR/<mode>_<variant>/ (mode "rpn": `--rpn-only
true`, evaluated by proposal AR; "faster": the whole detector, evaluated by COCO AP), with `--resume` when that
folder holds a checkpoint, so an interrupted ablation continues where it stopped; a run that finished with the
same train.py command (recorded in its ablation_run.json; --resume aside) is skipped. Flags after `--` go to
every train.py run unchanged. Writes OUTPUT_DIR/ablation.json (per variant: our AR100, AR1k, AR_s, AR_m, AR_l,
AP, AP50, AP_s, AP_m, AP_l in percent, the paper's numbers and the wall time of each run), ablation.md (the
tables in the paper's layout) and, with matplotlib, ablation.png. The paper's numbers and which table each
comes from: fpn/tools/paper_results.py.
Exit code 0 done, 1 some run failed, 2 usage/input error, 130 interrupted.
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from fpn.tools.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, ArgumentParser, run_cli
from fpn.data.synthetic import generate_synthetic_coco
from fpn.tools.paper_results import (
    DETECTION_METRICS, ROWS, RPN_METRICS, TABLE1_RPN, VARIANTS, detection_reference, paper_row,
)
from fpn.config import FasterRCNNConfig
from fpn.engine.checkpoint import list_checkpoints
from fpn.engine.presets import PRESETS, SYNTHETIC_PRESETS, get_preset, synthetic_recipe

MODES = ("rpn", "faster")  # RPN only (Table 1) and Faster R-CNN (Table 3)
DATA_FLAGS = ("coco_root", "train_images", "train_annotations", "val_images", "val_annotations")
MANAGED = ("--preset", "--variant", "--rpn-only", "--output-dir", "--resume", "--seed",
           *(f"--{name.replace('_', '-')}" for name in DATA_FLAGS))  # set per run here, not allowed after --
# --quick: the pipeline end to end in seconds per run (a tiny model on 64 px images); says nothing about accuracy.
QUICK_DATA = dict(synthetic_train_images=8, synthetic_val_images=4, synthetic_image_size=64,
                  synthetic_min_object_size=4)
QUICK_FLAGS = {"iters": "4", "batch-size": "2", "workers": "0", "warmup-iters": "2", "steps": "3",
               "checkpoint-every": "2", "log-every": "1", "eval-batch-size": "2", "backbone.depth": "18",
               "backbone.width": "16", "backbone.gn-groups": "8", "fpn.out-channels": "32",
               "roi-heads.representation-size": "64", "rpn.pre-nms-top-n-train": "200",
               "rpn.post-nms-top-n-train": "100", "rpn.pre-nms-top-n-test": "200", "rpn.post-nms-top-n-test": "200",
               "rpn.batch-size-per-image": "64", "roi-heads.batch-size-per-image": "32", "input.min-size": "64",
               "input.max-size": "96", "input.train-min-sizes": "64"}
TrainMain = Callable[[Sequence[str]], int]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The ablation's own flags, and the train.py flags after `--` in `args.train_flags`."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = ArgumentParser(prog="ablation.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ablation-cpu", choices=sorted(PRESETS), help="the preset of every run")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    parser.add_argument("--modes", default=",".join(MODES), help="comma list: rpn (Table 1), faster (Table 3)")
    parser.add_argument("--iters", type=int, help="training iterations of every run (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of every run")
    parser.add_argument("--output-dir", default="runs/ablation", help="OUTPUT_DIR/<mode>_<variant>/ and the report")
    parser.add_argument("--quick", action="store_true", help="a tiny model and data set: the pipeline in < 2 min")
    parser.add_argument("--print-commands", action="store_true", help="print one train.py command per run (full "
                        "scale: torchrun jobs for a cluster) and exit")
    parser.add_argument("--nproc-per-node", type=int, default=8, help="GPUs per run in --print-commands (1: python)")
    parser.add_argument("--collect", action="store_true", help="train nothing: write the report of finished runs")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    for name in DATA_FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", help="data, as in train.py (default: the synthetic set)")
    args = parser.parse_args(argv[:split])
    args.train_flags = argv[split + 1:]
    args.variants = _choices(parser, "variant", args.variants, VARIANTS)
    args.modes = _choices(parser, "mode", args.modes, MODES)
    managed = [flag for flag in args.train_flags if flag.split("=")[0] in MANAGED]
    if managed:
        parser.error(f"{', '.join(managed)} after -- is set by ablation.py itself; give it before --, or not at all")
    if args.iters is not None and args.iters < 1:
        parser.error(f"--iters must be >= 1, got {args.iters}")
    if not isinstance(get_preset(args.preset).model, FasterRCNNConfig):
        parser.error(f"--preset {args.preset} is not a Faster R-CNN preset: the paper's ablations are variants of "
                     "Faster R-CNN and of its RPN")
    if not any(getattr(args, name) for name in DATA_FLAGS) and args.preset not in SYNTHETIC_PRESETS:
        parser.error(f"--preset {args.preset} is meant for COCO: give --coco-root DIR (or the four image/annotation "
                     f"flags), or a synthetic preset: {', '.join(SYNTHETIC_PRESETS)}")
    return args


def _choices(parser: argparse.ArgumentParser, what: str, text: str, known: Sequence[str]) -> List[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown or not chosen:
        parser.error(f"unknown {what} {', '.join(map(repr, unknown)) or 'list (empty)'}; known: {', '.join(known)}")
    return list(dict.fromkeys(chosen))  # in the order given, once each


def data_flags(args: argparse.Namespace, generate: bool) -> List[str]:
    """train.py's data flags: those given, or the paths of the preset's synthetic set (generated if `generate`)."""
    given = [(name, getattr(args, name)) for name in DATA_FLAGS if getattr(args, name)]
    if given:
        return [part for name, value in given for part in (f"--{name.replace('_', '-')}", value)]
    root = Path(args.output_dir) / "synthetic"
    if generate:
        recipe, marker = synthetic_data_recipe(args), root / "recipe.json"
        if not marker.is_file() or json.loads(marker.read_text()) != recipe:
            print(f"generating the synthetic data set in {root} ...", flush=True)
            generate_synthetic_coco(root, **recipe, progress=False)
            marker.write_text(json.dumps(recipe))
    annotations = root / "annotations"
    return ["--train-images", str(root / "train2017"),
            "--train-annotations", str(annotations / "instances_train2017.json"),
            "--val-images", str(root / "val2017"), "--val-annotations", str(annotations / "instances_val2017.json")]


def synthetic_data_recipe(args: argparse.Namespace) -> dict:
    preset = get_preset(args.preset)
    for name, value in (QUICK_DATA.items() if args.quick else ()):
        setattr(preset, name, value)
    return synthetic_recipe(preset)


def run_argv(args: argparse.Namespace, mode: str, variant: str, data: Sequence[str],
             resume: bool = True) -> List[str]:
    """The train.py command line of one run (without the program name); `resume`: with --resume."""
    argv = ["--preset", args.preset, "--variant", variant, "--rpn-only", "true" if mode == "rpn" else "false",
            "--output-dir", str(run_dir(args, mode, variant)), "--seed", str(args.seed),
            *(["--resume"] if resume else []), *data]
    if args.quick:
        argv += [part for name, value in QUICK_FLAGS.items() for part in (f"--{name}", value)]
    if args.iters is not None:
        argv += ["--iters", str(args.iters)]  # after the quick flags: argparse keeps the last value
    return argv + list(args.train_flags)


def iterations(args: argparse.Namespace) -> int:
    """The training iterations of every run: --iters, else --quick's, else the preset's."""
    if args.iters is not None:
        return args.iters
    return int(QUICK_FLAGS["iters"]) if args.quick else get_preset(args.preset).iters


def run_dir(args: argparse.Namespace, mode: str, variant: str) -> Path:
    return Path(args.output_dir) / f"{mode}_{variant}"


def read_state(directory: Path) -> dict:
    """ablation_run.json of a run: the train.py argv it ran, its wall time so far, whether it finished."""
    path = directory / "ablation_run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def same_settings(recorded: Optional[Sequence[str]], argv: Sequence[str]) -> bool:
    """The recorded train.py command line trains the same run as `argv`: equal but for --resume (which is given
    only to continue)."""
    def settings(command: Sequence[str]) -> List[str]:
        return [part for part in command if part != "--resume"]

    return recorded is not None and settings(recorded) == settings(argv)


def finished(directory: Path, argv: Optional[Sequence[str]]) -> bool:
    """final_metrics.json is there and the run was made by `argv` (None: by any command, e.g. a cluster job)."""
    state = read_state(directory)
    if not (directory / "final_metrics.json").is_file():
        return False
    return argv is None or (state.get("finished", False) and same_settings(state.get("argv"), argv))


def train_one(train_main: TrainMain, directory: Path, argv: List[str]) -> int:
    """Run train.py's main on `argv`, adding the wall time to ablation_run.json; the exit code."""
    directory.mkdir(parents=True, exist_ok=True)
    state = read_state(directory)
    wall = state.get("wall_s", 0.0) if same_settings(state.get("argv"), argv) else 0.0  # other settings: anew
    path, start, code = directory / "ablation_run.json", time.perf_counter(), EXIT_INTERRUPTED
    path.write_text(json.dumps({"argv": argv, "wall_s": wall, "finished": False}, indent=2))
    try:
        code = train_main(argv)
    except SystemExit as stop:  # train.py's flag parser exits on a bad flag
        code = stop.code if isinstance(stop.code, int) else EXIT_USAGE
    finally:
        gc.collect()  # the finished run's model and loader workers, before the next run builds its own
        wall += time.perf_counter() - start
        done = code == 0 and (directory / "final_metrics.json").is_file()
        path.write_text(json.dumps({"argv": argv, "wall_s": round(wall, 1), "finished": done}, indent=2))
    return code


def load_train_main() -> TrainMain:
    """The training tool's `main` (scripts/train.py's)."""
    from fpn.tools.train import main

    return main


def main(argv: Optional[Sequence[str]] = None, *, train_main: Optional[TrainMain] = None) -> int:
    """The command line; `train_main` replaces scripts/train.py's main (tests)."""
    return run_cli(functools.partial(_main, train_main=train_main), argv, prog="ablation.py")


def _main(argv: Optional[Sequence[str]], train_main: Optional[TrainMain]) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    runs = [(mode, variant) for mode in args.modes for variant in args.variants]
    if args.print_commands:
        print_commands(args, runs)
        return 0
    failed: List[str] = []
    if not args.collect:
        data = data_flags(args, generate=True)
        train_main = train_main or load_train_main()
        for number, (mode, variant) in enumerate(runs, start=1):
            directory = run_dir(args, mode, variant)
            # --resume only to continue: train.py would say of a fresh run that it found no checkpoint
            run_args = run_argv(args, mode, variant, data, resume=bool(list_checkpoints(directory)))
            if finished(directory, run_args):
                print(f"[{number}/{len(runs)}] {directory}: finished with these settings, skipped", flush=True)
                continue
            print(f"[{number}/{len(runs)}] {directory}: training", flush=True)
            code = train_one(train_main, directory, run_args)
            if code in (EXIT_USAGE, EXIT_INTERRUPTED):  # the same flags would fail every run; Ctrl-C stops all
                write_report(args)
                if code == EXIT_USAGE:
                    print(f"ablation.py: error: the run in {directory} stopped on train.py's error above; the same "
                          "flags would stop every run", file=sys.stderr)
                return code
            if code != 0:
                failed.append(f"{directory} (exit code {code})")
    write_report(args)
    if failed:
        print("ablation.py: error: failed runs: " + "; ".join(failed), file=sys.stderr)
    return EXIT_FAILED if failed else 0


def print_commands(args: argparse.Namespace, runs: Sequence[tuple]) -> None:
    """One command per run (torchrun with --nproc-per-node > 1), preceded by the data generation if synthetic."""
    data = data_flags(args, generate=False)
    if not any(getattr(args, name) for name in DATA_FLAGS):
        recipe = synthetic_data_recipe(args)
        flags = [part for key, value in recipe.items() for part in (f"--{key.replace('_', '-')}", str(value))]
        print(shlex.join(["python", "-m", "fpn.data.synthetic", str(Path(args.output_dir) / "synthetic"),
                          *flags]))
    launcher = ["torchrun", f"--nproc_per_node={args.nproc_per_node}"] if args.nproc_per_node > 1 else ["python"]
    for mode, variant in runs:
        print(shlex.join([*launcher, "scripts/train.py", *run_argv(args, mode, variant, data)]))


# train.py's final_metrics.json keys (COCO fractions in [0, 1]) -> ours (percent, the paper's scale)
METRIC_KEYS = {"rpn": {key: key for key in RPN_METRICS},
               "faster": {"AP50": "AP50", "AP": "AP", "APs": "AP_s", "APm": "AP_m", "APl": "AP_l"}}


def collect_results(args: argparse.Namespace) -> Dict[str, dict]:
    """Per variant (all six, the paper's order): our metrics in percent (None where not run), the paper's, wall s."""
    data = data_flags(args, generate=False)
    results = {}
    for row in ROWS:
        entry = {"row": row.row, "name": row.name}
        entry.update({key: None for mode in MODES for key in METRIC_KEYS[mode].values()})
        source, numbers = detection_reference(row.variant)
        entry["paper"] = {"rpn": {"source": f"Table 1{row.row}", **TABLE1_RPN[row.variant]},
                          "faster": {"source": source, **numbers}}
        entry["wall_s"] = {mode: None for mode in MODES}
        for mode in MODES:
            directory = run_dir(args, mode, row.variant)
            argv = None if args.collect else run_argv(args, mode, row.variant, data)
            if row.variant not in args.variants or mode not in args.modes or not finished(directory, argv):
                continue
            metrics = json.loads((directory / "final_metrics.json").read_text())
            for theirs, ours in METRIC_KEYS[mode].items():
                value = metrics.get(theirs)
                entry[ours] = None if value is None or value < 0 else round(100.0 * value, 1)  # -1: undefined
            entry["wall_s"][mode] = read_state(directory).get("wall_s")
        results[row.variant] = entry
    return results


def write_report(args: argparse.Namespace) -> None:
    """OUTPUT_DIR/ablation.json, ablation.md and (with matplotlib) ablation.png; the tables also to stdout."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = collect_results(args)
    settings = {"preset": args.preset, "iters": iterations(args), "seed": args.seed, "quick": args.quick,
                "modes": args.modes, "variants": args.variants, "data": " ".join(data_flags(args, generate=False)),
                "train_flags": args.train_flags}
    document = {"settings": settings, "scale": "percent (0..100), ours and the paper's", "variants": results,
                "paper": "Lin et al., Feature Pyramid Networks for Object Detection, CVPR 2017 (arXiv:1612.03144v2), "
                         "COCO minival, ResNet-50"}
    (out / "ablation.json").write_text(json.dumps(document, indent=2))
    text = markdown_report(results, settings)
    (out / "ablation.md").write_text(text)
    print(f"\n{text}\nwritten: {out / 'ablation.json'}, {out / 'ablation.md'}")
    try:
        print(f"chart: {bar_chart(results, out / 'ablation.png')}")
    except ImportError:
        print('no chart: matplotlib is not installed (pip install -e ".[viz]")')


def markdown_report(results: Dict[str, dict], settings: dict) -> str:
    """Table 1 (RPN) and Table 3 (Faster R-CNN) in the paper's layout, each of our rows above the paper's."""
    lines = ["# FPN ablations: ours beside Lin et al. (2017)", "",
             f"Preset `{settings['preset']}`, {settings['iters']} iterations per run, seed {settings['seed']}"
             + (" (--quick: a pipeline check, not a result)" if settings["quick"] else "")
             + ". Percent. Paper: ResNet-50 on COCO trainval35k, evaluated on minival (arXiv:1612.03144v2).", ""]
    tables = (("rpn", "Table 1. Bounding box proposals, RPN only", RPN_METRICS,
               "AR_s, AR_m, AR_l: AR at 1000 proposals on small, medium, large objects (the paper's AR^1k_s/m/l)."),
              ("faster", "Table 3. Object detection, Faster R-CNN", DETECTION_METRICS,
               "AP50: AP at IoU 0.5. Table 3 has rows (a)-(c) only; for (d)-(f) the paper's reference is Table 2, "
               "Fast R-CNN on the fixed proposals of Table 1(c), not on the variant's own."))
    for mode, title, metrics, note in tables:
        lines += [f"## {title}", "", "| | feature | lateral? | top-down? | | " + " | ".join(metrics) + " | time |",
                  "|---|---|:-:|:-:|---|" + "---:|" * (len(metrics) + 1)]
        for variant, entry in results.items():
            row, paper = paper_row(variant), entry["paper"][mode]
            ours = [_cell(entry[key]) for key in metrics]
            lines.append(f"| {row.row} {row.name} (`{variant}`) | {row.feature} | {'✓' if row.lateral else ''} | "
                         f"{'✓' if row.top_down else ''} | ours | " + " | ".join(ours)
                         + f" | {_duration(entry['wall_s'][mode])} |")
            lines.append(f"| | | | | paper, {paper['source']} | " + " | ".join(_cell(paper[key]) for key in metrics)
                         + " | |")
        lines += ["", note, ""]
    return "\n".join(lines)


def _cell(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.1f}"


def _duration(seconds: Optional[float]) -> str:
    return "–" if seconds is None else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def bar_chart(results: Dict[str, dict], path: Path) -> Path:
    """Grouped bars, ours beside the paper's: AR1k of the RPN runs, AP of the Faster R-CNN runs.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), layout="constrained")
    labels = [f"{entry['row']} {variant}" for variant, entry in results.items()]
    for axes, (mode, key, title) in zip(figure.subplots(1, 2), (("rpn", "AR1k", "RPN: AR1k (Table 1)"),
                                                                  ("faster", "AP", "Faster R-CNN: AP (Table 3/2)"))):
        ours = [entry[key] if entry[key] is not None else float("nan") for entry in results.values()]  # no bar
        paper = [entry["paper"][mode][key] for entry in results.values()]
        positions = range(len(labels))
        axes.bar([p - 0.2 for p in positions], ours, width=0.4, label="ours")
        axes.bar([p + 0.2 for p in positions], paper, width=0.4, label="paper (COCO)")
        axes.set_xticks(list(positions), labels, rotation=30, ha="right")
        axes.set_title(title)
        axes.set_ylabel("percent")
        axes.legend()
    figure.savefig(path, dpi=100)
    return path

