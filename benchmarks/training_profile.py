"""Where one training iteration of a preset goes: data, forward (per stage), loss read, backward, optimizer.

    python scripts/profile_training.py --preset cpu-demo                         # the preset's own speed settings
    python scripts/profile_training.py --preset cpu-demo --amp none --threads 1  # the portable fp32 path
    python scripts/profile_training.py --preset fcos-cpu-demo --markdown         # README-ready tables
    python scripts/profile_training.py --weights runs/demo/checkpoint_0000400.pt --json runs/profile.json

What is built is what `fpn.engine.trainer.Trainer` builds for the preset: the synthetic set (generated once into
`--data-dir`) or a COCO folder, the training set and loader with the preset's workers, the detector, SGD, the LR
schedule and grad scaler (`Trainer.build_model`), the FiniteWatch and the autocast of the precision that
`fpn.engine.hardware.choose_hardware` resolves. `--weights` loads a checkpoint's "model" weights: a half-trained
model's proposals and matches cost differently from random init's.

An iteration is `fpn.engine.loop.train_iterations`'s, step for step, with a clock read between the parts
(`instrumented_step` copies `train_step`; keep the two in the same order). Consecutive clock readings make
the parts sum to the iteration's time exactly:

    data       waiting for the next batch (the trainer's data_time) + the move to the device
    forward    model(images, targets) under autocast; by forward hooks per child of the detector (backbone, neck,
               rpn, roi_heads, head, mask_branch) with the rest (resize, normalise, pad) as "outside children"
    loss read  the loss values (and the previous step's finite flags) stacked and read to the host
    backward   the loss sum and backward
    optimizer  zero_grad, grad clipping, SGD step (+ scaler update), the FiniteWatch flags
    other      the LR scheduler's step

Then one more iteration under `fpn.ops.host_sync.HostSyncCounter` (the syncs a CUDA run of it would make), and a
few under torch.profiler: ATen calls per iteration, op self time against wall time (the rest is Python and the
autograd engine) and op time by category (`OP_CATEGORIES`). On CUDA the clock synchronises at every reading.

Denormals are flushed (`torch.set_flush_denormal(True)`, undone at the end): a randomly initialised GroupNorm
trunk produces denormal floats whose arithmetic is many times slower on x86, which a trained model (and training
from scratch after its first steps) does not have; without the flush the first iterations' times would describe
the denormals, not the model.
"""
from __future__ import annotations

import argparse
import contextlib
import pickle
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.report import machine_info, write_json
from fpn.config import MaskRCNNConfig
from fpn.detectors.build import arch_of
from fpn.engine import distributed
from fpn.engine.hardware import AMP_CHOICES, choose_hardware
from fpn.engine.loop import autocast_factory, move_to_device
from fpn.engine.nonfinite import FiniteWatch, check_losses
from fpn.engine.presets import PRESETS, TrainingPreset, get_preset, synthetic_recipe
from fpn.engine.trainer import Trainer, TrainingJob
from fpn.engine.training_data import (
    DataSource,
    build_datasets,
    dataset_paths,
    training_loader,
)
from fpn.ops.host_sync import HostSyncCounter

DEFAULT_DATA_DIR = "/tmp/fpn-profile/synthetic"
# The clock's readings (instrumented_step, timed_iteration), in order, and the part each belongs to.
CLOCK_PARTS = {"data_wait": "data", "to_device": "data", "forward": "forward", "loss_read": "loss read",
               "loss_sum": "backward", "zero_grad": "optimizer", "backward": "backward", "clip": "optimizer",
               "step": "optimizer", "finite_watch": "optimizer", "scheduler": "other"}
PARTS = ("data", "forward", "loss read", "backward", "optimizer", "other")
# Methods a detector calls on a child directly, not through the child's forward (Mask R-CNN's training path);
# timed with the child's forward hooks as its stage.
DIRECT_CALLS = {"roi_heads": ("sample_rois", "classify", "losses"), "mask_branch": ("loss",)}
NO_SECTION = contextlib.nullcontext()  # reusable: it holds no state
OPTIMIZER_RANGE = "optimizer"  # the profiler range around the optimizer's parts (all their ops: "optimizer")

