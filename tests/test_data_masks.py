"""Instance masks through the data path: fpn.data.masks (the three COCO segmentation forms, checked at build),
CocoDetection(masks=True) against pycocotools' annToMask, the flip of masks, the synthetic set's exact masks."""
import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from fpn.data import synthetic
from fpn.data.coco import CocoDetection
from fpn.data.masks import decode_masks, segmentation_problem
from fpn.data.transforms import RandomHorizontalFlip
from fpn.errors import InputError
from tests.test_data_coco import _write

HEIGHT, WIDTH = 30, 40  # image 5 of the mixed set


def _blob(top, left, bottom, right, hole=None):
    """A (HEIGHT, WIDTH) uint8 0/1 mask: a rectangle of rows top..bottom-1, columns left..right-1, minus `hole`."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[top:bottom, left:right] = 1
    if hole is not None:
        mask[hole] = 0
    return mask


def _uncompressed(mask):
    """COCO's uncompressed RLE of a (H, W) 0/1 mask: column-major runs, starting with a run of 0s."""
    flat = mask.flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def _compressed(mask):
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}  # as a json file holds it


def _mixed_annotations():
    """Image 5 (40 x 30): polygons, uncompressed RLE, a crowd region, compressed RLE; image 2: one polygon."""
    return [
        {"image_id": 5, "category_id": 7, "bbox": [1, 1, 31, 16],
         "segmentation": [[2, 2, 15, 3, 6, 12], [20, 5, 30, 5, 30, 15, 20, 15]]},  # two parts, merged
        {"image_id": 2, "category_id": 3, "bbox": [1, 1, 8, 8], "segmentation": [[1, 1, 9, 1, 9, 9, 1.5, 8.5]]},
        {"image_id": 5, "category_id": 3, "bbox": [4, 16, 10, 10],
         "segmentation": _uncompressed(_blob(16, 4, 26, 14, hole=(slice(18, 20), slice(6, 9))))},
        {"image_id": 5, "category_id": 42, "bbox": [0, 0, 40, 30], "iscrowd": 1,
         "segmentation": _uncompressed(_blob(0, 0, 30, 40))},
        {"image_id": 5, "category_id": 42, "bbox": [25, 20, 14, 9],
         "segmentation": _compressed(_blob(20, 25, 29, 39, hole=(slice(22, 24), slice(30, 33))))},
    ]


def _mixed(tmp_path, **kwargs):
    images_dir, path = _write(tmp_path, [(5, WIDTH, HEIGHT), (2, 20, 36), (9, 24, 24)], _mixed_annotations())
    return CocoDetection(images_dir, path, **{"train": False, "masks": True, **kwargs})


def test_polygons_and_both_rle_forms_decode_like_ann_to_mask(tmp_path):
    dataset = _mixed(tmp_path)
    _, target = dataset[1]  # image id 5: annotations 1, 3 and 5 in json order; 4 is a crowd region
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (3, HEIGHT, WIDTH)
    assert set(masks.unique().tolist()) == {0, 1}
    assert target["labels"].tolist() == [2, 1, 3] and len(target["boxes"]) == 3
    for mask, ann_id in zip(masks, [1, 3, 5]):
        assert torch.equal(mask, torch.from_numpy(dataset.coco.annToMask(dataset.coco.anns[ann_id])))
    assert torch.equal(masks[1], torch.from_numpy(_blob(16, 4, 26, 14, hole=(slice(18, 20), slice(6, 9)))))
    assert dataset.num_crowd_annotations == 1
    _, target = dataset[0]  # image id 2 (20 x 36)
    assert target["masks"].shape == (1, 36, 20)
    assert torch.equal(target["masks"][0], torch.from_numpy(dataset.coco.annToMask(dataset.coco.anns[2])))


def test_image_without_annotations_gives_zero_masks_of_its_size(tmp_path):
    _, target = _mixed(tmp_path)[2]  # image id 9 (24 x 24), no annotation
    assert target["masks"].shape == (0, 24, 24) and target["masks"].dtype == torch.uint8
    assert decode_masks([], 3, 4).shape == (0, 3, 4)


def test_masks_false_reads_no_segmentation(tmp_path):
    annotations = _mixed_annotations()
    annotations[0]["segmentation"] = []  # unusable, but not read without masks
    del annotations[1]["segmentation"]
    dataset = CocoDetection(*_write(tmp_path, [(5, WIDTH, HEIGHT), (2, 20, 36)], annotations), train=False)
    _, target = dataset[1]
    assert set(target) == {"boxes", "labels", "image_id", "orig_size"} and len(target["boxes"]) == 3
    assert dataset._segmentations is None


