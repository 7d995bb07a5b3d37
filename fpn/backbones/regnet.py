"""RegNetX trunks (Radosavovic et al., "Designing Network Design Spaces", CVPR 2020) as the bottom-up pathway:
outputs C2..C5 at strides 4..32, for either detector (`BackboneConfig(name="regnet_x_400mf")`).

A RegNet's widths follow one quantised linear rule: block j of `depth` blocks wants width u_j = w_0 + w_a * j;
writing u_j = w_0 * w_m ** s_j and rounding s_j gives widths that are powers of w_m times w_0 (then rounded to
multiples of 8), and consecutive blocks of equal width form a stage (paper Sec. 3.3). The X blocks are ResNeXt
bottlenecks without expansion: 1x1 conv, 3x3 group conv (groups of `group_width` channels) carrying the stride,
1x1 conv, each followed by a norm, ReLU after the first two and after the residual sum; a 1x1 conv + norm
projects the shortcut where the width or the stride changes. The stem is a 3x3 stride-2 conv to 32 channels.

Module names follow torchvision's regnet (stem.0 / stem.1, trunk_output.block1.block1-0.f.a.0, ..., proj.0),
so an ImageNet checkpoint in torchvision's layout loads without renaming (its classifier `fc.*` is ignored).
The size parameters (depth, w_0, w_a, w_m, group width) are the paper's, as torchvision lists them.

Shape shorthand: N images, H x W input size.
"""
from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from typing import Dict, Iterator, List, Tuple

import torch
from torch import nn

from fpn.backbones.imagenet import load_imagenet_weights
from fpn.backbones.norm import ConvNormPair, conv_norm_pairs_within, make_norm
from fpn.backbones.untrained import RecordsLoadedWeights, describe_untrainable
from fpn.spec import FeatureSpec

# name -> (depth, w_0, w_a, w_m, group_width): the RegNetX models of Radosavovic et al. (2020), Table 1 / appendix
REGNET_X = {
    "regnet_x_400mf": (22, 24, 24.48, 2.54, 16),
    "regnet_x_800mf": (16, 56, 35.73, 2.28, 16),
    "regnet_x_1_6gf": (18, 80, 34.01, 2.25, 24),
    "regnet_x_3_2gf": (25, 88, 26.31, 2.25, 48),
    "regnet_x_8gf": (23, 80, 49.56, 2.88, 120),
    "regnet_x_16gf": (22, 216, 55.59, 2.1, 128),
    "regnet_x_32gf": (23, 320, 69.86, 2.0, 168),
}
STEM_WIDTH = 32
# top-level modules trained for each value of trainable_stages, counted from C5 down as for ResNet
_TRAINABLE_ORDER = ("trunk_output.block4", "trunk_output.block3", "trunk_output.block2", "trunk_output.block1",
                    "stem")


def block_widths(depth: int, w_0: int, w_a: float, w_m: float, quantum: int = 8) -> List[int]:
    """The width of each of the `depth` blocks: the paper's quantised linear rule (Sec. 3.3, eqs. 2-4).

    Block j wants u_j = w_0 + w_a * j channels (eq. 2). Writing u_j = w_0 * w_m ** s_j (eq. 3) and rounding s_j
    to an integer keeps only widths that are w_0 times a power of w_m (eq. 4), so a handful of distinct widths
    remain and each run of equal widths is a stage. The widths are then rounded to multiples of `quantum` (8),
    as in the paper's released models. Rounding is half-to-even, as torch.round does.
    """
    widths = []
    for j in range(depth):
        wanted = w_0 + w_a * j  # u_j
        exponent = round(math.log(wanted / w_0) / math.log(w_m))  # s_j rounded: u_j ~ w_0 * w_m ** exponent
        widths.append(quantum * round(w_0 * w_m**exponent / quantum))
    return widths


