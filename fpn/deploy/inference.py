"""An inference-only copy of a detector: normalisations folded into the convolutions, channels-last, optional
bf16/fp16 convolutions and linear layers, optional `torch.compile` of the trunk.

    fast = optimize_for_inference(model, dtype=torch.bfloat16)
    detections = fast([image])  # the eval contract of `FasterRCNNFPN`: boxes / scores / labels per image

What changes, and why it keeps the detections:
- **Folding.** At inference frozen BatchNorm, and BatchNorm in eval mode with running statistics, are the affine
  map `x * scale + shift` per channel, so `norm(conv(x)) = conv'(x)` with `conv'.weight = weight * scale` (per
  output channel) and `conv'.bias = bias * scale + shift`. The constants are computed in float64 and rounded
  once, so fp32 detections match the eager model's to float rounding (boxes within 1e-3 px, scores within 1e-5,
  tests/test_inference.py, test_inference_regnet.py, test_model_parity_mobilenet.py, test_model_parity_v2.py).
  The pairs are the modules' own answer: a trunk or block knows which of its norms follow a conv directly and says
  so in its `conv_norm_pairs()` method (ResNet, RegNetX, MobileNetV3 and their blocks; the BatchNorm FPN's
  `ConvNorm` and the 4conv1fc box head's `ConvNormReLU` of torchvision's v2 model; see `conv_norm_pairs`),
  nothing is traced; a folded norm becomes `nn.Identity`. GroupNorm depends on its input's
  statistics and cannot be folded: it is left in place.
- **Channels-last.** oneDNN (CPU) and cuDNN run NHWC convolutions without layout conversions.
- **dtype.** Convolution and linear weights are stored in `dtype` and the forward runs under
  `torch.autocast(device, dtype)`: the model already runs anchors, box decoding, NMS and the losses in float32
  under autocast (fpn/heads/rpn.py, roi_heads.py), and RoIAlign reads the low-precision maps as they are.
  Storing the weights in `dtype` saves autocast re-casting every frozen weight on every call.
- **compile.** `torch.compile` of the backbone and the FPN (the dense part, where the time goes); the heads keep
  their data-dependent NMS in eager. Off by default: measured on a 2-core Xeon (AMX), ResNet-50 at 800x1333 in
  bf16, the first call took 45 s (cold cache) and steady-state latency showed no gain beyond the machine's noise.

The caller's model is not modified: everything happens on a deep copy.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from fpn.backbones.norm import ConvNormPair, FrozenBatchNorm2d, conv_norm_pairs_within
from fpn.device import cpu_has_native_bf16

LOW_PRECISION = (torch.bfloat16, torch.float16)


def conv_norm_pairs(model: nn.Module) -> Iterator[ConvNormPair]:
    """Every (parent, conv attribute, norm attribute) whose norm follows the conv directly, as the modules of
    `model` answer them (`conv_norm_pairs()` of the ResNet, RegNetX and MobileNetV3 trunks and of their blocks,
    so that the conv5 box head of the C4 variant, blocks split off a trunk, is found too, and of the conv + norm
    blocks of the v2 model's FPN and box head)."""
    answer = getattr(model, "conv_norm_pairs", None)
    yield from answer() if callable(answer) else conv_norm_pairs_within(model)


def norm_as_affine(norm: nn.Module) -> Optional[Tuple[Tensor, Tensor]]:
    """(scale, shift), float64 (C,), with norm(x) = x * scale + shift per channel at inference; None when the norm
    is not such a map (GroupNorm, BatchNorm in training or without running statistics, anything else)."""
    if isinstance(norm, FrozenBatchNorm2d):
        weight, bias = norm.weight, norm.bias
    elif isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.running_var is not None:
        weight = norm.weight if norm.affine else torch.ones_like(norm.running_var)
        bias = norm.bias if norm.affine else torch.zeros_like(norm.running_var)
    else:
        return None
    scale = weight.double() * (norm.running_var.double() + norm.eps).rsqrt()
    return scale, bias.double() - norm.running_mean.double() * scale


def fold_norm_into_conv(conv: nn.Conv2d, norm: nn.Module) -> bool:
    """Fold `norm` into `conv`'s weight and bias in place (the conv gains a bias if it had none).

    Returns False and changes nothing when the norm is not an affine map at inference (see `norm_as_affine`).
    """
    affine = norm_as_affine(norm)
    if affine is None or not isinstance(conv, nn.Conv2d):
        return False
    scale, shift = affine  # (Cout,) float64 each
    if scale.shape[0] != conv.out_channels:
        raise ValueError(f"cannot fold a norm of {scale.shape[0]} channels into a conv of {conv.out_channels}")
    dtype = conv.weight.dtype
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)  # (Cout, Cin/g, kh, kw): output channel o times scale[o]
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    return True


