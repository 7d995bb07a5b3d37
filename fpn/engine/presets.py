"""Training presets: a model config plus the optimisation schedule, chosen by name with `--preset`.

Every value here is only a default: `add_preset_flags` and `add_config_flags` give each field a command-line flag
(`--iters`, `--lr`, `--backbone.depth`, ...) whose help is the field's `# comment` and the chosen preset's value,
so every field here and in fpn/config.py carries one (tests/test_presets_help.py checks). The presets:

* `cpu-demo`: the README demo. A narrow ResNet-18 with GroupNorm trained from scratch on the synthetic shapes
  set at ~256 px; the same code path as full training, sized to finish on a 2-core CPU in minutes.
* `fcos-cpu-demo`: the same data, trunk and schedule with FCOS, the one-stage detector.
* `paper`: Lin et al. (2017), Sec. 5.1: 8 GPUs x 2 images, LR 0.02 for 60k iterations then 0.002 for 20k,
  shorter side 800 px, ImageNet-initialised ResNet-50 with frozen BN (given --backbone-weights; without them the
  backbone trains from scratch with BatchNorm in all stages, see BackboneConfig).
* `1x`: detectron2's 1x schedule: 90k iterations, LR x0.1 at 60k and 80k, shorter side drawn from 640..800.
* `ablation-cpu`: the paper's Tables 1-3 in miniature (scripts/ablation.py): cpu-demo's model on a synthetic set
  whose objects run from a few pixels to most of the image, so that the pyramid matters, and a budget that fits
  all six variants x {RPN only, Faster R-CNN} (12 runs) in about 45 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import copy
import functools
import inspect
import io
import re
import textwrap
import tokenize
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from fpn.config import FasterRCNNConfig, FCOSConfig
from fpn.detectors.build import ARCHITECTURES


@dataclass
class TrainingPreset:
    model: Union[FasterRCNNConfig, FCOSConfig] = field(default_factory=FasterRCNNConfig)  # detector and input sizes
    iters: int = 90_000  # training iterations (one optimiser step each)
    batch_size: int = 2  # images per process per iteration
    lr: float = 0.02  # learning rate for `lr_reference_batch` images, scaled linearly to the real total batch
    lr_reference_batch: int = 16  # the total batch (all processes) `lr` is meant for (16 in the paper)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # L2 weight decay, applied to every trained parameter
    steps: Tuple[int, ...] = (60_000, 80_000)  # iterations where the LR is multiplied by `gamma`
    gamma: float = 0.1  # LR decay factor at each step
    warmup_iters: int = 1000  # length of the linear LR warm-up, iterations
    warmup_factor: float = 0.001  # LR multiplier at iteration 0 of the warm-up
    clip_grad_norm: Optional[float] = None  # max global gradient norm; none: no clipping
    amp: str = "none"  # mixed precision: none, bf16 (autocast) or fp16 (autocast + gradient scaler)
    eval_every: int = 0  # iterations between COCO evaluations on the validation set; 0: only at the end
    checkpoint_every: int = 5000  # iterations between checkpoints (one is always written at the end)
    keep_checkpoints: int = 3  # periodic checkpoints kept, the newest; the final one is always kept; 0 keeps all
    log_every: int = 20  # iterations between metrics.jsonl lines
    workers: int = 4  # DataLoader worker processes per training process
    threads: int = 0  # CPU threads per training process; 0: torch's default (one per core)
    eval_batch_size: int = 2  # images per forward pass in evaluation
    dist_timeout_min: float = 30.0  # minutes a collective waits for a missing rank before the job fails
    synthetic_train_images: int = 2000  # training images of the built-in synthetic set (used without data flags)
    synthetic_val_images: int = 200  # validation images of the synthetic set
    synthetic_image_size: int = 320  # smallest side of the synthetic images, px (sides drawn up to 64 px more)
    synthetic_min_object_size: int = 12  # longer side of the smallest synthetic object, px
    synthetic_max_object_fraction: float = 0.6  # longer side of the largest synthetic object / the image's shorter side


def cpu_demo() -> TrainingPreset:
    """The README demo: the generated synthetic shapes set, trained and evaluated in minutes on a 2-core CPU."""
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
        eval_every=200,  # 4 evaluations (100 images at 256 px, seconds each): ap.png shows a curve, not a dot
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
    """Lin et al. (2017), Sec. 5.1, on COCO: LR 0.02 for 60k iterations then 0.002 for 20k, 8 GPUs x 2 images."""
    model = FasterRCNNConfig()  # ResNet-50 (frozen BN with ImageNet weights), FPN 256, 800 px: the paper's detector
    return TrainingPreset(model=model, iters=80_000, batch_size=2, lr=0.02, steps=(60_000,), checkpoint_every=5000)


def detectron2_1x() -> TrainingPreset:
    """detectron2's 1x schedule on COCO: LR x0.1 at 60k and 80k, 8 GPUs x 2 images, shorter side 640..800 px."""
    model = FasterRCNNConfig()
    model.input.train_min_sizes = (640, 672, 704, 736, 768, 800)
    return TrainingPreset(model=model, iters=90_000, batch_size=2, lr=0.02, steps=(60_000, 80_000))


