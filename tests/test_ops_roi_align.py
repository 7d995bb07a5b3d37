"""fpn.ops.roi_align against torchvision.ops.roi_align: forward and gradients, every sampling convention."""
import pytest
import torch
import torchvision

from fpn.ops import roi_align, roi_align_kernel


def _boxes(n: int, height: int, width: int, scale: float, seed: int) -> torch.Tensor:
    """Boxes in input pixels around a (height, width) map of the given scale, some partly or fully outside."""
    g = torch.Generator().manual_seed(seed)
    extent = torch.tensor([width, height]) / scale
    centre = torch.rand(n, 2, generator=g) * extent * 1.3 - 0.15 * extent
    size = torch.exp(torch.rand(n, 2, generator=g) * 3.5) / scale * 0.4
    boxes = torch.cat((centre - size / 2, centre + size / 2), dim=1)
    boxes[0] = torch.cat((extent + 5, extent + 9))  # fully outside, below right
    boxes[1] = torch.tensor([-9.0, -8.0, -1.5, -1.2]) / scale  # fully outside, above left
    boxes[2] = torch.tensor([3.0, 2.0, 3.0, 2.0])  # empty box
    return boxes


def _compare(boxes, output_size, scale, ratio, aligned, dtype=torch.float32, tol=1e-5, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 3, 11, 14, generator=g, dtype=dtype)
    ours_in, ref_in = features.clone().requires_grad_(), features.clone().requires_grad_()
    boxes = [b.to(dtype) for b in boxes] if isinstance(boxes, list) else boxes.to(dtype)
    ours = roi_align(ours_in, boxes, output_size, scale, ratio, aligned)
    ref = torchvision.ops.roi_align(ref_in, boxes, output_size, scale, ratio, aligned)
    assert ours.shape == ref.shape and ours.dtype == dtype
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    grad_out = torch.randn(ref.shape, generator=g, dtype=dtype)
    (ours * grad_out).sum().backward()
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_box_list_matches_torchvision(aligned, ratio, scale):
    boxes = [_boxes(7, 11, 14, scale, 1), _boxes(5, 11, 14, scale, 2)]
    _compare(boxes, (7, 7), scale, ratio, aligned)


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_tensor_and_rectangular_output_match_torchvision(aligned):
    boxes = _boxes(9, 11, 14, 0.5, 3)
    rois = torch.cat((torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1.0])[:, None], boxes), dim=1)
    _compare(rois, (2, 5), 0.5, -1, aligned)


def test_float64_matches_torchvision_tightly():
    boxes = [_boxes(6, 11, 14, 1.0, 4), _boxes(6, 11, 14, 1.0, 5)]
    _compare(boxes, 4, 1.0, -1, False, dtype=torch.float64, tol=1e-10)


def test_linear_ramp_exact():
    # f(y, x) = x: every sample returns its x coordinate (inside the map), so a bin returns its mean sample x
    ramp = torch.arange(6.0).expand(1, 1, 4, 6).contiguous()
    out = roi_align(ramp, [torch.tensor([[1.0, 0.0, 5.0, 4.0]])], (1, 2), 1.0, 1, False)
    assert out.tolist() == [[[[2.0, 4.0]]]]  # bins [1, 3] and [3, 5], one sample at each bin centre
    out = roi_align(ramp, [torch.tensor([[1.0, 0.0, 5.0, 4.0]])], (1, 2), 1.0, 1, True)
    assert out.tolist() == [[[[1.5, 3.5]]]]  # aligned: shifted by half a pixel


def test_outside_samples_are_zero_and_border_samples_clamp():
    ones = torch.ones(1, 2, 5, 5)
    boxes = [torch.tensor([[20.0, 20.0, 30.0, 30.0], [3.5, 3.5, 5.5, 5.5]])]
    out = roi_align(ones, boxes, 2, 1.0, 2)
    assert torch.equal(out[0], torch.zeros(2, 2, 2))
    # samples at 3.75, 4.25 | 4.75, 5.25 per axis: 4.75 clamps to the last pixel, 5.25 > 5 counts as 0
    assert torch.equal(out[1], torch.tensor([[1.0, 0.5], [0.5, 0.25]]).expand(2, 2, 2))
    assert torch.equal(out, torchvision.ops.roi_align(ones, boxes, 2, 1.0, 2))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_many_channels_and_both_layouts_match_torchvision(layout):
    """130 channels: the input gradient is summed in passes of 64, 64 and 2 channels; it comes back in the input's
    layout (a channels-last map is read without a copy)."""
    g = torch.Generator().manual_seed(6)
    features = torch.randn(2, 130, 9, 10, generator=g).to(memory_format=layout)
    ours_in, ref_in = features.clone().requires_grad_(), features.clone().requires_grad_()
    boxes = [_boxes(5, 9, 10, 1.0, 7), _boxes(3, 9, 10, 1.0, 8)]
    ours, ref = roi_align(ours_in, boxes, 3, 1.0, 2), torchvision.ops.roi_align(ref_in, boxes, 3, 1.0, 2)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(ref.shape, generator=g)
    (ours * grad_out).sum().backward()
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-5)
    assert ours_in.grad.is_contiguous(memory_format=layout)


