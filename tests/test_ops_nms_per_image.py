"""fpn.ops.nms_per_image: one call for a batch gives what each image's own filter + batched NMS + top-k gives."""
import torch
import torchvision

from fpn.ops.host_sync import HostSyncCounter
from fpn.ops import batched_nms
from fpn.ops.boxes import large_enough
from fpn.ops.nms_per_image import nms_per_image


def _candidates(seed: int, counts, num_classes: int):
    g = torch.Generator().manual_seed(seed)
    total = sum(counts)
    xy = torch.rand(total, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(total, 2, generator=g) * 20], dim=1)
    scores = (torch.rand(total, generator=g) * 8).round() / 8  # coarse: many tied scores
    classes = torch.randint(num_classes, (total,), generator=g)
    images = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    valid = scores > 0.2
    return boxes, scores, classes, images, valid


def _per_image_reference(boxes, scores, classes, images, valid, num_images, iou, top_k):
    result = []
    for i in range(num_images):
        index = torch.where((images == i) & valid)[0]
        keep = torchvision.ops.batched_nms(boxes[index], scores[index], classes[index], iou)[:top_k]
        result.append(index[keep])
    return result


def test_same_as_each_image_alone_with_ties_and_truncation():
    counts, num_classes = [60, 0, 45, 80], 3
    boxes, scores, classes, images, valid = _candidates(0, counts, num_classes)
    for iou, top_k in [(0.5, 1000), (0.3, 7), (0.7, 1)]:
        got = nms_per_image(boxes, scores, classes, images, valid, len(counts), num_classes, iou, top_k)
        expected = _per_image_reference(boxes, scores, classes, images, valid, len(counts), iou, top_k)
        assert len(got) == len(counts)
        for g, e in zip(got, expected):
            assert g.tolist() == e.tolist()


def test_nothing_valid_gives_empty_images():
    boxes, scores, classes, images, _ = _candidates(1, [5, 6], 2)
    got = nms_per_image(boxes, scores, classes, images, torch.zeros(11, dtype=torch.bool), 2, 2, 0.5, 10)
    assert [k.shape for k in got] == [(0,), (0,)] and all(k.dtype == torch.int64 for k in got)


def test_host_syncs_are_two_plus_one_nms_call():
    boxes, scores, classes, images, valid = _candidates(2, [30, 40], 2)
    with HostSyncCounter() as counter:
        nms_per_image(boxes, scores, classes, images, valid, 2, 2, 0.5, 100)
    index = torch.where(valid)[0]
    with HostSyncCounter() as nms_alone:
        batched_nms(boxes[index], scores[index], images[index] * 2 + classes[index], 0.5)
    assert counter.total == 2 + nms_alone.total


def test_large_enough():
    boxes = torch.tensor([[0.0, 0, 2, 2], [0, 0, 0.5, 3], [1, 1, 3, 1.5], [0, 0, 1, 1]])
    assert large_enough(boxes, 1.0).tolist() == [True, False, False, True]