# Op categories, first match wins: an op's self time goes to the first category whose pattern matches its own name
# or, failing that, the nearest enclosing op's (so the ops inside fpn::roi_align are RoIAlign's, those inside a
# convolution the convolution's). Ops inside the optimizer's range are "optimizer" whatever their name. An op no
# pattern claims is "elementwise and small ops" when its name's calls average < SMALL_OP_US of self time, else
# "other ops".
OP_CATEGORIES = (
    ("copies, dtype casts", r"^aten::(_to_copy|to|copy_|_copy_from|_copy_from_and_resize)$"),
    ("convolution bwd", r"convolution_backward|conv\w*_backward"),
    ("convolution fwd", r"conv"),
    ("normalisation", r"group_norm|batch_norm|layer_norm"),
    ("NMS, sort, topk", r"nms|sort|topk"),
    ("RoIAlign bwd", r"roi_align_backward"),
    ("RoIAlign fwd", r"roi_align"),
    ("matmul, linear", r"^aten::(linear|addmm|mm|bmm|matmul|baddbmm|addmv|mv)$"),
    ("ReLU fwd, bwd", r"relu|clamp_min|threshold_backward"),
)
OPTIMIZER, SMALL, OTHER = "optimizer", "elementwise and small ops", "other ops (avg >= 50 us)"
CATEGORY_NAMES = (*(name for name, _ in OP_CATEGORIES), OPTIMIZER, SMALL, OTHER)
SMALL_OP_US = 50.0
# Profiler events that are not dispatcher ops: autograd engine and node ranges, the optimizers' record_functions.
NOT_OPS = re.compile(r"^(autograd::|torch::autograd::|Optimizer\.|ProfilerStep|GeneratedBackwardFor_)|Backward\d*$"
                     rf"|^{OPTIMIZER_RANGE}$")


@dataclass
class Training:
    """What the trainer builds for a preset, ready to step."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    watch: FiniteWatch
    autocast: Callable[[], contextlib.AbstractContextManager]
    batches: Iterator
    device: torch.device
    clip_grad_norm: float | None


def build_training(preset: TrainingPreset, device: torch.device, data: DataSource, data_dir: Path,
                   weights: str | None = None, seed: int = 0, fill_cache: bool = True) -> Training:
    """The trainer's data, model and optimisation state for `preset` (amp already resolved), its log on stderr.
    `fill_cache`: with `preset.cache_images`, read every training image once first, so that the data part is a
    later epoch's (the first of the demo's ~6 epochs decodes; the loader's workers are forked with the cache).

    Raises:
        ValueError: `weights` holds no "model" state dict that fits the preset's detector.
    """
    checkpoint = read_weights(weights, device) if weights else None
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines; stdout is the report's
        paths = dataset_paths(data, data_dir, synthetic_recipe(preset))
        train_set, _ = build_datasets(paths, data, seed, masks=isinstance(preset.model, MaskRCNNConfig),
                                      cache_images=preset.cache_images)
        if preset.cache_images and fill_cache:
            for index in range(len(train_set)):
                train_set[(index, 0)]
        model, optimizer, scheduler, scaler = Trainer(TrainingJob(preset=preset, seed=seed), device).build_model(
            train_set)
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as error:
            raise ValueError(f"--weights {weights} does not fit the preset's detector: {error}") from None
    batches = iter(training_loader(train_set, batch_size=preset.batch_size, workers=preset.workers, seed=seed,
                                   start_iter=0))
    model.train()
    return Training(model, optimizer, scheduler, scaler, FiniteWatch(model, check_gradients=preset.amp != "fp16"),
                    autocast_factory(device, preset.amp), batches, device, preset.clip_grad_norm)


def read_weights(path: str, device: torch.device) -> dict:
    """A training checkpoint (its "model" state dict is what is used), read with weights_only=True.

    Raises:
        ValueError: not a torch file, or one without a "model" entry; OSError: unreadable.
    """
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise ValueError(f"--weights {path}: not a torch checkpoint ({error})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"--weights {path}: not a training checkpoint (no 'model' entry)")
    return checkpoint


class Clock:
    """Seconds between consecutive readings, summed per reading's name; on CUDA each reading synchronises."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.times: dict[str, float] = defaultdict(float)
        self.start = self.last = self.now()

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def mark(self, name: str) -> None:
        now = self.now()
        self.times[name] += now - self.last
        self.last = now


