"""What a run's speed settings become on the machine it runs on: `--amp auto` and `--threads 0`.

The CPU presets (cpu-demo, fcos-cpu-demo, mask-cpu-demo) leave both to the machine, and the trainer prints what
they became in one line before training, with the flags that force the portable path:

- amp "auto": bf16 autocast where the device computes bf16 natively: a CPU with AVX512-BF16 or AMX (oneDNN's own
  check, the one `optimize_for_inference` uses) or a CUDA GPU with bf16 (Ampere or newer); fp32 ("none")
  elsewhere, since a CPU without them emulates bf16 convolutions (slower than fp32) and MPS autocast is not
  what these presets were measured with. `--amp none` forces fp32 anywhere.
- threads 0: one compute thread per core torch sees, less the cores other processes keep busy at the start
  (measured over a quarter second from /proc/stat on Linux), at least one. OpenMP threads wait on each other at
  every op, so a thread that shares its core with another process stalls them all: on the 2-core demo machine,
  with other jobs running, two threads took 1.5-7.7 s per cpu-demo iteration where one took 0.35 s. A resumed
  run keeps its thread count (the results depend on it). `--threads N` sets the count.

torch.compile is not chosen: on the demo model its compile time is longer than what it saves in a run of a few
minutes (fpn/engine/presets.py, cpu_demo).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Set, Tuple

import torch

from fpn.device import cpu_has_native_bf16

# torch's own thread count (one per physical core it sees), read before any run sets one in this process
DEFAULT_THREADS = torch.get_num_threads()
AMP_CHOICES = ("none", "bf16", "fp16", "auto")  # --amp: the three precisions, or "auto" (this module decides)


@dataclass(frozen=True)
class HardwareChoice:
    amp: str  # "none", "bf16" or "fp16": what autocast runs
    threads: int  # CPU compute threads set for the run (torch.set_num_threads)
    line: str  # the choice and why, one line for the log


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (see the module docstring)."""
    if device.type == "cpu":
        return cpu_has_native_bf16()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return False


def choose_hardware(amp: str, threads: int, device: torch.device, resumed_threads: int = 0) -> HardwareChoice:
    """Resolve `amp` ("auto" or a precision) and `threads` (0: chosen here) for `device`.

    `resumed_threads`: the thread count of the run being resumed, kept for threads 0, since the results depend
    on it (oneDNN splits its reductions by thread) and a resumed run repeats the uninterrupted one exactly.

    Raises:
        ValueError: `amp` is not one of AMP_CHOICES, or `threads` is negative.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: one per core), got {threads}")
    if threads:
        count, why_count = threads, ""
    elif resumed_threads:
        count, why_count = resumed_threads, " (the resumed run's)"
    else:
        count, why_count = free_cores()
    if amp == "auto":
        native = native_bf16(device)
        resolved = "bf16" if native else "none"
        why = (f"{device.type} computes bf16 natively" if native
               else f"{device.type} has no native bf16" + (" (AVX512-BF16/AMX)" if device.type == "cpu" else ""))
        precision = f"amp auto -> {resolved} ({why})"
    else:
        resolved, precision = amp, f"amp {amp}"
    where = f", {count} CPU thread{'s' if count != 1 else ''}{why_count}"
    flags = ([] if resolved == "none" else ["--amp none for the portable fp32 path"]) + \
        ([] if threads else ["--threads N to set the count"])
    line = f"speed: {precision}{where}" + (f"; {', '.join(flags)}" if flags else "")
    return HardwareChoice(amp=resolved, threads=count, line=line)


def free_cores() -> Tuple[int, str]:
    """Compute threads for `threads 0`: torch's default count (one per core) less the cores other processes keep
    busy right now (`busy_cores`, rounded), at least 1; and the reason in words for the log line."""
    cores = DEFAULT_THREADS
    busy = busy_cores()
    if busy is None:
        return cores, " (one per core)"
    count = max(1, min(cores, cores - round(busy)))
    if count == cores:
        return count, f" (one per core; {busy:.1f} busy)"
    return count, f" ({cores} cores, {busy:.1f} busy with other processes)"


def busy_cores(window_s: float = 0.25) -> Optional[float]:
    """How many of this process's CPUs other processes keep busy: their busy share in /proc/stat over `window_s`
    while this process sleeps, summed over the CPUs it may run on (Linux; None elsewhere). Measured now, where
    the load average would still count a job that just ended (the `pip install` before the README demo)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    before = cpu_times(allowed)
    if not before:
        return None
    time.sleep(window_s)
    after = cpu_times(allowed)
    busy = 0.0
    for cpu, (busy_after, total_after) in after.items():
        busy_before, total_before = before.get(cpu, (busy_after, total_after))
        if total_after > total_before:
            busy += (busy_after - busy_before) / (total_after - total_before)
    return busy


def cpu_times(allowed: Optional[Set[int]]) -> Dict[int, Tuple[int, int]]:
    """{cpu: (busy, total) clock ticks since boot} from /proc/stat for the `allowed` CPUs (None: all); {} where
    there is no /proc/stat. Idle time is `idle` + `iowait`; `guest` is already counted in `user`."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    times = {}
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        cpu = int(name[3:])
        if allowed is not None and cpu not in allowed:
            continue
        ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
        total = sum(ticks)
        times[cpu] = (total - ticks[3] - ticks[4], total)
    return times
