"""Faults injected into training runs: a process killed while writing a checkpoint, a corrupt latest checkpoint,
an unwritable output directory, Ctrl-C and SIGTERM, a diverging LR, flags changed on --resume, and checkpoint
retention. (Missing and corrupt images: tests/test_train_errors.py; a 2-process resume: test_resume_ddp.py.)"""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fpn.engine import trainer
from fpn.engine.checkpoint import list_checkpoints, load_checkpoint
from fpn.data.synthetic import generate_synthetic_coco
from fpn.detectors.faster_rcnn import FasterRCNNFPN
from test_train_script import load_train_script, tiny_args

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_synthetic_coco(root, 6, num_val=2, seed=1, min_size=64, max_size=80, progress=False)
    return root


def helpers_env():
    """The environment of a test's subprocess that imports the tests' helpers (tests/ on PYTHONPATH)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "tests"),
                                                                      os.environ.get("PYTHONPATH")])))


# Every fault below is injected into each two-stage detector's training run: Faster R-CNN, and Mask R-CNN (its
# masks read from the synthetic set's segmentations, its mask branch in every checkpoint).
ARCHITECTURES = {"faster_rcnn": (), "mask_rcnn": ("--arch", "mask_rcnn", "--mask.conv-channels", "16")}
ARCH_FLAGS = ()  # the architecture of the test running (set by `architecture`); other modules' tests: Faster R-CNN


@pytest.fixture(autouse=True, params=sorted(ARCHITECTURES))
def architecture(request, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ARCH_FLAGS", ARCHITECTURES[request.param])
    return request.param


def _args(run, data, *extra, iters=4):
    return tiny_args(run, "--coco-root", str(data), *ARCH_FLAGS, *extra, iters=iters)


def _error_lines(err):
    return [line for line in err.splitlines() if "error:" in line or "interrupted" in line or "terminated" in line]


def test_kill_during_a_checkpoint_write_leaves_the_previous_one_and_the_next_start_cleans_up(tmp_path, data):
    run = tmp_path / "run"
    assert load_train_script().main(_args(run, data, "--checkpoint-every", "2", iters=2)) == 0
    good = (run / "checkpoint_0000002.pt").read_bytes()
    # a process that dies (kill -9) in the middle of writing the next checkpoint, after half its bytes
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys, time, torch
        from fpn.engine.checkpoint import atomic_save
        real_fsync = os.fsync
        def stall(fd):
            print("writing", flush=True)
            time.sleep(600)
        os.fsync = stall
        atomic_save({{"model": torch.zeros(1_000_000)}}, {str(run / "checkpoint_0000004.pt")!r})
        """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()
    writer.wait()
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".checkpoint_0000004.pt.")]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")
    assert not (run / "checkpoint_0000004.pt").exists()
    assert (run / "checkpoint_0000002.pt").read_bytes() == good
    (run / ".notes.tmp").write_text("not ours")  # a file of another name is left alone

    assert load_train_script().main(_args(run, data, "--resume", iters=4)) == 0
    assert not any(p.name.startswith(".checkpoint_") for p in run.iterdir())
    assert (run / ".notes.tmp").exists()
    assert load_checkpoint(run / "checkpoint_0000004.pt")["iteration"] == 4


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one_and_resumes_exactly(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert load_train_script().main(_args(run, data, "--checkpoint-every", "2", iters=4)) == 0
    reference = load_checkpoint(run / "checkpoint_0000004.pt")
    latest = run / "checkpoint_0000004.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # a copy cut short
    capsys.readouterr()
    assert load_train_script().main(_args(run, data, "--checkpoint-every", "2", "--resume", iters=4)) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{re.escape(str(latest))} cannot be loaded \(.*truncated.*\); falling back", out), out
    assert f"resumed from {run / 'checkpoint_0000002.pt'} at iteration 2" in out
    again = load_checkpoint(latest)  # iterations 3, 4 redone from checkpoint 2: the same weights
    for key, value in reference["model"].items():
        assert torch.allclose(again["model"][key], value, atol=1e-6, rtol=0), key


def test_no_usable_checkpoint_on_resume_is_an_error_naming_them(tmp_path, data, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_0000002.pt").write_bytes(b"")
    assert load_train_script().main(_args(run, data, "--resume")) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "none of the 1 checkpoints" in lines[0] and "checkpoint_0000002.pt" in lines[0]


def test_unwritable_output_directory_fails_before_anything_runs(tmp_path, data, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    assert load_train_script().main(_args(blocker / "run", data)) == 2
    err = capsys.readouterr().err
    assert _error_lines(err) == [_error_lines(err)[0]] and "--output-dir" in err and "not writable" in err
    assert "Traceback" not in err


def _interrupt_at(monkeypatch, call, exception):
    real_forward = FasterRCNNFPN.forward
    calls = {"train": 0}

    def forward(self, images, targets=None):
        if self.training:
            calls["train"] += 1
            if calls["train"] == call:
                raise exception
        return real_forward(self, images, targets)

    monkeypatch.setattr(FasterRCNNFPN, "forward", forward)


def test_ctrl_c_stops_with_one_line_naming_the_checkpoint_to_resume_from(tmp_path, data, monkeypatch, capsys):
    _interrupt_at(monkeypatch, 3, KeyboardInterrupt())
    run = tmp_path / "run"
    assert load_train_script().main(_args(run, data, "--checkpoint-every", "2")) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert lines[0] == (f"train.py: interrupted after 2 iterations; the last good checkpoint is "
                        f"{run / 'checkpoint_0000002.pt'} (iteration 2); rerun the same command with --resume to "
                        "continue from it")


def test_sigterm_stops_like_ctrl_c(tmp_path, data):
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys
        from test_train_script import load_train_script, tiny_args
        sys.exit(load_train_script().main(tiny_args({str(run)!r}, "--coco-root", {str(data)!r},
                                                    "--checkpoint-every", "1", iters=100000)))
        """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=REPO, env=helpers_env())
    deadline = time.time() + 120
    while not (run / "checkpoint_0000001.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    lines = _error_lines(err)
    assert len(lines) == 1 and "terminated (SIGTERM) after" in lines[0] and "--resume" in lines[0], err
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())


def test_a_diverging_lr_stops_before_a_non_finite_checkpoint(tmp_path, data, capsys):
    run = tmp_path / "run"
    code = load_train_script().main(_args(run, data, "--checkpoint-every", "1", "--lr", "1e30", "--warmup-iters",
                                          "0", "--clip-grad-norm", "none", iters=6))
    err = capsys.readouterr().err
    assert code == 1, err
    line = _error_lines(err)[0]
    assert re.search(r"non-finite (gradient of|parameter|loss term) \S+ .*at iteration (\d+)", line), line
    for _, path in list_checkpoints(run):  # every checkpoint written is finite ...
        assert all(torch.isfinite(t).all() for t in load_checkpoint(path)["model"].values()), path
    if list_checkpoints(run):  # ... and the message names the newest as the last good one
        assert f"the last good checkpoint is {list_checkpoints(run)[-1][1]}" in line
    else:
        assert "no checkpoint was written yet" in line


def test_changed_lr_on_resume_is_applied_and_said(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert load_train_script().main(_args(run, data, "--checkpoint-every", "2", "--lr", "0.02", iters=2)) == 0
    capsys.readouterr()
    assert load_train_script().main(_args(run, data, "--resume", "--lr", "0.01", iters=4)) == 0
    out = capsys.readouterr().out
    assert "--lr changed from 0.02 to 0.01: applied from iteration 3 on" in out
    state = load_checkpoint(run / "checkpoint_0000004.pt")
    # the demo preset's LR is for its own batch of 4; the tiny run has batch 2: 0.01 * 2 / 4
    assert state["scheduler"]["base_lrs"] == [pytest.approx(0.005)]


def test_model_change_on_resume_that_does_not_fit_is_refused(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert load_train_script().main(_args(run, data, iters=2)) == 0
    capsys.readouterr()
    assert load_train_script().main(_args(run, data, "--resume", "--fpn.out-channels", "16", iters=4)) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--fpn.out-channels 32 -> 16" in lines[0] and "do not fit" in lines[0]


def test_resume_on_data_with_other_categories_is_refused(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert load_train_script().main(_args(run, data, iters=2)) == 0
    other = tmp_path / "other"
    generate_synthetic_coco(other, 6, num_val=2, seed=1, min_size=64, max_size=80, progress=False, num_classes=3)
    capsys.readouterr()
    assert load_train_script().main(_args(run, other, "--resume", iters=4)) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "trained on 6 categories" in lines[0] and "has 3" in lines[0], lines


def test_keep_checkpoints_keeps_the_newest_and_the_final(tmp_path, data):
    run = tmp_path / "run"
    assert load_train_script().main(_args(run, data, "--checkpoint-every", "1", "--keep-checkpoints", "2",
                                          iters=5)) == 0
    assert [it for it, _ in list_checkpoints(run)] == [3, 4, 5]


def test_process_group_timeout_flag_reaches_the_session(monkeypatch, tmp_path, data):
    train = load_train_script()
    seen = {}
    real_session = trainer.distributed.distributed_session

    def session(device, timeout_minutes=30.0):
        seen["timeout"] = timeout_minutes
        return real_session(device, timeout_minutes)

    monkeypatch.setattr(trainer.distributed, "distributed_session", session)
    assert train.main(_args(tmp_path / "run", data, "--dist-timeout-min", "3.5", iters=1)) == 0
    assert seen["timeout"] == 3.5


def _copy(data, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for part in data.iterdir():
        target = root / part.name
        if part.is_dir():
            target.mkdir()
            for f in part.iterdir():
                (target / f.name).write_bytes(f.read_bytes())
        else:
            target.write_bytes(part.read_bytes())
    return root


@pytest.mark.parametrize("folder, damage", [("val2017", "corrupt"), ("train2017", "missing")])
def test_a_bad_image_stops_the_run_before_the_first_iteration(tmp_path, data, capsys, folder, damage):
    root = _copy(data, tmp_path)
    bad = sorted((root / folder).iterdir())[1]
    if damage == "missing":
        bad.unlink()
    else:
        bad.write_bytes(b"\x89PNG not really")
    run = tmp_path / "run"
    assert load_train_script().main(_args(run, root)) == 2
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and bad.name in lines[0] and "--skip-bad-images" in lines[0], err
    assert "Traceback" not in err
    assert not (run / "metrics.jsonl").exists() and not list_checkpoints(run)  # not one iteration ran


def test_an_image_lost_during_training_is_one_line_from_the_loader_worker(tmp_path, data, capsys, monkeypatch):
    root = _copy(data, tmp_path)
    train = load_train_script()
    real_loader = trainer.training_loader

    def loader_then_delete(dataset, **kwargs):
        for path in (root / "train2017").iterdir():  # after the start-up check: the files go away
            path.unlink()
        return real_loader(dataset, **kwargs)

    monkeypatch.setattr(trainer, "training_loader", loader_then_delete)
    argv = _args(tmp_path / "run", root)
    argv[argv.index("--workers") + 1] = "1"
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "DataLoader worker" not in err
    lines = _error_lines(err)
    assert len(lines) == 1 and "image file not found" in lines[0] and "train2017" in lines[0], err


def test_resume_without_the_backbone_weights_flag_keeps_the_architecture_it_trained(tmp_path, data, capsys):
    # automatic norm / frozen stages: frozen BN and 3 stages with ImageNet weights; the resumed run (no weights
    # flag, which would otherwise mean trainable BN in all stages) must rebuild what the checkpoint holds
    from fpn.backbones.resnet import ResNet

    weights = tmp_path / "imagenet.pth"
    torch.manual_seed(0)
    torch.save(ResNet(depth=18, width=16, norm="frozen_bn").state_dict(), weights)
    run = tmp_path / "run"
    auto = ["--backbone.norm", "none", "--backbone.trainable-stages", "none"]
    assert load_train_script().main(_args(run, data, *auto, "--backbone-weights", str(weights), iters=2)) == 0
    assert load_checkpoint(run / "checkpoint_0000002.pt")["config"]["backbone"]["norm"] == "frozen_bn"
    capsys.readouterr()
    assert load_train_script().main(_args(run, data, *auto, "--resume", iters=4)) == 0
    out = capsys.readouterr().out
    assert "model config changed" not in out
    config = load_checkpoint(run / "checkpoint_0000004.pt")["config"]["backbone"]
    assert (config["norm"], config["trainable_stages"]) == ("frozen_bn", 3)
