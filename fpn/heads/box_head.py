"""The Fast R-CNN box head of the FPN paper (Sec. 4.2): two 1024-d FC layers, then class scores and deltas; or
torchvision's *_v2 head: four 3x3 conv + BatchNorm + ReLU layers, then one FC layer (the "4conv1fc" head of Wu & He,
2018, with BatchNorm as in Li et al., 2021).

Shape shorthand: R RoIs, C channels, S pooled size (7), K classes with background at index 0.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import torch.nn.functional as F
from torch import Tensor, nn


class TwoMLPHead(nn.Module):
    """Flatten the pooled (R, C, S, S) features and apply fc6 + ReLU, fc7 + ReLU -> (R, representation_size)."""

    def __init__(self, in_features: int, representation_size: int):
        super().__init__()
        self.out_features = representation_size  # F, the width the predictors read
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        for fc in (self.fc6, self.fc7):
            nn.init.kaiming_uniform_(fc.weight, a=1)  # "Xavier" fill as in Detectron
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)  # (R, C, S, S) -> (R, C*S*S)
        return F.relu(self.fc7(F.relu(self.fc6(x))))


class ConvFCHead(nn.Module):
    """`num_convs` 3x3 conv (no bias) + BatchNorm + ReLU on the pooled (R, C, S, S) features, flatten, one FC + ReLU
    -> (R, representation_size): torchvision's FastRCNNConvFCHead((C, S, S), [256] * 4, [1024], BatchNorm2d).

    Module names: `convs.{i}.conv`, `convs.{i}.norm` (a ConvNormReLU each), then `fc`. Initialised as
    torchvision's: the convs kaiming normal (fan_out, ReLU), BatchNorm weight 1 and bias 0, the FC layer PyTorch's
    default.
    """

    def __init__(self, in_channels: int, resolution: int, representation_size: int, *, num_convs: int = 4,
                 conv_channels: int = 256):
        super().__init__()
        self.out_features = representation_size  # F, the width the predictors read
        widths = [in_channels] + [conv_channels] * num_convs
        self.convs = nn.ModuleList(ConvNormReLU(c_in, c_out) for c_in, c_out in zip(widths, widths[1:]))
        self.fc = nn.Linear(widths[-1] * resolution**2, representation_size)
        for block in self.convs:  # after building every layer, as torchvision does (same random draws when seeded)
            nn.init.kaiming_normal_(block.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        for block in self.convs:
            x = block(x)  # (R, C, S, S) -> (R, conv_channels, S, S)
        return F.relu(self.fc(x.flatten(start_dim=1)))  # (R, conv_channels*S*S) -> (R, representation_size)


class ConvNormReLU(nn.Module):
    """3x3 conv (no bias, padding 1) -> BatchNorm2d -> ReLU: (R, C_in, S, S) -> (R, C_out, S, S). At inference
    the norm folds into the conv (`conv_norm_pairs`, fpn.deploy.inference)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)))

    def conv_norm_pairs(self) -> Iterator[Tuple[nn.Module, str, str]]:
        """Its conv -> norm, as the trunks answer (fpn.backbones.norm.ConvNormPair)."""
        yield self, "conv", "norm"


class BoxPredictor(nn.Module):
    """Class logits (R, K) and class-specific box deltas (R, K*4) from the box features."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)
