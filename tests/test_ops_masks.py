"""fpn.ops.masks against torchvision: paste_masks vs roi_heads.paste_masks_in_image, mask_targets vs the nearest
resize of GeneralizedRCNNTransform followed by project_masks_on_boxes (roi_align).

Inputs have a detector's structure: masks are rasterised ellipses and rectangles, boxes cluster around objects.
Tolerances (the largest differences measured on 40 seeds of these inputs, CPU): paste_masks float32 1.8e-7 (the
blends' rounding order; the sampling points are the same), float64 3.6e-15; mask_targets float32 3.0e-7 (summation
order), float64 4.5e-16, and exactly 0 wherever torchvision's target is 0. Both compare with TOLERANCE.
"""
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import _resize_image_and_masks
from torchvision.ops import roi_align

from fpn.ops import masks as masks_module
from fpn.ops.host_sync import HostSyncCounter
from fpn.ops.masks import mask_targets, nearest_source_pixels, paste_masks

TOLERANCE = {torch.float32: 5e-7, torch.float64: 1e-14}


def _shapes(g: torch.Generator, num: int, height: int, width: int, soft: bool = False) -> torch.Tensor:
    """(num, height, width) masks of random ellipses (even rows) and rectangles (odd rows): uint8 0/1, or for
    `soft` float probabilities falling off over ~2 pixels at the edge, as a mask head's sigmoid does."""
    y = torch.arange(height, dtype=torch.float64)[None, :, None] + 0.5
    x = torch.arange(width, dtype=torch.float64)[None, None, :] + 0.5
    size = torch.tensor([width, height], dtype=torch.float64)
    centre = (0.2 + 0.6 * torch.rand(num, 2, generator=g, dtype=torch.float64)) * size
    radius = (0.1 + 0.35 * torch.rand(num, 2, generator=g, dtype=torch.float64)) * size
    dx = (x - centre[:, 0, None, None]) / radius[:, 0, None, None]
    dy = (y - centre[:, 1, None, None]) / radius[:, 1, None, None]
    ellipse = 1 - torch.sqrt(dx**2 + dy**2)
    rectangle = 1 - torch.maximum(dx.abs(), dy.abs())
    inside = torch.where((torch.arange(num) % 2 == 0)[:, None, None], ellipse, rectangle)  # > 0 inside
    if soft:
        return torch.sigmoid(inside * radius.min(dim=1).values[:, None, None])
    return (inside > 0).to(torch.uint8)


def _boxes_around(g: torch.Generator, objects: torch.Tensor, num: int, jitter: float):
    """(num, 4) boxes (x1, y1, x2, y2) scattered around random objects, as a detector's or RPN's are (each side
    moved by up to `jitter` of the object's size), and (num,) int64 the object each was drawn around."""
    which = torch.randint(0, objects.shape[0], (num,), generator=g)
    base = objects[which]
    extent = (base[:, 2:] - base[:, :2]).repeat(1, 2)
    return base + (torch.rand(num, 4, generator=g, dtype=base.dtype) * 2 - 1) * jitter * extent, which


def _objects(g: torch.Generator, num: int, height: int, width: int, dtype=torch.float32) -> torch.Tensor:
    """(num, 4) object boxes inside a (height, width) image, 8 px to the whole image wide."""
    size = torch.tensor([width, height], dtype=torch.float64)
    extent = torch.exp(torch.rand(num, 2, generator=g, dtype=torch.float64) * torch.log(size / 8)) * 8
    corner = torch.rand(num, 2, generator=g, dtype=torch.float64) * (size - extent)
    return torch.cat((corner, corner + extent), dim=1).to(dtype)


# ---------------------------------------------------------------- paste_masks


def _paste_inputs(seed: int, num: int, height: int, width: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    boxes, _ = _boxes_around(g, _objects(g, 6, height, width, torch.float64), num, 0.15)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)  # detections are clipped to the image
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    masks = _shapes(g, num, 28, 28, soft=True)
    masks[1::3] = _shapes(g, num, 28, 28)[1::3].double()  # some hard 0/1 masks: their edges show any shift
    return masks[:, None].to(dtype), boxes.to(dtype)