def stage_settings(depth: int, w_0: int, w_a: float, w_m: float, group_width: int) -> List[Tuple[int, int, int]]:
    """(width, number of blocks, group width) of each stage, from a size's parameters (REGNET_X's values).

    Consecutive blocks of `block_widths` with one width form a stage. The 3x3 group convolution needs groups
    that divide its channels, so a stage narrower than `group_width` uses one group of its whole width, and a
    stage width that is no multiple of the group width moves to the nearest multiple (halves up), or to the
    next one up if the nearest lies more than 10 % below. X-8GF's rule gives 80, 232, 664, 1912; with group width
    120 its stages are 80 (one group of 80), 240, 720 and 1920 channels wide.
    """
    settings = []
    for width, run in itertools.groupby(block_widths(depth, w_0, w_a, w_m)):
        group = min(group_width, width)
        multiple = max(1, math.floor(width / group + 0.5))
        if multiple * group < 0.9 * width:
            multiple += 1
        settings.append((multiple * group, len(list(run)), group))
    return settings


def _conv_norm(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int, norm: str,
               gn_groups: int, relu: bool) -> nn.Sequential:
    """conv (no bias) -> norm [-> ReLU], named 0, 1 [, 2] as torchvision's Conv2dNormActivation."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, groups=groups,
                        bias=False), make_norm(norm, out_channels, gn_groups)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class XBlock(nn.Module):
    """RegNetX block: (N, C_in, H, W) -> (N, C_out, H/stride, W/stride), relu(proj(x) + f(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, group_width: int, norm: str,
                 gn_groups: int):
        super().__init__()
        self.proj = None
        if in_channels != out_channels or stride != 1:
            self.proj = _conv_norm(in_channels, out_channels, 1, stride, 1, norm, gn_groups, relu=False)
        self.f = nn.Sequential(OrderedDict([
            ("a", _conv_norm(in_channels, out_channels, 1, 1, 1, norm, gn_groups, relu=True)),
            ("b", _conv_norm(out_channels, out_channels, 3, stride, out_channels // group_width, norm, gn_groups,
                             relu=True)),
            ("c", _conv_norm(out_channels, out_channels, 1, 1, 1, norm, gn_groups, relu=False)),
        ]))
        self.activation = nn.ReLU(inplace=True)

    def conv_norm_pairs(self) -> Iterator[ConvNormPair]:
        """Each conv -> norm of f (a, b, c) and of the projection: nn.Sequential(conv, norm[, ReLU]), "0" and "1"."""
        for part in (self.f.a, self.f.b, self.f.c, *([self.proj] if self.proj is not None else [])):
            yield part, "0", "1"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


class RegNetX(RecordsLoadedWeights):
    """A RegNetX trunk without the classifier, returning the last map of each stage (block1..block4 -> C2..C5).

    Args:
        name: a key of REGNET_X, e.g. "regnet_x_400mf".
        norm (keyword-only): "frozen_bn", "bn" or "gn" (see fpn.backbones.norm.make_norm).
        trainable_stages (keyword-only): 0..5, torchvision's `trainable_layers` as for ResNet: the number of
            parts trained, counted from the top: block4 (C5), block3 (C4), block2 (C3), block1 (C2), stem. So
            stage k of ResNet's count is the same stride here: 5 trains everything, 3 (the fine-tuning default)
            freezes the stem and block1, 0 freezes the whole trunk. The stem's norm follows its conv (ResNet
            only trains bn1 at 5 too). The other parameters get requires_grad=False.
        gn_groups (keyword-only): GroupNorm groups when norm == "gn"; must divide every stage width and the
            stem's 32 (400MF's stages are 32, 64, 160, 400 wide, so 8 or 16, not 32).

    Initialisation as torchvision's RegNet: convs normal(0, sqrt(2 / fan_out)), norms weight 1, bias 0; no
    zero-initialised residual norms (BackboneConfig.zero_init_residual is ResNet's, as are depth and width).

    Attributes:
        out_specs: {"c2": FeatureSpec(C2, 4), ..., "c5": FeatureSpec(C5, 32)} (no "c5" once
            `split_off_last_stage` was called).
        loaded_weights: whether a state dict was loaded into it (ImageNet weights or a detector checkpoint).

    Example:
        >>> net = RegNetX("regnet_x_400mf", norm="frozen_bn")
        >>> {k: tuple(v.shape) for k, v in net(torch.zeros(1, 3, 64, 96)).items()}["c5"]
        (1, 400, 2, 3)
    """

    def __init__(self, name: str = "regnet_x_400mf", *, norm: str = "bn", trainable_stages: int = 5,
                 gn_groups: int = 32):
        super().__init__()
        if name not in REGNET_X:
            raise ValueError(f"unknown RegNetX {name!r}; known: {', '.join(REGNET_X)}")
        self.name, self.norm, self.trainable_stages = name, norm, trainable_stages
        self.loaded_weights = False
        self.stem = _conv_norm(3, STEM_WIDTH, 3, 2, 1, norm, gn_groups, relu=True)  # (N, 32, H/2, W/2)
        stages, width_in, self.out_specs = [], STEM_WIDTH, {}
        for index, (width, blocks, group) in enumerate(stage_settings(*REGNET_X[name]), start=1):
            stage = nn.Sequential(OrderedDict(
                (f"block{index}-{i}", XBlock(width_in if i == 0 else width, width, 2 if i == 0 else 1, group, norm,
                                             gn_groups))
                for i in range(blocks)
            ))
            stages.append((f"block{index}", stage))
            self.out_specs[f"c{index + 1}"] = FeatureSpec(width, 2 ** (index + 1))
            width_in = width
        self.trunk_output = nn.Sequential(OrderedDict(stages))
        self._init_weights()
        freeze_stages(self, trainable_stages)

    def _init_weights(self) -> None:
        """torchvision's RegNet initialisation: convs normal(0, sqrt(2 / fan_out)), norms weight 1 and bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


    def conv_norm_pairs(self) -> Iterator[ConvNormPair]:
        """Every conv -> norm that follows it directly: the stem's, then each X block's."""
        yield self.stem, "0", "1"
        yield from conv_norm_pairs_within(self)

    def untrainable_parts(self) -> List[str]:
        """What training cannot fix while no weights are loaded (see ResNet.untrainable_parts)."""
        return describe_untrainable(self.loaded_weights, self.norm, self.trainable_stages, _TRAINABLE_ORDER)

    def split_off_last_stage(self) -> nn.Sequential:
        """Remove block4 from the trunk and return it, (R, C4, H, W) -> (R, C5, H/2, W/2); the trunk then ends at
        C4 (the single-scale C4 baseline's box head, as ResNet.split_off_last_stage)."""
        if not hasattr(self.trunk_output, "block4"):
            raise ValueError("RegNetX: the last stage (block4) was already split off")
        stage = self.trunk_output.block4
        del self.trunk_output.block4
        self.out_specs = {name: spec for name, spec in self.out_specs.items() if name != "c5"}
        return stage

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(N, 3, H, W) normalised images -> {"c2": (N, C2, H/4, W/4), ..., "c5": (N, C5, H/32, W/32)}."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"RegNetX: expected input of shape (N, 3, H, W), got {tuple(x.shape)}")
        x = self.stem(x)
        outputs = {}
        for name in self.out_specs:  # "c2" is block1's output, ..., "c5" block4's
            x = getattr(self.trunk_output, f"block{int(name[1:]) - 1}")(x)
            outputs[name] = x
        return outputs


def freeze_stages(model: RegNetX, trainable_stages: int) -> None:
    """requires_grad False outside the `trainable_stages` parts counted from C5 down: block4, block3, block2,
    block1, stem (see RegNetX; 5 leaves all trainable, 0 none)."""
    if not 0 <= trainable_stages <= 5:
        raise ValueError(f"trainable_stages must be in 0..5, got {trainable_stages}")
    trainable = _TRAINABLE_ORDER[:trainable_stages]
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(name == part or name.startswith(part + ".") for part in trainable))


def build_regnet(cfg) -> RegNetX:
    """The RegNetX of a `BackboneConfig` (`name`, norm, trainable_stages, gn_groups), with ImageNet weights loaded
    from `cfg.weights` when set. `depth`, `width` and `zero_init_residual` are ResNet's and ignored here.

    A norm or trainable_stages of None is chosen from the weights (`BackboneConfig.resolved`): frozen BN and 3
    trained stages with weights, BN and all 5 without.
    """
    cfg = cfg.resolved()
    model = RegNetX(cfg.name, norm=cfg.norm, trainable_stages=cfg.trainable_stages, gn_groups=cfg.gn_groups)
    if cfg.weights:
        load_imagenet_weights(model, cfg.weights)
    return model