def test_drop_images_keeps_masks_with_their_boxes(tmp_path):
    dataset = _mixed(tmp_path)
    expected = dataset[1][1]["masks"]
    dataset.drop_images([0])  # image id 2
    assert dataset.image_ids == [5, 9] and torch.equal(dataset[0][1]["masks"], expected)


def test_train_flip_flips_masks_in_the_same_draw(tmp_path):
    plain = _mixed(tmp_path)[1][1]
    dataset = _mixed(tmp_path, train=True)
    seen = set()
    for epoch in range(10):
        image, target = dataset[(1, epoch)]
        flipped = not torch.equal(target["boxes"], plain["boxes"])
        assert torch.equal(target["masks"], plain["masks"].flip(-1) if flipped else plain["masks"])
        for mask, box in zip(target["masks"], target["boxes"]):  # the masks follow their boxes
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box[0] <= xs.min() and xs.max() < box[2] and box[1] <= ys.min() and ys.max() < box[3]
        seen.add(flipped)
    assert seen == {True, False}


def test_random_flip_transform_with_masks():
    image = torch.rand(3, 4, 6)
    masks = (torch.rand(2, 4, 6) > 0.5).to(torch.uint8)
    target = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 4.0], [1.0, 1.0, 6.0, 3.0]]), "masks": masks}
    _, out = RandomHorizontalFlip(1.0)(image, target)
    assert torch.equal(out["masks"], masks.flip(-1)) and out["masks"].dtype == torch.uint8
    assert torch.equal(target["masks"], masks)  # the input is not modified
    _, out = RandomHorizontalFlip(0.0)(image, target)
    assert out["masks"] is masks
    with pytest.raises(ValueError, match=r"\(N, 4, 6\).*\(2, 4, 5\)"):
        RandomHorizontalFlip(1.0)(image, {**target, "masks": masks[..., :5]})


GOOD_RLE = _compressed(_blob(0, 0, 5, 5))
BAD_SEGMENTATIONS = [
    ("missing", "has no segmentation"),
    ([], "has an empty polygon list"),
    ([[1, 1, 5, 1]], r"polygon \(part 0\) of 4 coordinates, expected an even number >= 6 \(at least 3 points\)"),
    ([[1, 1, 5, 1, 3, 4], [1, 1, 2, 2, 3]], r"polygon \(part 1\) of 5 coordinates"),
    ([[1, 1, 5, "x", 3, 4]], r"polygon \(part 0\) with a coordinate that is not a finite number"),
    ([1, 1, 5, 1, 3, 4], r"segmentation part 0 of type int, expected a polygon"),
    ({**GOOD_RLE, "size": [HEIGHT, WIDTH + 1]}, r"RLE of size \[30, 41\], but the image is .* = \[30, 40\]"),
    ({"size": [HEIGHT, WIDTH], "counts": [5, 10]}, r"RLE runs covering 15 pixels, but the image has 30 x 40 = 1200"),
    ({**GOOD_RLE, "counts": GOOD_RLE["counts"][:-1]}, "RLE runs covering|malformed RLE counts"),
    ({"counts": [1200]}, "RLE segmentation without 'size' and 'counts'"),
    ("polygon", "segmentation of type str, expected polygons"),
]


@pytest.mark.parametrize("segmentation, message", BAD_SEGMENTATIONS)
def test_bad_segmentation_is_refused_at_build_naming_file_and_annotation(tmp_path, segmentation, message):
    annotation = {"image_id": 5, "category_id": 7, "bbox": [2, 2, 5, 5], "id": 17}
    if segmentation != "missing":
        annotation["segmentation"] = segmentation
    images_dir, path = _write(tmp_path, [(5, WIDTH, HEIGHT)], [annotation], write_files=False)
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: annotation id 17 .*{message}") as caught:
        CocoDetection(images_dir, path, train=False, masks=True)  # no image file needed: refused at build
    assert "\n" not in str(caught.value)
    CocoDetection(images_dir, path, train=False)  # without masks the segmentation is not read


def test_crowd_and_dropped_annotations_are_not_checked(tmp_path):
    annotations = [
        {"image_id": 5, "category_id": 7, "bbox": [2, 2, 5, 5], "segmentation": [[2, 2, 7, 2, 7, 7]]},
        {"image_id": 5, "category_id": 7, "bbox": [0, 0, 40, 30], "iscrowd": 1, "segmentation": []},
        {"image_id": 5, "category_id": 7, "bbox": [50, 2, 5, 5]},  # outside the image: dropped, no segmentation
    ]
    with pytest.warns(UserWarning, match="dropped 1 annotations"):
        dataset = CocoDetection(*_write(tmp_path, [(5, WIDTH, HEIGHT)], annotations), train=False, masks=True)
    assert dataset[0][1]["masks"].shape == (1, HEIGHT, WIDTH)


