"""fpn.ops.group_norm.GroupNorm: nn.GroupNorm in float32, bf16/fp16 inputs normalised in float32 and returned in
their own dtype (also under CPU autocast, which leaves group_norm in the input's dtype)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fpn.ops.group_norm import GroupNorm


def _pair(seed=0):
    torch.manual_seed(seed)
    ours, reference = GroupNorm(4, 8), nn.GroupNorm(4, 8)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.5, 0.5)
    reference.load_state_dict(ours.state_dict())
    return ours, reference


def test_float32_is_nn_group_norm_exactly_forward_and_backward():
    ours, reference = _pair()
    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = ours(a), reference(b)
    assert torch.equal(out, expected)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    assert torch.equal(a.grad, b.grad) and torch.equal(ours.weight.grad, reference.weight.grad)
    assert isinstance(ours, nn.GroupNorm) and list(ours.state_dict()) == ["weight", "bias"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_is_normalised_in_float32(dtype):
    ours, _ = _pair()
    x = (torch.randn(2, 8, 5, 6) * 30 + 100).to(dtype).requires_grad_()  # a large mean: bf16 statistics would drift
    out = ours(x)
    expected = F.group_norm(x.detach().float(), 4, ours.weight, ours.bias, ours.eps).to(dtype)
    assert out.dtype == dtype and torch.equal(out, expected)
    out.float().sum().backward()
    assert x.grad.dtype == dtype and ours.weight.grad.dtype == torch.float32
    assert torch.isfinite(x.grad.float()).all()


def test_under_cpu_autocast_the_bf16_maps_of_a_conv_stay_bf16():
    conv, norm = nn.Conv2d(3, 8, 3, padding=1), _pair()[0]
    x = torch.randn(1, 3, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        out = norm(y)
    assert y.dtype == out.dtype == torch.bfloat16
    assert torch.equal(out, F.group_norm(y.float(), 4, norm.weight, norm.bias, norm.eps).to(torch.bfloat16))
