"""fpn.ops.BoxCoder against torchvision's BoxCoder and a hand-computed example."""
import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from fpn.ops import BoxCoder


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 80 + 1
    return torch.cat((xy, xy + wh), dim=1)


def test_encode_single_hand_computed():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    proposal = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size (10, 20)
    target = torch.tensor([[2.0, 4.0, 22.0, 24.0]])  # centre (12, 14), size (20, 20)
    expected = torch.tensor([[10 * 7 / 10, 10 * 4 / 20, 5 * math.log(2.0), 5 * math.log(1.0)]])
    torch.testing.assert_close(coder.encode_single(target, proposal), expected)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_match_torchvision(weights):
    ours, ref = BoxCoder(weights), TVBoxCoder(weights)
    gt = [_random_boxes(7, 0), _random_boxes(0, 1), _random_boxes(5, 2)]
    props = [_random_boxes(7, 3), _random_boxes(0, 4), _random_boxes(5, 5)]
    for a, b in zip(ours.encode(gt, props), ref.encode(gt, props)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    codes = torch.randn(12, 3 * 4, generator=torch.Generator().manual_seed(6)) * 3  # K = 3 classes
    decoded = ours.decode(codes, props)
    assert decoded.shape == (12, 3, 4)
    torch.testing.assert_close(decoded, ref.decode(codes, props), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(ours.decode_single(codes, torch.cat(props)),
                               ref.decode_single(codes, torch.cat(props)), rtol=1e-6, atol=1e-4)


def test_decode_inverts_encode():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    gt, props = _random_boxes(20, 7), _random_boxes(20, 8)
    torch.testing.assert_close(coder.decode_single(coder.encode_single(gt, props), props), gt, rtol=0, atol=1e-3)


def test_decode_clamps_large_log_sizes():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    decoded = coder.decode_single(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), box)
    # dw, dh clamped at log(1000 / 16): the box grows to 1000 x 1000 around its centre (8, 8)
    torch.testing.assert_close(decoded, torch.tensor([[-492.0, -492.0, 508.0, 508.0]]))


def test_decode_empty():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    assert coder.decode(torch.zeros(0, 8), [torch.zeros(0, 4)]).shape == (0, 2, 4)


def test_bad_inputs_raise():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="2 images"):
        coder.encode([torch.zeros(1, 4), torch.zeros(1, 4)], [torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="rows"):
        coder.decode(torch.zeros(3, 4), [torch.zeros(2, 4)])
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        coder.decode_single(torch.zeros(2, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        coder.encode_single(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="differ"):
        coder.encode_single(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="weights"):
        BoxCoder((1.0, 1.0, 1.0))
