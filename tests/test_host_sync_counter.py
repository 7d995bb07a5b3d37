"""fpn.ops.host_sync.HostSyncCounter: exact counts of the ops that would synchronise the host with a CUDA device."""
import inspect

import pytest
import torch
import torchvision

from fpn.ops.host_sync import HostSyncCounter, _short_path, syncs_of_op


@torch.library.custom_op("hostsynctest::positives", mutates_args=())
def _positives(x: torch.Tensor) -> torch.Tensor:
    """A Python custom op that reads its input on the host (one .item()) to size its output."""
    return x.new_zeros(int((x > 0).sum().item()))


@_positives.register_fake
def _(x):
    return x.new_empty(torch.library.get_ctx().new_dynamic_size())


def _count(fn, namespaces=("fpn",)) -> HostSyncCounter:
    with HostSyncCounter(custom_op_namespaces=namespaces) as counter:
        fn()
    return counter


x = torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0])
mask = x > 0
ints = torch.tensor([3, 1, 3, 0])


@pytest.mark.parametrize(
    "name, fn, expected",
    [
        ("item", lambda: x.sum().item(), 1),
        ("int", lambda: int(ints.max()), 1),
        ("float", lambda: float(x.sum()), 1),
        ("bool", lambda: bool(mask.any()), 1),
        ("if tensor", lambda: 1 if x.sum() > 0 else 0, 1),
        ("tensor as a Python index", lambda: [0, 1, 2, 3][ints[1]], 1),
        ("nonzero", lambda: torch.nonzero(mask), 1),
        ("where(mask)", lambda: torch.where(mask), 1),
        ("argwhere", lambda: torch.argwhere(mask), 1),
        ("unique", lambda: torch.unique(ints), 1),
        ("unique dim", lambda: torch.unique(ints[:, None], dim=0), 1),
        ("unique_consecutive", lambda: torch.unique_consecutive(ints), 1),
        ("masked_select", lambda: x.masked_select(mask), 1),
        ("equal", lambda: torch.equal(x, x), 1),
        ("allclose", lambda: torch.allclose(x, x), 1),
        ("bool-mask index", lambda: x[mask], 1),
        ("bool-mask assign", lambda: x.clone().__setitem__(mask, 0.0), 1),
        ("bool-mask update", lambda: x.clone().__setitem__(mask, x[mask] + 1), 2),
        ("index_put_ with a mask", lambda: x.clone().index_put_((mask,), torch.tensor(1.0)), 1),
        ("repeat_interleave(tensor)", lambda: torch.repeat_interleave(ints), 2),
        ("repeat_interleave(x, tensor)", lambda: x[:4].repeat_interleave(ints), 2),
        ("bincount", lambda: torch.bincount(ints), 2),
        ("bincount uint8", lambda: torch.bincount(ints.to(torch.uint8)), 1),
        ("bincount empty", lambda: torch.bincount(ints[:0]), 0),
        ("histc without range", lambda: torch.histc(x), 2),
        ("tolist", lambda: x.tolist(), 1),
        ("numpy", lambda: x.numpy(), 1),
        ("torchvision nms", lambda: torchvision.ops.nms(torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5]]), x[:2], 0.5), 1),
    ],
)
def test_each_syncing_op_counts_exactly(name, fn, expected):
    assert _count(fn).total == expected, name


@pytest.mark.parametrize(
    "name, fn",
    [
        ("topk", lambda: x.topk(2)),
        ("sort", lambda: torch.sort(x, stable=True)),
        ("argsort", lambda: x.argsort()),
        ("index_select", lambda: x.index_select(0, ints)),
        ("long index", lambda: x[ints]),
        ("long index assign", lambda: x.clone().__setitem__(ints, 0.0)),
        ("where(cond, a, b)", lambda: torch.where(mask, x, 0.0)),
        ("masked_fill", lambda: x.masked_fill(mask, 0.0)),
        ("nonzero_static", lambda: torch.nonzero_static(mask, size=3)),
        ("reductions", lambda: (x.sum(), x.max(), mask.any(), mask.sum(), x.argmax())),
        ("cumsum and searchsorted", lambda: torch.searchsorted(x.sort().values, x.cumsum(0))),
        ("gather and scatter", lambda: x.gather(0, ints).scatter(0, ints, x[:4])),
        ("repeat_interleave with output_size", lambda: torch.repeat_interleave(ints, output_size=7)),
        ("repeat_interleave(int)", lambda: x.repeat_interleave(2)),
        ("histc with a range", lambda: torch.histc(x, bins=4, min=-1, max=3)),
        ("randperm", lambda: torch.randperm(10)),
        ("dtype conversion", lambda: x.to(torch.float64)),
        ("shape arithmetic", lambda: x.new_zeros(x.shape[0] * 2)),
    ],
)
def test_sync_free_code_counts_nothing(name, fn):
    counter = _count(fn)
    assert counter.total == 0, (name, counter.report())


