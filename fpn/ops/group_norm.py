"""GroupNorm (Wu & He, 2018) that normalises low-precision inputs in float32: the backbone's "gn" norm and the FCOS
head's towers.

The one module with parameters among the ops: it is nn.GroupNorm (same parameters, state dict and float32 path),
with a rule for the precision of its arithmetic that every floor above shares.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that normalises a bf16/fp16 input in float32 and returns the input's dtype.

    CPU autocast leaves group_norm in the input's dtype, and PyTorch's bf16 GroupNorm backward on the CPU is
    3-4x slower than float32's on the channels-last maps of the demo models (profiled, cpu-demo under bf16
    autocast: 2.0 ms a call against 0.56 ms in float32; normalisation went from 5% of the fp32 step to 22% of the
    bf16 one; fcos-cpu-demo 46%). Computing the statistics in float32 is also the precise choice, and what CUDA
    autocast does for group_norm anyway. float32 inputs take nn.GroupNorm's own path (same graph, same export).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.bfloat16, torch.float16):
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)
        return super().forward(x)
