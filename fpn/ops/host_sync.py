"""Count the operations that would make the host wait for an accelerator (device-to-host synchronisations).

On CUDA, an op whose result size or value must be known on the host (`.item()`, `nonzero`, boolean-mask
indexing, ...) blocks the Python thread until every kernel queued before it has run: the GPU then idles while
Python catches up. `HostSyncCounter` counts these ops on any device, the CPU included, by intercepting every
ATen call with a `TorchDispatchMode` and judging each call as if its tensors lived on a CUDA device:

    >>> import torch
    >>> from fpn.ops.host_sync import HostSyncCounter
    >>> x = torch.tensor([0.5, -1.0, 2.0])
    >>> with HostSyncCounter() as counter:
    ...     positive = x[x > 0]      # boolean-mask index: a nonzero inside the kernel
    ...     largest = x.max().item()
    >>> counter.total, dict(counter.by_op)
    (2, {'aten.index': 1, 'aten._local_scalar_dense': 1})

`counter.by_site` says where each sync was issued (the innermost Python frame outside torch and the standard
library, e.g. `fpn/heads/rpn.py:140 select_proposals`), and `counter.report()` prints both tables.

What is seen. A dispatch mode sees the ops that reach the dispatcher from Python, not those a kernel calls
internally: a kernel's own host reads are judged from its source (the table and rules below, each with the
CUDA source it comes from). The ops of a custom-op namespace listed in `custom_op_namespaces` (`fpn` by default)
are pure-Python operators whose implementation the mode would otherwise not enter; their implementation is run
inside the mode so that its syncs are counted like any other code. torchvision's compiled operators are judged
by what their CUDA kernels do.

Limits. A CPU tensor that would also be a CPU tensor in a CUDA run (e.g. a random draw made with
`torch.empty(1).uniform_()`) is counted all the same: on a CPU run every tensor stands for a device tensor.
Blocking host-to-device copies of Python data (`torch.tensor(data, device="cuda")`) also wait for the stream
(`memcpy_and_sync`), but on a CPU run no copy happens, so they cannot be seen; a real host-to-device `_to_copy`
is counted. `Tensor.tolist()` and `Tensor.numpy()` do not dispatch for CPU tensors, so they are patched on
`torch.Tensor` for the duration of the context (process-wide; the mode itself is per thread). Ops of other
libraries (linalg's error checks, torch.distributed, sparse tensors) are not covered.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any, Callable, Dict, Iterable, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that read device memory on the host every time they run, with the number of reads. Sources are the CUDA
# kernels of PyTorch (aten/src/ATen/native/cuda/*) and torchvision (torchvision/csrc/ops/cuda/*); a read is
# `at::cuda::memcpy_and_sync` (cudaMemcpyAsync + cudaStreamSynchronize), which is also what
# `torch.cuda.set_sync_debug_mode("warn")` reports.
ALWAYS_SYNC: Dict[str, int] = {
    # .item(), int(t), float(t), bool(t), `if t:`, a 0-dim tensor used as a Python index: CUDAScalar.cu copies
    # the value to the host. Depending on the autograd state the mode sees the composite op or the kernel.
    "aten._local_scalar_dense": 1,
    "aten.item": 1,
    "aten.is_nonzero": 1,
    # Output size known only after counting: Nonzero.cu copies the count of nonzeros to the host.
    # (torch.where(mask) and argwhere decompose into nonzero.)
    "aten.nonzero": 1,
    "aten.argwhere": 1,
    # The number of distinct values sizes the output (Unique.cu / UniqueCub.cu read it back).
    "aten._unique": 1,
    "aten._unique2": 1,
    "aten.unique_dim": 1,
    "aten.unique_consecutive": 1,
    "aten.unique_dim_consecutive": 1,
    # masked_select is an index with the mask: a nonzero inside (IndexKernel.cu).
    "aten.masked_select": 1,
    # cuda_equal: `at::eq(self, other).all().item()`; allclose: `isclose(...).all().item()`.
    "aten.equal": 1,
    "aten.allclose": 1,
}

# torchvision's compiled operators, by what their CUDA kernels do (torchvision/csrc/ops/cuda/).
TORCHVISION_SYNCS: Dict[str, int] = {
    # nms_kernel.cu copies the (N, N/64) suppression bit mask to the host (`mask.to(at::kCPU)`) and runs the
    # greedy pass there; the kept indices go back with a blocking copy while the stream is already idle, so
    # only the first copy waits for queued work: counted as one.
    "torchvision.nms": 1,
    # roi_align_kernel.cu (forward and backward) launch with sizes known on the host: no read.
    "torchvision.roi_align": 0,
    "torchvision._roi_align_backward": 0,
}

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_STDLIB_DIR = os.path.dirname(os.__file__) + os.sep
_PACKAGE_FOLDERS = ("fpn", "torchvision", "tests", "scripts", "benchmarks")  # where a site's short path starts
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS", "xpu": "XPU", "meta": "Meta", "hpu": "HPU"}


def _bool_indices(indices: Iterable[Any]) -> int:
    # A bool/uint8 index tensor becomes long indices through `nonzero` inside the indexing kernel
    # (TensorAdvancedIndexing / IndexingUtils.h expandTensors): one read per mask.
    return sum(1 for i in indices if isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8))


def _crosses_host(src: torch.device, dst: torch.device, non_blocking: bool) -> int:
    # Copy.cu: a blocking copy between host and device is `memcpy_and_sync`. A copy between two CPU tensors
    # (every copy of a CPU run) is not a sync: a CPU run cannot tell a host array from a device array here.
    return int(not non_blocking and (src.type == "cpu") != (dst.type == "cpu"))


def _to_copy_syncs(args: Sequence[Any], kwargs: Dict[str, Any]) -> int:
    target = kwargs.get("device")
    if target is None:
        return 0
    return _crosses_host(args[0].device, torch.device(target), bool(kwargs.get("non_blocking", False)))


def _copy_syncs(args: Sequence[Any], kwargs: Dict[str, Any]) -> int:
    non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    return _crosses_host(args[1].device, args[0].device, bool(non_blocking))


def _bincount_syncs(args: Sequence[Any], kwargs: Dict[str, Any]) -> int:
    # SummaryOps.cu `_bincount_cuda_template`: reads min() (skipped for uint8) to reject negatives and max()
    # to size the output; an empty input returns early.
    values = args[0]
    if values.numel() == 0:
        return 0
    return 1 if values.dtype == torch.uint8 else 2


def _histc_syncs(args: Sequence[Any], kwargs: Dict[str, Any]) -> int:
    # SummaryOps.cu `_histc_cuda_template`: with min == max (the default 0, 0) it reads min() and max().
    low = args[2] if len(args) > 2 else kwargs.get("min", 0)
    high = args[3] if len(args) > 3 else kwargs.get("max", 0)
    return 2 if low == high else 0


def _repeat_interleave_syncs(args: Sequence[Any], kwargs: Dict[str, Any]) -> int:
    # Repeat.cpp `repeat_interleave_common`: without output_size it reads the total (cumsum[-1].item()) and
    # checks `(repeats >= 0).all().item()`; with output_size it reads nothing.
    if kwargs.get("output_size") is not None:
        return 0
    repeats = args[0] if isinstance(args[0], torch.Tensor) and len(args) == 1 else args[1]
    return 2 if isinstance(repeats, torch.Tensor) and repeats.numel() > 0 else 0


CONDITIONAL_SYNC: Dict[str, Callable[[Sequence[Any], Dict[str, Any]], int]] = {
    "aten.index": lambda args, kwargs: _bool_indices(args[1]),
    "aten.index_put": lambda args, kwargs: _bool_indices(args[1]),
    "aten.index_put_": lambda args, kwargs: _bool_indices(args[1]),
    "aten._index_put_impl_": lambda args, kwargs: _bool_indices(args[1]),
    "aten.repeat_interleave": _repeat_interleave_syncs,
    "aten.bincount": _bincount_syncs,
    "aten.histc": _histc_syncs,
    "aten._to_copy": _to_copy_syncs,
    "aten.copy_": _copy_syncs,
}


def syncs_of_op(name: str, args: Sequence[Any], kwargs: Dict[str, Any]) -> int:
    """Host syncs that the op `name` ("namespace.op", e.g. "aten.nonzero") makes on CUDA with these arguments."""
    if name in ALWAYS_SYNC:
        return ALWAYS_SYNC[name]
    if name in TORCHVISION_SYNCS:
        return TORCHVISION_SYNCS[name]
    rule = CONDITIONAL_SYNC.get(name)
    return rule(args, kwargs) if rule is not None else 0


def _call_site() -> str:
    """'path:line function' of the innermost frame outside torch, the standard library and this file."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith((_TORCH_DIR, _STDLIB_DIR)) and filename != __file__:
            return f"{_short_path(filename)}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return "<torch internals>"


