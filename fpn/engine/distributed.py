"""Multi-process training with torch.distributed, initialised from the environment torchrun sets.

torchrun starts one process per device and exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
a plain `python scripts/train.py` has none of them and runs as a single process (world size 1) with no process
group at all. The backend is NCCL for CUDA devices and gloo otherwise (CPU, and MPS which has no collective
backend of its own). Every collective has a timeout, so a rank that crashes makes the others fail with an error
after `timeout_minutes` instead of waiting forever.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator, List, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_distributed() -> bool:
    """True once a process group with more than one process exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_local_rank() -> int:
    """This process's rank on its node, from torchrun's LOCAL_RANK (0 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """True on rank 0, the process that logs, evaluates and writes files."""
    return get_rank() == 0


def log(message: str) -> None:
    """Print `message` on rank 0 only (the other ranks would print the same line)."""
    if is_main_process():
        print(message, flush=True)


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher using its environment variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA, gloo for everything else."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: torch.device, timeout_minutes: float = 30.0) -> torch.device:
    """Join the process group described by torchrun's environment variables, if there is one.

    Args:
        device: the device this run asked for; on CUDA each process takes `cuda:LOCAL_RANK`.
        timeout_minutes: how long a collective may wait for a missing rank before raising.
    Returns:
        torch.device this process should use.
    """
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", get_local_rank())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if launched_by_torchrun() and not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(
            backend=backend_for(device), timeout=timedelta(minutes=timeout_minutes), init_method="env://", **kwargs
        )
    return device


def destroy_distributed() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed_session(device: torch.device, timeout_minutes: float = 30.0) -> Iterator[torch.device]:
    """`init_distributed` on entry, `destroy_distributed` on exit, also when training raises."""
    try:
        yield init_distributed(device, timeout_minutes)
        # every rank is done before any leaves: a gloo peer torn down while another still talks to it can abort
        # that process at exit ("terminate called without an active exception")
        barrier()
    finally:
        destroy_distributed()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> List[Any]:
    """Gather a picklable object from every rank; returns [obj of rank 0, obj of rank 1, ...] on all ranks."""
    if not is_distributed():
        return [obj]
    gathered: List[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of `values` over the ranks (a copy; the input is left as it is)."""
    values = values.detach().clone()
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= get_world_size()
    return values


def run_on_main(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 only, its result (or its error) shared with every rank.

    For the checks and file work one process does for all (the output directory, the image files): if `fn`
    raises on rank 0, every rank raises too, so no rank is left waiting in a collective for a
    process that has stopped. Rank 0 re-raises the original exception; the others raise a ValueError with
    the same message.
    """
    if not is_distributed():
        return fn()
    result, message = None, None
    if is_main_process():
        try:
            result = fn()
        except Exception as error:
            broadcast_object((None, str(error)))
            raise
    result, message = broadcast_object((result, message))
    if message is not None:
        raise ValueError(message)
    return result
