"""The Fast R-CNN box head of the FPN paper (Sec. 4.2): two 1024-d FC layers, then class scores and deltas.

Shape shorthand: R RoIs, C channels, S pooled size (7), K classes with background at index 0.
"""
from __future__ import annotations

from typing import Tuple

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
