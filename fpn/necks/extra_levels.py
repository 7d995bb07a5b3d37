"""Levels above the coarsest input of the FPN, as small modules handed to it (`FPN(..., extra_levels=...)`), like
torchvision's `extra_blocks` and detectron2's `top_block`.

An extra-levels module has `num_levels`, the maps it adds, and `forward(top) -> list of maps`: it reads the coarsest
output of the pyramid (P5 for C2..C5 inputs), (N, d, H, W), and returns its `num_levels` maps coarse-ward, each of d
channels and half the size (rounded up) of the one before; the FPN names them p6, p7, ... and declares strides
doubling from the coarsest input's.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LastLevelMaxPool(nn.Module):
    """The paper's P6 (Sec. 4.1): a stride-2 subsampling of P5, for the RPN's largest anchors (512^2). No
    parameters, so nothing in a state dict."""

    num_levels = 1

    def forward(self, top: Tensor) -> List[Tensor]:
        # (N, d, H5, W5) -> (N, d, ceil(H5/2), ceil(W5/2)): kernel 1, stride 2 keeps every other pixel
        return [F.max_pool2d(top, kernel_size=1, stride=2)]


class LastLevelP6P7(nn.ModuleList):
    """FCOS's and RetinaNet's P6 = 3x3 stride-2 conv of P5 and P7 = 3x3 stride-2 conv of ReLU(P6), as torchvision's
    LastLevelP6P7(d, d) (the variant reading P5, not C5).

    A ModuleList of the two convs, so that their state-dict keys are `0.*` (P6) and `1.*` (P7): the FPN keeps
    this module as `extra_convs`, and checkpoints name the convs `neck.extra_convs.{0,1}.*`. The FPN initialises
    them with its own convs (kaiming uniform a=1, bias 0, torchvision's).

    Args:
        channels: d, the pyramid's channels (in and out).
    """

    num_levels = 2

    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1) for _ in range(2))

    def forward(self, top: Tensor) -> List[Tensor]:
        # In float32 under autocast: these maps are the pyramid's smallest (P7 of a 64 px image is 1x1), and the
        # CPU's bf16 backward of the stride-2 conv over a map smaller than its kernel returned random garbage
        # weight gradients (1e27, inf or NaN in 3 of 4 runs of the same seeded step; float32 never). The cost is
        # negligible at these sizes. The outputs keep the input's dtype.
        with torch.autocast(top.device.type, enabled=False):
            x = top.float()
            p6 = self[0](x)  # (N, d, H5, W5) -> (N, d, ceil(H5/2), ceil(W5/2))
            p7 = self[1](F.relu(p6))  # (N, d, ceil(H6/2), ceil(W6/2))
        return [p6.to(top.dtype), p7.to(top.dtype)]
