"""Training presets: a model config plus the optimisation schedule, chosen by name with `--preset`.

Every value here is only a default: each field has a command-line flag in `scripts/train.py` that overrides it
(`--iters`, `--lr`, `--backbone.depth`, ...). The three presets:

* `cpu-demo`: the README demo. A narrow ResNet-18 with GroupNorm trained from scratch on the synthetic shapes
  set at ~256 px; the same code path as full training, sized to finish on a 2-core CPU in minutes.
* `paper`: Lin et al. (2017), Sec. 5.1: 8 GPUs x 2 images, LR 0.02 for 60k iterations then 0.002 for 20k,
  shorter side 800 px, ImageNet-initialised ResNet-50 with frozen BN.
* `1x`: detectron2's 1x schedule: 90k iterations, LR x0.1 at 60k and 80k, shorter side drawn from 640..800.
"""
from __future__ import annotations

import argparse
import copy
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from fpn.config import FasterRCNNConfig


@dataclass
class TrainingPreset:
    model: FasterRCNNConfig = field(default_factory=FasterRCNNConfig)  # detector architecture and input sizes
    iters: int = 90_000  # training iterations (one optimiser step each)
    batch_size: int = 2  # images per process per iteration
    lr: float = 0.02  # learning rate for `lr_reference_batch` images, scaled linearly to the real total batch
    lr_reference_batch: int = 16  # the total batch `lr` is defined for (16 in the paper)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # L2 weight decay, applied to every trained parameter
    steps: Tuple[int, ...] = (60_000, 80_000)  # iterations where the LR is multiplied by `gamma`
    gamma: float = 0.1  # LR decay factor at each step
    warmup_iters: int = 1000  # linear warm-up length
    warmup_factor: float = 0.001  # LR multiplier at iteration 0 of the warm-up
    clip_grad_norm: Optional[float] = None  # max global gradient norm; None: no clipping
    amp: str = "none"  # mixed precision: "none", "bf16" (autocast) or "fp16" (autocast + GradScaler)
    eval_every: int = 0  # iterations between COCO evaluations; 0: only at the end
    checkpoint_every: int = 5000  # iterations between checkpoints (one is always written at the end)
    log_every: int = 20  # iterations between metrics.jsonl lines
    workers: int = 4  # DataLoader worker processes per training process
    threads: int = 0  # CPU threads per training process; 0: torch's default (one per core)
    eval_batch_size: int = 2  # images per forward pass in evaluation
    synthetic_train_images: int = 2000  # images generated for the built-in synthetic set (no data flags)
    synthetic_val_images: int = 200  # validation images of the synthetic set
    synthetic_image_size: int = 320  # side of the synthetic images, px


def cpu_demo() -> TrainingPreset:
    """The README demo: trains and evaluates on the synthetic set on a laptop-class CPU."""
    model = FasterRCNNConfig()
    model.backbone.depth = 18
    model.backbone.width = 24  # 3/8 of ResNet's width: 800 iterations fit in a few CPU minutes
    model.backbone.norm = "gn"  # no ImageNet weights: GroupNorm trains from scratch with small batches
    model.backbone.gn_groups = 8
    model.backbone.trainable_stages = 5
    model.fpn.out_channels = 64
    model.anchors.sizes = (16, 32, 64, 128, 256)  # the synthetic objects are 12..160 px
    model.rpn.pre_nms_top_n_train = 300  # a 256 px image has ~3.5k anchors on P2; 300 per level is plenty
    model.rpn.post_nms_top_n_train = 200
    model.rpn.pre_nms_top_n_test = 300
    model.rpn.post_nms_top_n_test = 100
    model.rpn.batch_size_per_image = 128
    model.roi_heads.batch_size_per_image = 128
    model.roi_heads.representation_size = 256
    # The synthetic images are 256..320 px a side; both limits at 256 scale the longer side to 256 px.
    model.input.min_size = 256
    model.input.max_size = 256
    model.input.train_min_sizes = (256,)
    return TrainingPreset(
        model=model,
        iters=800,
        batch_size=4,
        lr=0.02,  # 4x the linear-scaling value: from scratch with GroupNorm and clipping this still trains stably
        lr_reference_batch=4,  # the LR above is for this preset's own batch
        steps=(600, 750),
        warmup_iters=100,
        warmup_factor=0.01,
        clip_grad_norm=10.0,
        eval_every=0,
        checkpoint_every=400,
        log_every=10,
        workers=1,  # decodes the next batch on the second core
        # One compute thread: on 2 shared cores two OpenMP threads lose far more to waiting on each other when
        # another process runs than they gain when the machine is idle (0.32 vs 0.47 s/it idle, 3x slower busy).
        threads=1,
        eval_batch_size=4,
        synthetic_train_images=500,
        synthetic_val_images=100,
        synthetic_image_size=256,
    )