def fold_norms(model: nn.Module) -> int:
    """Fold every foldable norm of `model` that a module pairs with its conv (`conv_norm_pairs`: the trunks, the
    v2 FPN and box head) into that conv, in place; the norm becomes nn.Identity. Returns how many were folded
    (GroupNorm and training-mode BatchNorm are left, uncounted)."""
    folded = 0
    for parent, conv_name, norm_name in conv_norm_pairs(model):
        if fold_norm_into_conv(getattr(parent, conv_name), getattr(parent, norm_name)):
            setattr(parent, norm_name, nn.Identity())
            folded += 1
    return folded


def check_dtype(dtype: Optional[torch.dtype], device: torch.device) -> None:
    """Raise ValueError for a dtype the device cannot run; warn where it runs but slowly.

    float32 (or None) always runs. On the CPU, bfloat16 runs everywhere (emulated, slowly, without AVX-512 BF16 or
    AMX: a warning) and float16 is refused: bf16 is the CPU's low-precision path (oneDNN, AMX), and fp16's
    range (at most 65504) can overflow the unnormalised activations where bf16's cannot. On CUDA bfloat16 needs
    a GPU that supports it (Ampere or newer).
    """
    if dtype in (None, torch.float32):
        return
    if dtype not in LOW_PRECISION:
        raise ValueError(f"dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
    if device.type == "cpu":
        if dtype == torch.float16:
            raise ValueError("dtype torch.float16 is not supported on the CPU; use torch.bfloat16 (or None for float32)")
        if not cpu_has_native_bf16():
            warnings.warn("this CPU has no native bf16 (AVX-512 BF16 or AMX): bfloat16 convolutions are emulated and "
                          "may be slower than float32", stacklevel=3)
    elif device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"dtype torch.bfloat16 is not supported on {torch.cuda.get_device_name(device)}; "
                         "use torch.float16")


class InferenceModel(nn.Module):
    """The optimized detector (see the module docstring); made by `optimize_for_inference`.

    `model(images)` takes a list of float (3, H, W) images in [0, 1] and returns, per image, `boxes` (D, 4) float32
    xyxy in that image's pixels, `scores` (D,) float32 and `labels` (D,) int64: the eval contract of
    `FasterRCNNFPN`. It only runs inference: `train()` raises.

    Attributes:
        model: the optimized copy of the detector (a `FasterRCNNFPN`).
        dtype: the dtype of the convolutions and linear layers (torch.float32 when not lowered).
        folded_norms: how many normalisations were folded into convolutions.
        compiled: whether the backbone and FPN run through `torch.compile`.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, folded_norms: int, compiled: bool):
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.folded_norms = folded_norms
        self.compiled = compiled
        super().train(False)

    @property
    def config(self):
        return self.model.config

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise ValueError("an optimize_for_inference model only runs inference (its norms are folded); "
                             "train the original model")
        return super().train(False)

    def summary(self) -> str:
        """One line saying what was done, e.g. 'folded 53 norms, channels-last, dtype bfloat16'."""
        parts = [f"folded {self.folded_norms} norms", "channels-last", f"dtype {str(self.dtype).split('.')[-1]}"]
        return ", ".join(parts + (["torch.compile"] if self.compiled else []))

    def forward(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        device = next(self.model.parameters()).device
        lowered = self.dtype in LOW_PRECISION
        autocast = torch.autocast(device.type, dtype=self.dtype) if lowered else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            return self.model(images)


def optimize_for_inference(
    model: nn.Module, dtype: Optional[torch.dtype] = None, *, compile: bool = False
) -> InferenceModel:
    """An inference-only copy of `model` with the same detections, faster (see the module docstring).

    Args:
        model: a `FasterRCNNFPN` (any variant, any norm); not modified. The copy lives on its device.
        dtype: None or torch.float32 (exact: boxes within 1e-3 px of the eager model), torch.bfloat16 or
            torch.float16 for the convolutions and linear layers (anchors, box decoding, NMS stay float32).
            A dtype the device cannot run raises ValueError (`check_dtype`).
        compile: run the backbone and FPN through `torch.compile` (a long first call per input size).

    Returns:
        An `InferenceModel` in eval mode.
    """
    device = next(model.parameters()).device
    check_dtype(dtype, device)
    optimized = copy.deepcopy(model).eval()
    optimized.requires_grad_(False)
    folded = fold_norms(optimized)
    optimized.config.channels_last = True  # the model then hands the batch to the backbone in NHWC
    optimized.to(memory_format=torch.channels_last)
    if dtype in LOW_PRECISION:
        for module in optimized.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.to(dtype)  # only these: norms, anchors and box coders keep float32
    if compile:
        optimized.backbone = torch.compile(optimized.backbone)
        optimized.neck = torch.compile(optimized.neck)
    return InferenceModel(optimized, dtype if dtype in LOW_PRECISION else torch.float32, folded, compile)
