"""`--help` of the training flags: every field's comment and the chosen preset's value; flags override only
what is typed; every field carries a comment (a new field without one fails here)."""
import argparse
from dataclasses import dataclass, fields, is_dataclass
from typing import Tuple

import pytest

from fpn.config import FasterRCNNConfig
from fpn.engine.presets import PRESETS, SYNTHETIC_PRESETS, TrainingPreset, describe_presets, get_preset
from fpn.tools.config_flags import (
    add_config_flags, add_preset_flags, apply_config_flags, apply_preset_flags, field_comments, preset_name_in,
)


@dataclass
class Example:
    plain: int = 1  # a plain field
    # a comment-only line describes no field
    spread: Tuple[int, ...] = (  # first part,
        1, 2,  # second part
    )
    bare: int = 0
    share: float = 0.5  # 50% of the images

    def method(self) -> int:
        local: int = 3  # not a field
        return local


@dataclass
class Child(Example):
    extra: str = "x"  # a field of the subclass
    plain: int = 2  # overridden here


def _parser(preset_name="cpu-demo"):
    preset = get_preset(preset_name)
    parser = argparse.ArgumentParser()
    add_preset_flags(parser, preset)
    add_config_flags(parser, preset.model)
    return parser, preset


def _help_of(parser, flag):
    return next(action.help for action in parser._actions if flag in action.option_strings)


def test_help_shows_the_field_comment_and_the_presets_value():
    parser, _ = _parser("cpu-demo")
    depth = _help_of(parser, "--backbone.depth")
    assert field_comments(type(FasterRCNNConfig().backbone))["depth"] in depth and "default: 18" in depth
    iters = _help_of(parser, "--iters")
    assert iters.startswith(field_comments(TrainingPreset)["iters"]) and iters.endswith("(default: 1000)")
    assert _help_of(parser, "--steps").endswith("(default: 750,940)")
    assert _help_of(parser, "--clip-grad-norm").endswith("(default: 10.0)")
    assert _help_of(parser, "--backbone.weights").endswith("(default: none)")
    assert _help_of(parser, "--channels-last").endswith("(default: true)")
    assert "--lr-reference-batch" in _help_of(parser, "--lr")  # `lr_reference_batch` written as its flag
    paper, _ = _parser("paper")
    assert "default: 50" in _help_of(paper, "--backbone.depth") and "default: 80000" in _help_of(paper, "--iters")
    text = parser.format_help()
    assert "the preset's)" not in text.replace("the preset's values", "")
    assert "periodic checkpoints kept" in text and "minutes a collective waits" in text


def test_preset_flags_change_only_what_was_given():
    parser, preset = _parser("cpu-demo")
    args = parser.parse_args(["--iters", "50", "--steps", "20,40", "--clip-grad-norm", "none", "--amp", "bf16",
                              "--keep-checkpoints", "0", "--dist-timeout-min", "5", "--backbone.depth", "34"])
    changed = apply_preset_flags(preset, args)
    assert (changed.iters, changed.steps, changed.clip_grad_norm, changed.amp) == (50, (20, 40), None, "bf16")
    assert (changed.keep_checkpoints, changed.dist_timeout_min) == (0, 5.0)
    untouched = [f.name for f in fields(TrainingPreset)
                 if f.name not in ("model", "iters", "steps", "clip_grad_norm", "amp", "keep_checkpoints",
                                   "dist_timeout_min")]
    assert all(getattr(changed, name) == getattr(preset, name) for name in untouched)
    assert changed.model == preset.model  # the model flags are apply_config_flags' business
    assert apply_config_flags(changed.model, args).backbone.depth == 34
    assert preset.iters == 1000 and preset.clip_grad_norm == 10.0  # the preset itself is not modified
    assert apply_preset_flags(preset, parser.parse_args([])) == preset
    for argv, message in ((["--iters", "many"], "invalid int value"), (["--steps", "a,b"], "invalid")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_every_training_and_config_field_has_a_comment():
    comments = field_comments(TrainingPreset)
    missing = [f"TrainingPreset.{f.name}" for f in fields(TrainingPreset) if not comments.get(f.name, "").strip()]
    sections = [FasterRCNNConfig()] + [getattr(FasterRCNNConfig(), f.name) for f in fields(FasterRCNNConfig)]
    for section in (s for s in sections if is_dataclass(s)):
        comments = field_comments(type(section))
        missing += [f"{type(section).__name__}.{f.name}" for f in fields(section)
                    if not is_dataclass(getattr(section, f.name)) and not comments.get(f.name, "").strip()]
    assert not missing, f"give these fields a trailing `# comment` (it is their --help): {missing}"


def test_field_comments_reads_multi_line_statements_and_bases():
    assert field_comments(Example) == {"plain": "a plain field", "spread": "first part, second part",
                                       "share": "50% of the images"}
    assert field_comments(Child) == {"plain": "overridden here", "spread": "first part, second part",
                                     "share": "50% of the images", "extra": "a field of the subclass"}
    first = field_comments(Example)
    first["plain"] = "changed by a caller"
    assert field_comments(Example)["plain"] == "a plain field"  # the cached answer is not shared
    with pytest.raises(ValueError, match="needs a dataclass"):
        field_comments(argparse.ArgumentParser)


def test_config_flags_of_any_dataclass_escape_percent_signs():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Example())
    assert "50% of the images (default: 0.5)" in parser.format_help()
    assert "default: 0" in _help_of(parser, "--bare")  # no comment: the value alone


def test_describe_presets_has_one_line_per_preset():
    lines = describe_presets().splitlines()
    assert [line.split(":")[0] for line in lines] == list(PRESETS)
    assert "(1,000 iterations)" in lines[0] and "synthetic" in lines[0]
    for line in lines:
        assert ("synthetic" if line.split(":")[0] in SYNTHETIC_PRESETS else "COCO") in line


def test_preset_name_in_reads_the_command_line():
    assert preset_name_in(["--iters", "3", "--preset", "1x"], "cpu-demo") == "1x"
    assert preset_name_in(["--preset=paper"], "cpu-demo") == "paper"
    assert preset_name_in(["--iters", "3"], "cpu-demo") == "cpu-demo"
    assert preset_name_in(["--preset", "2x", "-h"], "cpu-demo") == "cpu-demo"  # the full parser reports it