def paper() -> TrainingPreset:
    """Lin et al. (2017), Sec. 5.1: 60k iterations at 0.02 then 20k at 0.002, 16 images per batch, 800 px."""
    model = FasterRCNNConfig()  # ResNet-50, frozen BN, FPN 256, 800 px: the paper's detector
    return TrainingPreset(model=model, iters=80_000, batch_size=2, lr=0.02, steps=(60_000,), checkpoint_every=5000)


def detectron2_1x() -> TrainingPreset:
    """detectron2's 1x schedule: 90k iterations, steps at 60k and 80k, multi-scale training 640..800 px."""
    model = FasterRCNNConfig()
    model.input.train_min_sizes = (640, 672, 704, 736, 768, 800)
    return TrainingPreset(model=model, iters=90_000, batch_size=2, lr=0.02, steps=(60_000, 80_000))


PRESETS = {"cpu-demo": cpu_demo, "paper": paper, "1x": detectron2_1x}


def get_preset(name: str) -> TrainingPreset:
    """A fresh copy of the named preset; an unknown name raises ValueError listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name]())


def add_config_flags(parser: argparse.ArgumentParser, config: FasterRCNNConfig) -> None:
    """Add one flag per field of the nested model config: `--backbone.depth 18`, `--input.train-min-sizes 640,800`.

    A field of a section is `--section.field`, a top-level field `--field` (e.g. `--channels-last false`). Flags
    default to "not given" (argparse.SUPPRESS), so `apply_config_flags` changes only what was typed and the
    preset's values stay the defaults. Tuples are comma-separated lists, booleans true/false, optionals "none".
    """
    group = parser.add_argument_group("model config (defaults: the preset's values)")
    for path, hint, default in _config_leaves(config):
        group.add_argument(
            "--" + ".".join(part.replace("_", "-") for part in path),
            dest="model." + ".".join(path),
            type=_parser_for(hint, ".".join(path)),
            default=argparse.SUPPRESS,
            metavar=type(default).__name__.upper() if default is not None else "VALUE",
            help=f"FasterRCNNConfig default: {_show(default)} (a preset may set another)",
        )


def apply_config_flags(config: FasterRCNNConfig, args: argparse.Namespace) -> FasterRCNNConfig:
    """A copy of `config` with the values of the config flags present in `args` set."""
    config = copy.deepcopy(config)
    for key, value in vars(args).items():
        if key.startswith("model."):
            *sections, name = key.split(".")[1:]
            owner = config
            for section in sections:
                owner = getattr(owner, section)
            setattr(owner, name, value)
    return config


def _config_leaves(config: Any, prefix: Tuple[str, ...] = ()) -> List[Tuple[Tuple[str, ...], Any, Any]]:
    """(field path, type hint, value) of every non-dataclass field, depth first."""
    hints = typing.get_type_hints(type(config))
    leaves = []
    for item in fields(config):
        value = getattr(config, item.name)
        if is_dataclass(value):
            leaves.extend(_config_leaves(value, prefix + (item.name,)))
        else:
            leaves.append((prefix + (item.name,), hints[item.name], value))
    return leaves


def _show(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _parser_for(hint: Any, name: str) -> Callable[[str], Any]:
    """A string -> value converter for a field type: int, float, str, bool, Optional[X], Tuple[X, ...]."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in params:
        inner = _parser_for(next(p for p in params if p is not type(None)), name)
        return lambda text: None if text.lower() == "none" else inner(text)
    if origin is tuple:
        item = _parser_for(params[0], name)
        length = None if (len(params) == 2 and params[1] is Ellipsis) else len(params)

        def parse_tuple(text: str) -> tuple:
            values = tuple(item(part) for part in text.split(",") if part.strip())
            if length is not None and len(values) != length:
                raise argparse.ArgumentTypeError(f"--{name} needs {length} comma-separated values, got {text!r}")
            return values

        return parse_tuple
    if hint is bool:
        return _parse_bool
    if hint in (int, float, str):
        return hint
    raise TypeError(f"config field {name} has a type {hint} with no command-line parser")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