def _short_path(filename: str) -> str:
    """The path from the package folder nearest the file: /x/fpn/fpn/ops/nms.py -> fpn/ops/nms.py,
    /x/fpn/tests/t.py -> tests/t.py, .../site-packages/torchvision/ops/boxes.py -> torchvision/ops/boxes.py.

    Nearest, not first: a clone of this repository is itself a folder called `fpn`.
    """
    parts = filename.replace(os.sep, "/").split("/")
    for start in range(len(parts) - 2, -1, -1):  # the folders, innermost first
        if parts[start] in _PACKAGE_FOLDERS:
            return "/".join(parts[start:])
    return parts[-1]


def _first_device(args: Sequence[Any], kwargs: Dict[str, Any]) -> torch.device:
    # the device of the first tensor argument, looking into lists of tensors (e.g. per-image boxes)
    for value in (*args, *kwargs.values()):
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, torch.Tensor):
                return item.device
    return torch.device("cpu")


class HostSyncCounter(TorchDispatchMode):
    """Context manager counting the ops that would synchronise the host with a CUDA device.

    Args:
        custom_op_namespaces: namespaces of Python custom operators (`torch.library.custom_op`) whose
            implementation is run inside the counter, so that the syncs it makes are counted (the counter would
            otherwise see one opaque call).

    Attributes (filled while the context is open, readable after):
        by_op: Counter of op name ("aten.nonzero", "Tensor.tolist", ...) -> syncs.
        by_site: Counter of (op name, "path:line function") -> syncs, the Python line that issued each.
        total: the number of syncs.
    """

    def __init__(self, custom_op_namespaces: Tuple[str, ...] = ("fpn",)):
        super().__init__()
        self.custom_op_namespaces = tuple(custom_op_namespaces)
        self.by_op: Counter = Counter()
        self.by_site: Counter = Counter()
        self._saved_methods: Dict[str, Any] = {}
        self._depth = 0  # the mode is entered again while it runs a custom op's implementation

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def record(self, name: str, count: int = 1) -> None:
        """Add `count` syncs of `name`, attributed to the calling Python line."""
        self.by_op[name] += count
        self.by_site[(name, _call_site())] += count

    def report(self, max_sites: int = 25) -> str:
        """The counts by op and the `max_sites` lines that issued the most syncs, one per line."""
        lines = [f"{self.total} host syncs"]
        lines += [f"  {count:4d}  {name}" for name, count in self.by_op.most_common()]
        lines.append("by site:")
        lines += [f"  {count:4d}  {name:28s} {site}" for (name, site), count in self.by_site.most_common(max_sites)]
        return "\n".join(lines)

    def __enter__(self) -> "HostSyncCounter":
        if self._depth == 0:
            # tolist()/numpy() of a CPU tensor read memory without any dispatch; on a device tensor tolist()
            # dispatches a device-to-host copy, which the mode counts itself.
            for method in ("tolist", "numpy"):
                original = getattr(torch.Tensor, method)
                self._saved_methods[method] = original
                setattr(torch.Tensor, method, self._counting(method, original))
        self._depth += 1
        return super().__enter__()

    def __exit__(self, *exc_info) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            self._depth -= 1
            if self._depth == 0:
                for method, original in self._saved_methods.items():
                    setattr(torch.Tensor, method, original)
                self._saved_methods.clear()

    def _counting(self, method: str, original: Callable) -> Callable:
        def counted(tensor: torch.Tensor, *args, **kwargs):
            if tensor.device.type == "cpu":
                self.record(f"Tensor.{method}")
            return original(tensor, *args, **kwargs)

        return counted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = f"{func.namespace}.{func.overloadpacket.__name__}"
        if func.namespace in self.custom_op_namespaces:
            return self._run_inside(func, args, kwargs)
        count = syncs_of_op(name, args, kwargs)
        if count:
            self.record(name, count)
        return func(*args, **kwargs)

    def _run_inside(self, func, args, kwargs):
        # The mode is popped while __torch_dispatch__ runs, so calling `func` would hide the ops of its Python
        # implementation. Instead fetch the kernel registered for the tensors' device and call it with the
        # mode pushed again: its ops come back here one by one.
        if not hasattr(torch.library, "get_kernel"):
            raise RuntimeError(f"counting the syncs inside {func} needs torch >= 2.9 (torch.library.get_kernel); "
                               f"this is torch {torch.__version__}")
        device = _first_device(args, kwargs)
        key = _DISPATCH_KEYS.get(device.type, device.type.upper())
        kernel = torch.library.get_kernel(func, key)
        with self:
            return kernel.call_boxed(torch._C.DispatchKeySet(key), *args, **kwargs)
