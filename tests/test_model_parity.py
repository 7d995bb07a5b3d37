"""Same weights -> same proposals and detections as torchvision's fasterrcnn_resnet50_fpn (v1)."""
import pytest
import torch
import torchvision
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.ops.misc import FrozenBatchNorm2d

from fpn import FasterRCNNFPN
from fpn.io.convert import convert_torchvision_state_dict
from fpn.detectors.transform import preprocess

# Shorter side 320 keeps the test fast on CPU; the code path is the one used at 800.
MIN_SIZE, MAX_SIZE = 320, 533
BOX_TOL, SCORE_TOL = 0.01, 1e-4


def _randomise(model: torch.nn.Module) -> None:
    """Seeded random weights everywhere, frozen-BN statistics included, with class logits biased so that
    detections pass the 0.05 score threshold (as trained weights would)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith("running_mean") or (name.startswith("backbone.body") and name.endswith("bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)
            elif name.startswith("backbone.body") and name.endswith("weight") and tensor.dim() == 1:
                tensor.copy_(torch.rand(tensor.shape, generator=g) * 0.5 + 0.75)
        rpn = model.rpn.head
        rpn.cls_logits.weight.normal_(0, 0.004, generator=g)  # logits of std ~2: no saturated ties
        rpn.bbox_pred.weight.normal_(0, 0.002, generator=g)
        predictor = model.roi_heads.box_predictor
        predictor.cls_score.weight.normal_(0, 0.003, generator=g)  # fc7 features have norm ~500
        predictor.bbox_pred.weight.normal_(0, 0.001, generator=g)
        bias = torch.full((predictor.cls_score.bias.numel(),), -3.0)
        bias[0], bias[1:6] = 0.0, 3.0
        predictor.cls_score.bias.copy_(bias)


def _freeze_batch_norm(module: torch.nn.Module) -> None:
    """Swap BatchNorm2d for FrozenBatchNorm2d (same buffers), as torchvision does whenever it builds this
    model with pretrained weights; without weights it uses BatchNorm2d, whose eval-mode arithmetic differs in
    the last bits and would only add noise to the comparison."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for buffer in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, buffer).copy_(getattr(child, buffer).detach())
            setattr(module, name, frozen)
        else:
            _freeze_batch_norm(child)


def build_models(min_size: int, max_size: int):
    """torchvision's detector with seeded random weights (frozen BN) and ours converted from it, both in eval
    mode and resizing images to (min_size, max_size), in training too."""
    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=min_size, max_size=max_size)
    _randomise(tv)
    _freeze_batch_norm(tv)
    tv.eval()
    ours = FasterRCNNFPN.from_torchvision(tv.state_dict())
    ours.config.input.min_size, ours.config.input.max_size = min_size, max_size
    ours.config.input.train_min_sizes = (min_size,)
    ours.eval()
    return tv, ours


@pytest.fixture(scope="module")
def models():
    return build_models(MIN_SIZE, MAX_SIZE)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    # landscape, portrait, and sizes that are not multiples of 32
    return [torch.rand(3, h, w, generator=g) for h, w in [(240, 320), (413, 277), (301, 450)]]


def _match(ours, theirs):
    """Match detections one to one (same label, greedy by IoU) and return the pairs."""
    assert ours["boxes"].shape == theirs["boxes"].shape, (ours["boxes"].shape, theirs["boxes"].shape)
    iou = torchvision.ops.box_iou(ours["boxes"], theirs["boxes"])
    iou[ours["labels"][:, None] != theirs["labels"][None, :]] = -1
    pairs, used = [], set()
    for i in range(iou.shape[0]):
        order = torch.argsort(iou[i], descending=True, stable=True).tolist()
        j = next(j for j in order if j not in used)
        used.add(j)
        pairs.append((i, j))
    return pairs


def test_converted_state_dict_covers_every_parameter(models):
    tv, ours = models
    converted = convert_torchvision_state_dict(tv.state_dict())
    assert set(converted) == set(ours.state_dict())
    for key, value in converted.items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_same_rpn_proposals(models, images):
    tv, ours = models
    with torch.no_grad():
        tv_batch, _ = tv.transform(images)
        tv_props, _ = tv.rpn(tv_batch, tv.backbone(tv_batch.tensors))
        batch, _ = preprocess(images, None, ours.config.input, training=False)
        assert torch.equal(batch.tensor, tv_batch.tensors)
        assert batch.image_sizes == tv_batch.image_sizes
        props, _ = ours.rpn(batch, ours.neck(ours.backbone(batch.tensor)))
    for p, q in zip(props, tv_props):
        assert p.shape == q.shape and p.shape[0] > 100
        # Same set of boxes: proposals whose scores agree to ~1e-7 may come out in either order.
        distance = (p[:, None, :] - q[None, :, :]).abs().amax(dim=2)  # (P, P) L-inf distance in px
        assert distance.amin(dim=1).max() <= BOX_TOL
        assert distance.amin(dim=0).max() <= BOX_TOL


def test_same_detections(models, images):
    tv, ours = models
    with torch.no_grad():
        expected = tv(images)
        got = ours(images)
    total = 0
    for o, t in zip(got, expected):
        assert o["boxes"].shape[0] > 5  # the biased logits make real detections
        total += o["boxes"].shape[0]
        for i, j in _match(o, t):
            assert o["labels"][i] == t["labels"][j]
            assert (o["boxes"][i] - t["boxes"][j]).abs().max() <= BOX_TOL
            assert (o["scores"][i] - t["scores"][j]).abs() <= SCORE_TOL
    assert total > 30


def test_from_torchvision_file_and_new_class_count(models, tmp_path):
    tv, _ = models
    path = tmp_path / "fasterrcnn.pth"
    torch.save(tv.state_dict(), path)
    model = FasterRCNNFPN.from_torchvision(str(path))
    assert model.num_classes == 91
    assert torch.equal(model.backbone.conv1.weight, tv.backbone.body.conv1.weight)
    finetune = FasterRCNNFPN.from_torchvision(str(path), num_classes=5)
    assert finetune.roi_heads.predictor.cls_score.out_features == 5
    assert torch.equal(finetune.roi_heads.box_head.fc6.weight, tv.roi_heads.box_head.fc6.weight)


def test_from_torchvision_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        FasterRCNNFPN.from_torchvision(str(tmp_path / "missing.pth"))
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision fasterrcnn"):
        FasterRCNNFPN.from_torchvision(str(bad))
    with pytest.raises(ValueError, match="unexpected keys"):
        convert_torchvision_state_dict({"roi_heads.box_predictor.cls_score.weight": torch.zeros(2), "foo": torch.zeros(1)})