def _assert_paste_matches(masks, boxes, image_size, padding=1):
    ours = paste_masks(masks, boxes, image_size, padding)
    ref = paste_masks_in_image(masks, boxes, image_size, padding)
    assert ours.shape == ref.shape == (masks.shape[0], 1, *image_size) and ours.dtype == masks.dtype
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOLERANCE[masks.dtype])
    assert torch.equal(ours == 0, ref == 0)  # the same pixels pasted, the same zeros
    return ours


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("image_size", [(96, 128), (131, 77)])
def test_paste_matches_torchvision(dtype, image_size):
    masks, boxes = _paste_inputs(0, 40, *image_size, dtype)
    ours = _assert_paste_matches(masks, boxes, image_size)
    assert (ours > 0.5).sum() > 0.05 * ours[0, 0].numel()  # the masks do land in the image


@pytest.mark.parametrize("padding", [0, 2])
def test_paste_other_padding(padding):
    masks, boxes = _paste_inputs(1, 12, 64, 80)
    _assert_paste_matches(masks, boxes, (64, 80), padding)


def test_paste_edge_boxes():
    height, width = 50, 70
    masks, _ = _paste_inputs(2, 10, height, width)
    boxes = torch.tensor([
        [10.0, 12.0, 40.0, 30.0],  # an ordinary box ...
        [10.0, 12.0, 40.0, 30.0],  # ... twice
        [40.0, 20.0, 70.0, 50.0],  # touching the right and bottom edges
        [60.0, 45.0, 75.0, 58.0],  # partly outside, below right
        [-8.0, -6.0, 12.0, 9.0],  # partly outside, above left
        [-30.0, -40.0, 120.0, 90.0],  # larger than the image
        [20.3, 30.6, 20.9, 31.1],  # under a pixel
        [33.0, 10.0, 33.0, 25.0],  # zero width
        [70.0, 10.0, 70.0, 30.0],  # zero width on the right edge
        [160.0, 10.0, 195.0, 30.0],  # far right of the image
    ])
    _assert_paste_matches(masks, boxes, (height, width))
    _assert_paste_matches(masks[:1], boxes[:1], (height, width))  # one box


def test_paste_boxes_outside_the_image_are_empty():
    # torchvision raises for most of these: its slice ends, negative or past the mask, count from the far side or
    # are cut to the mask, and the two sides of its assignment differ in size. fpn pastes nothing.
    masks = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    boxes = torch.tensor([[-40.0, 5.0, -20.0, 20.0], [5.0, -40.0, 20.0, -20.0], [-60.0, -50.0, -30.0, -20.0],
                          [45.0, 5.0, 60.0, 20.0], [5.0, 35.0, 20.0, 50.0]])  # left, above, both; right, below
    assert torch.equal(paste_masks(masks, boxes, (30, 40)), torch.zeros(5, 1, 30, 40))
    for i in range(5):
        with pytest.raises(RuntimeError):
            paste_masks_in_image(masks[i:i + 1], boxes[i:i + 1], (30, 40))


def test_paste_no_detections_and_empty_image():
    masks, boxes = torch.zeros(0, 1, 28, 28, dtype=torch.float64), torch.zeros(0, 4, dtype=torch.float64)
    out = paste_masks(masks, boxes, (20, 30))
    assert out.shape == (0, 1, 20, 30) and out.dtype == torch.float64
    assert paste_masks(torch.rand(2, 1, 28, 28), torch.ones(2, 4), (0, 5)).shape == (2, 1, 0, 5)


def test_paste_keeps_non_finite_values_inside_their_box():
    masks, boxes = torch.full((1, 1, 28, 28), float("nan")), torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    out = paste_masks(masks, boxes, (40, 40))
    inside = torch.zeros(40, 40, dtype=torch.bool)
    inside[9:21, 9:21] = True  # the box grown by 30 / 28 about its centre, [9.6, 20.4], truncated: pixels 9..20
    assert out[0, 0, ~inside].eq(0).all() and out[0, 0, inside].isnan().all()
    torch.testing.assert_close(out, paste_masks_in_image(masks, boxes, (40, 40)), equal_nan=True)


def test_paste_has_no_host_sync():
    masks, boxes = _paste_inputs(4, 8, 40, 50)
    with HostSyncCounter() as counter:
        paste_masks(masks, boxes, (40, 50))
    assert counter.total == 0, counter.report()


