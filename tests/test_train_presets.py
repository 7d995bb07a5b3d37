"""Presets and the model-config flags generated from the FasterRCNNConfig dataclass."""
import argparse
import inspect
import shutil
import subprocess
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

import pytest

from fpn.config import FCOSConfig, FasterRCNNConfig, MaskRCNNConfig
from fpn.data.synthetic import generate_synthetic_coco
from fpn.engine.presets import PRESETS, SYNTHETIC_PRESETS, get_preset, synthetic_recipe
from fpn.tools.config_flags import add_config_flags, apply_config_flags


def _parse(argv, config=None):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, config or FasterRCNNConfig())
    return parser.parse_args(argv)


def test_every_config_field_has_a_flag():
    parser = argparse.ArgumentParser()
    config = FasterRCNNConfig()
    add_config_flags(parser, config)
    flags = {option for action in parser._actions for option in action.option_strings}
    expected = set()
    for section in fields(config):
        value = getattr(config, section.name)
        if is_dataclass(value):
            expected.update(f"--{section.name.replace('_', '-')}.{f.name.replace('_', '-')}" for f in fields(value))
        else:
            expected.add(f"--{section.name.replace('_', '-')}")
    assert expected <= flags
    assert "--roi-heads.bbox-reg-weights" in flags and "--channels-last" in flags


def test_flags_override_only_what_was_given():
    base = get_preset("cpu-demo").model
    args = _parse(["--backbone.depth", "34", "--input.train-min-sizes", "224,256", "--roi-heads.aligned", "true",
                   "--backbone.weights", "none", "--rpn.nms-thresh", "0.6",
                   "--roi-heads.bbox-reg-weights", "1,2,3,4", "--channels-last", "no"], base)
    config = apply_config_flags(base, args)
    assert config.backbone.depth == 34
    assert config.input.train_min_sizes == (224, 256)
    assert config.roi_heads.aligned is True
    assert config.backbone.weights is None
    assert config.rpn.nms_thresh == 0.6
    assert config.roi_heads.bbox_reg_weights == (1.0, 2.0, 3.0, 4.0)
    assert config.channels_last is False and base.channels_last is True
    # untouched fields keep the preset's values, and the preset itself is not modified
    assert config.backbone.width == base.backbone.width == get_preset("cpu-demo").model.backbone.width
    assert config.fpn.out_channels == base.fpn.out_channels
    assert base.backbone.depth == 18


def test_flags_reject_bad_values(capsys):
    for argv, message in (
        (["--roi-heads.bbox-reg-weights", "1,2,3"], "needs 4 comma-separated values"),
        (["--roi-heads.aligned", "maybe"], "expected true or false"),
        (["--backbone.depth", "eighteen"], "invalid int value"),
    ):
        with pytest.raises(SystemExit):
            _parse(argv)
        assert message in capsys.readouterr().err


