"""Train Faster R-CNN + FPN on a COCO-format data set, with periodic checkpoints and COCO evaluation.

One device (GPU if there is one, else Apple MPS, else CPU):

    python scripts/train.py --preset cpu-demo --output-dir runs/demo          # synthetic shapes, ~6 min on 2 CPU cores
    python scripts/train.py --preset 1x --coco-root /data/coco --backbone-weights resnet50.pth --output-dir runs/r50

One machine, 8 GPUs (one process each; --batch-size is per process, so 8 x 2 = 16 images per iteration):

    torchrun --nproc_per_node=8 scripts/train.py --preset paper --coco-root /data/coco \\
        --backbone-weights resnet50.pth --output-dir runs/paper

Two machines of 8 GPUs (run on each, --node_rank=0 on the one whose address is --master_addr, 1 on the other):

    torchrun --nnodes=2 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 --nproc_per_node=8 \\
        scripts/train.py --preset 1x --batch-size 1 --coco-root /data/coco --output-dir runs/r50

Continue an interrupted run from its last checkpoint, at the same iteration: add `--resume` (same output dir).
Every field of the model config has a flag (`--backbone.depth 18`, `--input.train-min-sizes 640,800`); the
preset gives the defaults and explicit flags override them. Without data flags the synthetic shapes set is
generated (into OUTPUT_DIR/synthetic or --synthetic-dir) and used. Writes to the output dir: checkpoints,
metrics.jsonl, eval_*_metrics.json / eval_*_results.json (COCO results), detections.png and the loss/AP plots.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from fpn.engine import distributed
from fpn.engine.checkpoint import (
    checkpoint_path, load_pretrained_weights, prepare_output_dir, prune_checkpoints, save_checkpoint, to_plain,
)
from fpn.cli import (
    EXIT_FAILED, ArgumentParser, InputError, Interrupted, error_line, interrupts_deferred, run_cli,
    sigterm_as_interrupt,
)
from fpn.data.coco import CocoDetection, collate
from fpn.data.file_check import check_image_files, handle_bad_images
from fpn.data.samplers import GroupedBatchSampler, TrainingSampler
from fpn.data.synthetic import generate_synthetic_coco
from fpn.engine.loop import MetricsLog, autocast_factory, build_grad_scaler, select_device, train_iterations
from fpn.engine.evaluation import evaluate_coco, format_metrics
from fpn.engine.proposal_eval import evaluate_proposals, format_recall
from fpn.detectors.build import ARCHITECTURES, arch_of, build_detector, convert_config, is_rpn_only
from fpn.engine.nonfinite import FiniteWatch, NonFiniteError
from fpn.engine.presets import (
    PRESETS, add_config_flags, add_preset_flags, apply_config_flags, apply_preset_flags, describe_presets, get_preset,
    arch_in, preset_name_in, synthetic_recipe,
)
from fpn.backbones.build import build_backbone
from fpn.engine.resume import apply_changed_arguments, check_resumable, find_resume_checkpoint, restore_training_state
from fpn.engine.rng_state import capture_rng_state
from fpn.engine.schedule import build_lr_scheduler, build_optimizer, scaled_lr
from fpn.visualize import save_detection_picture

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line; preset values fill every training and model field that was not given."""
    argv = sys.argv[1:] if argv is None else list(argv)
    shown_name = preset_name_in(argv, default="cpu-demo")  # whose values --help shows as the defaults
    shown = get_preset(shown_name)
    shown.model = convert_config(shown.model, arch_in(argv, default=arch_of(shown.model)))
    parser = ArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="presets (--preset NAME):\n" + textwrap.indent(describe_presets(), "  "))
    parser.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                        help=f"defaults for everything (required): {', '.join(PRESETS)}; each is described at "
                             "the end of --help, and defined in fpn/engine/presets.py")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=None,
                        help="the detector: faster_rcnn (two-stage) or fcos (one-stage, anchor-free); default the "
                             "preset's. Another one than the preset's keeps its backbone, FPN and input sections")
    parser.add_argument("--output-dir", default="runs/train", help="checkpoints, metrics and pictures go here")
    parser.add_argument("--coco-root", help="DIR with train2017/, val2017/, annotations/instances_{train,val}2017.json")
    parser.add_argument("--train-images", help="training images folder")
    parser.add_argument("--train-annotations", help="training COCO json")
    parser.add_argument("--val-images", help="validation images folder")
    parser.add_argument("--val-annotations", help="validation COCO json")
    parser.add_argument("--synthetic-dir", help="where to generate the synthetic set (default OUTPUT_DIR/synthetic)")
    parser.add_argument("--skip-bad-images", action="store_true", help="warn and skip unreadable images")
    parser.add_argument("--check-images", choices=("header", "decode", "off"), default="header",
                        help="before training, check every image file: exists and its header reads (header, ~0.1 "
                             "s per 1000 images), or also decodes (decode, ~4 s per 1000; finds truncated files)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    parser.add_argument("--init-from", help="initial weights: one of our checkpoints or a torchvision detector file")
    parser.add_argument("--backbone-weights", help="ImageNet ResNet checkpoint (torchvision layout) for the backbone")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights init, data order and augmentation")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    add_preset_flags(parser, shown, name=shown_name, chosen=preset_name_in(argv, default="") == shown_name)
    add_config_flags(parser, shown.model)
    args = parser.parse_args(argv)
    if args.preset is None:
        names = list(PRESETS)
        parser.error(f"choose a --preset: {', '.join(names[:-1])} or {names[-1]}")
    check_preset_fits_data(parser, args)

    chosen = apply_preset_flags(get_preset(args.preset), args)
    for item in fields(chosen):
        if item.name != "model":
            setattr(args, item.name, getattr(chosen, item.name))
    args.arch = args.arch or arch_of(chosen.model)
    args.model_config = apply_config_flags(convert_config(chosen.model, args.arch), args)
    if args.backbone_weights:
        args.model_config.backbone.weights = args.backbone_weights
    if args.amp not in ("none", "bf16", "fp16"):
        parser.error(f"--amp must be none, bf16 or fp16, got {args.amp!r}")
    for name in ("iters", "batch_size", "checkpoint_every", "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.keep_checkpoints < 0 or args.dist_timeout_min <= 0:
        parser.error("--keep-checkpoints must be >= 0 and --dist-timeout-min > 0")
    return args


COCO_PRESETS = ("paper", "1x")  # full-size ResNet-50 schedules; the other presets bring a synthetic set


def check_preset_fits_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A COCO preset without data would train ResNet-50 at 800 px on the synthetic set: a mistake, said early.

    (A small CPU preset with data flags is a legitimate choice: the small model on a small set.)
    """
    has_data = any([args.coco_root, args.train_images, args.train_annotations, args.val_images,
                    args.val_annotations])
    if args.preset in COCO_PRESETS and not has_data:
        parser.error(f"--preset {args.preset} trains ResNet-50 at 800 px on COCO: give --coco-root DIR (or "
                     "--train-images/--train-annotations/--val-images/--val-annotations); for the synthetic "
                     "demo choose --preset cpu-demo")


def dataset_paths(args: argparse.Namespace) -> dict:
    """Where the training and validation data are; generates the synthetic set when no data flag was given."""
    if args.coco_root:
        return coco_layout(Path(args.coco_root))
    explicit = [args.train_images, args.train_annotations, args.val_images, args.val_annotations]
    if any(explicit):
        if not all(explicit):
            raise ValueError("give all of --train-images, --train-annotations, --val-images, --val-annotations")
        return dict(zip(("train_images", "train_annotations", "val_images", "val_annotations"), map(Path, explicit)))
    root = Path(args.synthetic_dir or Path(args.output_dir) / "synthetic")
    recipe = synthetic_recipe(args)
    marker = root / "recipe.json"

    def generate() -> None:
        if not marker.is_file() or json.loads(marker.read_text()) != recipe:
            distributed.log(f"generating the synthetic data set in {root} ...")
            generate_synthetic_coco(root, **recipe, progress=True)
            marker.write_text(json.dumps(recipe))

    distributed.run_on_main(generate)  # the other ranks wait until rank 0 has written the files
    return coco_layout(root)


def check_data_paths(args: argparse.Namespace) -> None:
    """InputError naming the first data flag whose folder or file is missing (before anything is generated or read)."""
    if args.coco_root:
        root = Path(args.coco_root)
        if not root.is_dir():
            raise InputError(f"--coco-root {root}: no such folder")
        named = {key: (f"--coco-root {root}: {path}", path) for key, path in coco_layout(root).items()}
    else:
        named = {key: (f"--{key.replace('_', '-')} {value}", Path(value))
                 for key in ("train_images", "train_annotations", "val_images", "val_annotations")
                 if (value := getattr(args, key))}
    for key, (what, path) in named.items():
        kind, is_kind = ("folder", path.is_dir) if key.endswith("images") else ("file", path.is_file)
        if not path.exists():
            raise InputError(f"{what}: no such {kind}")
        if not is_kind():
            raise InputError(f"{what}: not a {kind}")


def coco_layout(root: Path) -> dict:
    """The paths of COCO 2017's layout under `root` (also the synthetic set's)."""
    return {
        "train_images": root / "train2017", "train_annotations": root / "annotations/instances_train2017.json",
        "val_images": root / "val2017", "val_annotations": root / "annotations/instances_val2017.json",
    }


def build_datasets(args: argparse.Namespace):
    paths = dataset_paths(args)
    train_set = CocoDetection(paths["train_images"], paths["train_annotations"], train=True,
                              skip_bad_images=args.skip_bad_images, seed=args.seed)
    val_set = CocoDetection(paths["val_images"], paths["val_annotations"], train=False,
                            skip_bad_images=args.skip_bad_images)
    if args.check_images != "off":  # every file of both sets, before the first iteration (rank 0 reads them)
        for dataset in (train_set, val_set):
            bad = distributed.run_on_main(lambda: check_image_files(dataset, decode=args.check_images == "decode"))
            handle_bad_images(dataset, bad)  # drops them (--skip-bad-images) or raises, the same on every rank
    annotations = train_set.coco.dataset["annotations"]
    usable = sum(1 for ann in annotations if not ann.get("iscrowd", 0)) - train_set.num_dropped_boxes
    if usable < 1:
        raise ValueError(f"{paths['train_annotations']}: no usable boxes to train on ({len(annotations)} "
                         f"annotations, {train_set.num_dropped_boxes} of them empty after clipping)")
    if val_set.label_to_category != train_set.label_to_category:
        raise ValueError(
            f"the validation categories {sorted(val_set.label_to_category.values())} differ from the training "
            f"categories {sorted(train_set.label_to_category.values())}"
        )
    return train_set, val_set


def training_loader(dataset: CocoDetection, args: argparse.Namespace, start_iter: int) -> DataLoader:
    """An endless loader; `start_batch` skips the batches already used, so a resumed run sees the same data."""
    rank, world = distributed.get_rank(), distributed.get_world_size()
    # (index, epoch) keys: the dataset seeds each flip from them, whatever the number of workers.
    sampler = TrainingSampler(len(dataset), shuffle=True, seed=args.seed, rank=rank, world_size=world,
                              with_epoch=True)
    batches = GroupedBatchSampler(sampler, dataset.aspect_ratio_groups(), args.batch_size, start_batch=start_iter)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=args.workers,
                      persistent_workers=args.workers > 0, generator=torch.Generator().manual_seed(args.seed + rank))


def block_ends(start_iter: int, iters: int, every: Sequence[int]) -> list:
    """The iterations after which to stop and checkpoint/evaluate: multiples of each `every`, and `iters`."""
    ends = {iters}
    for period in every:
        if period > 0:
            ends.update(range(period * (start_iter // period + 1), iters, period))
    return sorted(e for e in ends if e > start_iter) or [iters]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; exit code 0 done, 1 stopped on a non-finite value, 2 usage/input error, 130 Ctrl-C."""
    return run_cli(_main, argv, prog="train.py", quiet=lambda: os.environ.get("RANK", "0") != "0")


class RunStopped(Exception):
    """The run stopped part-way and has said why; raised out of the process group's session so that leaving it
    does not wait in a closing barrier for a process that may be gone."""


def _main(argv: Optional[Sequence[str]]) -> int:
    args = parse_args(argv)
    device = select_device(args.device)
    try:
        with distributed.distributed_session(device, timeout_minutes=args.dist_timeout_min) as device, \
                sigterm_as_interrupt():
            run = TrainingRun(args, device)
            try:
                try:
                    run.train()
                finally:
                    run.close_progress()  # the error line below goes on a line of its own
            except NonFiniteError as error:  # raised on every rank together (the check reads the mean loss)
                say_error(f"{error}; training stopped before writing anything: {run.last_good()}. Lower the LR, "
                          "enable --clip-grad-norm, or check the data.")
                return EXIT_FAILED
            except KeyboardInterrupt as stop:
                what = "terminated (SIGTERM)" if str(stop) == "SIGTERM" else "interrupted"
                raise Interrupted(f"{what} after {run.completed()} iterations; {run.last_good()}") from None
            except OSError as error:  # disk full, read-only, permissions: nothing written is lost
                if not run.started or isinstance(error, InputError):
                    raise
                say_error(f"{describe_os_error(error)}; training stopped after {run.completed()} iterations: "
                          f"{run.last_good(when='once the cause is fixed (space, permissions, a writable disk)')}")
                raise RunStopped() from error
            except RuntimeError as error:  # a collective that gave up on another process
                if not distributed.is_peer_failure(error):
                    raise
                silent = distributed.silent_ranks()
                if distributed.reports_peer_failure(silent):
                    print(f"train.py: error: {distributed.describe_peer_failure(args.dist_timeout_min, silent)}; "
                          f"training stopped: {run.last_good()}", file=sys.stderr, flush=True)
                raise RunStopped() from error
    except RunStopped:
        return EXIT_FAILED
    return 0


def say_error(line: str) -> None:
    """`train.py: error: <line>` on stderr, from rank 0 (the other ranks stop with the same error)."""
    if distributed.is_main_process():
        print(f"train.py: error: {line}", file=sys.stderr, flush=True)


def describe_os_error(error: OSError) -> str:
    """"<path>: <OS reason> [Errno N]" for an OSError that names its file, else its one-line message."""
    if error.filename and error.strerror:
        return f"{error.filename}: {error.strerror} [Errno {error.errno}]"
    return error_line(error)


class TrainingRun:
    """One training run: data, model and optimisation state, and the last checkpoint written (for messages)."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        self.output_dir = Path(args.output_dir)
        self.iteration = 0  # iterations completed
        self.last_saved: Optional[Path] = None  # the newest checkpoint known good (written or resumed from)
        self.last_saved_iteration = 0
        self.bar = None  # the progress bar, which counts the iterations done inside a block too
        self.bar_count: Optional[int] = None  # its count when it was closed
        self.started = False  # True once the checks are done and work (data generation, training) begins
        # (path, checkpoint, passed-over lines) found for --resume before any work
        self.resume_from: Tuple[Optional[Path], Optional[dict], List[str]] = (None, None, [])

    def close_progress(self) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar_count = self.bar.n  # closing disables the bar
            self.bar.close()

    def completed(self) -> int:
        """Iterations completed so far."""
        if self.bar is not None and not self.bar.disable:
            return self.bar.n
        return self.bar_count if self.bar_count is not None else self.iteration

    def last_good(self, when: str = "") -> str:
        """Where a rerun with --resume continues from, in words; `when`: a condition for the rerun."""
        rerun = f"{when}, rerun" if when else "rerun"
        if self.last_saved is None:
            return f"no checkpoint was written yet; {rerun} the same command to start again from iteration 0"
        return (f"the last good checkpoint is {self.last_saved} (iteration {self.last_saved_iteration}); {rerun} "
                "the same command with --resume to continue from it")

    def check_before_work(self) -> None:
        """Every file flag, the model config and the --resume checkpoint, before anything is generated or loaded.

        Raises:
            InputError / ValueError: naming the flag, the file and the reason.
        """
        args = self.args
        check_data_paths(args)
        config = copy.deepcopy(args.model_config)
        if config.backbone.weights:  # the file is read, and loaded into a trunk to prove that it fits
            build_backbone(config.backbone)
        config.backbone.weights = None
        probe = build_detector(2, config)  # a bad config value (e.g. --backbone.depth 19) fails here
        if args.init_from:
            load_pretrained_weights(probe, args.init_from)  # only the class-specific layers may differ
        if args.resume:
            self.resume_from = find_resume_checkpoint(self.output_dir)
            path, checkpoint, _ = self.resume_from
            if checkpoint is not None and int(checkpoint["iteration"]) > args.iters:
                raise InputError(f"--resume: {path} is at iteration {int(checkpoint['iteration'])}, past --iters "
                                 f"{args.iters}: give --iters above {int(checkpoint['iteration'])} to train on, or "
                                 f"evaluate it with scripts/evaluate.py {path}")

    def train(self) -> None:
        args, device = self.args, self.device
        if args.threads:
            torch.set_num_threads(args.threads)
        self.check_before_work()
        stale = distributed.run_on_main(lambda: prepare_output_dir(self.output_dir))
        self.started = True
        if stale:
            distributed.log(f"removed {len(stale)} temporary file(s) of an interrupted checkpoint write: "
                            + ", ".join(p.name for p in stale))
        train_set, val_set = build_datasets(args)
        distributed.log(f"{len(train_set)} training / {len(val_set)} validation images, "
                        f"{train_set.num_classes - 1} classes")
        model, optimizer, scheduler, scaler = self.build_model(train_set)
        # DDP averages the gradients over the ranks during backward.
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if distributed.is_distributed() else model
        batches = iter(training_loader(train_set, args, self.iteration))
        autocast = autocast_factory(device, args.amp)
        metrics = MetricsLog(self.output_dir / "metrics.jsonl")
        metrics.drop_after(self.iteration)  # a resumed run redoes the iterations after its checkpoint: log them once
        watch = FiniteWatch(model, check_gradients=args.amp != "fp16")  # fp16: the grad scaler skips inf steps
        bar = tqdm(total=args.iters, initial=self.iteration, desc="train", dynamic_ncols=True,
                   disable=not distributed.is_main_process())
        self.bar = bar

        def evaluate(iteration: int, prefix: str) -> dict:
            # an RPN alone (paper Table 1) is scored by the recall of its proposals, a detector by box AP
            run, what, table = (evaluate_proposals, "proposal recall", format_recall) if is_rpn_only(model) \
                else (evaluate_coco, "COCO box evaluation", format_metrics)
            result = run(model, val_set, device=device, output_dir=self.output_dir, prefix=prefix,
                         batch_size=args.eval_batch_size, num_workers=args.workers, autocast=autocast)
            metrics.write({"iter": iteration, **result})
            distributed.log(f"\n{what} at iteration {iteration} ({len(val_set)} images):\n" + table(result))
            return result

        for end in block_ends(self.iteration, args.iters, (args.checkpoint_every, args.eval_every)):
            self.iteration = train_iterations(
                net, optimizer, scheduler, scaler, batches, start_iter=self.iteration, end_iter=end, device=device,
                autocast=autocast, clip_grad_norm=args.clip_grad_norm, log_every=args.log_every, metrics=metrics,
                progress=bar, watch=watch,
            )
            if end % args.checkpoint_every == 0 or end == args.iters:
                self.save(model, optimizer, scheduler, scaler, train_set)
            if args.eval_every and end % args.eval_every == 0 and end != args.iters:
                evaluate(end, f"eval_{end:07d}")
        bar.close()

        final = evaluate(args.iters, "eval_final")
        if distributed.is_main_process():
            (self.output_dir / "final_metrics.json").write_text(json.dumps({"iter": args.iters, **final}, indent=2))
            if not is_rpn_only(model):  # proposals have no classes to draw
                picture = save_detection_picture(model, val_set, self.output_dir / "detections.png", device=device)
                distributed.log(f"detections on validation images: {picture}")
            plot_curves(self.output_dir / "metrics.jsonl", self.output_dir)

    def save(self, model, optimizer, scheduler, scaler, train_set) -> None:
        """Checkpoint after `self.iteration` (every rank's RNG states in it), then drop the oldest ones.

        Ctrl-C or SIGTERM during this wait until the new checkpoint is written, pruned and recorded as the last
        good one. A failed write (disk full, ...) raises the same OSError on every rank; the temporary file is
        gone and the previous checkpoint stays the last good one.
        """
        args = self.args
        with interrupts_deferred():
            rng_per_rank = distributed.all_gather_objects(capture_rng_state())  # a collective: every rank calls it
            path = checkpoint_path(self.output_dir, self.iteration)
            failure = None
            if distributed.is_main_process():
                try:
                    save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                    iteration=self.iteration, label_to_category=train_set.label_to_category,
                                    class_names=train_set.class_names, rng_per_rank=rng_per_rank,
                                    args={k: v for k, v in vars(args).items() if k != "model_config"})
                    prune_checkpoints(self.output_dir, args.keep_checkpoints, protect=(args.iters,))
                except OSError as error:
                    failure = (error.errno, error.strerror or error_line(error), str(error.filename or path))
            failure = distributed.broadcast_object(failure)  # also the barrier: every rank waits for the write
            if failure is not None:
                raise OSError(*failure)
            self.last_saved, self.last_saved_iteration = path, self.iteration

    def build_model(self, train_set: CocoDetection):
        """The detector, SGD, LR schedule and grad scaler, restored from the last usable checkpoint with --resume.

        Returns:
            (model, optimizer, scheduler, scaler); sets `self.iteration` to the resumed iteration.
        """
        args, device = self.args, self.device
        path, checkpoint, skipped = self.resume_from  # found by check_before_work
        for line in skipped:
            distributed.log(f"--resume: {line}; falling back to the previous checkpoint")
        if checkpoint is not None:  # automatic choices (None) as the run made them, e.g. frozen BN with weights
            backbone = args.model_config.backbone
            for name in ("norm", "trainable_stages"):
                if getattr(backbone, name) is None:
                    setattr(backbone, name, checkpoint["config"]["backbone"][name])
        torch.manual_seed(args.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        model = build_detector(train_set.num_classes, args.model_config)
        if checkpoint is not None:
            for note in check_resumable(checkpoint, path, model, train_set.label_to_category):
                distributed.log(f"--resume: {note}")
            if args.init_from:
                distributed.log(f"--init-from {args.init_from} is not used: resuming from {path}")
        elif args.init_from:
            skipped_tensors = load_pretrained_weights(model, args.init_from)
            distributed.log(f"initialised from {args.init_from}; not loaded (shape differs): "
                            f"{skipped_tensors or 'none'}")
        model.to(device)
        lr = scaled_lr(args.lr, args.batch_size * distributed.get_world_size(), args.lr_reference_batch)
        optimizer = build_optimizer(model, lr, momentum=args.momentum, weight_decay=args.weight_decay)
        scheduler = build_lr_scheduler(optimizer, steps=args.steps, gamma=args.gamma,
                                       warmup_iters=args.warmup_iters, warmup_factor=args.warmup_factor)
        scaler = build_grad_scaler(device, args.amp)
        torch.manual_seed(args.seed + distributed.get_rank())  # per-rank random streams (train sizes, sampling)
        if checkpoint is not None:
            notes = restore_training_state(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler,
                                           scaler=scaler, rank=distributed.get_rank(),
                                           world_size=distributed.get_world_size())
            self.iteration = self.last_saved_iteration = int(checkpoint["iteration"])
            self.last_saved = path
            distributed.log(f"resumed from {path} at iteration {self.iteration}")
            for note in notes:
                distributed.log(f"--resume: {note}")
            current = to_plain({k: v for k, v in vars(args).items() if k != "model_config"})
            for note in apply_changed_arguments(checkpoint, current, optimizer, scheduler, lr=lr,
                                                momentum=args.momentum, weight_decay=args.weight_decay):
                distributed.log(f"--resume: {note}")
        elif args.resume:
            distributed.log(f"--resume: {self.output_dir} holds no checkpoint yet: a new run, from iteration 0")
        distributed.log(f"{distributed.get_world_size()} process(es) x {args.batch_size} images, LR {lr:g}, "
                        f"{args.iters} iterations, {device.type}, amp {args.amp}")
        return model, optimizer, scheduler, scaler


def plot_curves(metrics_file: Path, output_dir: Path) -> None:
    """Loss/LR/AP plots via scripts/plot_metrics.py, when matplotlib is installed."""
    try:
        from plot_metrics import plot_metrics  # scripts/ is on sys.path when this file runs as a script
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        try:
            from plot_metrics import plot_metrics
        except ImportError:
            return
    try:
        paths = plot_metrics(metrics_file, output_dir)
    except ImportError:  # matplotlib missing: the plots are optional, and said to be skipped
        distributed.log('plots skipped (losses.png, lr.png, ap.png): matplotlib is not installed; pip install -e '
                        '".[viz]", then python scripts/plot_metrics.py ' + str(metrics_file))
        return
    distributed.log("plots: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    sys.exit(main())
