"""Resuming: N iterations, a new process-like run with --resume for N more, equals 2N uninterrupted."""
import json

import pytest
import torch

from test_train_script import load_train_script, tiny_args


def _train_lines(path):
    return {r["iter"]: r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r}


def _eval_lines(path):
    return {r["iter"]: r for r in map(json.loads, path.read_text().splitlines()) if "val_loss" in r}


@pytest.mark.parametrize("arch, losses", [
    ("faster_rcnn", ()),
    ("mask_rcnn", ("loss_mask",)),  # the mask branch's weights, momentum and loss resume exactly too
])
def test_resume_continues_exactly_where_it_stopped(tmp_path, arch, losses):
    train = load_train_script()
    synthetic = ["--synthetic-dir", str(tmp_path / "synthetic"), "--arch", arch]
    if arch == "mask_rcnn":
        synthetic += ["--mask.conv-channels", "16"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert train.main(tiny_args(full, *synthetic, "--checkpoint-every", "2", iters=4)) == 0
    assert train.main(tiny_args(part, *synthetic, iters=2)) == 0
    assert train.main(tiny_args(part, *synthetic, "--resume", iters=4)) == 0

    a = torch.load(full / "checkpoint_0000004.pt", weights_only=True)
    b = torch.load(part / "checkpoint_0000004.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 4
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    start = torch.load(full / "checkpoint_0000002.pt", weights_only=True)
    moved = 0
    for key, value in a["model"].items():
        assert torch.allclose(b["model"][key], value, atol=1e-6, rtol=0), key
        moved += not torch.equal(value, start["model"][key])
    assert moved > 50  # iterations 3 and 4 really changed the weights
    assert a["arch"] == b["arch"] == arch
    if arch == "mask_rcnn":
        assert any(key.startswith("mask_branch.") for key in a["model"])
    for index, state in a["optimizer"]["state"].items():
        assert torch.allclose(b["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"],
                              atol=1e-6, rtol=0)

    # the log of the resumed run continues the same curve: same LR and losses at iterations 3 and 4
    full_lines, part_lines = _train_lines(full / "metrics.jsonl"), _train_lines(part / "metrics.jsonl")
    assert sorted(part_lines) == sorted(full_lines) == [1, 2, 3, 4]
    for it in (3, 4):
        assert part_lines[it]["lr"] == full_lines[it]["lr"]
        for name in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", *losses):
            assert abs(part_lines[it][name] - full_lines[it][name]) < 1e-5, (it, name)

    # the final evaluation's validation loss (seeded sampling, the same weights) agrees too
    full_eval, part_eval = _eval_lines(full / "metrics.jsonl"), _eval_lines(part / "metrics.jsonl")
    assert sorted(full_eval) == [4] and sorted(part_eval) == [2, 4]
    for name in ("val_loss_objectness", "val_loss_rpn_box_reg", "val_loss_classifier", "val_loss_box_reg",
                 *(f"val_{loss}" for loss in losses), "val_loss"):
        assert abs(part_eval[4][name] - full_eval[4][name]) < 1e-5, name