def ablation_cpu() -> TrainingPreset:
    """The paper's ablations (Tables 1-3) in miniature: synthetic objects of 6 px to 90 % of the image, 2 CPU cores.

    cpu-demo's model (narrow ResNet-18, GroupNorm, 256 px) with these changes. The objects span 6 px (a fifth of
    a C5 cell, stride 32) to 90 % of the shorter side (beyond the largest anchor), where cpu-demo's span 12 px to
    60 %. The schedule is compressed to 600 iterations, evaluated once at the end. The RPN keeps 1000 proposals
    per image at test time, as the paper does (Sec. 5.2), so that AR1k means what it does in Table 1.

    Budget, measured with 30-iteration runs of every variant on the 2 shared cores (load ~2 from other jobs):
    s/it RPN-only (a)..(f) 0.11, 0.14, 0.26, 0.25, 0.25, 0.25; Faster R-CNN 0.76, 0.22, 0.31, 0.29, 0.31, 0.29,
    3.4 s per iteration of all 12 runs, so 600 iterations train in ~34 min; the 12 evaluations, data loading and
    plots add ~2.5 min (Faster R-CNN (a) alone 47 s: its conv5 head runs on all 1000 proposals), generating the
    data 12 s: ~37 min in all, against a 45 min budget. Measured end to end from a fresh clone (README,
    "Reproducing the paper"): 37 min 14 s, install included; the FPN Faster R-CNN run took 3 min 06 s (AP 26.6).
    """
    preset = cpu_demo()
    model = preset.model
    # Residual branches start open (torchvision's ResNet initialisation), closer to the paper's ImageNet-trained
    # trunk: started as the identity (cpu-demo), the branches were still nearly shut after 600 iterations (last
    # norm weights 0.01-0.08), which left C4 and C5 shallow and the single-scale baselines crippled. Measured with
    # one seed: Faster R-CNN AP C4 0.0 -> 8.0, C5 3.2 -> 8.0; FPN RPN AR1k 45.1 -> 51.9.
    model.backbone.zero_init_residual = False
    model.rpn.pre_nms_top_n_test = 1000
    model.rpn.post_nms_top_n_test = 1000
    # (a)'s box head is ResNet's conv5 stage on 14x14 RoIs (paper Table 3(a)); its cost grows with the RoIs per
    # image and sets the budget: 64 (cpu-demo 128) keeps (a) at 0.76 s/it, 2.5x FPN's.
    model.roi_heads.batch_size_per_image = 64
    preset.iters = 600
    preset.steps = (450, 550)
    preset.warmup_iters = 100
    preset.eval_every = 0  # one evaluation per run: the 12 of them already cost ~2.5 min
    preset.checkpoint_every = 200  # an interrupted ablation resumes losing at most 200 iterations of one run
    preset.synthetic_min_object_size = 6
    preset.synthetic_max_object_fraction = 0.9
    return preset


