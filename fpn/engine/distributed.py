"""Multi-process training with torch.distributed, initialised from the environment torchrun sets.

torchrun starts one process per device and exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
a plain `python scripts/train.py` has none of them and runs as a single process (world size 1) with no process
group at all. The backend is NCCL for CUDA devices and gloo otherwise (CPU, and MPS which has no collective
backend of its own). Every collective has a timeout, so a rank that crashes makes the others fail with an error
after `timeout_minutes` instead of waiting forever.
"""
from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator, List, Optional, TypeVar

import torch
import torch.distributed as dist
from tqdm import tqdm

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
    """Print `message` on rank 0 only (the other ranks would print the same line), on lines of its own above a
    progress bar that is being drawn (tqdm.write: a message from inside a training block, e.g. an evaluation's,
    would otherwise continue the bar's line)."""
    if is_main_process():
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()


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


# What gloo and NCCL say when a collective gives up on a peer: a timeout ("Timed out waiting 60000ms for recv"),
# the pair closed after one ("Application timeout caused pair closure"), a peer process gone ("Connection closed
# by peer", "Connection reset"), or NCCL's watchdog.
_PEER_FAILURE = re.compile(r"timed out|timeout|connection closed by peer|connection reset|broken pipe|"
                           r"connection refused|watchdog", re.IGNORECASE)


def is_peer_failure(error: BaseException) -> bool:
    """True when `error` is a collective that failed because another process stopped answering or left."""
    backend_error = getattr(dist, "DistBackendError", ())
    return is_distributed() and (isinstance(error, backend_error) or (
        isinstance(error, RuntimeError) and bool(_PEER_FAILURE.search(str(error)))))


def silent_ranks(grace_seconds: float = 10.0) -> Optional[List[int]]:
    """After a collective failed on this rank: which other ranks did not report the same failure.

    Every rank whose collective fails calls this. Each writes a key to the process group's store, then waits up
    to `grace_seconds` for the others' keys: the ranks still waiting in the same collective fail within about
    the same timeout and report; a stopped, hung or crashed rank does not.

    Returns:
        the silent ranks, ascending, or None when the store cannot be reached (it may live in the process that
        stopped), so nothing is known.
    """
    rank, world = get_rank(), get_world_size()
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=grace_seconds))
        store.set(f"fpn/peer_failure/{rank}", "1")
        keys = {r: f"fpn/peer_failure/{r}" for r in range(world) if r != rank}
        deadline = time.monotonic() + grace_seconds
        while True:
            silent = [r for r, key in keys.items() if not store.check([key])]
            if not silent or time.monotonic() >= deadline:
                return silent
            time.sleep(0.2)
    except Exception:  # the store is unreachable or gone: nothing to say about the others
        return None


def describe_peer_failure(timeout_minutes: float, silent: Optional[List[int]]) -> str:
    """One line on a failed collective: which rank stopped answering (where known) and the timeout."""
    rank, limit = get_rank(), f"--dist-timeout-min {timeout_minutes:g}"
    if silent:
        who = f"rank {silent[0]}" if len(silent) == 1 else "ranks " + ", ".join(map(str, silent))
        return f"{who} stopped answering (rank {rank} waited for it for {limit} in a collective operation)"
    return (f"a collective operation failed on rank {rank} (another rank stopped answering within {limit}, or "
            "left)")


def reports_peer_failure(silent: Optional[List[int]]) -> bool:
    """Whether this rank prints the line: the lowest rank that is not silent (each, when nothing is known)."""
    if silent is None:
        return True
    return get_rank() == min(r for r in range(get_world_size()) if r not in silent)
