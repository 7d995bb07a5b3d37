"""RoIAlign (He et al., Mask R-CNN, 2017) as a registered operator, with torchvision's signature and semantics.

`roi_align` checks its arguments and calls the operator `fpn::roi_align`; `RoIAlign` is the module form, a drop-in
for `torchvision.ops.RoIAlign`. The operator is registered with `torch.library` so that `torch.compile` and
`torch.export` see one node:

    fpn::roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width,
                   SymInt sampling_ratio, bool aligned) -> Tensor
    fpn::roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height,
                            SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width,
                            SymInt sampling_ratio, bool aligned, bool channels_last) -> Tensor

both with fake (meta) kernels; the second is the first's backward (registered with `register_autograd`). The
output is channels-last in memory; the input's gradient is contiguous, or channels-last for a channels-last input
(`channels_last`). No gradient flows to the boxes, as in torchvision. The computation itself is in
fpn/ops/roi_align_kernel.py (one Python code path for CPU, CUDA and MPS): no host sync for sampling_ratio > 0,
one per pass for adaptive sampling.
"""
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from fpn.ops.boxes import check_boxes
from fpn.ops.roi_align_kernel import roi_align_backward, roi_align_forward


def roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Pool a fixed-size feature for each box by bilinear sampling.

    Args:
        input: (N, C, H, W) float feature maps (float32/64, float16 or bfloat16). A low-precision map (as under
            autocast) is read as it is, with no float32 copy: the tap weights are rounded to its dtype (about one
            more rounding of the output) and its gradient is summed in float32, then rounded once.
        boxes: (K, 5) rows (batch_index, x1, y1, x2, y2), or a list of N (Ki, 4) tensors (x1, y1, x2, y2), one
            per image; in input-image pixels (multiplied by spatial_scale); any real dtype, on input's device.
        output_size: oh = ow, or (oh, ow).
        spatial_scale: feature pixels per box unit, e.g. 1/4 for a stride-4 map.
        sampling_ratio: samples per bin side; <= 0 means ceil(roi_size / output_size) per RoI (adaptive, which
            costs one host sync per pass to size the buffers; a fixed ratio costs none).
        aligned: shift the box by -0.5 pixel (pixel centres at half-integers).

    Returns:
        (K, C, oh, ow) pooled features in input's dtype (channels-last memory layout).
    """
    out_h, out_w = _check_output_size(output_size)
    if not isinstance(input, Tensor) or input.dim() != 4 or not input.is_floating_point():
        raise ValueError(f"input must be a float (N, C, H, W) tensor, got "
                         f"{getattr(input, 'dtype', type(input))} of shape {getattr(input, 'shape', '?')}")
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float)):
        raise ValueError(f"spatial_scale must be a number, got {spatial_scale!r}")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise ValueError(f"sampling_ratio must be an int, got {sampling_ratio!r}")
    if not isinstance(aligned, bool):
        raise ValueError(f"aligned must be a bool, got {aligned!r}")
    rois = as_rois(boxes, input.shape[0])
    if rois.device != input.device:
        raise ValueError(f"boxes are on {rois.device} but input is on {input.device}")
    return torch.ops.fpn.roi_align(input, rois, float(spatial_scale), out_h, out_w, sampling_ratio, aligned)


class RoIAlign(nn.Module):
    """Module form of `roi_align` (no parameters), a drop-in for `torchvision.ops.RoIAlign`."""

    def __init__(self, output_size: Union[int, Tuple[int, int]], spatial_scale: float, sampling_ratio: int,
                 aligned: bool = False):
        super().__init__()
        _check_output_size(output_size)
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        """See `roi_align`: (N, C, H, W) input, (K, 5) rois or N (Ki, 4) boxes -> (K, C, oh, ow)."""
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})")


def _check_output_size(output_size) -> Tuple[int, int]:
    if isinstance(output_size, int):
        size = (output_size, output_size)
    elif isinstance(output_size, (tuple, list)):
        size = tuple(output_size)
    else:
        size = ()
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"output_size must be a positive int or a pair of them, got {output_size!r}")
    return size


def as_rois(boxes: Union[Tensor, Sequence[Tensor]], num_images: int) -> Tensor:
    """(K, 5) rois (batch_index, x1, y1, x2, y2) from either accepted box format."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes as a tensor must have shape (K, 5), got {tuple(boxes.shape)}")
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise ValueError(f"boxes must be a (K, 5) tensor or a list of (Ki, 4) tensors, got {type(boxes).__name__}")
    if len(boxes) != num_images:
        raise ValueError(f"got boxes for {len(boxes)} images but input holds {num_images} images")
    for i, b in enumerate(boxes):
        check_boxes(b, f"boxes[{i}]")
        if b.dim() != 2:
            raise ValueError(f"boxes[{i}] must have shape (Ki, 4), got {tuple(b.shape)}")
    return torch.cat([torch.cat((torch.full_like(b[:, :1], i), b), dim=1) for i, b in enumerate(boxes)])


@torch.library.custom_op("fpn::roi_align", mutates_args=())
def _roi_align_op(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int,
                  sampling_ratio: int, aligned: bool) -> Tensor:
    return roi_align_forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


@_roi_align_op.register_fake
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    return torch.empty((rois.shape[0], input.shape[1], pooled_height, pooled_width), dtype=input.dtype,
                       device=input.device, memory_format=torch.channels_last)


@torch.library.custom_op("fpn::roi_align_backward", mutates_args=())
def _roi_align_backward_op(grad: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                           pooled_width: int, batch_size: int, channels: int, height: int, width: int,
                           sampling_ratio: int, aligned: bool, channels_last: bool) -> Tensor:
    return roi_align_backward(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height,
                              width, sampling_ratio, aligned, channels_last)


@_roi_align_backward_op.register_fake
def _roi_align_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height,
                             width, sampling_ratio, aligned, channels_last):
    return torch.empty((batch_size, channels, height, width), dtype=grad.dtype, device=grad.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    # the input's gradient comes back channels-last only for a channels-last input
    channels_last = not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last)
    ctx.args = (spatial_scale, pooled_height, pooled_width, *input.shape, sampling_ratio, aligned, channels_last)


def _backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = torch.ops.fpn.roi_align_backward(grad, rois, *ctx.args)
    return grad_input, None, None, None, None, None, None


torch.library.register_autograd("fpn::roi_align", _backward, setup_context=_setup_context)
