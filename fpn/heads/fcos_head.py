"""FCOS's head (Tian et al., ICCV 2019), shared by every pyramid level: two towers of `num_convs` x (3x3 conv,
GroupNorm, ReLU); the classification tower ends in one logit per class, the regression tower in the four
distances (l, t, r, b) to the box sides (ReLU: distances are not negative) and the centerness logit (on the
regression tower, as torchvision and the FCOS authors' later version place it). torchvision's initialisation:
convs normal(std 0.01), biases 0, class biases -log((1 - prior) / prior).

Shape shorthand: N images, C classes, d channels, L = sum over levels of H_l * W_l locations, ordered level by
level, row-major within a level (torchvision's order, which the anchors follow).
"""
import math
from typing import List, Tuple

import torch
from torch import Tensor, nn


def _tower(channels: int, num_convs: int, gn_groups: int) -> nn.Sequential:
    layers = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.GroupNorm(gn_groups, channels),
                   nn.ReLU()]
    return nn.Sequential(*layers)


class FCOSClassificationHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, num_convs: int, gn_groups: int, prior_probability: float):
        super().__init__()
        self.num_classes = num_classes
        self.conv = _tower(channels, num_convs, gn_groups)
        self.cls_logits = nn.Conv2d(channels, num_classes, kernel_size=3, padding=1)
        for conv in [*self.conv.children(), self.cls_logits]:
            if isinstance(conv, nn.Conv2d):
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))

    def forward(self, features: List[Tensor]) -> Tensor:
        """Per level (N, d, H, W) -> (N, L, C) class logits."""
        return torch.cat([_flatten(self.cls_logits(self.conv(x))) for x in features], dim=1)


class FCOSRegressionHead(nn.Module):
    def __init__(self, channels: int, num_convs: int, gn_groups: int):
        super().__init__()
        self.conv = _tower(channels, num_convs, gn_groups)
        self.bbox_reg = nn.Conv2d(channels, 4, kernel_size=3, padding=1)
        self.bbox_ctrness = nn.Conv2d(channels, 1, kernel_size=3, padding=1)
        for conv in [*self.conv.children(), self.bbox_reg, self.bbox_ctrness]:
            if isinstance(conv, nn.Conv2d):
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)

    def forward(self, features: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """Per level (N, d, H, W) -> (N, L, 4) normalised distances (l, t, r, b) >= 0, (N, L) centerness logits."""
        distances, centerness = [], []
        for x in features:
            tower = self.conv(x)
            distances.append(_flatten(torch.relu(self.bbox_reg(tower))))
            centerness.append(_flatten(self.bbox_ctrness(tower))[..., 0])
        return torch.cat(distances, dim=1), torch.cat(centerness, dim=1)


class FCOSHead(nn.Module):
    """Both towers; `forward(features)` -> class logits (N, L, C), distances (N, L, 4), centerness (N, L)."""

    def __init__(self, channels: int, num_classes: int, num_convs: int = 4, gn_groups: int = 32,
                 prior_probability: float = 0.01):
        super().__init__()
        if channels % gn_groups:
            raise ValueError(f"FCOS head: GroupNorm groups {gn_groups} must divide the {channels} pyramid channels")
        self.classification_head = FCOSClassificationHead(channels, num_classes, num_convs, gn_groups,
                                                          prior_probability)
        self.regression_head = FCOSRegressionHead(channels, num_convs, gn_groups)

    def forward(self, features: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        return (self.classification_head(features), *self.regression_head(features))


def _flatten(x: Tensor) -> Tensor:
    """(N, K, H, W) -> (N, H * W, K), row-major locations."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])
