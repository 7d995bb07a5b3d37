"""fpn/ops/resize.py: the bilinear resize of exported graphs samples where PyTorch's CPU interpolation samples.

Noise images (the sharpest edges) make any shift of a sampling point visible: sampling at (i + 0.5) / (out / in)
- 0.5, as ONNX Resize does, instead of PyTorch's (i + 0.5) * (in / out) - 0.5, changes pixels by up to 5e-5 on
the first case. The resize here stays within 2 float32 ulps of PyTorch's kernel (values in [0, 1]) with one
thread or two; the multi-threaded kernel blends exactly as it does (bit for bit on x86-64 with FMA), the
single-threaded one in another order.
"""
import pytest
import torch
import torch.nn.functional as F

from fpn.ops.resize import bilinear_resize

TWO_ULPS = 2.4e-7  # 2 * 2**-23: two float32 ulps of a value in [0.5, 1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("in_size, out_size", [
    ((360, 500), (184, 256)),  # downscale by 0.512
    ((100, 200), (128, 256)),  # upscale
    ((16, 49), (83, 255)),  # tiny, far upscaled
    ((999, 1333), (800, 1067)),
    ((300, 300), (300, 300)),  # same size
    ((5, 7), (1, 1)),
])
def test_samples_where_interpolate_samples(in_size, out_size, threads):
    image = torch.rand(3, *in_size, generator=torch.Generator().manual_seed(in_size[0]))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        expected = F.interpolate(image[None], size=out_size, mode="bilinear", align_corners=False)[0]
        found = bilinear_resize(image, out_size)
    finally:
        torch.set_num_threads(previous)
    assert found.dtype == torch.float32 and found.shape == expected.shape
    assert (found - expected).abs().max() <= TWO_ULPS


def test_exported_program_keeps_sizes_symbolic():
    class Resize(torch.nn.Module):
        def forward(self, image):
            return bilinear_resize(image, (image.shape[1] * 2, image.shape[2] // 2))

    height, width = torch.export.Dim("height", min=4, max=4096), torch.export.Dim("width", min=4, max=4096)
    program = torch.export.export(Resize(), (torch.rand(3, 40, 60),), dynamic_shapes=({1: height, 2: width},))
    image = torch.rand(3, 97, 131, generator=torch.Generator().manual_seed(0))
    expected = bilinear_resize(image, (194, 65))
    assert torch.equal(program.module()(image), expected)
    reference = F.interpolate(image[None], size=(194, 65), mode="bilinear", align_corners=False)[0]
    assert (expected - reference).abs().max() <= TWO_ULPS