def test_copies_between_host_and_device_are_judged_by_device():
    # A CPU-only machine cannot run a device-to-host copy; the rule is checked on meta tensors.
    on_device = torch.empty(3, device="meta")
    assert syncs_of_op("aten._to_copy", (on_device,), {"device": torch.device("cpu")}) == 1
    assert syncs_of_op("aten._to_copy", (on_device,), {"device": torch.device("cpu"), "non_blocking": True}) == 0
    assert syncs_of_op("aten._to_copy", (x,), {"device": torch.device("meta")}) == 1
    assert syncs_of_op("aten._to_copy", (x,), {"dtype": torch.float64}) == 0
    assert syncs_of_op("aten.copy_", (x.clone(), on_device), {}) == 1
    assert syncs_of_op("aten.copy_", (x.clone(), x), {}) == 0


def test_custom_op_implementation_is_counted_inside():
    inside = _count(lambda: _positives(x), namespaces=("hostsynctest",))
    assert inside.total == 1 and inside.by_op["aten.item"] + inside.by_op["aten._local_scalar_dense"] == 1
    (_, site), = inside.by_site
    assert "_positives" in site  # the line inside the op's implementation
    with HostSyncCounter(custom_op_namespaces=("hostsynctest",)):
        assert _positives(x).shape == (3,)  # the op's result is unchanged
    assert _count(lambda: _positives(x), namespaces=()).total == 0  # opaque when its namespace is not listed


def test_torchvision_roi_align_forward_and_backward_count_nothing():
    features = torch.rand(1, 2, 8, 8, requires_grad=True)
    rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 6.0]])

    def pool_and_backward():
        torchvision.ops.roi_align(features, rois, 2, 1.0, 2, True).sum().backward()

    assert _count(pool_and_backward).total == 0


def test_breakdown_by_op_and_site():
    line = inspect.currentframe().f_lineno + 2
    with HostSyncCounter() as counter:
        x[mask].sum().item()
    assert counter.by_op == {"aten.index": 1, "aten._local_scalar_dense": 1}
    assert counter.by_site[("aten.index", f"tests/test_host_sync_counter.py:{line} test_breakdown_by_op_and_site")] == 1
    assert counter.report().startswith("2 host syncs")


@pytest.mark.parametrize("filename, short", [
    ("/x/fpn/tests/test_host_sync_counter.py", "tests/test_host_sync_counter.py"),  # a clone called fpn
    ("/x/fpn/fpn/ops/nms.py", "fpn/ops/nms.py"),
    ("/x/fpn/fpn/heads/rpn.py", "fpn/heads/rpn.py"),
    ("/x/fpn/.venv/lib/python3.11/site-packages/torchvision/ops/boxes.py", "torchvision/ops/boxes.py"),
    ("/home/a user/clone dir/fpn/tests/t.py", "tests/t.py"),
    ("/home/a user/clone dir/fpn/scripts/train.py", "scripts/train.py"),
    ("/home/a user/clone dir/fpn/benchmarks/training_profile.py", "benchmarks/training_profile.py"),
    ("/work/main/benchmarks/training_profile.py", "benchmarks/training_profile.py"),
    ("/srv/tests/fpn/fpn/data/coco.py", "fpn/data/coco.py"),
    ("/work/main/fpn/predict.py", "fpn/predict.py"),
    ("/home/me/notebook.py", "notebook.py"),
    ("/home/me/fpn", "fpn"),  # a file called fpn: no folder to cut at
])
def test_short_path_starts_at_the_package_folder_nearest_the_file(filename, short):
    assert _short_path(filename) == short


def test_site_in_a_clone_called_fpn_inside_a_path_with_a_space():
    # code compiled under the file name it would have in `git clone ... "clone dir/fpn"`
    code = compile("def issue():\n    return x[mask]\n", "/home/a user/clone dir/fpn/tests/t.py", "exec")
    namespace = {"x": x, "mask": mask}
    exec(code, namespace)
    with HostSyncCounter() as counter:
        namespace["issue"]()
    assert list(counter.by_site) == [("aten.index", "tests/t.py:2 issue")]


def test_tolist_and_numpy_are_restored_even_after_an_error():
    tolist, numpy = torch.Tensor.tolist, torch.Tensor.numpy
    with pytest.raises(RuntimeError, match="boom"):
        with HostSyncCounter():
            raise RuntimeError("boom")
    assert torch.Tensor.tolist is tolist and torch.Tensor.numpy is numpy
    assert _count(lambda: None).total == 0