def test_paste_exports_with_dynamic_detections():
    class Paste(torch.nn.Module):
        def forward(self, masks, boxes, image):
            return paste_masks(masks, boxes, (image.shape[1], image.shape[2]))

    masks, boxes = _paste_inputs(5, 6, 40, 50)
    image = torch.zeros(3, 40, 50)
    detections = torch.export.Dim("detections", min=0)
    program = torch.export.export(Paste(), (masks, boxes, image),
                                  dynamic_shapes=({0: detections}, {0: detections}, None))
    other_masks, other_boxes = _paste_inputs(6, 9, 40, 50)
    assert torch.equal(program.module()(other_masks, other_boxes, image), paste_masks(other_masks, other_boxes,
                                                                                       (40, 50)))
    assert program.module()(other_masks[:0], other_boxes[:0], image).shape == (0, 1, 40, 50)


def test_paste_rejects_bad_inputs():
    masks, boxes = torch.rand(2, 1, 28, 28), torch.rand(2, 4)
    with pytest.raises(ValueError, match="masks"):
        paste_masks(masks[:, :, :, :20], boxes, (10, 10))
    with pytest.raises(ValueError, match="float32 or float64"):
        paste_masks(masks.half(), boxes, (10, 10))
    with pytest.raises(ValueError, match="one per mask"):
        paste_masks(masks, boxes[:1], (10, 10))
    with pytest.raises(ValueError, match="image_size"):
        paste_masks(masks, boxes, (10, -1))
    with pytest.raises(ValueError, match="padding"):
        paste_masks(masks, boxes, (10, 10), padding=-1)


# ---------------------------------------------------------------- mask_targets


def _reference_targets(gt_masks, resized_size, proposals, matched_gt, resolution=28):
    """torchvision: GeneralizedRCNNTransform's nearest resize, then project_masks_on_boxes."""
    resized = F.interpolate(gt_masks[:, None].float(), size=resized_size)[:, 0].byte()
    rois = torch.cat((matched_gt[:, None].to(proposals), proposals), dim=1)
    return roi_align(resized[:, None].to(rois), rois, (resolution, resolution), 1.0)[:, 0]


def _target_inputs(seed: int, num_gt: int, original, resized, num: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    gt_masks = _shapes(g, num_gt, *original)
    scale = torch.tensor([resized[1] / original[1], resized[0] / original[0]], dtype=torch.float64).repeat(2)
    objects = _objects(g, num_gt, *original, torch.float64) * scale  # in resized pixels
    proposals, matched_gt = _boxes_around(g, objects, num, 0.2)  # positives: IoU with their object about 0.5+
    return gt_masks, proposals.to(dtype), matched_gt


def _assert_targets_match(gt_masks, resized_size, proposals, matched_gt, resolution=28):
    ours = mask_targets(gt_masks, resized_size, proposals, matched_gt, resolution)
    ref = _reference_targets(gt_masks, resized_size, proposals, matched_gt, resolution)
    assert ours.shape == ref.shape == (proposals.shape[0], resolution, resolution) and ours.dtype == proposals.dtype
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOLERANCE[proposals.dtype])
    assert torch.equal(ours[ref == 0], ref[ref == 0])
    return ours


@pytest.mark.parametrize("original, resized", [
    ((48, 64), (80, 133)),  # up, as 480 x 640 -> 800 x 1333
    ((96, 72), (61, 45)),  # down
    ((40, 56), (40, 56)),  # the same size
    ((30, 25), (60, 50)),  # exactly twice
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_targets_match_torchvision(original, resized, dtype):
    gt_masks, proposals, matched_gt = _target_inputs(7, 6, original, resized, 40, dtype)
    ours = _assert_targets_match(gt_masks, resized, proposals, matched_gt)
    assert (ours > 0.5).float().mean() > 0.2  # the proposals do cover their objects


def test_targets_of_torchvisions_own_resize():
    # the masks torchvision's transform actually resizes (scale_factor, recomputed) are those of size=resized
    gt_masks, _, _ = _target_inputs(8, 5, (47, 63), (1, 1), 1)
    image = torch.rand(3, 47, 63, generator=torch.Generator().manual_seed(8))
    image, target = _resize_image_and_masks(image, 80, 133, {"masks": gt_masks})
    resized = tuple(image.shape[-2:])
    assert torch.equal(target["masks"], F.interpolate(gt_masks[:, None].float(), size=resized)[:, 0].byte())
    _, proposals, matched_gt = _target_inputs(8, 5, (47, 63), resized, 30)
    ours = mask_targets(gt_masks, resized, proposals, matched_gt)
    rois = torch.cat((matched_gt[:, None].to(proposals), proposals), dim=1)
    ref = roi_align(target["masks"][:, None].to(rois), rois, (28, 28), 1.0)[:, 0]
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOLERANCE[torch.float32])


@pytest.mark.parametrize("in_size, out_size", [(480, 800), (640, 1333), (800, 480), (7, 7), (5, 10), (3, 1)])
def test_nearest_source_pixels_match_interpolate(in_size, out_size):
    ramp = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size)
    expected = F.interpolate(ramp, size=out_size)[0, 0].long()
    assert torch.equal(nearest_source_pixels(in_size, out_size, torch.device("cpu")), expected)


