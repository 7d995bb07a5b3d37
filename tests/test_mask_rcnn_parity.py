"""Same weights -> the same detections, masks and training losses as torchvision's maskrcnn_resnet50_fpn (v1) and
maskrcnn_resnet50_fpn_v2 (BatchNorm in the FPN, two RPN convs, the 4conv1fc box head, BatchNorm in the mask head).

The house technique (tests/test_model_parity.py, tests/test_model_parity_v2.py): torchvision's builders without
any download, seeded random weights, v1's trunk with frozen BN as torchvision builds it with weights, v2's
BatchNorm statistics measured on seeded images; ours from `MaskRCNNFPN.from_torchvision` of the state dict.
Images at a shorter side of 192 and 50 proposals per image keep the file fast on CPU.
"""
import copy
import functools

import pytest
import torch
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

from fpn import FasterRCNNFPN, MaskRCNNFPN, load_detector
from fpn.io.convert import convert_torchvision_state_dict
from tests.test_model_parity import _freeze_batch_norm, _randomise
from tests.test_mask_rcnn import ellipse
from tests.test_model_parity_mobilenet import blob_images
from tests.test_model_parity_v2 import MAX_SIZE, MIN_SIZE, TOP_N, as_test_model
from tests.test_model_parity_v2 import two_threads  # noqa: F401 (an autouse fixture: at most 2 threads)

MASK_TOL = 1e-4  # mean absolute difference of each detection's pasted mask (the bound)
BUILDERS = {"v1": maskrcnn_resnet50_fpn, "v2": maskrcnn_resnet50_fpn_v2}


def images():
    return blob_images([(240, 320), (260, 300)], seed=1)


def targets(sizes=((240, 320), (260, 300))):
    """Two objects and one, each of its own class, with an ellipse mask inside each box (the images' own pixels)."""
    boxes = [[[20.0, 30.0, 200.0, 180.0], [150.0, 100.0, 300.0, 230.0]], [[40.0, 30.0, 280.0, 240.0]]]
    return [{"boxes": torch.tensor(b), "labels": torch.tensor(labels),
             "masks": torch.stack([ellipse(h, w, box) for box in b])}
            for (h, w), b, labels in zip(sizes, boxes, [[1, 3], [2]])]


def _calibrate_batch_norm(model: nn.Module) -> None:
    """v2: each BatchNorm's running statistics become the mean and variance of what it sees in one training forward
    on two seeded images, the random affine terms kept (tests/test_model_parity_v2.py)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        model(blob_images([(256, 320), (288, 300)], seed=3), targets([(256, 320), (288, 300)]))
    for norm in norms:
        norm.running_var.clamp_(min=0.01)
        norm.momentum = 0.1
    model.eval()


def _randomise_mask_branch(model: nn.Module) -> None:
    """Mask logits of a trained model's spread (std ~3 at 28x28) rather than kaiming's at random features."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.normal_(0, 0.05, generator=g)


