"""fpn.engine.hardware: `--amp auto` and `--threads 0` resolved for the machine, and the line the trainer prints."""
import pytest
import torch

from fpn.engine import hardware
from fpn.engine.hardware import choose_hardware, free_cores

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "none")])
def test_auto_is_bf16_only_where_the_cpu_has_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(hardware, "DEFAULT_THREADS", 4)
    monkeypatch.setattr(hardware, "busy_cores", lambda: 0.3)
    choice = choose_hardware("auto", 0, CPU)
    assert choice.amp == expected and choice.threads == 4
    reason = "cpu computes bf16 natively" if native else "cpu has no native bf16 (AVX512-BF16/AMX)"
    portable = "--amp none for the portable fp32 path, " if native else ""
    assert choice.line == (f"speed: amp auto -> {expected} ({reason}), 4 CPU threads (one per core; 0.3 busy); "
                           f"{portable}--threads N to set the count")


@pytest.mark.parametrize("busy, expected", [(0.0, 4), (0.49, 4), (0.6, 3), (2.5, 2), (3.6, 1), (9.0, 1)])
def test_auto_threads_leave_the_cores_other_processes_use(monkeypatch, busy, expected):
    monkeypatch.setattr(hardware, "DEFAULT_THREADS", 4)
    monkeypatch.setattr(hardware, "busy_cores", lambda: busy)
    count, why = free_cores()
    assert count == expected
    assert why == (f" (one per core; {busy:.1f} busy)" if expected == 4 else
                   f" (4 cores, {busy:.1f} busy with other processes)")
    monkeypatch.setattr(hardware, "busy_cores", lambda: None)  # no /proc/stat: every core
    assert free_cores() == (4, " (one per core)")


def test_busy_cores_sums_each_allowed_cpus_busy_share(monkeypatch):
    samples = iter([{0: (100, 1000), 1: (500, 1000), 2: (0, 10)},
                    {0: (150, 1100), 1: (580, 1100), 2: (0, 10)}])  # cpu 2: no ticks in the window
    monkeypatch.setattr(hardware, "cpu_times", lambda allowed: next(samples))
    monkeypatch.setattr(hardware.time, "sleep", lambda seconds: None)
    assert hardware.busy_cores() == pytest.approx(0.5 + 0.8)
    monkeypatch.setattr(hardware, "cpu_times", lambda allowed: {})
    assert hardware.busy_cores() is None


def test_cpu_times_read_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text("cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 10 1 5 100 4 1 2 3 7 0\ncpu1 1 1 1 1 1 1 1 1 0 0\n"
                    "intr 12345\nctxt 99\n")
    monkeypatch.setattr(hardware, "Path", lambda path: stat if path == "/proc/stat" else path)
    assert hardware.cpu_times(None) == {0: (22, 126), 1: (6, 8)}
    assert hardware.cpu_times({1}) == {1: (6, 8)}


def test_given_and_resumed_values_are_kept(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(hardware, "busy_cores", lambda: 5.0)
    choice = choose_hardware("bf16", 3, CPU, resumed_threads=2)  # asked for: kept even without native bf16
    assert (choice.amp, choice.threads) == ("bf16", 3)
    assert choice.line == "speed: amp bf16, 3 CPU threads; --amp none for the portable fp32 path"
    assert choose_hardware("none", 1, CPU).line == "speed: amp none, 1 CPU thread"  # already the portable path
    resumed = choose_hardware("none", 0, CPU, resumed_threads=2)  # the busy cores say 1; the resumed run had 2
    assert resumed.threads == 2
    assert resumed.line == "speed: amp none, 2 CPU threads (the resumed run's); --threads N to set the count"


def test_other_devices(monkeypatch):
    assert choose_hardware("auto", 1, torch.device("mps")).amp == "none"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert choose_hardware("auto", 1, torch.device("cuda")).amp == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert choose_hardware("auto", 1, torch.device("cuda")).amp == "none"


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="amp must be one of none, bf16, fp16, auto, got 'fp8'"):
        choose_hardware("fp8", 0, CPU)
    with pytest.raises(ValueError, match="threads must be >= 0 .* got -1"):
        choose_hardware("none", -1, CPU)
