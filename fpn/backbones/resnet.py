"""ResNet-18/34/50/101 (He et al., 2016) as the bottom-up pathway of the FPN: outputs C2..C5.

Shape shorthand: N images, H x W input size, Ci the channels of stage i (Table 1 of the FPN paper calls the
outputs of conv2..conv5 {C2, C3, C4, C5}, at strides {4, 8, 16, 32}).

The bottleneck puts its stride on the 3x3 convolution ("ResNet v1.5", as torchvision does), and module and
parameter names follow torchvision's resnet (conv1, bn1, layer1..layer4, blocks with conv1/bn1/.../downsample.0/
downsample.1; there is no fc), so an ImageNet checkpoint in torchvision's layout loads without renaming.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional

import torch
from torch import nn

from fpn.backbones.imagenet import load_imagenet_weights
from fpn.backbones.norm import ConvNormPair, conv_norm_pairs_within, make_norm
from fpn.backbones.untrained import RecordsLoadedWeights, describe_untrainable
from fpn.spec import FeatureSpec

# depth -> (block type, number of blocks in layer1..layer4), Table 1 of He et al. (2016)
_ARCHITECTURES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
# top-level modules trained for each value of trainable_stages, as torchvision's `trainable_layers`
_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str, gn_groups: int) -> Optional[nn.Module]:
    """Projection shortcut (1x1 conv + norm) where the block changes shape; None means identity."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(_conv1x1(in_channels, out_channels, stride), make_norm(norm, out_channels, gn_groups))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34). (N, Cin, H, W) -> (N, planes, H/s, W/s)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, norm: str, gn_groups: int):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = make_norm(norm, planes, gn_groups)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = make_norm(norm, planes, gn_groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, planes, stride, norm, gn_groups)

    def last_norm(self) -> nn.Module:
        return self.bn2

    def conv_norm_pairs(self) -> Iterator[ConvNormPair]:
        """conv1 -> bn1, conv2 -> bn2, and the projection shortcut's conv -> norm."""
        yield from ((self, "conv1", "bn1"), (self, "conv2", "bn2"))
        if self.downsample is not None:
            yield self.downsample, "0", "1"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, and a shortcut (ResNet-50/101).

    (N, Cin, H, W) -> (N, 4 * planes, H/s, W/s).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, norm: str, gn_groups: int):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn1 = make_norm(norm, planes, gn_groups)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = make_norm(norm, planes, gn_groups)
        self.conv3 = _conv1x1(planes, out_channels)
        self.bn3 = make_norm(norm, out_channels, gn_groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm, gn_groups)

    def last_norm(self) -> nn.Module:
        return self.bn3

    def conv_norm_pairs(self) -> Iterator[ConvNormPair]:
        """conv1 -> bn1, conv2 -> bn2, conv3 -> bn3, and the projection shortcut's conv -> norm."""
        yield from ((self, "conv1", "bn1"), (self, "conv2", "bn2"), (self, "conv3", "bn3"))
        if self.downsample is not None:
            yield self.downsample, "0", "1"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(RecordsLoadedWeights):
    """ResNet trunk without the classifier, returning the last map of each stage.

    Args (keyword-only):
        depth: 18, 34 (basic blocks), 50 or 101 (bottlenecks).
        norm: "frozen_bn", "bn" or "gn" (see fpn.backbones.norm.make_norm).
        width: channels of the stem and of layer1's 3x3 convs; stage i has width * 2**(i-1). 64 is ResNet.
        trainable_stages: 0..5, torchvision's `trainable_layers`: the number of top-level parts trained,
            counted from the top: layer4, layer3, layer2, layer1, conv1 (the stem's bn1 only at 5). The
            other parameters get requires_grad=False. 3 (the default) freezes the stem and layer1.
        gn_groups: GroupNorm groups when norm == "gn"; must divide every stage width.
        zero_init_residual: with norm "bn" or "gn", zero the last norm weight of every residual block.

    Initialisation: convs kaiming-normal (fan_out, relu), norm weight 1 and bias 0. With norm "bn" or "gn" and
    `zero_init_residual`, the last norm weight of every residual block is zeroed (Goyal et al., 2017), so each
    block starts as the identity; this stabilises long training from scratch, but a block's branch then opens
    slowly: after 600 iterations from scratch (the `ablation-cpu` preset) those weights were still 0.01-0.08, so
    C4 and C5 were little more than strided 1x1 projections of the stem. Frozen BN keeps weight 1, as pretrained
    weights replace it anyway.

    Attributes:
        out_specs: {"c2".."c5": FeatureSpec(channels, stride)} with strides 4, 8, 16, 32.
        loaded_weights: False at construction; True once a state dict holding any of the trunk's tensors was
            loaded (ImageNet weights, a detector checkpoint). Until then frozen parts are still random or identity.

    Example:
        >>> net = ResNet(depth=18, norm="frozen_bn")
        >>> {k: tuple(v.shape) for k, v in net(torch.zeros(1, 3, 64, 96)).items()}["c5"]
        (1, 512, 2, 3)
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        norm: str = "frozen_bn",
        width: int = 64,
        trainable_stages: int = 3,
        gn_groups: int = 32,
        zero_init_residual: bool = True,
    ):
        super().__init__()
        if depth not in _ARCHITECTURES:
            raise ValueError(f"ResNet: unsupported depth {depth}; expected one of {sorted(_ARCHITECTURES)}")
        if not isinstance(width, int) or width <= 0:
            raise ValueError(f"ResNet: width must be a positive int, got {width!r}")
        if not 0 <= trainable_stages <= 5:
            raise ValueError(f"ResNet: trainable_stages must be in 0..5, got {trainable_stages}")
        block_kind, blocks_per_stage = _ARCHITECTURES[depth]
        block = BasicBlock if block_kind == "basic" else Bottleneck
        self.depth = depth
        self.norm = norm
        self.trainable_stages = trainable_stages
        self.loaded_weights = False

        # stem: (N, 3, H, W) -> (N, width, H/4, W/4)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, width, gn_groups)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_channels = width
        specs = {}
        for index, num_blocks in enumerate(blocks_per_stage):
            planes, stride = width * 2**index, (1 if index == 0 else 2)
            stage = self._make_stage(block, in_channels, planes, num_blocks, stride, norm, gn_groups)
            self.add_module(f"layer{index + 1}", stage)
            in_channels = planes * block.expansion
            specs[f"c{index + 2}"] = FeatureSpec(channels=in_channels, stride=4 * 2**index)
        self.out_specs: Dict[str, FeatureSpec] = specs

        self._init_weights(zero_init_residual=zero_init_residual and norm in ("bn", "gn"))
        freeze_stages(self, trainable_stages)

    @staticmethod
    def _make_stage(block, in_channels, planes, num_blocks, stride, norm, gn_groups) -> nn.Sequential:
        blocks = [block(in_channels, planes, stride, norm, gn_groups)]
        blocks += [block(planes * block.expansion, planes, 1, norm, gn_groups) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_norm().weight)


    def conv_norm_pairs(self) -> Iterator[ConvNormPair]:
        """Every conv -> norm that follows it directly: the stem's conv1 -> bn1, then each block's."""
        yield self, "conv1", "bn1"
        yield from conv_norm_pairs_within(self)

    def untrainable_parts(self) -> List[str]:
        """What training cannot fix while no weights are loaded: [] when `loaded_weights`, else the frozen BN
        (the identity: weight 1, bias 0, mean 0, variance 1) and the frozen stages (random), described."""
        return describe_untrainable(self.loaded_weights, self.norm, self.trainable_stages, _TRAINABLE_ORDER)

    def split_off_last_stage(self) -> nn.Sequential:
        """Remove conv5 (`layer4`) from the trunk and return it; the trunk then ends at C4.

        He et al.'s ResNet Faster R-CNN, the paper's single-scale C4 baseline (Tables 1-3, row (a)), runs conv5
        on each RoI as its box head instead of on the whole image. Call this after any weights are loaded and
        stages frozen, so the returned stage keeps them (its parameters are then named by its new owner).

        Returns:
            the stage, (R, C4, H, W) -> (R, C5, H/2, W/2); `out_specs` loses "c5".
        """
        if not hasattr(self, "layer4"):
            raise ValueError("ResNet: the last stage (layer4) was already split off")
        stage = self.layer4
        del self.layer4
        self.out_specs = {name: spec for name, spec in self.out_specs.items() if name != "c5"}
        return stage

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Run the bottom-up pathway.

        Args:
            x: (N, 3, H, W) float images, already normalised. Any H, W >= 1 works; maps are then
               ceil-divided by each stride (H/4 -> ceil(ceil(H/2)/2), and so on).

        Returns:
            {"c2": (N, C2, H/4, W/4), "c3": (N, C3, H/8, W/8), "c4": (N, C4, H/16, W/16),
             "c5": (N, C5, H/32, W/32)}, dtype of x; channels as in `out_specs` (no "c5" once
            `split_off_last_stage` was called).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet: expected input of shape (N, 3, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 3, H, W) -> (N, width, H/4, W/4)
        outputs = {}
        for name in self.out_specs:  # "c2" is the output of layer1, ..., "c5" of layer4
            x = getattr(self, f"layer{int(name[1:]) - 1}")(x)
            outputs[name] = x
        return outputs


def freeze_stages(model: ResNet, trainable_stages: int) -> None:
    """Set requires_grad as torchvision's `trainable_layers` does (see ResNet); 5 leaves all trainable.

    Args:
        model: the ResNet whose parameters are (un)frozen in place.
        trainable_stages: 0..5.
    """
    if not 0 <= trainable_stages <= 5:
        raise ValueError(f"trainable_stages must be in 0..5, got {trainable_stages}")
    trainable = set(_TRAINABLE_ORDER[:trainable_stages])
    if trainable_stages == 5:
        trainable.add("bn1")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.split(".")[0] in trainable)


def build_resnet(cfg) -> ResNet:
    """Build the backbone of a `fpn.config.BackboneConfig`, loading `cfg.weights` when set.

    Args:
        cfg: BackboneConfig with depth, norm, width, trainable_stages, gn_groups, zero_init_residual and weights
            (path or None).
            A norm or trainable_stages of None is chosen from the weights (`BackboneConfig.resolved`).

    Returns:
        The ResNet, with ImageNet weights loaded if `cfg.weights` names a checkpoint.
    """
    cfg = cfg.resolved()
    model = ResNet(
        depth=cfg.depth,
        norm=cfg.norm,
        width=cfg.width,
        trainable_stages=cfg.trainable_stages,
        gn_groups=cfg.gn_groups,
        zero_init_residual=cfg.zero_init_residual,
    )
    if cfg.weights:
        load_imagenet_weights(model, cfg.weights)
    return model

