"""MobileNetV3-Large (Howard et al., "Searching for MobileNetV3", ICCV 2019) as the trunk of torchvision's
CPU-friendly detectors `fasterrcnn_mobilenet_v3_large_fpn` and `..._320_fpn` (`BackboneConfig(name=
"mobilenet_v3_large")`).

The trunk is a stride-2 3x3 stem conv, 15 inverted residual blocks (the paper's Table 1, `LARGE_BLOCKS`) and a
1x1 conv to 960 channels. A block expands its input with a 1x1 conv (skipped when the expansion is 1), filters
each channel with a k x k depthwise conv carrying the stride, optionally re-weights the channels with
squeeze-and-excitation (global average -> 1x1 conv to a quarter -> ReLU -> 1x1 conv back -> hard sigmoid), and
projects linearly with a 1x1 conv; a block keeping shape and stride adds its input. Every conv is followed by a
norm, and all but the projections by ReLU or hard swish.

Outputs: the trunk has six stages, split where a block strides (torchvision's `_mobilenet_extractor`): stage 0
starts at the stem, stages 1..4 at the strided blocks features.2, .4, .7, .13, and stage 5 is the last conv,
features.16. "c<k>" is the output of the first module of stage k, as torchvision's `returned_layers` count them,
so the key is torchvision's stage number, not log2 of the stride: C4 (features.13, 160 channels) and C5
(features.16, 960 channels) are both at stride 32, and they are what torchvision's detectors feed the FPN.

Module names follow torchvision's mobilenet_v3_large (features.0.0, features.1.block.0.0, ..., block.2.fc1), so an
ImageNet file in its layout loads without renaming (its classifier is ignored).

Shape shorthand: N images, H x W input size.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, NamedTuple, Sequence

import torch
from torch import nn

from fpn.backbones.imagenet import load_imagenet_weights
from fpn.backbones.norm import ConvNormPair, conv_norm_pairs_within, make_norm
from fpn.backbones.untrained import RecordsLoadedWeights, describe_untrainable
from fpn.spec import FeatureSpec


class BlockSetting(NamedTuple):
    """One inverted residual block of the paper's Table 1."""

    kernel: int  # side of the depthwise conv
    expanded: int  # channels after the 1x1 expansion
    out: int  # channels after the projection
    se: bool  # squeeze-and-excitation after the depthwise conv
    hard_swish: bool  # hard swish after the expansion and the depthwise conv (else ReLU)
    stride: int  # of the depthwise conv


STEM_CHANNELS = 16
LAST_CHANNELS = 960  # the 1x1 conv after the blocks: 6 x the last block's 160
LARGE_BLOCKS = (  # Howard et al. (2019), Table 1; the blocks are features.1 .. features.15
    BlockSetting(3, 16, 16, False, False, 1),
    BlockSetting(3, 64, 24, False, False, 2),
    BlockSetting(3, 72, 24, False, False, 1),
    BlockSetting(5, 72, 40, True, False, 2),
    BlockSetting(5, 120, 40, True, False, 1),
    BlockSetting(5, 120, 40, True, False, 1),
    BlockSetting(3, 240, 80, False, True, 2),
    BlockSetting(3, 200, 80, False, True, 1),
    BlockSetting(3, 184, 80, False, True, 1),
    BlockSetting(3, 184, 80, False, True, 1),
    BlockSetting(3, 480, 112, True, True, 1),
    BlockSetting(3, 672, 112, True, True, 1),
    BlockSetting(5, 672, 160, True, True, 2),
    BlockSetting(5, 960, 160, True, True, 1),
    BlockSetting(5, 960, 160, True, True, 1),
)
NUM_STAGES = 6  # stem, the four strided blocks, the last conv: torchvision's trainable_backbone_layers 0..6
# torchvision's detectors build the trunk with FrozenBatchNorm2d / BatchNorm2d at their default eps, 1e-5; its
# ImageNet classifier uses 1e-3 (pass norm_eps=1e-3 to reproduce the classifier's features exactly).
DETECTOR_NORM_EPS = 1e-5