@functools.lru_cache(maxsize=None)
def build_models(version: str):
    """torchvision's Mask R-CNN (`version` v1 or v2) with seeded random weights, and ours from its state dict, in
    eval mode at (MIN_SIZE, MAX_SIZE) with PROPOSALS proposals per image."""
    torch.manual_seed(0)
    tv = BUILDERS[version](weights=None, weights_backbone=None, min_size=MIN_SIZE, max_size=MAX_SIZE, **TOP_N)
    _randomise(tv)
    _randomise_mask_branch(tv)
    if version == "v1":
        _freeze_batch_norm(tv)  # as torchvision builds v1 with weights
    else:
        _calibrate_batch_norm(tv)
    return tv.eval(), as_test_model(MaskRCNNFPN.from_torchvision(tv.state_dict())).eval()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_converted_state_dict_is_ours_key_for_key(version):
    tv, ours = build_models(version)
    converted = convert_torchvision_state_dict(tv.state_dict())
    assert list(converted) == list(ours.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(value, converted[key]), key
    assert (ours.config.mask.norm, ours.config.fpn.norm) == (("none", "none") if version == "v1" else ("bn", "bn"))
    assert torch.equal(converted["mask_branch.predictor.conv5_mask.weight"],
                       tv.state_dict()["roi_heads.mask_predictor.conv5_mask.weight"])


def test_files_written_before_torchvision_renamed_the_mask_head_load_too():
    """torchvision's published v1 weights name the mask head's convs mask_fcn1..4 (its loader renames them)."""
    tv, ours = build_models("v1")
    old = {}
    for key, value in tv.state_dict().items():
        parts = key.split(".")
        if key.startswith("roi_heads.mask_head."):  # roi_heads.mask_head.{i}.0.weight -> ...mask_fcn{i+1}.weight
            key = f"roi_heads.mask_head.mask_fcn{int(parts[2]) + 1}.{parts[-1]}"
        old[key] = value
    reloaded = MaskRCNNFPN.from_torchvision(old)
    assert all(torch.equal(value, ours.state_dict()[key]) for key, value in reloaded.state_dict().items())


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_same_detections_and_masks(version):
    """float64: the same detections in the same order (boxes within 1e-3 px, scores within 1e-6) and masks within
    MASK_TOL mean absolute difference per detection (not closer: our RPN runs its anchors and box decoding in
    float32 at any precision)."""
    tv, ours = build_models(version)
    tv, ours = copy.deepcopy(tv).double(), copy.deepcopy(ours).double()
    batch = [image.double() for image in images()]
    with torch.no_grad():
        expected, got = tv(batch), ours(batch)
    for image, theirs, mine in zip(batch, expected, got):
        assert len(theirs["boxes"]) > 20
        assert torch.equal(mine["labels"], theirs["labels"])
        torch.testing.assert_close(mine["boxes"].double(), theirs["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(mine["scores"].double(), theirs["scores"], rtol=0, atol=1e-6)
        assert mine["masks"].shape == theirs["masks"].shape == (len(theirs["boxes"]), 1, *image.shape[1:])
        assert (mine["masks"] - theirs["masks"]).abs().mean(dim=(1, 2, 3)).max() < MASK_TOL
        assert theirs["masks"].amax() > 0.7 and theirs["masks"].amin() < 0.1  # masks that say something


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_same_losses_in_training(version):
    """Training mode, float64. The samplers draw other random numbers than torchvision's (fpn/ops/sampler.py), so
    both take every anchor and every RoI: then the sampled sets, and the positives the mask loss scores, are the
    same. Each of the five losses within 1e-5 of torchvision's, relative."""
    tv, ours = build_models(version)
    tv, ours = copy.deepcopy(tv).double().train(), copy.deepcopy(ours).double().train()
    for sampler in (tv.rpn.fg_bg_sampler, tv.roi_heads.fg_bg_sampler, ours.rpn.sampler, ours.roi_heads.sampler):
        sampler.batch_size_per_image, sampler.positive_fraction = 10**6, 1.0
    batch = [image.double() for image in images()]
    gt = [dict(t, boxes=t["boxes"].double()) for t in targets()]
    torch.manual_seed(0)
    expected = tv(batch, [dict(t) for t in gt])
    torch.manual_seed(0)
    got = ours(batch, [dict(t) for t in gt])
    assert set(got) == set(expected) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
                                         "loss_mask"}
    for name in expected:
        assert abs(got[name].item() - expected[name].item()) <= 1e-5 * abs(expected[name].item()), name
    assert expected["loss_mask"].item() > 0.1


def test_load_detector_reads_a_mask_rcnn_file_and_fine_tunes_to_other_classes(tmp_path):
    tv, ours = build_models("v1")
    path = tmp_path / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    torch.save(tv.state_dict(), path)
    loaded, class_names = load_detector(path)
    assert isinstance(loaded, MaskRCNNFPN) and len(class_names) == 91
    assert all(torch.equal(value, ours.state_dict()[key]) for key, value in loaded.state_dict().items())
    fresh = MaskRCNNFPN.from_torchvision(path, num_classes=3)  # the class-specific layers start fresh
    assert fresh.mask_branch.predictor.mask_fcn_logits.out_channels == 3
    assert torch.equal(fresh.mask_branch.predictor.conv5_mask.weight,
                       ours.mask_branch.predictor.conv5_mask.weight)


def test_a_file_of_the_other_detector_is_refused_naming_it():
    tv, _ = build_models("v1")
    with pytest.raises(ValueError, match="holds a maskrcnn_resnet50_fpn model: load it with MaskRCNNFPN"):
        FasterRCNNFPN.from_torchvision(tv.state_dict())
    boxes_only = {k: v for k, v in tv.state_dict().items() if not k.startswith("roi_heads.mask_")}
    with pytest.raises(ValueError, match="holds a Faster R-CNN .* load it with FasterRCNNFPN"):
        MaskRCNNFPN.from_torchvision(boxes_only)
