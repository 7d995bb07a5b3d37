"""fpn::roi_align as an operator: opcheck, torch.compile and torch.export without graph breaks, no host syncs
with a fixed sampling ratio, and the RoIAlign module against torchvision's."""
import pytest
import torch
import torchvision
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch.utils._python_dispatch import TorchDispatchMode

from fpn.ops import RoIAlign, roi_align
from fpn.ops.roi_align_kernel import roi_align_backward, roi_align_forward

aten = torch.ops.aten
# ops that make the host wait for a CUDA device every time (the value or the output size is read back)
ALWAYS_SYNC = {aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.nonzero, aten.argwhere, aten.equal,
               aten.allclose, aten.masked_select}
# ops that do when they are given a boolean mask as an index (a nonzero inside)
MASK_INDEXED = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
FPN_KERNELS = {"fpn.roi_align.default": roi_align_forward, "fpn.roi_align_backward.default": roi_align_backward}


class SyncCounter(TorchDispatchMode):
    """Record the ops that would force a device-to-host sync on CUDA, while the context is open (on any device).

    `syncs` lists them by name, `seen` lists every op. Tensor.tolist does not dispatch, so it is patched for the
    duration. The fpn:: operators' Python kernels are run inside the mode: a mode is switched off while its
    handler runs, so the ops of a custom op's implementation would otherwise go unseen.
    """

    def __init__(self):
        super().__init__()
        self.syncs, self.seen, self._depth = [], [], 0

    def __enter__(self):
        if self._depth == 0:  # the outermost entry (the handler re-enters for the fpn:: kernels)
            original = self._tolist = torch.Tensor.tolist

            def counted_tolist(tensor):
                self.syncs.append("Tensor.tolist")
                return original(tensor)

            torch.Tensor.tolist = counted_tolist
        self._depth += 1
        return super().__enter__()

    def __exit__(self, *exc_info):
        self._depth -= 1
        if self._depth == 0:
            torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc_info)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.seen.append(str(func))
        if _forces_sync(func, args, kwargs):
            self.syncs.append(str(func))
        if str(func) in FPN_KERNELS:
            with self:
                return FPN_KERNELS[str(func)](*args, **kwargs)
        return func(*args, **kwargs)


def _forces_sync(func, args, kwargs) -> bool:
    packet = func.overloadpacket
    if packet in ALWAYS_SYNC or packet.__name__.lstrip("_").startswith("unique"):
        return True
    if packet in MASK_INDEXED:
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])
    if packet is aten.repeat_interleave:  # the output size is read back unless given
        return func._overloadname != "self_int" and kwargs.get("output_size") is None
    return False


def _inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 3, 9, 11, generator=g, dtype=dtype)
    # (x1, y1, x2, y2) in input pixels, spatial scale 0.5: inside, across the border, outside, empty
    boxes = [torch.tensor([[2.0, 2.0, 12.0, 10.0], [-6.0, -4.0, 8.0, 40.0], [30.0, 1.0, 33.0, 3.0]], dtype=dtype),
             torch.tensor([[1.0, 4.0, 18.0, 16.0], [5.0, 5.0, 5.0, 5.0]], dtype=dtype)]
    return features, boxes


def _rois(boxes):
    return torch.cat([torch.cat((torch.full_like(b[:, :1], i), b), dim=1) for i, b in enumerate(boxes)])


def test_counter_flags_syncs():  # the control: the tests below could otherwise pass vacuously
    x = torch.tensor([0.5, -1.0, 2.0])
    assert torch.Tensor.tolist is torch._C.TensorBase.tolist
    with SyncCounter() as counter:
        x[x > 0], x.nonzero(), torch.unique(x), x.max().item(), x.tolist(), x.repeat_interleave(torch.tensor([1, 2, 0]))
        x[torch.tensor([0, 2])], x.repeat_interleave(2), x.sort()  # long index, int repeats: no sync
    assert counter.syncs == ["aten.index.Tensor", "aten.nonzero.default", "aten._unique2.default",
                             "aten._local_scalar_dense.default", "Tensor.tolist", "aten.repeat_interleave.Tensor"]
    assert torch.Tensor.tolist is torch._C.TensorBase.tolist  # restored


@pytest.mark.parametrize("box_form", ["list", "rois"])
def test_no_host_sync_with_fixed_sampling_ratio(box_form):
    features, boxes = _inputs()
    features.requires_grad_()
    with SyncCounter() as counter:
        out = roi_align(features, boxes if box_form == "list" else _rois(boxes), (3, 4), 0.5, 2, True)
        out.square().sum().backward()
    assert counter.syncs == []
    assert "fpn.roi_align.default" in counter.seen and "fpn.roi_align_backward.default" in counter.seen
    kernel_ops = [op for op in counter.seen if "embedding_bag" in op or op.startswith("aten.sort")]
    assert len(kernel_ops) == 3  # the kernels ran inside the counter: one bag sum forward, sort and sum backward


def test_adaptive_sampling_syncs_once_per_pass():
    features, boxes = _inputs()
    features.requires_grad_()
    with SyncCounter() as counter:
        roi_align(features, boxes, (3, 4), 0.5, -1).sum().backward()
    assert counter.syncs == ["Tensor.tolist", "Tensor.tolist"]  # the per-RoI grids, forward and backward


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
