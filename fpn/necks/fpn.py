"""Feature Pyramid Network neck (Lin et al., CVPR 2017, Sec. 3): C2..C5 -> P2..P5, plus the extra levels it is given.

Shape shorthand: N images, d the pyramid channels (256 in the paper), Ci/Hi/Wi the channels and size of input
level i. Every Pi has d channels and the size of Ci.

For each level from the coarsest to the finest: a 1x1 lateral conv of Ci, plus the coarser merged map upsampled by
nearest neighbour to the lateral's exact size (so odd sizes work), then a 3x3 conv of the merged map gives Pi. There
are no non-linearities (paper, Sec. 3: "we have found them to have minor impacts"). With `norm="bn"` each conv is
followed by BatchNorm and has no bias (torchvision's *_v2 models, after Li et al. 2021). Levels above the coarsest
input come from a small module handed to the FPN (fpn/necks/extra_levels.py): the paper's P6 for the RPN
(`LastLevelMaxPool`), or FCOS's P6 and P7 (`LastLevelP6P7`). The paper's ablations of this structure (Table 1(d)-(f))
are subclasses in fpn/detectors/variants.py.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fpn.config import NORMS
from fpn.spec import FeatureSpec


class FPN(nn.Module):
    """Lateral 1x1 convs, top-down nearest upsampling with addition, 3x3 output convs; then the extra levels.

    Args:
        in_specs: the backbone's `out_specs`, e.g. {"c2": FeatureSpec(256, 4), ..., "c5": FeatureSpec(2048, 32)}.
            Keys are "c<level>" and strides must double from one level to the next.
        out_channels: d, the channels of every output map.
        norm: keyword-only; "none" (the paper) or "bn": each lateral and output conv without bias, followed by
            BatchNorm2d (a `ConvNorm`), as torchvision's FeaturePyramidNetwork with norm_layer=BatchNorm2d.
        extra_levels: keyword-only; a module making the levels above the coarsest output from it (see
            fpn/necks/extra_levels.py), e.g. `LastLevelMaxPool()` for the paper's P6 or `LastLevelP6P7(d)` for
            FCOS's P6 and P7; None: no extra level.

    Attributes:
        lateral_convs: nn.ModuleList of 1x1 convs (Ci -> d), ordered as in_specs (C2..C5); with norm "bn" each
            is a ConvNorm (keys `lateral_convs.{i}.conv.weight`, `lateral_convs.{i}.norm.*`).
        output_convs: nn.ModuleList of 3x3 convs, padding 1 (d -> d), same order; ConvNorms with norm "bn".
        extra_convs: the `extra_levels` module (None without one); the name is that of the P6/P7 convs' keys in
            saved checkpoints (`neck.extra_convs.{0,1}.*`).
        out_specs: {"p2": FeatureSpec(d, 4), ..., "p5": FeatureSpec(d, 32)} for C2..C5 inputs, then the extra
            levels ("p6": FeatureSpec(d, 64), ...).

    Every conv, the extra levels' included, is initialised as torchvision's FPN does: kaiming uniform (a=1), bias 0
    (BatchNorm: weight 1, bias 0).

    Example:
        >>> from fpn.backbones import ResNet
        >>> from fpn.necks import LastLevelMaxPool
        >>> backbone = ResNet(depth=18)
        >>> neck = FPN(backbone.out_specs, out_channels=256, extra_levels=LastLevelMaxPool())
        >>> {k: tuple(v.shape) for k, v in neck(backbone(torch.zeros(1, 3, 64, 96))).items()}["p6"]
        (1, 256, 1, 2)
    """

    def __init__(
        self, in_specs: Mapping[str, FeatureSpec], out_channels: int = 256, *, norm: str = "none",
        extra_levels: Optional[nn.Module] = None,
    ):
        super().__init__()
        if out_channels <= 0:
            raise ValueError(f"FPN: out_channels must be positive, got {out_channels}")
        if norm not in NORMS:
            raise ValueError(f"FPN: norm (config.fpn.norm) must be one of {', '.join(NORMS)}; got {norm!r}")
        self.norm = norm
        self.in_names = _check_in_specs(in_specs)
        self.in_specs = {name: in_specs[name] for name in self.in_names}
        self.lateral_convs = self.build_lateral_convs(out_channels)
        self.output_convs = self.build_output_convs(out_channels)
        self.extra_convs = extra_levels
        self.out_specs: Dict[str, FeatureSpec] = {
            f"p{name[1:]}": FeatureSpec(out_channels, spec.stride) for name, spec in self.in_specs.items()
        }
        top_level, top_stride = int(self.in_names[-1][1:]), self.in_specs[self.in_names[-1]].stride
        for k in range(1, 1 + (extra_levels.num_levels if extra_levels is not None else 0)):
            self.out_specs[f"p{top_level + k}"] = FeatureSpec(out_channels, top_stride * 2**k)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def build_lateral_convs(self, out_channels: int) -> nn.ModuleList:
        """One 1x1 conv (Ci -> d) per input level, C2..C5. (A variant without some of them overrides this, so that
        nothing unused is built.)"""
        return nn.ModuleList(self.make_conv(spec.channels, out_channels, 1) for spec in self.in_specs.values())

    def build_output_convs(self, out_channels: int) -> nn.ModuleList:
        """One 3x3 conv, padding 1 (d -> d), per input level, C2..C5."""
        return nn.ModuleList(self.make_conv(out_channels, out_channels, 3) for _ in self.in_specs)

    def make_conv(self, in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
        """A conv of the pyramid, "same" padding: with bias (norm "none"), or without and followed by BatchNorm."""
        if self.norm == "bn":
            return ConvNorm(in_channels, out_channels, kernel_size)
        return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, features: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Build the pyramid.

        Args:
            features: {"c2": (N, C2, H2, W2), ..., "c5": (N, C5, H5, W5)} float maps, each level at most the
                size of the one below (extra keys are ignored).

        Returns:
            {"p2": (N, d, H2, W2), ..., "p5": (N, d, H5, W5)}, then the extra levels ("p6": (N, d, ceil(H5/2),
            ceil(W5/2)), ...), ordered fine to coarse, dtype of the inputs.
        """
        inputs = self.inputs(features)  # C2..C5
        merged = self.lateral_convs[-1](inputs[-1])  # (N, C5, H5, W5) -> (N, d, H5, W5)
        outputs = [self.output_convs[-1](merged)]  # P5
        for i in range(len(inputs) - 2, -1, -1):  # C4 down to C2
            # (N, d, H(i+1), W(i+1)) -> (N, d, Hi, Wi); exact size, not a factor of 2, for odd Hi/Wi
            top_down = F.interpolate(merged, size=inputs[i].shape[-2:], mode="nearest")
            merged = self.lateral_convs[i](inputs[i]) + top_down  # lateral (N, Ci, Hi, Wi) -> (N, d, Hi, Wi)
            outputs.insert(0, self.output_convs[i](merged))  # Pi
        return self.pyramid(outputs)

    def inputs(self, features: Mapping[str, torch.Tensor]) -> List[torch.Tensor]:
        """The input maps C2..C5 (fine to coarse), checked: present, 4-d, with the channels of in_specs."""
        missing = [name for name in self.in_names if name not in features]
        if missing:
            raise ValueError(f"FPN: missing input levels {missing}; got {sorted(features)}")
        for name, spec in self.in_specs.items():
            shape = tuple(features[name].shape)
            if len(shape) != 4 or shape[1] != spec.channels:
                raise ValueError(f"FPN: {name} must be (N, {spec.channels}, H, W), got {shape}")
        return [features[name] for name in self.in_names]

    def pyramid(self, outputs: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The output maps (fine to coarse) named as out_specs, with the extra levels made from the coarsest."""
        if self.extra_convs is not None:
            outputs = [*outputs, *self.extra_convs(outputs[-1])]
        return dict(zip(self.out_specs, outputs))


class ConvNorm(nn.Module):
    """conv (no bias, "same" padding) -> BatchNorm2d: (N, C_in, H, W) -> (N, C_out, H, W). At inference the norm
    folds into the conv (`conv_norm_pairs`, fpn.deploy.inference)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))

    def conv_norm_pairs(self) -> Iterator[Tuple[nn.Module, str, str]]:
        """Its conv -> norm, as the trunks answer (fpn.backbones.norm.ConvNormPair)."""
        yield self, "conv", "norm"


def _check_in_specs(in_specs: Mapping[str, FeatureSpec]) -> list:
    """The input names sorted fine to coarse; each must be "c<level>", consecutive, with the stride doubling per
    level or staying (MobileNetV3's last two maps share stride 32; the nearest upsampling is then the identity)."""
    if not in_specs:
        raise ValueError("FPN: in_specs is empty; expected e.g. {'c2': FeatureSpec(256, 4), ...}")
    bad = [name for name in in_specs if not (name.startswith("c") and name[1:].isdigit())]
    if bad:
        raise ValueError(f"FPN: input names must look like 'c2'..'c5', got {bad}")
    names = sorted(in_specs, key=lambda name: int(name[1:]))
    for lower, upper in zip(names, names[1:]):
        if int(upper[1:]) != int(lower[1:]) + 1 or in_specs[upper].stride not in (
            in_specs[lower].stride, 2 * in_specs[lower].stride
        ):
            raise ValueError(
                f"FPN: levels must be consecutive with doubling (or equal) strides; got {lower} (stride "
                f"{in_specs[lower].stride}) then {upper} (stride {in_specs[upper].stride})"
            )
    return names
