"""What `import fpn` offers a user: the two detectors, their configs, and `fpn.load_detector` for any detector file
(a training checkpoint of either detector, or a torchvision file)."""
import pytest
import torch
import torchvision

import fpn
from fpn.detectors.build import convert_config
from fpn.engine.checkpoint import save_checkpoint
from test_checkpoint import tiny_config


def test_the_package_exports_what_its_docs_name():
    assert set(fpn.__all__) == {"FasterRCNNFPN", "FasterRCNNConfig", "FCOSFPN", "FCOSConfig", "MaskRCNNFPN",
                                "MaskRCNNConfig", "FeatureSpec", "load_detector"}
    assert all(hasattr(fpn, name) for name in fpn.__all__)


def _tiny(arch: str):
    config = tiny_config() if arch == "faster_rcnn" else convert_config(tiny_config(), "fcos")
    if arch == "fcos":
        config.head.gn_groups = 8
    torch.manual_seed(0)
    detector = fpn.FasterRCNNFPN if arch == "faster_rcnn" else fpn.FCOSFPN
    return detector(3, config)


@pytest.mark.parametrize("arch", ["faster_rcnn", "fcos"])
def test_load_detector_reads_our_checkpoint_of_either_detector(tmp_path, arch):
    model = _tiny(arch)
    with torch.no_grad():  # detections on a random model: a score threshold of 0 keeps some
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    path = save_checkpoint(tmp_path / "checkpoint_0000007.pt", model=model, optimizer=None, scheduler=None,
                           scaler=None, iteration=7, label_to_category={1: 1, 2: 5}, class_names={1: "a", 2: "b"})
    loaded, class_names = fpn.load_detector(path)
    assert type(loaded) is type(model) and not loaded.training and class_names == {1: "a", 2: "b"}
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        expected, got = model.eval()(images)[0], loaded(images)[0]
    assert set(got) == {"boxes", "scores", "labels"}
    for key in got:
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("name, detector", [("fasterrcnn_resnet50_fpn", fpn.FasterRCNNFPN),
                                            ("fcos_resnet50_fpn", fpn.FCOSFPN)])
def test_load_detector_reads_a_torchvision_file(tmp_path, name, detector):
    torch.manual_seed(0)
    reference = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, num_classes=4)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    loaded, _ = fpn.load_detector(tmp_path / "tv.pth")
    expected = detector.from_torchvision(reference.state_dict())  # the documented route, same weights and config
    assert type(loaded) is detector and not loaded.training and loaded.num_classes == 4
    assert loaded.config == expected.config
    assert all(torch.equal(value, expected.state_dict()[key]) for key, value in loaded.state_dict().items())


@pytest.mark.parametrize("arch, detector", [("faster_rcnn", fpn.FasterRCNNFPN), ("fcos", fpn.FCOSFPN),
                                            ("faster_rcnn", fpn.FCOSFPN)])
def test_from_torchvision_on_our_checkpoint_points_at_load_detector(tmp_path, arch, detector):
    path = save_checkpoint(tmp_path / "ours.pt", model=_tiny(arch), optimizer=None, scheduler=None, scaler=None,
                           iteration=0, label_to_category={1: 1, 2: 2}, class_names={})
    pointer = r"not a torchvision \S+ (checkpoint|state dict): .*fpn\.load_detector\(path\)"
    with pytest.raises(ValueError, match=pointer):
        detector.from_torchvision(path)