def test_targets_edge_proposals():
    gt_masks, _, _ = _target_inputs(9, 3, (36, 52), (1, 1), 1)
    gt_masks[2] = 0  # an instance with an empty mask
    proposals = torch.tensor([
        [10.0, 12.0, 40.0, 30.0],
        [10.0, 12.0, 40.0, 30.0],  # the same proposal twice
        [40.0, 20.0, 70.0, 54.0],  # touching the right and bottom edges (70 x 54 image)
        [60.0, 45.0, 85.0, 68.0],  # partly outside, below right
        [-8.0, -6.0, 12.0, 9.0],  # partly outside, above left
        [-30.0, -40.0, 120.0, 90.0],  # larger than the image
        [20.3, 30.6, 20.9, 31.1],  # under a pixel
        [80.0, 10.0, 95.0, 30.0],  # right of the image
        [-20.0, -20.0, -3.0, -2.0],  # above left of the image
        [5.0, 5.0, 60.0, 50.0],  # on the empty instance
    ])
    matched_gt = torch.tensor([0, 0, 1, 0, 1, 0, 1, 0, 1, 2])
    ours = _assert_targets_match(gt_masks, (54, 70), proposals, matched_gt)
    assert ours[-1].eq(0).all() and ours[7].eq(0).all()
    _assert_targets_match(gt_masks, (54, 70), proposals[:1], matched_gt[:1])  # one proposal
    _assert_targets_match(gt_masks, (54, 70), proposals, matched_gt, resolution=7)


def test_targets_in_several_chunks(monkeypatch):
    gt_masks, proposals, matched_gt = _target_inputs(10, 5, (48, 64), (80, 133), 30)
    whole = mask_targets(gt_masks, (80, 133), proposals, matched_gt)
    monkeypatch.setattr(masks_module, "TARGET_CHUNK_PIXELS", 500)  # a chunk or a few proposals per chunk
    assert torch.equal(mask_targets(gt_masks, (80, 133), proposals, matched_gt), whole)


def test_targets_no_proposals_and_bool_masks():
    gt_masks, proposals, matched_gt = _target_inputs(11, 4, (30, 40), (50, 66), 12)
    out = mask_targets(gt_masks, (50, 66), proposals[:0], matched_gt[:0])
    assert out.shape == (0, 28, 28) and out.dtype == torch.float32
    assert mask_targets(gt_masks[:0], (50, 66), proposals[:0].double(), matched_gt[:0]).dtype == torch.float64
    assert torch.equal(mask_targets(gt_masks.bool(), (50, 66), proposals, matched_gt),
                       mask_targets(gt_masks, (50, 66), proposals, matched_gt))


def test_targets_one_host_sync():
    gt_masks, proposals, matched_gt = _target_inputs(12, 4, (30, 40), (50, 66), 12)
    with HostSyncCounter() as counter:
        mask_targets(gt_masks, (50, 66), proposals, matched_gt)
    assert counter.total == 1, counter.report()
    with HostSyncCounter() as counter:
        mask_targets(gt_masks, (50, 66), proposals[:0], matched_gt[:0])
    assert counter.total == 0, counter.report()


def test_targets_reject_bad_inputs():
    gt_masks, proposals, matched_gt = _target_inputs(13, 2, (20, 30), (20, 30), 3)
    with pytest.raises(ValueError, match="gt_masks"):
        mask_targets(gt_masks.float(), (20, 30), proposals, matched_gt)
    with pytest.raises(ValueError, match="resized_size"):
        mask_targets(gt_masks, (20, 0), proposals, matched_gt)
    with pytest.raises(ValueError, match="proposals"):
        mask_targets(gt_masks, (20, 30), proposals.half(), matched_gt)
    with pytest.raises(ValueError, match="matched_gt"):
        mask_targets(gt_masks, (20, 30), proposals, matched_gt.int())
    with pytest.raises(ValueError, match="resolution"):
        mask_targets(gt_masks, (20, 30), proposals, matched_gt, resolution=0)