def instrumented_step(t: Training, images, targets, iteration: int, mark: Callable[[str], None],
                      section: Callable[[str], contextlib.AbstractContextManager] = lambda name: NO_SECTION,
                      ) -> dict[str, float]:
    """`fpn.engine.loop.train_step` in its order, with `mark(name)` after each part and `section` around the
    optimizer's parts (a profiler range). Returns the logged losses, as train_step does."""
    with t.autocast():
        loss_dict = t.model(images, targets)
    mark("forward")
    names = sorted(loss_dict)
    values = torch.stack([loss_dict[name].detach().float() for name in names])  # (T,)
    flags = t.watch.pending()
    if flags is not None:
        values = torch.cat([values, flags.to(values.device)])  # (T + 2,)
    read = distributed.all_reduce_mean(values).tolist()
    if flags is not None:
        t.watch.raise_if_bad(read[len(names):])
    check_losses(names, read[:len(names)], iteration)
    mark("loss_read")
    total = sum(loss_dict[name].float() for name in names)
    mark("loss_sum")
    with section(OPTIMIZER_RANGE):
        t.optimizer.zero_grad(set_to_none=True)
    mark("zero_grad")
    t.scaler.scale(total).backward()
    mark("backward")
    with section(OPTIMIZER_RANGE):
        grad_norm = None
        if t.clip_grad_norm is not None:
            t.scaler.unscale_(t.optimizer)
            params = [p for group in t.optimizer.param_groups for p in group["params"] if p.grad is not None]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad_norm)
        mark("clip")
        t.scaler.step(t.optimizer)
        t.scaler.update()
        mark("step")
        t.watch.record(iteration, grad_norm)
        mark("finite_watch")
    logged = dict(zip(names, read[:len(names)]))
    logged["loss"] = float(sum(logged.values()))
    return logged


class StageTimer:
    """Seconds per child of the detector during forward: forward hooks on each child, and the DIRECT_CALLS
    methods wrapped; only a stage's outermost entry is timed (a child's forward calling its own methods)."""

    def __init__(self, model: nn.Module, clock_now: Callable[[], float]):
        self.now, self.times = clock_now, defaultdict(float)
        self.depth: dict[str, int] = defaultdict(int)
        self.started: dict[str, float] = {}
        self.handles, self.wrapped = [], []
        for name, child in model.named_children():
            self.handles.append(child.register_forward_pre_hook(lambda m, i, n=name: self.enter(n)))
            self.handles.append(child.register_forward_hook(lambda m, i, o, n=name: self.leave(n)))
            for method in DIRECT_CALLS.get(name, ()):
                if hasattr(child, method):
                    setattr(child, method, self.timed(name, getattr(child, method)))
                    self.wrapped.append((child, method))

    def enter(self, name: str) -> None:
        if self.depth[name] == 0:
            self.started[name] = self.now()
        self.depth[name] += 1

    def leave(self, name: str) -> None:
        self.depth[name] -= 1
        if self.depth[name] == 0:
            self.times[name] += self.now() - self.started[name]

    def timed(self, name: str, method: Callable) -> Callable:
        def call(*args, **kwargs):
            self.enter(name)
            try:
                return method(*args, **kwargs)
            finally:
                self.leave(name)
        return call

    def take(self) -> dict[str, float]:
        """The seconds per stage since the last take."""
        times, self.times = dict(self.times), defaultdict(float)
        return times

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for child, method in self.wrapped:
            delattr(child, method)  # the class's method again


def next_batch(t: Training, clock: Clock | None = None):
    """The next (images, targets) on the device, as train_iterations fetches them."""
    images, targets = next(t.batches)
    if clock is not None:
        clock.mark("data_wait")
    return move_to_device(images, targets, t.device)


