"""fpn/ops/resize.py: the bilinear resize of exported graphs gives PyTorch's CPU interpolation bit for bit."""
import pytest
import torch
import torch.nn.functional as F

from fpn.ops.resize import bilinear_resize


@pytest.mark.parametrize("in_size, out_size", [
    ((360, 500), (184, 256)),  # downscale by 0.512
    ((100, 200), (128, 256)),  # upscale
    ((16, 49), (83, 255)),  # tiny, far upscaled
    ((999, 1333), (800, 1067)),
    ((300, 300), (300, 300)),  # same size
    ((5, 7), (1, 1)),
])
def test_equals_interpolate_bit_for_bit(in_size, out_size):
    image = torch.rand(3, *in_size, generator=torch.Generator().manual_seed(in_size[0]))  # noise: sharpest edges
    expected = F.interpolate(image[None], size=out_size, mode="bilinear", align_corners=False)[0]
    found = bilinear_resize(image, out_size)
    assert found.dtype == torch.float32 and found.shape == expected.shape
    assert torch.equal(found, expected), (found - expected).abs().max()


def test_exported_program_keeps_sizes_symbolic_and_values_exact():
    class Resize(torch.nn.Module):
        def forward(self, image):
            return bilinear_resize(image, (image.shape[1] * 2, image.shape[2] // 2))

    height, width = torch.export.Dim("height", min=4, max=4096), torch.export.Dim("width", min=4, max=4096)
    program = torch.export.export(Resize(), (torch.rand(3, 40, 60),), dynamic_shapes=({1: height, 2: width},))
    image = torch.rand(3, 97, 131, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(image[None], size=(194, 65), mode="bilinear", align_corners=False)[0]
    assert torch.equal(program.module()(image), expected)