# unit roundoff of each low-precision dtype
ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_against_float32(dtype):
    """A bf16/fp16 map (as under autocast) is read in its own dtype. Against float32 on the same rounded inputs:
    each output is the float32 value rounded (<= u |ref|) plus the rounding of the tap weights (<= u per weight,
    weights summing to <= 1: <= u max|input|). The input gradient is summed in float32 and rounded once
    (<= u |ref|, with float32's summation-order noise); 300 RoIs over one 10 x 12 map send hundreds of terms to
    each pixel, which a sum kept in the low dtype would not survive (embedding_bag's own backward on the same
    taps is off by 22 u in bfloat16, 14 u in float16)."""
    g = torch.Generator().manual_seed(9)
    features = torch.randn(1, 4, 10, 12, generator=g).to(dtype)
    boxes = [torch.cat([_boxes(100, 10, 12, 1.0, seed) for seed in (10, 11, 12)])]  # float32 boxes, as under autocast
    low, ref = features.clone().requires_grad_(), features.float().requires_grad_()
    out, expected = roi_align(low, boxes, 3, 1.0, 2), roi_align(ref, boxes, 3, 1.0, 2)
    assert out.dtype == dtype
    u = ROUNDOFF[dtype]
    torch.testing.assert_close(out.float(), expected, rtol=u, atol=u * features.abs().max().item())
    grad_out = (torch.rand(out.shape, generator=g) + 0.5).to(dtype)  # positive: the sums grow
    out.backward(grad_out)
    expected.backward(grad_out.float())
    assert low.grad.dtype == dtype and ref.grad.max() > 20
    torch.testing.assert_close(low.grad.float(), ref.grad, rtol=u, atol=1e-4)


def test_one_roi_and_many_rois_in_chunks(monkeypatch):
    """One RoI; then 300 RoIs split into chunks of ~25 (fixed ratio) or by tap count (adaptive), same results."""
    for ratio in (2, -1):
        _compare([_boxes(4, 11, 14, 1.0, 13)[3:], torch.zeros(0, 4)], 2, 1.0, ratio, False)
    many = [_boxes(150, 11, 14, 0.5, 14), _boxes(150, 11, 14, 0.5, 15)]
    expected = {ratio: roi_align(torch.ones(2, 3, 11, 14), many, 7, 0.5, ratio) for ratio in (2, -1)}
    monkeypatch.setattr(roi_align_kernel, "TAPS_PER_CHUNK", 25 * 7 * 7 * 16)
    rois = torch.cat((torch.arange(2.0).repeat_interleave(150)[:, None], torch.cat(many)), dim=1)
    for ratio, chunks in ((2, 12), (-1, 6)):
        sampling = roi_align_kernel.Sampling(11, 14, 7, 7, 0.5, ratio, False)
        assert len(roi_align_kernel.plan_chunks(rois, sampling)[1]) == chunks
    for ratio in (2, -1):
        _compare(many, 7, 0.5, ratio, False)
        assert torch.equal(roi_align(torch.ones(2, 3, 11, 14), many, 7, 0.5, ratio), expected[ratio])


def test_float64_boxes_on_float32_input():
    features = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(11))
    boxes = _boxes(5, 8, 8, 1.0, 12)
    expected = torchvision.ops.roi_align(features, [boxes], 2, 1.0, 2)
    torch.testing.assert_close(roi_align(features, [boxes.double()], 2, 1.0, 2), expected, rtol=1e-6, atol=1e-6)


def test_empty_boxes():
    features = torch.randn(2, 3, 6, 6)
    assert roi_align(features, [torch.zeros(0, 4), torch.zeros(0, 4)], 7).shape == (0, 3, 7, 7)
    assert roi_align(features, torch.zeros(0, 5), (2, 3)).shape == (0, 3, 2, 3)


def test_bad_inputs_raise():
    features = torch.zeros(1, 2, 4, 4)
    box = [torch.tensor([[0.0, 0.0, 2.0, 2.0]])]
    for size in (0, (7,), (3, -1), "7", 2.5):
        with pytest.raises(ValueError, match="output_size"):
            roi_align(features, box, size)
    with pytest.raises(ValueError, match=r"\(K, 5\)"):
        roi_align(features, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="2 images"):
        roi_align(features, box * 2, 2)
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        roi_align(features, [torch.zeros(2, 5)], 2)
    with pytest.raises(ValueError, match="N, C, H, W"):
        roi_align(torch.zeros(2, 4, 4), box, 2)
    with pytest.raises(ValueError, match="torch.int64"):
        roi_align(torch.zeros(1, 2, 4, 4, dtype=torch.int64), box, 2)
    with pytest.raises(ValueError, match="spatial_scale must be a number, got '1'"):
        roi_align(features, box, 2, "1")
    with pytest.raises(ValueError, match="sampling_ratio must be an int, got 2.0"):
        roi_align(features, box, 2, 1.0, 2.0)
    with pytest.raises(ValueError, match="aligned must be a bool, got 1"):
        roi_align(features, box, 2, 1.0, 2, 1)
    with pytest.raises(ValueError, match="boxes are on cpu but input is on meta"):
        roi_align(features.to("meta"), box, 2)