def timed_iteration(t: Training, iteration: int, stages: StageTimer) -> dict:
    """One training iteration: {"clock": seconds per clock reading, "stages": seconds per forward stage, "total"}."""
    clock = Clock(t.device)
    images, targets = next_batch(t, clock)
    clock.mark("to_device")
    stages.take()
    instrumented_step(t, images, targets, iteration, clock.mark)
    forward_stages = stages.take()
    t.scheduler.step()
    clock.mark("scheduler")
    return {"clock": dict(clock.times), "stages": forward_stages, "total": clock.last - clock.start}


def count_host_syncs(t: Training, images, targets, iteration: int) -> HostSyncCounter:
    """The host syncs of one step (forward, loss read, backward, optimizer) as a CUDA run would make them."""
    with HostSyncCounter() as counter:
        instrumented_step(t, images, targets, iteration, lambda name: None)
    t.scheduler.step()
    return counter


def profile_ops(t: Training, first_iteration: int, iterations: int) -> dict:
    """`iterations` steps under torch.profiler (their batches fetched first): ops per iteration and where their
    time goes (see `categorise`)."""
    batches = [next_batch(t) for _ in range(iterations)]
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for offset, (images, targets) in enumerate(batches):
            instrumented_step(t, images, targets, first_iteration + offset, lambda name: None,
                              section=torch.profiler.record_function)
            t.scheduler.step()
        if t.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    return categorise(prof.events(), wall, iterations)


def _category_of(event, patterns) -> str | None:
    """The category of `event` by its name or its nearest enclosing op's; OPTIMIZER inside the optimizer's range;
    None when no pattern claims it."""
    parent, named = event, None
    while parent is not None:
        if parent.name == OPTIMIZER_RANGE:
            return OPTIMIZER
        if named is None and not NOT_OPS.search(parent.name):
            named = next((category for category, pattern in patterns if pattern.search(parent.name)), None)
        parent = parent.cpu_parent
    return named


def categorise(events: Sequence, wall_s: float, iterations: int) -> dict:
    """Op counts and self CPU time per iteration from profiler events: by category (OP_CATEGORIES, with the three
    op names taking most of each) and the top 15 ops (with the category most of each one's time went to).
    `events`: FunctionEvents with name, self_cpu_time_total (us) and cpu_parent."""
    patterns = [(category, re.compile(pattern)) for category, pattern in OP_CATEGORIES]
    ops = [event for event in events if not NOT_OPS.search(event.name)]
    self_us, calls = Counter(), Counter()
    for event in ops:
        self_us[event.name] += event.self_cpu_time_total
        calls[event.name] += 1
    claimed = {name: Counter() for name in CATEGORY_NAMES}  # category -> op name -> self us
    for event in ops:
        category = _category_of(event, patterns)
        if category is None:
            category = SMALL if self_us[event.name] / calls[event.name] < SMALL_OP_US else OTHER
        claimed[category][event.name] += event.self_cpu_time_total
    top_level = sum(1 for event in ops if not _inside_op(event))
    per = 1000.0 * iterations  # us in total -> ms per iteration
    op_ms = sum(self_us.values()) / per
    wall_ms = 1000.0 * wall_s / iterations
    top = [{"op": name, "calls": calls[name] / iterations, "self_ms": us / per,
            "avg_us": us / calls[name], "category": max(CATEGORY_NAMES, key=lambda c: claimed[c][name])}
           for name, us in self_us.most_common(15)]
    return {"iterations": iterations, "op_calls": len(ops) / iterations, "top_level_op_calls": top_level / iterations,
            "wall_ms": wall_ms, "op_self_ms": op_ms, "outside_ops_ms": wall_ms - op_ms,
            "categories_ms": {name: sum(claimed[name].values()) / per for name in CATEGORY_NAMES},
            "category_top_ops": {name: [op for op, _ in claimed[name].most_common(3)] for name in CATEGORY_NAMES},
            "top_ops": top}