def fcos_cpu_demo() -> TrainingPreset:
    """FCOS on the demo's synthetic shapes set and trunk: the one-stage detector, trained in minutes on a 2-core CPU.

    cpu-demo's narrow ResNet-18 with GroupNorm, pyramid width and input sizes, with FCOS's head on P3..P7 (GroupNorm
    of 32 groups over the 64 pyramid channels) and cpu-demo's LR, batch and warm-up. FCOS learns more slowly per
    iteration from scratch (AP 0.185 after cpu-demo's 800 iterations, still rising steeply), so it trains 1600;
    fewer cost more AP than they save time (1200 with the same LR steps: AP 0.361 against 0.463, measured on an
    AMD EPYC). Its iterations cost 0.5 (Intel Xeon with AVX-512) to 0.8 (AMD EPYC without AVX-512) of cpu-demo's:
    three quarters of the time is convolutions forward and backward (by multiply-adds, about half of them in the
    head's two towers of 4 convs on every level from P3's 32x32 down, the rest in the trunk and FPN). With one
    compute thread 1600 iterations took 6 min 07 s on the Xeon but 12 min 22 s on the EPYC, so this preset runs
    two (the data loader's worker shares the second core): 8 min 47 s on the EPYC, AP 0.472. On a machine where
    another process holds a core, `--threads 1` is the faster choice (measured 3x for cpu-demo, above).
    Inference keeps candidates scoring above 0.05, the FCOS paper's test threshold (Tian et al. 2019), rather than
    torchvision's 0.2: COCO AP counts low-scoring detections too.
    """
    preset = cpu_demo()
    model = FCOSConfig(backbone=preset.model.backbone, fpn=preset.model.fpn, input=preset.model.input)
    model.head.score_thresh = 0.05
    preset.model = model
    preset.iters, preset.steps = 1600, (1200, 1500)
    preset.eval_every, preset.checkpoint_every = 400, 800
    preset.threads = 2  # both cores: 1.4x faster on an idle 2-core CPU (see above)
    return preset


PRESETS = {"cpu-demo": cpu_demo, "fcos-cpu-demo": fcos_cpu_demo, "paper": paper, "1x": detectron2_1x,
           "ablation-cpu": ablation_cpu}
SYNTHETIC_PRESETS = ("cpu-demo", "fcos-cpu-demo", "ablation-cpu")  # sized for the synthetic set: fine to train without data flags


def synthetic_recipe(preset: Any) -> Dict[str, Any]:
    """The arguments of `generate_synthetic_coco` for a preset's synthetic set (seed 0).

    Args:
        preset: a TrainingPreset, or anything with its `synthetic_*` attributes (train.py's parsed flags).
    """
    return {"num_images": preset.synthetic_train_images, "num_val": preset.synthetic_val_images, "seed": 0,
            "min_size": preset.synthetic_image_size, "max_size": preset.synthetic_image_size + 64,
            "min_object_size": preset.synthetic_min_object_size,
            "max_object_fraction": preset.synthetic_max_object_fraction}


def get_preset(name: str) -> TrainingPreset:
    """A fresh copy of the named preset; an unknown name raises ValueError listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name]())


def describe_presets() -> str:
    """One line per preset, "name: what it is for, its data (N iterations)", for `--help` and error messages.

    The text is the first line of the preset function's docstring.
    """
    lines = []
    for name, make in PRESETS.items():
        preset = make()
        purpose = inspect.getdoc(make).splitlines()[0].rstrip(".")
        lines.append(f"{name}: {purpose} ({preset.iters:,} iterations)")
    return "\n".join(lines)


def preset_name_in(argv: Sequence[str], default: str) -> str:
    """The `--preset` value of a command line, or `default` when it has none.

    The flags' help shows the chosen preset's values, so the preset must be known before the parser is built.
    An unknown name gives `default` here: the full parser (choices=PRESETS) then reports it.
    """
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--preset", default=default)
    name = early.parse_known_args(list(argv))[0].preset
    return name if name in PRESETS else default


def arch_in(argv: Sequence[str], default: str) -> str:
    """The `--arch` value of a command line, or `default` (the preset's architecture) when it has none; like
    `preset_name_in`, read before the parser is built since the model flags depend on it. An unknown name gives
    `default` here and is reported by the full parser."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--arch", default=default)
    name = early.parse_known_args(list(argv))[0].arch
    return name if name in ARCHITECTURES else default


