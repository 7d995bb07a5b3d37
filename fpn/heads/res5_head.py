"""The box head of He et al.'s ResNet Faster R-CNN: the conv5 stage run on each RoI, then global average pooling.

The FPN paper's single-scale C4 baseline (Tables 1-3, row (a)) uses it: RoIs are pooled from C4 at 14x14, the
conv5 stage (its first block strided) brings them to 7x7, and the average over those 7x7 positions feeds the
class and box predictors. The trunk then stops at C4, so conv5 never runs on the whole image.

Shape shorthand: R RoIs, C4/C5 the channels of the ResNet's conv4/conv5 outputs, 2S the pooled size (14).
"""
from __future__ import annotations

from torch import Tensor, nn


class Res5Head(nn.Module):
    """(R, C4, 2S, 2S) -> conv5 stage -> (R, C5, S, S) -> mean over positions -> (R, C5).

    Args:
        stage: the ResNet's conv5 stage (`ResNet.split_off_last_stage()`), weights and frozen flags as trained.
        out_channels: C5, the channels the stage outputs (`out_features` of this head).

    Attributes:
        res5: the stage; parameters are named `res5.<block>.<layer>` (torchvision's `layer4.<block>.<layer>`).
    """

    def __init__(self, stage: nn.Module, out_channels: int):
        super().__init__()
        self.res5 = stage
        self.out_features = out_channels

    def forward(self, x: Tensor) -> Tensor:
        x = self.res5(x)  # (R, C4, 2S, 2S) -> (R, C5, S, S): the stage's first block has stride 2
        return x.mean(dim=(2, 3))  # (R, C5, S, S) -> (R, C5), global average pooling