def _inside_op(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if not NOT_OPS.search(parent.name):
            return True
        parent = parent.cpu_parent
    return False


@dataclass
class ProfileSettings:
    """One profiling run: the preset and its speed settings, how long, on what data."""
    preset: str = "cpu-demo"  # a name of fpn.engine.presets.PRESETS
    amp: str | None = None  # none, bf16, fp16 or auto (choose_hardware decides); None: the preset's
    threads: int | None = None  # CPU compute threads, 0: choose_hardware decides; None: the preset's
    iters: int = 30  # timed iterations
    warmup: int = 10  # iterations run first and not timed
    profile_iters: int = 3  # iterations under torch.profiler
    weights: str | None = None  # a training checkpoint whose "model" weights are loaded
    data_dir: str = DEFAULT_DATA_DIR  # where the preset's synthetic set is generated (once)
    coco_root: str | None = None  # a folder in COCO 2017's layout to train on instead
    fill_cache: bool = True  # a preset caching images: read them all first (the steady state of later epochs)
    device: str = "cpu"  # cpu, cuda, cuda:N, ...
    seed: int = 0  # the trainer's --seed


def _median_ms(runs: list[dict[str, float]], keys: Sequence[str]) -> dict[str, float]:
    return {key: 1000.0 * statistics.median(run.get(key, 0.0) for run in runs) for key in keys}


def summarise(runs: list[dict]) -> dict:
    """Median ms per part, per clock reading and per forward stage over the timed iterations, and % of the step.

    Each run's parts sum to its total exactly (consecutive clock readings), and its stages plus "outside children"
    to its forward; medians of parts need not sum to the median step, so each % is of the median step."""
    parts = [{part: sum(s for name, s in run["clock"].items() if CLOCK_PARTS[name] == part) for part in PARTS}
             for run in runs]
    stage_names = list(dict.fromkeys(name for run in runs for name in run["stages"]))
    stages = [{**run["stages"], "outside children": run["clock"]["forward"] - sum(run["stages"].values())}
              for run in runs]
    step_ms = 1000.0 * statistics.median(run["total"] for run in runs)
    parts_ms = _median_ms(parts, PARTS)
    stages_ms = _median_ms(stages, [*stage_names, "outside children"])
    return {"step_ms": step_ms, "parts_ms": parts_ms, "clock_ms": _median_ms([run["clock"] for run in runs],
                                                                             list(CLOCK_PARTS)),
            "stages_ms": stages_ms,
            "parts_percent": {key: 100.0 * ms / step_ms for key, ms in parts_ms.items()},
            "stages_percent": {key: 100.0 * ms / step_ms for key, ms in stages_ms.items()},
            "iterations": [{"total_s": run["total"], "parts_s": part, "stages_s": stage}
                           for run, part, stage in zip(runs, parts, stages)]}


def resolve_preset(settings: ProfileSettings, device: torch.device, preset: TrainingPreset | None = None):
    """The preset (default: `settings.preset`'s) with the settings' amp and threads, resolved as the trainer
    resolves them (amp auto, threads 0: `choose_hardware`), and the choice (its line)."""
    preset = get_preset(settings.preset) if preset is None else preset
    amp = preset.amp if settings.amp is None else settings.amp
    threads = preset.threads if settings.threads is None else settings.threads
    choice = choose_hardware(amp, threads, device)
    preset.amp, preset.threads = choice.amp, choice.threads
    return preset, choice


def profile_training(settings: ProfileSettings, preset: TrainingPreset | None = None) -> dict:
    """Build the preset's training, time `settings.iters` iterations after `settings.warmup`, count one
    iteration's host syncs and profile `settings.profile_iters`; the report (see `markdown`).

    `preset`: this one instead of `settings.preset`'s (tests shrink its data set); its amp and threads are
    resolved here.
    Raises ValueError for settings out of range.
    """
    if settings.iters < 1 or settings.warmup < 0 or settings.profile_iters < 1:
        raise ValueError(f"need iters >= 1, warmup >= 0, profile_iters >= 1; got {settings.iters}, "
                         f"{settings.warmup}, {settings.profile_iters}")
    device = torch.device(settings.device)
    preset, choice = resolve_preset(settings, device, preset)
    saved_threads = torch.get_num_threads()
    torch.set_flush_denormal(True)  # see the module docstring
    try:
        torch.set_num_threads(preset.threads)
        data = DataSource(coco_root=settings.coco_root, synthetic_dir=settings.data_dir)
        t = build_training(preset, device, data, Path(settings.data_dir), settings.weights, settings.seed,
                           settings.fill_cache)
        report = _measure(t, settings)
        report["machine"] = machine_info()
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(saved_threads)
    model = preset.model
    cache = ("filled first" if settings.fill_cache else "cold") if preset.cache_images else "off"
    sizes = sorted({model.input.min_size, model.input.max_size, *model.input.train_min_sizes})
    report["settings"] = {"preset": settings.preset, "arch": arch_of(model), "batch": preset.batch_size,
                          "image_size": sizes, "amp": preset.amp, "threads": choice.threads, "speed": choice.line,
                          "workers": preset.workers, "image_cache": cache, "iters": settings.iters,
                          "warmup": settings.warmup, "profile_iters": settings.profile_iters,
                          "weights": settings.weights, "device": str(device)}
    return report


def _measure(t: Training, settings: ProfileSettings) -> dict:
    iteration = 0
    stages = StageTimer(t.model, Clock(t.device).now)
    try:
        runs = []
        for iteration in range(1, settings.warmup + settings.iters + 1):
            run = timed_iteration(t, iteration, stages)
            if iteration > settings.warmup:
                runs.append(run)
    finally:
        stages.remove()
    images, targets = next_batch(t)
    counter = count_host_syncs(t, images, targets, iteration + 1)
    syncs = {"total": counter.total, "by_op": dict(counter.by_op.most_common()),
             "top_sites": [{"op": op, "site": site, "count": count}
                           for (op, site), count in counter.by_site.most_common(5)]}
    profile = profile_ops(t, iteration + 2, settings.profile_iters)
    return {**summarise(runs), "host_syncs": syncs, "profile": profile}


PART_LABELS = {"data": "data (wait for the loader + to device)", "forward": "forward",
               "loss read": "loss read (host sync)", "backward": "backward",
               "optimizer": "optimizer (zero_grad, clip, SGD step, finite flags)", "other": "other (LR scheduler)"}


def _ms(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def header(report: dict) -> str:
    """One line: the machine, torch, the preset and its speed settings, how many iterations."""
    s, m = report["settings"], report["machine"]
    size = "..".join(str(v) for v in s["image_size"])
    return (f"Training iteration of `{s['preset']}` ({s['arch']}, batch {s['batch']} at {size} px, amp {s['amp']}, "
            f"{s['threads']} torch thread{'s' if s['threads'] != 1 else ''}, {s['workers']} loader worker(s)"
            + (f", image cache {s['image_cache']}" if s["image_cache"] != "off" else "")
            + (f", weights {s['weights']}" if s["weights"] else "")
            + f") on {m['cpu']} ({m['cpu_cores']} cores), torch {m['torch']}, {s['device']}; median of {s['iters']} "
            f"iterations after {s['warmup']} warm-up.")


def parts_table(report: dict) -> list[str]:
    lines = ["| part | ms per iteration | % |", "|---|---:|---:|"]
    for part in PARTS:
        lines.append(f"| {PART_LABELS[part]} | {_ms(report['parts_ms'][part])} | {report['parts_percent'][part]:.1f} |")
        if part == "forward":
            lines += [f"| &nbsp;&nbsp;forward: {stage} | {_ms(ms)} | {report['stages_percent'][stage]:.1f} |"
                      for stage, ms in report["stages_ms"].items()]
    lines.append(f"| step (median) | {_ms(report['step_ms'])} | 100 |")
    return lines


def category_table(report: dict) -> list[str]:
    p = report["profile"]
    summary = (f"Under torch.profiler ({p['iterations']} iterations): {p['op_calls']:,.0f} ATen op calls per "
               f"iteration ({p['top_level_op_calls']:,.0f} from Python or the autograd engine, the rest inside other "
               f"ops); wall {_ms(p['wall_ms'])} ms, of which ops' self time {_ms(p['op_self_ms'])} ms (unprofiled: "
               f"{_ms(report['step_ms'])} ms a step; the profiler's own cost is mostly inside the ops' times).")
    lines = [summary, "", "| op category | ms per iteration | % of wall | largest ops |", "|---|---:|---:|---|"]
    rows = [(name, ms, ", ".join(op.replace("aten::", "") for op in p["category_top_ops"][name]))
            for name, ms in sorted(p["categories_ms"].items(), key=lambda item: -item[1]) if ms > 0]
    rows.append(("outside ops (Python, autograd engine, profiler)", p["outside_ops_ms"], ""))
    lines += [f"| {name} | {_ms(ms)} | {100.0 * ms / p['wall_ms']:.1f} | {ops} |" for name, ms, ops in rows]
    lines.append(f"| wall (profiled) | {_ms(p['wall_ms'])} | 100 | |")
    return lines


def markdown(report: dict, detail: bool = True) -> str:
    """The report as Markdown: header, parts table, host syncs, op categories; `detail`: also the optimizer's
    parts, the top sync sites and the top 15 ops."""
    syncs = report["host_syncs"]
    lines = [header(report), "", *parts_table(report), "",
             f"Host syncs per iteration (as a CUDA run would make them): {syncs['total']} ("
             + ", ".join(f"{op} {count}" for op, count in syncs["by_op"].items()) + ").", "", *category_table(report)]
    if detail:
        clock = report["clock_ms"]
        lines += ["", "Optimizer: " + ", ".join(f"{name} {_ms(clock[name])} ms" for name in
                                               ("zero_grad", "clip", "step", "finite_watch")) + "; data: wait "
                  f"{_ms(clock['data_wait'])} ms, to device {_ms(clock['to_device'])} ms.", "",
                  "Top host-sync sites:"]
        lines += [f"- {site['count']} {site['op']} at {site['site']}" for site in syncs["top_sites"]]
        lines += ["", "| op | calls per iteration | self ms per iteration | avg us | mostly in |",
                  "|---|---:|---:|---:|---|"]
        lines += [f"| {op['op']} | {op['calls']:.0f} | {_ms(op['self_ms'])} | {op['avg_us']:.0f} | {op['category']} |"
                  for op in report["profile"]["top_ops"]]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Where one training iteration of a preset goes (benchmarks/training_profile.py).")
    parser.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS), help="the training preset")
    parser.add_argument("--amp", default=None, choices=AMP_CHOICES,
                        help="precision (auto: bf16 where the device computes it natively); default: the preset's")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU compute threads (0: the cores other processes leave free); default: the preset's")
    parser.add_argument("--iters", type=int, default=30, help="timed iterations (default 30)")
    parser.add_argument("--warmup", type=int, default=10, help="iterations run first, not timed (default 10)")
    parser.add_argument("--profile-iters", type=int, default=3, help="iterations under torch.profiler (default 3)")
    parser.add_argument("--weights", default=None, help="a training checkpoint whose 'model' weights are loaded")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help=f"where the preset's synthetic set is generated, once (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--coco-root", default=None, help="train on this folder in COCO 2017's layout instead")
    parser.add_argument("--cold-cache", action="store_true",
                        help="a preset caching its images: time the first epoch's reads (default: the cache is "
                        "filled first, as every later epoch finds it)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    parser.add_argument("--markdown", action="store_true",
                        help="print only the README tables (header, parts, host syncs, op categories)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = ProfileSettings(preset=args.preset, amp=args.amp, threads=args.threads, iters=args.iters,
                               warmup=args.warmup, profile_iters=args.profile_iters, weights=args.weights,
                               data_dir=args.data_dir, coco_root=args.coco_root, fill_cache=not args.cold_cache,
                               device=args.device)
    try:
        report = profile_training(settings)
    except (ValueError, OSError) as error:
        print(f"profile_training.py: error: {error}", file=sys.stderr)
        return 2
    print(markdown(report, detail=not args.markdown))
    if args.json:
        write_json(args.json, report, indent=1)
    return 0