def add_preset_flags(parser: argparse.ArgumentParser, preset: TrainingPreset, *, name: str = "",
                     chosen: bool = True) -> None:
    """Add one flag per training field of TrainingPreset (all but `model`): `--iters 800`, `--steps 600,750`.

    The help of each flag is the field's comment and `preset`'s value, e.g. "training iterations (one optimiser
    step each) (default: 800)". Flags default to "not given" (argparse.SUPPRESS), so `apply_preset_flags` changes
    only what was typed. Tuples are comma-separated lists, optionals accept "none".

    Args:
        name: the preset's name, shown in the group's title.
        chosen: False when the command line named no preset and `preset` only stands in for the help (its
            values are then said to be an example).
    """
    if not name:
        title = "training (defaults: the preset's values)"
    elif chosen:
        title = f"training (defaults: --preset {name}'s values)"
    else:
        title = (f"training (defaults shown: --preset {name}'s, as no --preset was given; "
                 "--preset NAME --help shows another preset's)")
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(TrainingPreset)
    for item in fields(preset):
        if item.name != "model":
            flag, hint = _flag((item.name,)), hints[item.name]
            value = getattr(preset, item.name)
            group.add_argument(flag, dest=item.name, type=_parser_for(hint, flag), default=argparse.SUPPRESS,
                               metavar=_metavar(hint), help=_help(TrainingPreset, item.name, value))


def apply_preset_flags(preset: TrainingPreset, args: argparse.Namespace) -> TrainingPreset:
    """A copy of `preset` with the training fields given on the command line (see `add_preset_flags`) set.

    The model config is left as it is: `apply_config_flags(preset.model, args)` applies the model flags.
    """
    preset = copy.deepcopy(preset)
    given = vars(args)
    for item in fields(preset):
        if item.name != "model" and item.name in given:
            setattr(preset, item.name, given[item.name])
    return preset


def add_config_flags(parser: argparse.ArgumentParser, config: FasterRCNNConfig) -> None:
    """Add one flag per field of the nested model config: `--backbone.depth 18`, `--input.train-min-sizes 640,800`.

    A field of a section is `--section.field`, a top-level field `--field` (e.g. `--channels-last false`), in
    one help group per section. Each help is the field's comment in fpn/config.py and its value in `config` (pass
    the chosen preset's model config, so the help shows the defaults that apply). Flags default to "not given"
    (argparse.SUPPRESS), so `apply_config_flags` changes only what was typed. Tuples are comma-separated lists,
    booleans true/false, optionals "none".
    """
    groups = {}
    for path, owner, hint, value in _config_leaves(config):
        section = path[0] if len(path) > 1 else ""
        if section not in groups:
            where = f"--{_flag((section,))[2:]}.FIELD, {type(owner).__name__}" if section else type(config).__name__
            groups[section] = parser.add_argument_group(f"model config: {where} in fpn/config.py")
        flag = _flag(path)
        groups[section].add_argument(flag, dest="model." + ".".join(path), type=_parser_for(hint, flag),
                                     default=argparse.SUPPRESS, metavar=_metavar(hint),
                                     help=_help(type(owner), path[-1], value))


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


def field_comments(cls: type) -> Dict[str, str]:
    """{field name: its comment} of a dataclass, read from the source of the class (and of its dataclass bases).

    A field's comment is the `# ...` text within its statement: the trailing comment of its line or, for a
    statement spread over several lines, the comments on those lines joined by spaces. Comment-only lines are
    not part of any field. Fields without a comment are absent; so is everything when the source is not
    available (a class defined in an interactive session). Read once per class.

    Raises:
        ValueError: `cls` is not a dataclass.
    """
    if not (isinstance(cls, type) and is_dataclass(cls)):
        raise ValueError(f"field_comments needs a dataclass, got {cls!r}")
    return dict(_field_comments(cls))