def test_decoded_image_smaller_than_the_json_crops_masks_with_their_boxes(tmp_path):
    images_dir, path = _write(tmp_path, [(5, WIDTH, HEIGHT), (2, 20, 36)], _mixed_annotations())
    Image.fromarray(np.zeros((16, 24, 3), dtype=np.uint8)).save(images_dir / "0005.png")  # json: 40 x 30
    dataset = CocoDetection(images_dir, path, train=False, masks=True)
    with pytest.warns(UserWarning, match="decoded size"):
        _, target = dataset[1]
    assert target["masks"].shape == (1, 16, 24)  # the boxes starting below row 16 are gone, with their masks
    assert target["labels"].tolist() == [2]
    assert torch.equal(target["masks"][0], torch.from_numpy(dataset.coco.annToMask(dataset.coco.anns[1])[:16, :24]))


def test_compressed_rle_run_total_matches_pycocotools():
    rng = np.random.default_rng(0)
    for trial in range(40):
        height, width = (int(v) for v in rng.integers(1, 60, size=2))
        mask = (rng.uniform(size=(height, width)) < rng.uniform()).astype(np.uint8)
        rle = _compressed(mask)
        assert segmentation_problem(rle, height, width) is None
        assert segmentation_problem(_uncompressed(mask), height, width) is None
        decoded = decode_masks([rle, _uncompressed(mask)], height, width)  # (2, H, W)
        assert torch.equal(decoded, torch.from_numpy(mask).expand(2, -1, -1))
        if len(rle["counts"]) > 1:
            assert segmentation_problem({**rle, "counts": rle["counts"][:-1]}, height, width) is not None


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return synthetic.generate_synthetic_coco(tmp_path_factory.mktemp("shapes"), num_images=4, num_val=2, seed=2,
                                             min_size=64, max_size=90, progress=False)


def test_synthetic_masks_agree_with_boxes_areas_and_the_dataset(shapes):
    document = json.loads(shapes["train_annotations"].read_text())
    sizes = {img["id"]: [img["height"], img["width"]] for img in document["images"]}
    for ann in document["annotations"]:
        assert isinstance(ann["segmentation"]["counts"], str)
        assert ann["segmentation"]["size"] == sizes[ann["image_id"]]
        mask = mask_utils.decode(ann["segmentation"])
        ys, xs = np.nonzero(mask)
        assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == ann["bbox"]  # tight box
        assert mask.sum() == ann["area"]  # area is the mask's pixel count, as COCO defines it
    dataset = CocoDetection(shapes["train_images"], shapes["train_annotations"], train=False, masks=True)
    for index, image_id in enumerate(dataset.image_ids):
        image, target = dataset[index]
        anns = [a for a in document["annotations"] if a["image_id"] == image_id]
        assert target["masks"].shape == (len(anns), *image.shape[1:])
        for mask, ann in zip(target["masks"], anns):
            assert torch.equal(mask, torch.from_numpy(mask_utils.decode(ann["segmentation"])))
        assert target["masks"].sum(0).max() <= 1  # visible pixels: no pixel belongs to two objects


def test_synthetic_masks_are_exactly_the_visible_pixels(monkeypatch):
    placed = []  # (x0, y0, shape mask) of every shape drawn, in drawing order

    def recording_place_shape(*args, **kwargs):
        result = place_shape(*args, **kwargs)
        if result is not None:
            placed.append(result)
        return result

    place_shape = synthetic._place_shape
    monkeypatch.setattr(synthetic, "_place_shape", recording_place_shape)
    for seed in range(3):
        placed.clear()
        pixels, objects = synthetic.render_image(np.random.default_rng(seed), 90, 70, num_classes=6, max_objects=6)
        drawn = np.zeros((len(placed), 70, 90), dtype=bool)  # each shape's full mask in the image frame
        for k, (x0, y0, mask) in enumerate(placed):
            drawn[k, y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
        assert len(objects) == len(placed) >= 1
        for k, (_, _, area, segmentation) in enumerate(objects):
            visible = drawn[k] & ~drawn[k + 1 :].any(axis=0)  # not covered by a later shape
            assert np.array_equal(mask_utils.decode(segmentation), visible) and area == visible.sum()
            colour = pixels[visible].astype(np.float64).mean(axis=0)  # one flat colour (plus noise) under the mask
            assert np.abs(pixels[visible] - colour).mean() < 10


def test_synthetic_segmentation_scores_perfectly_in_cocoeval(shapes):
    dataset = CocoDetection(shapes["val_images"], shapes["val_annotations"], train=False, masks=True)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                "score": 1.0} for a in dataset.coco.dataset["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(dataset.coco, dataset.coco.loadRes(results), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)
