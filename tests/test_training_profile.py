"""scripts/profile_training.py (benchmarks/training_profile.py): where a training iteration goes.

A tiny cpu-demo (8 synthetic images at 128 px, batch 2, fp32, one thread): the parts of every timed iteration sum
to its time, the forward's stages to the forward, the op categories to the profiled op time; the host syncs of
two identical iterations are the same; the command line writes every key of the report.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.training_profile import (
    CATEGORY_NAMES,
    PARTS,
    ProfileSettings,
    build_training,
    count_host_syncs,
    next_batch,
    profile_training,
    resolve_preset,
)
from fpn.data.synthetic import generate_synthetic_coco
from fpn.engine.presets import get_preset
from fpn.engine.training_data import DataSource

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "profile_training.py"
REPORT_KEYS = {"step_ms", "parts_ms", "clock_ms", "stages_ms", "parts_percent", "stages_percent", "iterations",
               "host_syncs", "profile", "machine", "settings"}


def tiny_preset():
    preset = get_preset("cpu-demo")
    preset.synthetic_train_images, preset.synthetic_val_images, preset.synthetic_image_size = 8, 2, 128
    preset.model.input.min_size = preset.model.input.max_size = 128
    preset.model.input.train_min_sizes = (128,)
    preset.batch_size = 2
    return preset


def tiny_settings(data_dir: Path) -> ProfileSettings:
    return ProfileSettings(amp="none", threads=1, iters=2, warmup=1, profile_iters=1, data_dir=str(data_dir))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return profile_training(tiny_settings(tmp_path_factory.mktemp("data")), tiny_preset())


def test_parts_sum_to_every_iteration(report):
    assert len(report["iterations"]) == 2
    for run in report["iterations"]:
        assert list(run["parts_s"]) == list(PARTS)
        # consecutive clock readings: the parts are the iteration, to rounding
        assert math.isclose(sum(run["parts_s"].values()), run["total_s"], rel_tol=1e-9)
        assert list(run["stages_s"]) == ["backbone", "neck", "rpn", "roi_heads", "outside children"]
        assert math.isclose(sum(run["stages_s"].values()), run["parts_s"]["forward"], rel_tol=1e-9)
        assert all(run["stages_s"][name] > 0 for name in ("backbone", "neck", "rpn", "roi_heads"))
        assert all(run["parts_s"][name] > 0 for name in ("forward", "backward", "optimizer"))
    settings = report["settings"]
    assert (settings["arch"], settings["amp"], settings["threads"], settings["batch"]) == ("faster_rcnn", "none", 1, 2)
    assert report["machine"]["torch_threads"] == 1  # read while it ran
    assert settings["image_cache"] == "filled first" and settings["image_size"] == [128]


def test_categories_cover_the_profiled_op_time(report):
    profile = report["profile"]
    assert list(profile["categories_ms"]) == list(CATEGORY_NAMES)
    assert math.isclose(sum(profile["categories_ms"].values()), profile["op_self_ms"], rel_tol=1e-9)
    assert math.isclose(profile["op_self_ms"] + profile["outside_ops_ms"], profile["wall_ms"], rel_tol=1e-9)
    # every named part of a Faster R-CNN step is found (fp32: copies but no casts)
    for category in ("convolution fwd", "convolution bwd", "normalisation", "NMS, sort, topk", "RoIAlign fwd",
                     "RoIAlign bwd", "matmul, linear", "ReLU fwd, bwd", "optimizer"):
        assert profile["categories_ms"][category] > 0, category
    assert "aten::convolution_backward" in profile["category_top_ops"]["convolution bwd"]
    named = [op for ops in profile["category_top_ops"].values() for op in ops] + [op["op"] for op in profile["top_ops"]]
    assert all("::" in op or op in ("detach", "detach_") for op in named)  # ops only: no autograd or optimizer range
    assert profile["op_calls"] > profile["top_level_op_calls"] > 0
    assert len(profile["top_ops"]) == 15
    assert {op["category"] for op in profile["top_ops"]} <= set(CATEGORY_NAMES)


def test_speed_settings_are_resolved_as_the_trainer_does():
    """A preset's amp auto and threads 0 become a precision and a thread count; the settings win over the preset."""
    cpu = torch.device("cpu")
    automatic = get_preset("cpu-demo")
    automatic.amp, automatic.threads = "auto", 0
    preset, choice = resolve_preset(ProfileSettings(preset="cpu-demo"), cpu, automatic)
    assert preset.amp in ("none", "bf16") and preset.threads >= 1
    assert (choice.amp, choice.threads) == (preset.amp, preset.threads)
    preset, _ = resolve_preset(ProfileSettings(preset="cpu-demo", amp="none", threads=3), cpu)
    assert (preset.amp, preset.threads) == ("none", 3)


