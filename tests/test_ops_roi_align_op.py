"""fpn::roi_align as an operator: opcheck, torch.compile and torch.export without graph breaks, no host syncs
with a fixed sampling ratio, and the RoIAlign module against torchvision's."""
import pytest
import torch
import torchvision
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from fpn.ops.host_sync import HostSyncCounter
from fpn.ops import RoIAlign, roi_align

def _inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 3, 9, 11, generator=g, dtype=dtype)
    # (x1, y1, x2, y2) in input pixels, spatial scale 0.5: inside, across the border, outside, empty
    boxes = [torch.tensor([[2.0, 2.0, 12.0, 10.0], [-6.0, -4.0, 8.0, 40.0], [30.0, 1.0, 33.0, 3.0]], dtype=dtype),
             torch.tensor([[1.0, 4.0, 18.0, 16.0], [5.0, 5.0, 5.0, 5.0]], dtype=dtype)]
    return features, boxes


def _rois(boxes):
    return torch.cat([torch.cat((torch.full_like(b[:, :1], i), b), dim=1) for i, b in enumerate(boxes)])


@pytest.mark.parametrize("box_form", ["list", "rois"])
def test_no_host_sync_with_fixed_sampling_ratio(box_form):
    # HostSyncCounter runs the fpn:: kernels inside itself (the adaptive test below shows it sees their syncs)
    features, boxes = _inputs()
    features.requires_grad_()
    with HostSyncCounter() as counter:
        out = roi_align(features, boxes if box_form == "list" else _rois(boxes), (3, 4), 0.5, 2, True)
        out.square().sum().backward()
    assert counter.total == 0, counter.report()


def test_adaptive_sampling_syncs_once_per_pass():
    features, boxes = _inputs()
    features.requires_grad_()
    with HostSyncCounter() as counter:
        roi_align(features, boxes, (3, 4), 0.5, -1).sum().backward()
    assert dict(counter.by_op) == {"Tensor.tolist": 2}, counter.report()  # the per-RoI grids, forward and backward


@pytest.mark.parametrize("dtype, ratio, aligned, layout", [
    (torch.float32, 2, False, torch.contiguous_format),
    (torch.float32, -1, True, torch.channels_last),
    (torch.float64, 2, True, torch.channels_last),
    (torch.float64, 0, False, torch.contiguous_format),
])
def test_opcheck_forward(dtype, ratio, aligned, layout):
    features, boxes = _inputs(dtype)
    features = features.to(memory_format=layout).requires_grad_()
    for rois in (_rois(boxes), _rois(boxes)[:0]):  # some RoIs, none
        torch.library.opcheck(torch.ops.fpn.roi_align.default, (features, rois, 0.5, 3, 4, ratio, aligned))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_backward(dtype, channels_last):
    _, boxes = _inputs(dtype)
    grad = torch.randn(5, 3, 3, 4, dtype=dtype, generator=torch.Generator().manual_seed(1))
    torch.library.opcheck(torch.ops.fpn.roi_align_backward.default,
                          (grad, _rois(boxes), 0.5, 3, 4, 2, 3, 9, 11, 2, False, channels_last))


@pytest.mark.parametrize("box_form", ["list", "rois"])
def test_no_graph_break(box_form):
    features, boxes = _inputs()
    boxes = boxes if box_form == "list" else _rois(boxes)
    explanation = torch._dynamo.explain(lambda x, b: roi_align(x, b, 3, 0.5, 2).relu())(features, boxes)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_compiled_forward_and_backward_match_eager_and_carry_the_ops():
    graphs = {}

    def keep(name):
        def compiler(graph_module, example_inputs):
            graphs[name] = str(graph_module.graph)
            return make_boxed_func(graph_module.forward)
        return compiler

    def pool(x, boxes):
        return roi_align(x, boxes, (3, 4), 0.5, 2, True).square()

    features, boxes = _inputs()
    eager_in, compiled_in = features.clone().requires_grad_(), features.clone().requires_grad_()
    compiled = torch.compile(pool, backend=aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward")),
                             fullgraph=True)
    expected, out = pool(eager_in, boxes), compiled(compiled_in, boxes)
    expected.sum().backward()
    out.sum().backward()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(compiled_in.grad, eager_in.grad, rtol=0, atol=0)
    assert "fpn.roi_align.default" in graphs["forward"]
    assert "fpn.roi_align_backward.default" in graphs["backward"]


def test_export_carries_the_op():
    features, boxes = _inputs()
    exported = torch.export.export(RoIAlign((3, 4), 0.5, 2), (features, _rois(boxes)))
    assert "torch.ops.fpn.roi_align.default" in exported.graph_module.code
    torch.testing.assert_close(exported.module()(features, _rois(boxes)), roi_align(features, boxes, (3, 4), 0.5, 2))


def test_no_gradient_to_the_boxes():
    features, boxes = _inputs()
    features.requires_grad_()
    boxes = [b.requires_grad_() for b in boxes]
    roi_align(features, boxes, 3, 0.5, 2).sum().backward()
    assert features.grad is not None and all(b.grad is None for b in boxes)


@pytest.mark.parametrize("output_size, scale, ratio, aligned", [(3, 0.5, 2, False), ((2, 5), 0.25, -1, True)])
def test_module_matches_torchvision(output_size, scale, ratio, aligned):
    features, boxes = _inputs()
    ours_in, ref_in = features.clone().requires_grad_(), features.clone().requires_grad_()
    ours_module = RoIAlign(output_size, scale, ratio, aligned)
    ref_module = torchvision.ops.RoIAlign(output_size, scale, ratio, aligned)
    assert repr(ours_module) == repr(ref_module) and list(ours_module.parameters()) == []
    ours, ref = ours_module(ours_in, _rois(boxes)), ref_module(ref_in, _rois(boxes))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    (ours * grad_out).sum().backward()
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-5)
