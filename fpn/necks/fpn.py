"""Feature Pyramid Network neck (Lin et al., CVPR 2017, Sec. 3): C2..C5 -> P2..P6.

Shape shorthand: N images, d the pyramid channels (256 in the paper), Ci/Hi/Wi the channels and size of
input level i. Every Pi has d channels and the size of Ci; P6 subsamples P5 by 2 and is used by the RPN only.

The top-down pathway starts from the 1x1 lateral of the coarsest map and moves down: upsample by nearest
neighbour to the exact size of the next lateral (so odd sizes work), add, and smooth each merged map with its
own 3x3 conv. There are no non-linearities (paper, Sec. 3: "we have found them to have minor impacts").
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fpn.spec import FeatureSpec


class FPN(nn.Module):
    """Lateral 1x1 convs, top-down nearest upsampling with addition, and 3x3 output convs; plus P6.

    Args:
        in_specs: the backbone's `out_specs`, e.g. {"c2": FeatureSpec(256, 4), ..., "c5": FeatureSpec(2048, 32)}.
            Keys are "c<level>" and strides must double from one level to the next.
        out_channels: d, the channels of every output map.

    Attributes:
        lateral_convs: nn.ModuleList of 1x1 convs (Ci -> d), ordered as in_specs (C2..C5).
        output_convs: nn.ModuleList of 3x3 convs, padding 1 (d -> d), same order.
        out_specs: {"p2".."p6": FeatureSpec(d, stride)} with strides 4, 8, 16, 32, 64 for C2..C5 inputs.

    Example:
        >>> from fpn.backbones import ResNet
        >>> backbone = ResNet(depth=18)
        >>> neck = FPN(backbone.out_specs, out_channels=256)
        >>> {k: tuple(v.shape) for k, v in neck(backbone(torch.zeros(1, 3, 64, 96))).items()}["p6"]
        (1, 256, 1, 2)
    """

    def __init__(self, in_specs: Mapping[str, FeatureSpec], out_channels: int = 256):
        super().__init__()
        if out_channels <= 0:
            raise ValueError(f"FPN: out_channels must be positive, got {out_channels}")
        self.in_names = _check_in_specs(in_specs)
        self.lateral_convs = nn.ModuleList(
            nn.Conv2d(in_specs[name].channels, out_channels, kernel_size=1) for name in self.in_names
        )
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1) for _ in self.in_names
        )
        self.in_specs = {name: in_specs[name] for name in self.in_names}
        self.out_names = [f"p{name[1:]}" for name in self.in_names]
        top_level, top_stride = int(self.in_names[-1][1:]), in_specs[self.in_names[-1]].stride
        self.extra_name = f"p{top_level + 1}"
        self.out_specs: Dict[str, FeatureSpec] = {
            out: FeatureSpec(out_channels, in_specs[name].stride) for out, name in zip(self.out_names, self.in_names)
        }
        self.out_specs[self.extra_name] = FeatureSpec(out_channels, 2 * top_stride)
        for conv in [*self.lateral_convs, *self.output_convs]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Build the pyramid.

        Args:
            features: {"c2": (N, C2, H2, W2), ..., "c5": (N, C5, H5, W5)} float maps, each level at most the
                size of the one below (extra keys are ignored).

        Returns:
            {"p2": (N, d, H2, W2), ..., "p5": (N, d, H5, W5), "p6": (N, d, ceil(H5/2), ceil(W5/2))},
            ordered fine to coarse, dtype of the inputs.
        """
        self._check_features(features)
        inputs = [features[name] for name in self.in_names]
        # coarsest level first: (N, C5, H5, W5) -> (N, d, H5, W5)
        merged = self.lateral_convs[-1](inputs[-1])
        outputs = [self.output_convs[-1](merged)]
        for level in range(len(inputs) - 2, -1, -1):
            lateral = self.lateral_convs[level](inputs[level])  # (N, Ci, Hi, Wi) -> (N, d, Hi, Wi)
            # (N, d, H(i+1), W(i+1)) -> (N, d, Hi, Wi); exact size, not a factor of 2, for odd Hi/Wi
            top_down = F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            merged = lateral + top_down
            outputs.insert(0, self.output_convs[level](merged))
        pyramid = dict(zip(self.out_names, outputs))
        # P6: stride-2 subsampling of P5, (N, d, H5, W5) -> (N, d, ceil(H5/2), ceil(W5/2))
        pyramid[self.extra_name] = F.max_pool2d(outputs[-1], kernel_size=1, stride=2)
        return pyramid

    def _check_features(self, features: Mapping[str, torch.Tensor]) -> None:
        missing = [name for name in self.in_names if name not in features]
        if missing:
            raise ValueError(f"FPN: missing input levels {missing}; got {sorted(features)}")
        for name, spec in self.in_specs.items():
            shape = tuple(features[name].shape)
            if len(shape) != 4 or shape[1] != spec.channels:
                raise ValueError(f"FPN: {name} must be (N, {spec.channels}, H, W), got {shape}")


def _check_in_specs(in_specs: Mapping[str, FeatureSpec]) -> list:
    """The input names sorted fine to coarse; each must be "c<level>" with the stride doubling per level."""
    if not in_specs:
        raise ValueError("FPN: in_specs is empty; expected e.g. {'c2': FeatureSpec(256, 4), ...}")
    bad = [name for name in in_specs if not (name.startswith("c") and name[1:].isdigit())]
    if bad:
        raise ValueError(f"FPN: input names must look like 'c2'..'c5', got {bad}")
    names = sorted(in_specs, key=lambda name: int(name[1:]))
    for lower, upper in zip(names, names[1:]):
        if int(upper[1:]) != int(lower[1:]) + 1 or in_specs[upper].stride != 2 * in_specs[lower].stride:
            raise ValueError(
                f"FPN: levels must be consecutive with doubling strides; got {lower} (stride "
                f"{in_specs[lower].stride}) then {upper} (stride {in_specs[upper].stride})"
            )
    return names