def test_host_syncs_of_identical_iterations_are_equal(tmp_path):
    """Two fresh builds of the same seeded training: their first steps sync the same ops at the same lines, and
    the loss read is one of them, once."""
    preset, _ = resolve_preset(tiny_settings(tmp_path), torch.device("cpu"), tiny_preset())
    counts = []
    for _ in range(2):
        training = build_training(preset, torch.device("cpu"), DataSource(synthetic_dir=str(tmp_path)), tmp_path)
        images, targets = next_batch(training)
        counts.append(count_host_syncs(training, images, targets, iteration=1))
    first, second = counts
    assert isinstance(first.total, int) and first.total > 0
    assert first.total == second.total and first.by_site == second.by_site
    loss_reads = [(op, site) for op, site in first.by_site if site.startswith("benchmarks/training_profile.py:")]
    assert len(loss_reads) == 1 and loss_reads[0][0] == "Tensor.tolist"
    assert first.by_site[loss_reads[0]] == 1


def test_command_line_writes_the_report(tmp_path):
    generate_synthetic_coco(tmp_path / "coco", 4, num_val=1, seed=0, min_size=96, max_size=128, progress=False)
    out = tmp_path / "profile.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--coco-root", str(tmp_path / "coco"), "--amp", "none", "--threads", "1",
         "--iters", "1", "--warmup", "0", "--profile-iters", "1", "--markdown", "--json", str(out)],
        check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report) == REPORT_KEYS
    assert set(report["host_syncs"]) == {"total", "by_op", "top_sites"}
    assert report["settings"]["preset"] == "cpu-demo" and report["settings"]["iters"] == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Training iteration of `cpu-demo` (faster_rcnn, batch 4 at 256 px, amp none, "
                               "1 torch thread")
    assert "| part | ms per iteration | % |" in lines and "| op category | ms per iteration | % of wall | largest ops |" in lines
    assert not any(line.startswith("| aten::") for line in lines)  # --markdown: no top-ops table


def test_weights_of_a_checkpoint_are_loaded(tmp_path):
    preset, _ = resolve_preset(tiny_settings(tmp_path), torch.device("cpu"), tiny_preset())
    data = DataSource(synthetic_dir=str(tmp_path))
    state = build_training(preset, torch.device("cpu"), data, tmp_path).model.state_dict()
    state["backbone.conv1.weight"] += 1.0  # not what seed 0 initialises
    torch.save({"model": state, "iteration": 3}, tmp_path / "checkpoint.pt")
    loaded = build_training(preset, torch.device("cpu"), data, tmp_path, weights=str(tmp_path / "checkpoint.pt"))
    assert all(torch.equal(value, state[key]) for key, value in loaded.model.state_dict().items())
    torch.save({"state_dict": state}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no 'model' entry"):
        build_training(preset, torch.device("cpu"), data, tmp_path, weights=str(tmp_path / "other.pt"))
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        build_training(preset, torch.device("cpu"), data, tmp_path, weights=str(tmp_path / "text.pt"))
