"""Training presets: a model config plus the optimisation schedule, chosen by name with `--preset`.

Every value here is only a default: the training tool gives each field a command-line flag (`--iters`, `--lr`,
`--backbone.depth`, ...; fpn/tools/config_flags.py) whose help is the field's `# comment` and the chosen preset's
value, so every field here and in fpn/config.py carries one (tests/test_presets_help.py checks). The presets:

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

import copy
import inspect
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Optional, Tuple, Union

from fpn.config import FasterRCNNConfig, FCOSConfig, MaskRCNNConfig


@dataclass
class TrainingPreset:
    model: Union[FasterRCNNConfig, FCOSConfig, MaskRCNNConfig] = field(
        default_factory=FasterRCNNConfig)  # the detector and its input sizes
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
    amp: str = "none"  # mixed precision: none, bf16, fp16 (+ gradient scaler) or auto (bf16 where native, else none)
    eval_every: int = 0  # iterations between COCO evaluations on the validation set; 0: only at the end
    checkpoint_every: int = 5000  # iterations between checkpoints (one is always written at the end)
    keep_checkpoints: int = 3  # periodic checkpoints kept, the newest; the final one is always kept; 0 keeps all
    log_every: int = 20  # iterations between metrics.jsonl lines
    workers: int = 4  # DataLoader worker processes per training process
    threads: int = 0  # CPU threads per training process; 0: torch's default (one per core)
    cache_images: bool = False  # keep decoded images in memory after their first read, if a quarter of it holds them
    eval_batch_size: int = 2  # images per forward pass in evaluation
    dist_timeout_min: float = 30.0  # minutes a collective waits for a missing rank before the job fails
    synthetic_train_images: int = 2000  # training images of the built-in synthetic set (used without data flags)
    synthetic_val_images: int = 200  # validation images of the synthetic set
    synthetic_image_size: int = 320  # smallest side of the synthetic images, px (sides drawn up to 64 px more)
    synthetic_min_object_size: int = 12  # longer side of the smallest synthetic object, px
    synthetic_max_object_fraction: float = 0.6  # longer side of the largest synthetic object / the image's shorter side
    best_metric: str = "AP"  # evaluation key picking best.pt: AP, AP50, ..., mask_AP, val_loss (RPN only: AR1k, ...)
    early_stop: int = 0  # stop after this many evaluations without a better best_metric; 0: train all iterations
    tensorboard: bool = False  # also write OUTPUT_DIR/tensorboard event files (the tensorboard extra)


def cpu_demo() -> TrainingPreset:
    """The README demo: the generated synthetic shapes set, trained and evaluated in minutes on a 2-core CPU.

    The recipe was chosen by measured AP per minute on this set (Intel Xeon with AMX, bf16, one thread per run,
    evaluations every 100 iterations, before GroupNorm ran in float32 under bf16; the previous release's recipe:
    residual branches started at zero, 800 iterations, AP 0.444 in fp32 and 0.428 in bf16):

        residual branches open, LR 0.02, 800 iterations, steps 600/750:   AP 0.643 (0.445 at iteration 500)
        the same, LR 0.04:                                                 AP 0.334 (a slower start, never recovered)
        the same, LR 0.01:                                                 AP 0.579
        600 iterations, steps 450/560:                                     AP 0.555
        1000 iterations, steps 750/940 (this preset):                      AP 0.698
        batch 8, LR 0.02, 500 iterations (the same images as 1000 x 4):   AP 0.634

    Residual branches started open (torchvision's ResNet initialisation) learn much faster here than started as
    the identity (Goyal et al. 2017's zero-initialised last norm, the previous default), whose branches were still
    nearly shut after 600 iterations (the ablation-cpu finding). Batch 8 sees the same images in fewer, costlier
    steps and does no better. Speed (README, "Performance"): bf16 where the CPU has it natively, every free core,
    the decoded images kept in memory and read in the training process (no DataLoader worker).
    """
    model = FasterRCNNConfig()
    model.backbone.depth = 18
    model.backbone.width = 24  # 3/8 of ResNet's width: 1000 iterations fit in a few CPU minutes
    model.backbone.norm = "gn"  # no ImageNet weights: GroupNorm trains from scratch with small batches
    model.backbone.gn_groups = 8
    model.backbone.trainable_stages = 5
    model.backbone.zero_init_residual = False  # open residual branches: see the docstring
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
        iters=1000,
        batch_size=4,
        lr=0.02,  # 4x the linear-scaling value: from scratch with GroupNorm and clipping this still trains stably
        lr_reference_batch=4,  # the LR above is for this preset's own batch
        steps=(750, 940),
        warmup_iters=100,
        warmup_factor=0.01,
        clip_grad_norm=10.0,
        eval_every=250,  # 4 evaluations (100 images at 256 px, seconds each): ap.png shows a curve, not a dot
        checkpoint_every=500,
        log_every=10,
        workers=0,  # the images are decoded once (cache_images): loading a batch is then cheaper than a worker
        threads=0,  # one compute thread per core (--threads 1 on a machine where another process holds a core)
        cache_images=True,  # 600 images of 256..320 px: 0.15 GB decoded
        amp="auto",  # bf16 where the CPU has AVX512-BF16/AMX, else fp32 (fpn/engine/hardware.py)
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
    # The speed settings its README tables and budget were measured with (cpu-demo's before it followed the
    # hardware): fp32, one compute thread, a worker decoding on the second core.
    preset.amp, preset.threads, preset.workers, preset.cache_images = "none", 1, 1, False
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
    compute thread 1600 iterations took 6 min 07 s on the Xeon but 12 min 22 s on the EPYC; with two (the data
    loader's worker sharing the second core) 8 min 47 s on the EPYC, AP 0.472. Its speed settings now follow the
    machine as cpu-demo's do (bf16 where native, every free core, images decoded once).
    Unlike cpu-demo it starts its residual branches as the identity: measured on an Intel Xeon in bf16 (one
    thread), open branches gave AP 0.446 after 1600 iterations and zero-initialised ones 0.502 (0.441 already at
    1200), so the trunk keeps the zero-initialised start that FCOS trained well with.
    Inference keeps candidates scoring above 0.05, the FCOS paper's test threshold (Tian et al. 2019), rather than
    torchvision's 0.2: COCO AP counts low-scoring detections too.
    """
    preset = cpu_demo()
    backbone = replace(preset.model.backbone, zero_init_residual=True)
    model = FCOSConfig(backbone=backbone, fpn=preset.model.fpn, input=preset.model.input)
    model.head.score_thresh = 0.05
    preset.model = model
    preset.iters, preset.steps = 1600, (1200, 1500)
    preset.eval_every, preset.checkpoint_every = 400, 800
    return preset


def mask_cpu_demo() -> TrainingPreset:
    """Mask R-CNN on the demo's synthetic shapes set (every object's exact mask), trained in minutes on a 2-core CPU.

    cpu-demo's model and schedule (all of its Faster R-CNN sections) plus the mask branch of He et al. (2017) at
    the pyramid's width: RoIAlign 14x14 from the RoI's level, four 3x3 convs of 64 channels (torchvision: 256 on
    its 256 pyramid channels), a transposed conv to 28x28 per-class logits.
    """
    preset = cpu_demo()
    box = preset.model
    model = MaskRCNNConfig(**{item.name: getattr(box, item.name) for item in fields(box)})
    model.mask.conv_channels = box.fpn.out_channels
    preset.model = model
    return preset


PRESETS = {"cpu-demo": cpu_demo, "fcos-cpu-demo": fcos_cpu_demo, "mask-cpu-demo": mask_cpu_demo, "paper": paper,
           "1x": detectron2_1x, "ablation-cpu": ablation_cpu}
SYNTHETIC_PRESETS = ("cpu-demo", "fcos-cpu-demo", "mask-cpu-demo", "ablation-cpu")  # sized for the synthetic set: fine to train without data flags


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