def round_to_8(channels: float) -> int:
    """The nearest multiple of 8 (halves up, at least 8), one step up if that lies more than 10 % below: the
    width rule of the MobileNets, used for the squeeze width (expanded / 4; 72 / 4 = 18 -> 24)."""
    rounded = max(8, int(channels + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * channels else rounded


class ConvNormActivation(nn.Sequential):
    """conv (no bias, "same" padding) -> norm [-> activation], named 0, 1 [, 2] as torchvision's
    Conv2dNormActivation. (N, C_in, H, W) -> (N, C_out, H/stride, W/stride)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, *, groups: int = 1,
                 activation: type = None, norm: str, gn_groups: int, norm_eps: float):
        normalisation = make_norm(norm, out_channels, gn_groups)
        normalisation.eps = norm_eps
        layers = [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2,
                            groups=groups, bias=False), normalisation]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)

    def conv_norm_pairs(self) -> Iterator[ConvNormPair]:
        """Its conv -> norm, "0" and "1"."""
        yield self, "0", "1"


class SqueezeExcitation(nn.Module):
    """x * hard_sigmoid(fc2(relu(fc1(mean over H, W of x)))): (N, C, H, W) -> (N, C, H, W) (Hu et al., 2018,
    with MobileNetV3's hard sigmoid); fc1 and fc2 are 1x1 convs with bias, C -> squeeze -> C."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = nn.functional.adaptive_avg_pool2d(x, 1)  # (N, C, 1, 1), the mean over H, W
        weights = self.fc2(torch.relu(self.fc1(weights)))
        return x * nn.functional.hardsigmoid(weights)


class InvertedResidual(nn.Module):
    """expand 1x1 -> depthwise k x k (stride) -> [SE] -> project 1x1, + x when shape and stride are kept.
    (N, C_in, H, W) -> (N, C_out, H/stride, W/stride)."""

    def __init__(self, in_channels: int, setting: BlockSetting, norm: str, gn_groups: int, norm_eps: float):
        super().__init__()
        activation = nn.Hardswish if setting.hard_swish else nn.ReLU
        common = dict(norm=norm, gn_groups=gn_groups, norm_eps=norm_eps)
        layers: List[nn.Module] = []
        if setting.expanded != in_channels:
            layers.append(ConvNormActivation(in_channels, setting.expanded, 1, 1, activation=activation, **common))
        layers.append(ConvNormActivation(setting.expanded, setting.expanded, setting.kernel, setting.stride,
                                         groups=setting.expanded, activation=activation, **common))
        if setting.se:
            layers.append(SqueezeExcitation(setting.expanded, round_to_8(setting.expanded / 4)))
        layers.append(ConvNormActivation(setting.expanded, setting.out, 1, 1, **common))  # linear projection
        self.block = nn.Sequential(*layers)
        self.residual = setting.stride == 1 and in_channels == setting.out
        self.strided = setting.stride > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class MobileNetV3(RecordsLoadedWeights):
    """The MobileNetV3-Large trunk without the classifier, returning the maps torchvision's detectors use.

    Args:
        norm (keyword-only): "frozen_bn", "bn" or "gn" (see fpn.backbones.norm.make_norm); "gn" needs a
            `gn_groups` dividing every width (8 does; 184 = 8 x 23).
        trainable_stages (keyword-only): 0..6, torchvision's `trainable_backbone_layers` for this trunk: the
            number of stages trained, counted from the last (features.16) down to the stem (features.0-1);
            6 trains everything, 3 (torchvision's fine-tuning default) trains features.7 onwards.
        returned_stages (keyword-only): which stages' maps the forward returns, as "c<k>"; torchvision's
            detectors return (4, 5), the two stride-32 maps.
        gn_groups (keyword-only): GroupNorm groups when norm == "gn".
        norm_eps (keyword-only): the norms' eps; DETECTOR_NORM_EPS (1e-5) as torchvision's detectors, 1e-3 for
            its ImageNet classifier.

    Initialisation as torchvision's MobileNetV3: convs kaiming normal (fan out), conv biases 0, norms weight 1
    and bias 0.

    Attributes:
        out_specs: {"c4": FeatureSpec(160, 32), "c5": FeatureSpec(960, 32)} for the default returned_stages.
        stage_starts: index in `features` of the first module of each of the six stages, (0, 2, 4, 7, 13, 16).
        loaded_weights: whether a state dict was loaded into it (ImageNet weights or a detector checkpoint).

    Example:
        >>> net = MobileNetV3(norm="frozen_bn")
        >>> {k: tuple(v.shape) for k, v in net(torch.zeros(1, 3, 64, 96)).items()}
        {'c4': (1, 160, 2, 3), 'c5': (1, 960, 2, 3)}
    """

    def __init__(self, *, norm: str = "bn", trainable_stages: int = NUM_STAGES, returned_stages: Sequence[int] = (4, 5),
                 gn_groups: int = 32, norm_eps: float = DETECTOR_NORM_EPS):
        super().__init__()
        self.norm, self.trainable_stages = norm, trainable_stages
        self.loaded_weights = False
        common = dict(norm=norm, gn_groups=gn_groups, norm_eps=norm_eps)
        layers: List[nn.Module] = [ConvNormActivation(3, STEM_CHANNELS, 3, 2, activation=nn.Hardswish, **common)]
        channels, strides = [STEM_CHANNELS], [2]  # of each module's output
        for setting in LARGE_BLOCKS:
            layers.append(InvertedResidual(channels[-1], setting, **common))
            channels.append(setting.out)
            strides.append(strides[-1] * setting.stride)
        layers.append(ConvNormActivation(channels[-1], LAST_CHANNELS, 1, 1, activation=nn.Hardswish, **common))
        channels.append(LAST_CHANNELS)
        strides.append(strides[-1])
        self.features = nn.Sequential(*layers)
        self.stage_starts = (0, *[i for i, m in enumerate(layers) if getattr(m, "strided", False)], len(layers) - 1)
        if sorted(set(returned_stages)) != list(returned_stages) or not set(returned_stages) <= set(range(NUM_STAGES)):
            raise ValueError(f"returned_stages must be increasing stage numbers in 0..{NUM_STAGES - 1}, got "
                             f"{tuple(returned_stages)}")
        self.out_specs: Dict[str, FeatureSpec] = {
            f"c{k}": FeatureSpec(channels[self.stage_starts[k]], strides[self.stage_starts[k]]) for k in returned_stages
        }
        self._init_weights()
        freeze_stages(self, trainable_stages)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


    def stage_names(self) -> List[str]:
        """The six stages as module ranges, the last first (the order in which trainable_stages frees them)."""
        ends = (*self.stage_starts[1:], len(self.features))
        names = [f"features.{start}" if end - start == 1 else f"features.{start}-{end - 1}"
                 for start, end in zip(self.stage_starts, ends)]
        return names[::-1]

    def conv_norm_pairs(self) -> Iterator[ConvNormPair]:
        """Every conv -> norm [-> activation] (each ConvNormActivation); the squeeze-excitation convs have no norm."""
        yield from conv_norm_pairs_within(self)

    def untrainable_parts(self) -> List[str]:
        """What training cannot fix while no weights are loaded (see ResNet.untrainable_parts)."""
        return describe_untrainable(self.loaded_weights, self.norm, self.trainable_stages, self.stage_names())

    def split_off_last_stage(self) -> nn.Module:
        raise ValueError("MobileNetV3 has no conv5 stage to run as a box head: the c4 variant needs a ResNet or "
                         "RegNetX trunk")

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(N, 3, H, W) normalised images -> {"c4": (N, 160, H/32, W/32), "c5": (N, 960, H/32, W/32)} (the
        returned stages; a size not divisible by the stride rounds up at each stride-2 conv)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"MobileNetV3: expected input of shape (N, 3, H, W), got {tuple(x.shape)}")
        wanted = {self.stage_starts[int(name[1:])]: name for name in self.out_specs}
        outputs = {}
        for index, module in enumerate(self.features[: max(wanted) + 1]):
            x = module(x)
            if index in wanted:
                outputs[wanted[index]] = x
        return outputs


def freeze_stages(model: MobileNetV3, trainable_stages: int) -> None:
    """requires_grad False in the features before the last `trainable_stages` stages (torchvision's
    `_mobilenet_extractor`: 0 freezes the whole trunk, 6 nothing)."""
    if not 0 <= trainable_stages <= NUM_STAGES:
        raise ValueError(f"trainable_stages must be in 0..{NUM_STAGES} for MobileNetV3, got {trainable_stages}")
    first_trained = len(model.features) if trainable_stages == 0 else model.stage_starts[NUM_STAGES - trainable_stages]
    for index, module in enumerate(model.features):
        module.requires_grad_(index >= first_trained)


def build_mobilenet_v3(cfg) -> MobileNetV3:
    """The MobileNetV3-Large of a `BackboneConfig` (norm, trainable_stages, gn_groups), with ImageNet weights loaded
    from `cfg.weights` when set (torchvision's `mobilenet_v3_large-*.pth` layout). `depth`, `width` and
    `zero_init_residual` are ResNet's and ignored here.

    A norm or trainable_stages of None is chosen from the weights (`BackboneConfig.resolved`): frozen BN and 3
    trained stages with weights, BN and all 6 without.
    """
    cfg = cfg.resolved()
    model = MobileNetV3(norm=cfg.norm, trainable_stages=cfg.trainable_stages, gn_groups=cfg.gn_groups)
    if cfg.weights:
        load_imagenet_weights(model, cfg.weights)
    return model