@functools.lru_cache(maxsize=None)
def _field_comments(cls: type) -> Tuple[Tuple[str, str], ...]:
    comments: Dict[str, str] = {}
    for base in reversed(cls.__mro__):  # a subclass's comment wins over its base's
        if "__dataclass_fields__" in vars(base):
            comments.update(_comments_in_body(base))
    names = {item.name for item in fields(cls)}
    return tuple((name, text) for name, text in comments.items() if name in names)


def _comments_in_body(cls: type) -> Dict[str, str]:
    """{name: comment} of the annotated statements `name: type ...` directly in the body of `cls`."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: Dict[str, str] = {}
    depth, statement = 0, []  # indentation depth (1: the class body) and the tokens of the current statement
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.INDENT, tokenize.DEDENT):
            depth += 1 if token.type == tokenize.INDENT else -1
        elif depth != 1:
            continue
        elif token.type == tokenize.NEWLINE:  # the end of a logical line, however many physical lines it spans
            code = [t for t in statement if t.type != tokenize.COMMENT]
            if len(code) >= 2 and code[0].type == tokenize.NAME and code[1].string == ":":
                text = " ".join(t.string.lstrip("#").strip() for t in statement if t.type == tokenize.COMMENT)
                if text:
                    comments[code[0].string] = text
            statement = []
        elif token.type == tokenize.NL:
            if all(t.type == tokenize.COMMENT for t in statement):
                statement = []  # a comment-only line belongs to no field
        else:
            statement.append(token)
    return comments


def _help(cls: type, name: str, value: Any) -> str:
    """The help of a field's flag: its comment (`a_field` written --a-field) and "(default: <value>)"."""
    comment = field_comments(cls).get(name, "")
    siblings = {item.name for item in fields(cls)}
    comment = re.sub(r"`(\w+)`", lambda m: _flag((m[1],)) if m[1] in siblings else m[0], comment)
    text = f"{comment} (default: {_show(value)})" if comment else f"default: {_show(value)}"
    return text.replace("%", "%%")  # argparse %-formats help strings


def _flag(path: Tuple[str, ...]) -> str:
    return "--" + ".".join(part.replace("_", "-") for part in path)


def _config_leaves(config: Any, prefix: Tuple[str, ...] = ()) -> List[Tuple[Tuple[str, ...], Any, Any, Any]]:
    """(field path, owning dataclass instance, type hint, value) of every non-dataclass field, depth first."""
    hints = typing.get_type_hints(type(config))
    leaves = []
    for item in fields(config):
        value = getattr(config, item.name)
        if is_dataclass(value):
            leaves.extend(_config_leaves(value, prefix + (item.name,)))
        else:
            leaves.append((prefix + (item.name,), config, hints[item.name], value))
    return leaves


def _show(value: Any) -> str:
    """A value as it is typed on the command line: 600,750 / none / true."""
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    return str(value).lower() if value is None or isinstance(value, bool) else str(value)


def _metavar(hint: Any) -> str:
    """INT, FLOAT, STR, BOOL; Optional[X]: X; Tuple[int, ...]: INT,...; Tuple[float, float]: FLOAT,FLOAT."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return _metavar(next(p for p in params if p is not type(None)))
    if origin is tuple:
        return f"{_metavar(params[0])},..." if params[-1] is Ellipsis else ",".join(_metavar(p) for p in params)
    return getattr(hint, "__name__", "VALUE").upper()


def _parser_for(hint: Any, flag: str) -> Callable[[str], Any]:
    """A string -> value converter for a field type: int, float, str, bool, Optional[X], Tuple[X, ...]."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in params:
        inner = _parser_for(next(p for p in params if p is not type(None)), flag)
        return lambda text: None if text.lower() == "none" else inner(text)
    if origin is tuple:
        item = _parser_for(params[0], flag)
        length = None if (len(params) == 2 and params[1] is Ellipsis) else len(params)

        def parse_tuple(text: str) -> tuple:
            values = tuple(item(part) for part in text.split(",") if part.strip())
            if length is not None and len(values) != length:
                raise argparse.ArgumentTypeError(f"{flag} needs {length} comma-separated values, got {text!r}")
            return values

        return parse_tuple
    if hint is bool:
        return _parse_bool
    if hint in (int, float, str):
        return hint
    raise TypeError(f"field {flag} has a type {hint} with no command-line parser")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
