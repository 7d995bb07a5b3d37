"""Peak tensor memory of a call on the CPU, from the profiler's allocation events (exact, unlike the resident set).

    >>> import torch
    >>> from fpn.engine.memory import peak_cpu_memory
    >>> result, peak = peak_cpu_memory(lambda: torch.ones(1024, 1024).sum())
    >>> peak >= 4 * 1024 * 1024
    True
"""
from typing import Any, Callable, Tuple

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


def peak_cpu_memory(fn: Callable[[], Any]) -> Tuple[Any, int]:
    """Run fn() and return (its result, the peak bytes of CPU tensor memory it held above what existed before).

    Every allocation and free of the CPU allocator during the call is an event with a signed size; the peak is the
    largest running sum. Memory allocated before the call and still held is not counted.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()
        peak = max(peak, held)
    return result, peak
