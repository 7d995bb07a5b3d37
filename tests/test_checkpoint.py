"""Checkpoints: atomic writes, weights_only loading, RNG round trip, last checkpoint, loading detectors."""
import os
import random

import numpy as np
import pytest
import torch
import torchvision

from fpn.engine.checkpoint import (
    atomic_save, checkpoint_path, last_checkpoint, load_checkpoint, load_detector, load_pretrained_weights,
    save_checkpoint,
)
from fpn.config import FasterRCNNConfig
from fpn.data.coco_names import COCO_CLASS_NAMES
from fpn.engine.loop import build_grad_scaler
from fpn.detectors.faster_rcnn import FasterRCNNFPN
from fpn.engine.resume import restore_training_state
from fpn.engine.rng_state import capture_rng_state, restore_rng_state
from fpn.engine.schedule import build_lr_scheduler, build_optimizer


def tiny_config(width=16):
    cfg = FasterRCNNConfig()
    cfg.backbone.depth, cfg.backbone.width, cfg.backbone.norm = 18, width, "gn"
    cfg.backbone.gn_groups, cfg.backbone.trainable_stages = 8, 5
    cfg.fpn.out_channels, cfg.roi_heads.representation_size = 32, 64
    cfg.input.min_size, cfg.input.max_size, cfg.input.train_min_sizes = 64, 96, (64,)
    return cfg


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_atomic_save_replaces_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "a.pt"
    atomic_save({"x": torch.arange(3)}, path)
    atomic_save({"x": torch.arange(4)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(4))
    assert [p.name for p in path.parent.iterdir()] == ["a.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "a.pt"
    atomic_save({"x": torch.ones(2)}, path)
    real_save = torch.save

    def crash(obj, handle):
        real_save({"partial": torch.zeros(1000)}, handle)  # bytes are written, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"x": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    atomic_save(capture_rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random(), random.gauss(0, 1))
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random(), random.gauss(0, 1))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_last_checkpoint_picks_most_iterations(tmp_path):
    assert last_checkpoint(tmp_path / "missing") is None
    assert last_checkpoint(tmp_path) is None
    for name in ("checkpoint_0000100.pt", "checkpoint_0002000.pt", "checkpoint_0000300.pt", "metrics.jsonl",
                 ".checkpoint_0009000.pt.abc.tmp", "checkpoint_final.pt"):
        (tmp_path / name).write_bytes(b"")
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint_0002000.pt" == checkpoint_path(tmp_path, 2000)


def _training_objects(num_classes=3, width=16, seed=0):
    torch.manual_seed(seed)
    model = FasterRCNNFPN(num_classes=num_classes, config=tiny_config(width))
    optimizer = build_optimizer(model, 0.01)
    scheduler = build_lr_scheduler(optimizer, steps=(5,), warmup_iters=3)
    return model, optimizer, scheduler


def _one_step(model, optimizer, scheduler):
    torch.manual_seed(5)
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    model.train()
    loss = sum(model(images, targets).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def test_checkpoint_is_weights_only_loadable_and_resumes_training_state(tmp_path):
    model, optimizer, scheduler = _training_objects()
    _one_step(model, optimizer, scheduler)
    names = {0: "__background__", 1: "circle", 2: "square"}
    path = save_checkpoint(checkpoint_path(tmp_path, 1), model=model, optimizer=optimizer, scheduler=scheduler,
                           scaler=build_grad_scaler(torch.device("cpu"), "none"), iteration=1,
                           label_to_category={1: 7, 2: 9}, class_names=names,
                           args={"output_dir": tmp_path, "steps": (5,), "lr": 0.01})
    raw = torch.load(path, weights_only=True)
    assert raw["iteration"] == 1 and raw["num_classes"] == 3
    assert raw["label_to_category"] == {1: 7, 2: 9} and raw["class_names"] == names
    assert raw["args"] == {"output_dir": str(tmp_path), "steps": [5], "lr": 0.01}
    assert FasterRCNNConfig.from_dict(raw["config"]) == model.config

    restored, optimizer2, scheduler2 = _training_objects(seed=1)
    torch.manual_seed(123)
    checkpoint = load_checkpoint(path)
    notes = restore_training_state(checkpoint, model=restored, optimizer=optimizer2, scheduler=scheduler2, scaler=None)
    assert notes == [] and checkpoint["iteration"] == 1 and scheduler2.last_epoch == scheduler.last_epoch == 1
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    # the same next step from the restored state gives the same weights
    _one_step(model, optimizer, scheduler)
    _one_step(restored, optimizer2, scheduler2)
    for key, value in model.state_dict().items():
        assert torch.allclose(restored.state_dict()[key], value, atol=1e-7), key


def test_load_checkpoint_rejects_other_files(tmp_path):
    atomic_save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_load_detector_from_our_checkpoint_predicts_the_same(tmp_path):
    model, optimizer, scheduler = _training_objects()
    path = save_checkpoint(tmp_path / "c.pt", model=model, optimizer=optimizer, scheduler=scheduler, scaler=None,
                           iteration=0, label_to_category={1: 1, 2: 2}, class_names={1: "a", 2: "b"})
    loaded, class_names = load_detector(path, "cpu")
    assert class_names == {1: "a", 2: "b"} and not loaded.training
    image = torch.rand(3, 64, 64)
    expected = model.eval()([image])[0]
    got = loaded([image])[0]
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(got[key], expected[key])
    with pytest.raises(ValueError, match="no such file"):
        load_detector(tmp_path / "nope.pt")


def test_load_detector_from_a_torchvision_file(tmp_path):
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    model, class_names = load_detector(tmp_path / "tv.pth")
    assert model.num_classes == 91 and not model.training
    assert class_names == COCO_CLASS_NAMES and class_names[1] == "person"


def test_init_from_our_checkpoint_with_another_label_set(tmp_path):
    source, optimizer, scheduler = _training_objects(num_classes=5, seed=3)
    save_checkpoint(tmp_path / "c.pt", model=source, optimizer=optimizer, scheduler=scheduler, scaler=None,
                    iteration=0, label_to_category={i: i for i in range(1, 5)}, class_names={})
    target, _, _ = _training_objects(num_classes=3, seed=4)
    before = _state(target)
    skipped = load_pretrained_weights(target, tmp_path / "c.pt")
    assert len(skipped) == 4  # class scores and box deltas: weight and bias of each
    for key, value in target.state_dict().items():
        expected = before[key] if key in skipped else source.state_dict()[key]
        assert torch.equal(value, expected), key

    narrow, _, _ = _training_objects(width=8)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_pretrained_weights(narrow, tmp_path / "c.pt")


def test_sigterm_during_the_write_is_held_back_until_the_checkpoint_is_complete(tmp_path, monkeypatch):
    # a SIGTERM arriving inside torch.save (turned into KeyboardInterrupt by the tools' handler) would leave torch's
    # zip writer failing on close with an error hiding the interrupt; held back, the file is completed and the
    # interrupt is raised right after
    import signal

    import torch.serialization as serialization

    from fpn.engine.interrupts import sigterm_as_interrupt

    real_save = serialization._save

    def save_while_signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(serialization, "_save", save_while_signalled)
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        atomic_save({"a": torch.arange(100_000.0)}, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["a"], torch.arange(100_000.0))
