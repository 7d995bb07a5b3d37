"""Timing and peak memory, ours and torchvision's alternating so that load from other processes hits both alike.

Two kinds, one per benchmark:
  * a whole model's call (detector.py): seconds, and the memory the call needs above what was held before it -
    CUDA `torch.cuda.max_memory_allocated`; CPU the growth of the resident set (Linux: `VmHWM` of
    /proc/self/status, reset through /proc/self/clear_refs, after glibc's `malloc_trim`);
  * a kernel's call (ops.py): milliseconds of prepared work (e.g. a backward after its forward), and the peak
    of tensor memory (CPU: the profiler's allocation events; CUDA: max_memory_allocated).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import time

import torch

from fpn.engine.memory import peak_cpu_memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_pair(fn_ours, fn_tv, device: torch.device, warmup: int, repeats: int):
    """Median seconds and median peak memory (MiB) of each function; runs interleaved (ours, torchvision, ours,
    ...) after `warmup` untimed rounds, so load from other processes hits both alike."""
    seconds, memory = ([], []), ([], [])
    for i in range(warmup + repeats):
        for k, fn in enumerate((fn_ours, fn_tv)):
            elapsed, peak = _timed_with_peak(fn, device)
            if i >= warmup:
                seconds[k].append(elapsed)
                memory[k].append(peak)
    return tuple(statistics.median(s) for s in seconds), tuple(_median_or_none(m) for m in memory)


def _median_or_none(values):
    return None if any(v is None for v in values) else statistics.median(values)


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # "5" resets VmHWM to the current resident size (Linux >= 4.0)
        return True
    except OSError:
        return False


def _timed_with_peak(fn, device: torch.device):
    """(seconds, MiB the call needed above what was held before it, or None where that cannot be measured)."""
    gc.collect()
    rss = device.type == "cpu" and os.path.exists("/proc/self/status")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    elif rss:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is what is live
        base = _status_kib("VmRSS")
        rss = _reset_peak_rss()
    start = time.perf_counter()
    fn()
    sync(device)
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        return elapsed, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return elapsed, (_status_kib("VmHWM") - base) / 1024 if rss else None


def timed_pair(ours, theirs, device: torch.device, warmup: int, repeats: int):
    """Median milliseconds of ours() and theirs(), run alternately. Each may return a callable (prepared work, e.g.
    a forward pass before a backward): then only that callable is timed."""
    times = ([], [])
    for i in range(warmup + repeats):
        for k, fn in enumerate((ours, theirs)):
            elapsed = _time_once(fn, device)
            if i >= warmup:
                times[k].append(elapsed)
    return statistics.median(times[0]), statistics.median(times[1])


def _time_once(fn, device: torch.device) -> float:
    start = time.perf_counter()
    inner = fn()
    if callable(inner):
        sync(device)
        start = time.perf_counter()
        inner()
    sync(device)
    return (time.perf_counter() - start) * 1e3


def peak_mib(fn, device: torch.device) -> float:
    """Peak tensor memory (MiB) that fn() allocates above what existed before (the whole call, prepared work too)."""
    def run():
        inner = fn()
        return inner() if callable(inner) else inner

    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return peak_cpu_memory(run)[1] / 2**20
