"""Feature Pyramid Network neck (Lin et al., CVPR 2017, Sec. 3): C2..C5 -> P2..P6.

Shape shorthand: N images, d the pyramid channels (256 in the paper), Ci/Hi/Wi the channels and size of
input level i. Every Pi has d channels and the size of Ci; P6 subsamples P5 by 2 and is used by the RPN only.

The top-down pathway starts from the 1x1 lateral of the coarsest map and moves down: upsample by nearest
neighbour to the exact size of the next lateral (so odd sizes work), add, and smooth each merged map with its
own 3x3 conv. There are no non-linearities (paper, Sec. 3: "we have found them to have minor impacts").
The paper's ablations of the pyramid (Sec. 5.1.1, Table 1(d)-(f)) switch parts off: `top_down`, `laterals`,
`finest_only` (see FPN).
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
        top_down: False drops the top-down pathway: each level is the 3x3 conv of its own lateral, a bottom-up
            pyramid (paper Sec. 5.1.1, Table 1(d)).
        laterals: False drops the 1x1 laterals of every level but the coarsest: each finer merged map is the
            upsampled coarser one alone (paper Sec. 5.1.1, Table 1(e)). Needs `top_down`.
        finest_only: output the finest level alone (P2 of C2..C5; no 3x3 convs of the other levels and no P6),
            for heads that read only that map (paper Table 1(f)); its top-down pathway is the full one.
        extra_levels: the maps above the coarsest input: "max_pool" (the paper's P6, a stride-2 subsampling of
            P5, for the RPN) or "p6p7" (FCOS and RetinaNet: P6 = 3x3 stride-2 conv of P5, P7 = 3x3 stride-2
            conv of ReLU(P6), as torchvision's LastLevelP6P7 with equal in and out channels).

    Attributes:
        lateral_convs: nn.ModuleList of 1x1 convs (Ci -> d), ordered as in_specs (C2..C5); the coarsest only
            when `laterals` is False.
        output_convs: nn.ModuleList of 3x3 convs, padding 1 (d -> d), same order; the finest only when
            `finest_only`.
        out_specs: {"p2".."p6": FeatureSpec(d, stride)} with strides 4, 8, 16, 32, 64 for C2..C5 inputs;
            {"p2": FeatureSpec(d, 4)} when `finest_only`.

    Example:
        >>> from fpn.backbones import ResNet
        >>> backbone = ResNet(depth=18)
        >>> neck = FPN(backbone.out_specs, out_channels=256)
        >>> {k: tuple(v.shape) for k, v in neck(backbone(torch.zeros(1, 3, 64, 96))).items()}["p6"]
        (1, 256, 1, 2)
    """

    def __init__(
        self,
        in_specs: Mapping[str, FeatureSpec],
        out_channels: int = 256,
        *,
        top_down: bool = True,
        laterals: bool = True,
        finest_only: bool = False,
        extra_levels: str = "max_pool",
    ):
        super().__init__()
        if out_channels <= 0:
            raise ValueError(f"FPN: out_channels must be positive, got {out_channels}")
        if extra_levels not in ("max_pool", "p6p7"):
            raise ValueError(f"FPN: extra_levels must be 'max_pool' or 'p6p7', got {extra_levels!r}")
        if not (top_down or laterals):
            raise ValueError("FPN: top_down=False with laterals=False leaves the finer levels without any input")
        self.in_names = _check_in_specs(in_specs)
        self.top_down, self.finest_only = top_down, finest_only
        num_levels = len(self.in_names)
        # level index (fine to coarse) -> index in lateral_convs / output_convs, for the levels that have one
        self._lateral_of = {i: i for i in range(num_levels)} if laterals else {num_levels - 1: 0}
        self._output_of = {0: 0} if finest_only else {i: i for i in range(num_levels)}
        self.lateral_convs = nn.ModuleList(
            nn.Conv2d(in_specs[self.in_names[i]].channels, out_channels, kernel_size=1) for i in self._lateral_of
        )
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1) for _ in self._output_of
        )
        self.in_specs = {name: in_specs[name] for name in self.in_names}
        self.out_names = [f"p{self.in_names[i][1:]}" for i in self._output_of]
        self.out_specs: Dict[str, FeatureSpec] = {
            out: FeatureSpec(out_channels, in_specs[self.in_names[i]].stride)
            for out, i in zip(self.out_names, self._output_of)
        }
        top_level, top_stride = int(self.in_names[-1][1:]), in_specs[self.in_names[-1]].stride
        self.extra_name = None if finest_only else f"p{top_level + 1}"
        if self.extra_name:
            self.out_specs[self.extra_name] = FeatureSpec(out_channels, 2 * top_stride)
        self.extra_convs = nn.ModuleList()  # P6, P7 convs of extra_levels "p6p7"
        if extra_levels == "p6p7" and not finest_only:
            self.extra_convs.extend(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(2))
            self.out_specs[f"p{top_level + 2}"] = FeatureSpec(out_channels, 4 * top_stride)
        for conv in [*self.lateral_convs, *self.output_convs, *self.extra_convs]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Build the pyramid.

        Args:
            features: {"c2": (N, C2, H2, W2), ..., "c5": (N, C5, H5, W5)} float maps, each level at most the
                size of the one below (extra keys are ignored).

        Returns:
            {"p2": (N, d, H2, W2), ..., "p5": (N, d, H5, W5), "p6": (N, d, ceil(H5/2), ceil(W5/2))},
            ordered fine to coarse, dtype of the inputs ({"p2": ...} alone when `finest_only`).
        """
        self._check_features(features)
        inputs = [features[name] for name in self.in_names]
        outputs, merged = {}, None
        for level in range(len(inputs) - 1, -1, -1):  # coarsest level first
            lateral = None
            if level in self._lateral_of:  # (N, Ci, Hi, Wi) -> (N, d, Hi, Wi)
                lateral = self.lateral_convs[self._lateral_of[level]](inputs[level])
            if merged is None or not self.top_down:
                merged = lateral
            else:
                # (N, d, H(i+1), W(i+1)) -> (N, d, Hi, Wi); exact size, not a factor of 2, for odd Hi/Wi
                top_down = F.interpolate(merged, size=inputs[level].shape[-2:], mode="nearest")
                merged = top_down if lateral is None else lateral + top_down
            if level in self._output_of:
                outputs[level] = self.output_convs[self._output_of[level]](merged)
        pyramid = {name: outputs[level] for name, level in zip(self.out_names, self._output_of)}
        top = outputs.get(len(inputs) - 1)  # (N, d, H5, W5); absent when finest_only
        if self.extra_convs:  # (N, d, H5, W5) -> P6 (N, d, ceil(H5/2), ceil(W5/2)) -> P7 (.., ceil(H6/2), ..)
            p6 = self.extra_convs[0](top)
            pyramid[self.extra_name] = p6
            pyramid[f"p{int(self.extra_name[1:]) + 1}"] = self.extra_convs[1](F.relu(p6))
        elif self.extra_name:
            # P6: stride-2 subsampling of P5, (N, d, H5, W5) -> (N, d, ceil(H5/2), ceil(W5/2))
            pyramid[self.extra_name] = F.max_pool2d(top, kernel_size=1, stride=2)
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
