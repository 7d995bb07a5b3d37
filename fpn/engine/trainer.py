"""A whole training run, importable: data, model, optimisation, resume, evaluation cadence, checkpoints and plots.

    from fpn.engine.presets import get_preset
    from fpn.engine.trainer import TrainingJob, run_training

    job = TrainingJob(preset=get_preset("cpu-demo"), output_dir="runs/demo")  # preset.model is the detector
    run_training(job)        # raises TrainingStopped / TrainingInterrupted with the line to show

`scripts/train.py` (fpn.tools.train) turns the command line into a `TrainingJob` and the exceptions into exit
codes. Shape shorthand: N images per process per iteration.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fpn.backbones.build import build_backbone
from fpn.config import MaskRCNNConfig
from fpn.data.coco import CocoDetection
from fpn.data.statistics import describe_dataset
from fpn.detectors.build import arch_of, build_detector, is_rpn_only
from fpn.device import select_device
from fpn.engine import distributed
from fpn.engine.checkpoint import (
    checkpoint_path, load_pretrained_weights, prepare_output_dir, prune_checkpoints, save_checkpoint, to_plain,
)
from fpn.engine.best import BestMetric, check_best_metric
from fpn.engine.dataset_plot import write_dataset_report
from fpn.engine.interrupts import interrupts_deferred, sigterm_as_interrupt
from fpn.engine.hardware import choose_hardware
from fpn.engine.loop import MetricsLog, autocast_factory, build_grad_scaler, train_iterations
from fpn.engine.nonfinite import FiniteWatch, NonFiniteError
from fpn.engine.plots import plot_metrics
from fpn.engine.presets import TrainingPreset, synthetic_recipe
from fpn.engine.resume import apply_changed_arguments, check_resumable, find_resume_checkpoint, restore_training_state
from fpn.engine.rng_state import capture_rng_state
from fpn.engine.run_evaluation import FINAL_PREFIX, RunEvaluation, evaluation_keys, loss_dataset, on_main_or_raise
from fpn.engine.schedule import build_lr_scheduler, build_optimizer, scaled_lr
from fpn.engine.tensorboard import open_board, require_tensorboard
from fpn.engine.training_data import (
    DataSource, OwnData, build_datasets, check_data_paths, dataset_paths, image_cache_line, training_loader,
)
from fpn.errors import InputError, TrainingInterrupted, TrainingStopped, describe_os_error
from fpn.deploy.visualize import save_detection_picture


@dataclass
class TrainingJob:
    """Everything one training run needs: the preset (schedule and, in `preset.model`, the detector's config, with
    any flags already applied), where the data and the output go, and how to start."""
    preset: TrainingPreset = field(default_factory=TrainingPreset)  # schedule + model config (preset.model)
    output_dir: str = "runs/train"  # checkpoints, metrics and pictures go here
    data: DataSource = field(default_factory=DataSource)  # the data; none given: the synthetic shapes set
    resume: bool = False  # continue from the last usable checkpoint in output_dir
    init_from: Optional[str] = None  # initial weights: one of our checkpoints or a torchvision detector file
    device: str = "auto"  # auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps
    seed: int = 0  # seed of weights init, data order and augmentation
    preset_name: str = ""  # the preset's name, for the record in checkpoints
    # Parts you wrote, in place of the configured ones: {detector keyword: a function making a fresh module}, e.g.
    # {"box_head": lambda: MyHead(256)}; the keywords are the detector's (backbone, neck, rpn_head, box_head;
    # FCOS: backbone, neck, head). Called after the seed is set, once per build. Checkpoints name them
    # (`given_modules`): --resume needs the same parts, `load_detector` refuses such a file (README,
    # "Extending fpn").
    modules: Dict[str, Callable[[], nn.Module]] = field(default_factory=dict)

    def build(self, num_classes: int, config=None) -> nn.Module:
        """The detector of `config` (default: the preset's) with this job's own parts."""
        config = self.preset.model if config is None else config
        return build_detector(num_classes, config, {name: make() for name, make in self.modules.items()})

    def record(self) -> Dict[str, Any]:
        """The flat dict of plain values stored in every checkpoint as `args` (what --resume compares and
        scripts/evaluate.py reads: eval_batch_size, amp, threads)."""
        training = {item.name: getattr(self.preset, item.name) for item in fields(self.preset) if item.name != "model"}
        data = {item.name: getattr(self.data, item.name) for item in fields(self.data)}
        return to_plain({"preset": self.preset_name, "arch": arch_of(self.preset.model), "output_dir": self.output_dir,
                         **data, "resume": self.resume, "init_from": self.init_from,
                         "backbone_weights": self.preset.model.backbone.weights, "device": self.device,
                         "seed": self.seed, "modules": sorted(self.modules), **training})


def block_ends(start_iter: int, iters: int, every: Sequence[int]) -> list:
    """The iterations after which to stop and checkpoint/evaluate: multiples of each `every`, and `iters`."""
    ends = {iters}
    for period in every:
        if period > 0:
            ends.update(range(period * (start_iter // period + 1), iters, period))
    return sorted(e for e in ends if e > start_iter) or [iters]


def run_training(job: TrainingJob) -> None:
    """Train, checkpoint and evaluate `job`, joining torchrun's process group when there is one.

    Raises:
        InputError / ValueError: a bad flag value, file or data set, found before any work (named).
        TrainingStopped: the run stopped part-way (a non-finite value, a failed write, a process that stopped
            answering); its message names the cause, the last good checkpoint and the --resume command.
        TrainingInterrupted: Ctrl-C or SIGTERM; its message says where to resume from.
    """
    device = select_device(job.device)
    stopped = None
    with distributed.distributed_session(device, timeout_minutes=job.preset.dist_timeout_min) as device, \
            sigterm_as_interrupt():
        trainer = Trainer(job, device)
        try:
            try:
                trainer.train()
            finally:
                trainer.close_progress()  # a message after it goes on a line of its own
        except NonFiniteError as error:  # raised on every rank together: the group is left as after a success
            stopped = TrainingStopped(f"{error}; training stopped before writing anything: {trainer.last_good()}. "
                                      "Lower the LR, enable --clip-grad-norm, or check the data.",
                                      report=distributed.is_main_process())
        except KeyboardInterrupt as stop:
            what = "terminated (SIGTERM)" if str(stop) == "SIGTERM" else "interrupted"
            raise TrainingInterrupted(f"{what} after {trainer.completed()} iterations; {trainer.last_good()}") \
                from None
        except OSError as error:  # disk full, read-only, permissions: nothing written is lost
            if not trainer.started or isinstance(error, InputError):
                raise
            raise TrainingStopped(
                f"{describe_os_error(error)}; training stopped after {trainer.completed()} iterations: "
                f"{trainer.last_good(when='once the cause is fixed (space, permissions, a writable disk)')}",
                report=distributed.is_main_process()) from error
        except RuntimeError as error:  # a collective that gave up on another process
            if not distributed.is_peer_failure(error):
                raise
            silent = distributed.silent_ranks()
            # raised out of the session: leaving it must not wait in a barrier for a process that may be gone
            raise TrainingStopped(f"{distributed.describe_peer_failure(job.preset.dist_timeout_min, silent)}; "
                                  f"training stopped: {trainer.last_good()}",
                                  report=distributed.reports_peer_failure(silent)) from error
    if stopped is not None:
        raise stopped


class Trainer:
    """One training run: data, model and optimisation state, and the last checkpoint written (for messages)."""

    def __init__(self, job: TrainingJob, device: torch.device):
        self.job, self.device = job, device
        self.preset = job.preset  # the schedule; self.preset.model the detector's config
        self.output_dir = Path(job.output_dir)
        self.iteration = 0  # iterations completed
        self.last_saved: Optional[Path] = None  # the newest checkpoint known good (written or resumed from)
        self.last_saved_iteration = 0
        self.bar = None  # the progress bar, which counts the iterations done inside a block too
        self.bar_count: Optional[int] = None  # its count when it was closed
        self.started = False  # True once the checks are done and work (data generation, training) begins
        # (path, checkpoint, passed-over lines) found for --resume before any work
        self.resume_from: Tuple[Optional[Path], Optional[dict], List[str]] = (None, None, [])
        self.own_data: Optional[OwnData] = None  # --train-data's sets, read once by check_before_work
        # the best evaluation so far (best.pt) and the early-stop count; in every checkpoint
        self.best = BestMetric(job.preset.best_metric, job.preset.early_stop)

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
        job, iters = self.job, self.preset.iters
        self.own_data = check_data_paths(job.data)  # own label folders read (and checked) once, here
        config = copy.deepcopy(self.preset.model)
        if config.backbone.weights:  # the file is read, and loaded into a trunk to prove that it fits
            build_backbone(config.backbone)
        config.backbone.weights = None
        probe = job.build(2, config)  # a bad config value (e.g. --backbone.depth 19) fails here
        if is_rpn_only(probe) and self.best.metric == "AP":  # the default; an RPN alone is scored by recall
            self.best.metric = "AR1k"
        check_best_metric(self.best.metric, evaluation_keys(self.preset.model, is_rpn_only(probe)))
        if self.preset.early_stop < 0:
            raise InputError(f"--early-stop must be >= 0 (0: off), got {self.preset.early_stop}")
        if self.preset.early_stop and not self.preset.eval_every:
            raise InputError(f"--early-stop {self.preset.early_stop} counts evaluations, and with --eval-every 0 "
                             "there is only the final one: give --eval-every N")
        if self.preset.tensorboard:
            require_tensorboard()
        if job.init_from:
            load_pretrained_weights(probe, job.init_from)  # only the class-specific layers may differ
        if job.resume:
            self.resume_from = find_resume_checkpoint(self.output_dir)
            path, checkpoint, _ = self.resume_from
            if checkpoint is not None and int(checkpoint["iteration"]) > iters:
                done = int(checkpoint["iteration"])
                raise InputError(f"--resume: {path} is at iteration {done}, past --iters {iters}: give --iters "
                                 f"above {done} to train on, or evaluate it with scripts/evaluate.py {path}")

    def train(self) -> None:
        job, preset, device = self.job, self.preset, self.device
        self.check_before_work()
        _, checkpoint, _ = self.resume_from
        resumed_threads = int(checkpoint["args"].get("threads") or 0) if checkpoint is not None else 0
        choice = choose_hardware(preset.amp, preset.threads, device, resumed_threads)
        # Resolved: the checkpoints record the precision and thread count that ran (scripts/evaluate.py and
        # --resume use them).
        preset.amp, preset.threads = choice.amp, choice.threads
        torch.set_num_threads(choice.threads)
        distributed.log(choice.line)
        stale = distributed.run_on_main(lambda: prepare_output_dir(self.output_dir))
        self.started = True
        if stale:
            distributed.log(f"removed {len(stale)} temporary file(s) of an interrupted checkpoint write: "
                            + ", ".join(p.name for p in stale))
        paths = dataset_paths(job.data, self.output_dir, synthetic_recipe(preset), self.own_data)
        train_set, val_set = build_datasets(paths, job.data, job.seed, masks=isinstance(preset.model, MaskRCNNConfig),
                                            cache_images=preset.cache_images)
        cached = f"; {image_cache_line(train_set, val_set, preset.workers)}" if preset.cache_images else ""
        distributed.log(f"{len(train_set)} training / {len(val_set)} validation images, "
                        f"{train_set.num_classes - 1} classes{cached}")
        if distributed.is_main_process():
            self.describe_data(train_set)
        model, optimizer, scheduler, scaler = self.build_model(train_set)
        # DDP averages the gradients over the ranks during backward.
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if distributed.is_distributed() else model
        batches = iter(training_loader(train_set, batch_size=preset.batch_size, workers=preset.workers,
                                       seed=job.seed, start_iter=self.iteration))
        autocast = autocast_factory(device, preset.amp)
        board = open_board(preset.tensorboard, self.output_dir, self.iteration, distributed.is_main_process())
        metrics = MetricsLog(self.output_dir / "metrics.jsonl", board=board)
        metrics.drop_after(self.iteration)  # a resumed run redoes the iterations after its checkpoint: log them once
        watch = FiniteWatch(model, check_gradients=preset.amp != "fp16")  # fp16: the grad scaler skips inf steps
        self.bar = tqdm(total=preset.iters, initial=self.iteration, desc="train", dynamic_ncols=True,
                        disable=not distributed.is_main_process())
        evaluate = RunEvaluation(
            model=model, val_set=val_set, loss_set=loss_dataset(val_set, isinstance(preset.model, MaskRCNNConfig)),
            train_set=train_set, output_dir=self.output_dir, device=device, batch_size=preset.eval_batch_size,
            workers=preset.workers, autocast=autocast, metrics=metrics, best=self.best, args=job.record(),
            board=board)
        postfix, final = {}, {}
        # An evaluation comes before the checkpoint of the same iteration, so that the checkpoint holds its
        # best-so-far and early-stop count: a run resumed from it continues the same decisions. The final
        # checkpoint is also written before the final evaluation, so that a failure or Ctrl-C in it loses no
        # training, and written again after it with the final evaluation counted.
        for end in block_ends(self.iteration, preset.iters, (preset.checkpoint_every, preset.eval_every)):
            self.iteration = train_iterations(
                net, optimizer, scheduler, scaler, batches, start_iter=self.iteration, end_iter=end, device=device,
                autocast=autocast, clip_grad_norm=preset.clip_grad_norm, log_every=preset.log_every,
                metrics=metrics, progress=self.bar, watch=watch, postfix=postfix,
            )
            last = end == preset.iters
            evaluated = last or bool(preset.eval_every and end % preset.eval_every == 0)
            if last:
                self.save(model, optimizer, scheduler, scaler, train_set)
            if evaluated:
                final = evaluate(end, FINAL_PREFIX if last else f"eval_{end:07d}")
                postfix["val_loss"] = f"{final['val_loss']:.3f}" if "val_loss" in final else "-"
            stop = evaluated and not last and self.best.exhausted
            if end % preset.checkpoint_every == 0 or last or stop:
                self.save(model, optimizer, scheduler, scaler, train_set)
            if stop:
                self.close_progress()
                distributed.log(self.best.stop_line(end))
                break
        self.close_progress()
        if distributed.is_main_process():
            self.write_final(model, val_set, final, evaluate.best_path, board)
        distributed.log(self.best.summary(evaluate.best_path))

    def describe_data(self, train_set: CocoDetection) -> None:
        """The training set against this model's pyramid (`fpn.data.statistics`): the table in the log,
        dataset_report.json and dataset.png in the output folder (without matplotlib, a line says so)."""
        report = describe_dataset(train_set.coco.dataset, self.preset.model)
        written, missing = write_dataset_report(report, self.output_dir)
        distributed.log("the training set at this model's input size and pyramid:\n" + report.text() + "\n"
                        + (missing or f"dataset report: {', '.join(str(path) for path in written)}"))

    def write_final(self, model, val_set, final: dict, best_path: Path, board) -> None:
        """final_metrics.json (the last evaluation and `best`), detections.png and the plots (rank 0)."""
        record = {"iter": self.iteration, **final, "best": self.best.record(best_path)}
        (self.output_dir / "final_metrics.json").write_text(json.dumps(record, indent=2))
        if not is_rpn_only(model):  # proposals have no classes to draw
            picture = save_detection_picture(model, val_set, self.output_dir / "detections.png", device=self.device)
            distributed.log(f"detections on validation images: {picture}")
        paths = plot_curves(self.output_dir / "metrics.jsonl", self.output_dir)
        if board is not None:
            board.add_plots(paths, self.iteration)
            board.close()

    def save(self, model, optimizer, scheduler, scaler, train_set) -> None:
        """Checkpoint after `self.iteration` (every rank's RNG states in it), then drop the oldest ones.

        Ctrl-C or SIGTERM during this wait until the new checkpoint is written, pruned and recorded as the last
        good one. A failed write (disk full, ...) raises the same OSError on every rank; the temporary file is
        gone and the previous checkpoint stays the last good one.
        """
        preset = self.preset
        with interrupts_deferred():
            rng_per_rank = distributed.all_gather_objects(capture_rng_state())  # a collective: every rank calls it
            path = checkpoint_path(self.output_dir, self.iteration)

            def write() -> None:
                save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                iteration=self.iteration, label_to_category=train_set.label_to_category,
                                class_names=train_set.class_names, rng_per_rank=rng_per_rank,
                                args=self.job.record(), best=self.best.state_dict())
                prune_checkpoints(self.output_dir, preset.keep_checkpoints, protect=(preset.iters,))

            on_main_or_raise(write, path)  # also the barrier: every rank waits for the write
            self.last_saved, self.last_saved_iteration = path, self.iteration

    def build_model(self, train_set: CocoDetection):
        """The detector, SGD, LR schedule and grad scaler, restored from the last usable checkpoint with --resume.

        Returns:
            (model, optimizer, scheduler, scaler); sets `self.iteration` to the resumed iteration.
        """
        job, preset, device = self.job, self.preset, self.device
        path, checkpoint, skipped = self.resume_from  # found by check_before_work
        for line in skipped:
            distributed.log(f"--resume: {line}; falling back to the previous checkpoint")
        if checkpoint is not None:  # automatic choices (None) as the run made them, e.g. frozen BN with weights
            backbone = preset.model.backbone
            for name in ("norm", "trainable_stages"):
                if getattr(backbone, name) is None:
                    setattr(backbone, name, checkpoint["config"]["backbone"][name])
        torch.manual_seed(job.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
        model = job.build(train_set.num_classes)
        if checkpoint is not None:
            for note in check_resumable(checkpoint, path, model, train_set.label_to_category):
                distributed.log(f"--resume: {note}")
            if job.init_from:
                distributed.log(f"--init-from {job.init_from} is not used: resuming from {path}")
        elif job.init_from:
            skipped_tensors = load_pretrained_weights(model, job.init_from)
            distributed.log(f"initialised from {job.init_from}; not loaded (shape differs): "
                            f"{skipped_tensors or 'none'}")
        model.to(device)
        lr = scaled_lr(preset.lr, preset.batch_size * distributed.get_world_size(), preset.lr_reference_batch)
        optimizer = build_optimizer(model, lr, momentum=preset.momentum, weight_decay=preset.weight_decay)
        scheduler = build_lr_scheduler(optimizer, steps=preset.steps, gamma=preset.gamma,
                                       warmup_iters=preset.warmup_iters, warmup_factor=preset.warmup_factor)
        scaler = build_grad_scaler(device, preset.amp)
        torch.manual_seed(job.seed + distributed.get_rank())  # per-rank random streams (train sizes, sampling)
        if checkpoint is not None:
            notes = restore_training_state(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler,
                                           scaler=scaler, rank=distributed.get_rank(),
                                           world_size=distributed.get_world_size())
            self.iteration = self.last_saved_iteration = int(checkpoint["iteration"])
            self.best.load_state_dict(checkpoint.get("best") or {})
            self.last_saved = path
            distributed.log(f"resumed from {path} at iteration {self.iteration}")
            for note in notes:
                distributed.log(f"--resume: {note}")
            for note in apply_changed_arguments(checkpoint, job.record(), optimizer, scheduler, lr=lr,
                                                momentum=preset.momentum, weight_decay=preset.weight_decay):
                distributed.log(f"--resume: {note}")
        elif job.resume:
            distributed.log(f"--resume: {self.output_dir} holds no checkpoint yet: a new run, from iteration 0")
        distributed.log(f"{distributed.get_world_size()} process(es) x {preset.batch_size} images, LR {lr:g}, "
                        f"{preset.iters} iterations, {device.type}, amp {preset.amp}")
        return model, optimizer, scheduler, scaler


def plot_curves(metrics_file: Path, output_dir: Path) -> List[Path]:
    """losses.png, lr.png and ap.png beside metrics.jsonl, their paths; without matplotlib (the `viz` extra), one
    line says so and none is written."""
    try:
        paths = plot_metrics(metrics_file, output_dir)
    except ImportError:
        distributed.log('plots skipped (losses.png, lr.png, ap.png): matplotlib is not installed; pip install -e '
                        '".[viz]", then python scripts/plot_metrics.py ' + str(metrics_file))
        return []
    distributed.log("plots: " + ", ".join(str(p) for p in paths))
    return paths