def test_presets_follow_their_schedules():
    paper = get_preset("paper")
    assert (paper.iters, paper.steps, paper.lr, paper.lr_reference_batch) == (80_000, (60_000,), 0.02, 16)
    assert paper.model.input.train_min_sizes == (800,) and paper.model.backbone.depth == 50
    one_x = get_preset("1x")
    assert (one_x.iters, one_x.steps, one_x.warmup_iters) == (90_000, (60_000, 80_000), 1000)
    assert one_x.model.input.train_min_sizes == (640, 672, 704, 736, 768, 800)
    demo = get_preset("cpu-demo")
    assert demo.model.backbone.norm == "gn" and demo.model.backbone.depth == 18
    assert demo.iters > max(demo.steps)
    assert sorted(PRESETS) == ["1x", "ablation-cpu", "cpu-demo", "fcos-cpu-demo", "mask-cpu-demo", "paper"]
    mask = get_preset("mask-cpu-demo")  # cpu-demo's model, schedule and data, plus the mask branch at 64 channels
    assert isinstance(mask.model, MaskRCNNConfig) and mask.model.mask.conv_channels == demo.model.fpn.out_channels
    assert all(getattr(mask.model, item.name) == getattr(demo.model, item.name) for item in fields(demo.model))
    assert replace(mask, model=demo.model) == demo
    fcos = get_preset("fcos-cpu-demo")  # the demo's trunk, input and schedule, FCOS's head
    assert isinstance(fcos.model, FCOSConfig) and fcos.model.head.score_thresh == 0.05
    assert (fcos.model.fpn, fcos.model.input) == (demo.model.fpn, demo.model.input)
    # the demo's trunk, with residual branches started as the identity (measured: FCOS learns faster so)
    assert fcos.model.backbone == replace(demo.model.backbone, zero_init_residual=True)
    assert (fcos.lr, fcos.batch_size, fcos.warmup_iters) == (demo.lr, demo.batch_size, demo.warmup_iters)
    assert (fcos.iters, fcos.steps) == (1600, (1200, 1500))  # FCOS learns more slowly per iteration
    for preset in (demo, fcos, mask):  # the speed settings follow the machine (fpn/engine/hardware.py)
        assert (preset.amp, preset.threads, preset.workers, preset.cache_images) == ("auto", 0, 0, True)


def test_ablation_preset_spans_object_scales_and_scores_1000_proposals():
    ablation, demo = get_preset("ablation-cpu"), get_preset("cpu-demo")
    assert (ablation.synthetic_min_object_size, ablation.synthetic_max_object_fraction) == (6, 0.9)
    assert (demo.synthetic_min_object_size, demo.synthetic_max_object_fraction) == (12, 0.6)  # the old defaults
    assert ablation.model.rpn.post_nms_top_n_test == 1000  # AR1k as in the paper's Table 1
    assert ablation.iters > max(ablation.steps) and ablation.eval_every == 0
    # the same backbone, with residual branches open at the start (measured: the single-scale baselines need it
    # at 600 iterations; cpu-demo learns faster with them too)
    assert ablation.model.backbone == demo.model.backbone and demo.model.backbone.zero_init_residual is False
    # the speed settings its tables were measured with, not the machine's
    assert (ablation.amp, ablation.threads, ablation.workers, ablation.cache_images) == ("none", 1, 1, False)
    assert ablation.model.variant == "fpn"  # the ablation script sets --variant per run
    assert set(SYNTHETIC_PRESETS) <= set(PRESETS)
    recipe = synthetic_recipe(ablation)
    assert recipe == {"num_images": 500, "num_val": 100, "seed": 0, "min_size": 256, "max_size": 320,
                      "min_object_size": 6, "max_object_fraction": 0.9}
    assert set(recipe) <= set(inspect.signature(generate_synthetic_coco).parameters)


def test_get_preset_returns_independent_copies_and_rejects_unknown_names():
    first = get_preset("1x")
    first.model.backbone.depth = 101
    assert get_preset("1x").model.backbone.depth == 50
    with pytest.raises(ValueError, match="unknown preset '2x'"):
        get_preset("2x")


def test_demo_evaluates_a_few_times_so_its_ap_plot_is_a_curve():
    demo = get_preset("cpu-demo")
    evaluations = [it for it in range(demo.eval_every, demo.iters, demo.eval_every)] + [demo.iters]
    assert 3 <= len(evaluations) <= 6, evaluations
    assert (demo.keep_checkpoints, demo.dist_timeout_min) == (3, 30.0)


def test_example_outputs_are_git_ignored():
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    written = ["runs/demo/metrics.jsonl", "runs/predict/detections.json", "predictions/detections.json",
               "out/detections.json", "out.json", "ops.json", "evaluate_metrics.json", "resnet50.pth"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *written], cwd=root, capture_output=True,
                          text=True)
    assert sorted(done.stdout.split()) == sorted(written)
    kept = subprocess.run(["git", "check-ignore", "--no-index", "fpn/engine/presets.py", "docs/demo_detections.png"],
                          cwd=root, capture_output=True, text=True)
    assert kept.stdout == ""
