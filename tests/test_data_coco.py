"""fpn.data.coco: label mapping, box conversion/clipping/filtering, crowd handling, errors naming what is wrong,
bad-image skipping, dropping images, reproducible flips independent of DataLoader workers, collate."""
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fpn.errors import InputError
from fpn.data.coco import CocoDetection, collate
from fpn.data.samplers import GroupedBatchSampler, TrainingSampler

CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 3, "name": "bus"}, {"id": 42, "name": "kite"}]  # gapped, unsorted


def _pixels(width, height, image_id):
    """Distinct, deterministic pixels for each image: (H, W, 3) uint8."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 4 % 256, ys * 4 % 256, np.full_like(xs, image_id * 20)], axis=2).astype(np.uint8)


def _write(tmp_path, images, annotations, categories=CATEGORIES, write_files=True):
    """images: list of (id, width, height); returns (images_dir, annotation path)."""
    images_dir = tmp_path / "images"
    images_dir.mkdir(exist_ok=True)
    entries = []
    for image_id, width, height in images:
        name = f"{image_id:04d}.png"
        if write_files:
            Image.fromarray(_pixels(width, height, image_id)).save(images_dir / name)
        entries.append({"id": image_id, "file_name": name, "width": width, "height": height})
    for ann_id, ann in enumerate(annotations, start=1):
        ann.setdefault("id", ann_id)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", 1.0)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return images_dir, path


def _basic(tmp_path, **kwargs):
    images = [(5, 40, 30), (2, 20, 36), (9, 24, 24)]  # image 9 has no annotation
    annotations = [
        {"image_id": 5, "category_id": 42, "bbox": [2, 3, 10, 5]},
        {"image_id": 5, "category_id": 3, "bbox": [-5, 10, 20, 100]},  # clipped to [0, 10, 15, 30]
        {"image_id": 2, "category_id": 7, "bbox": [1.5, 2.5, 4, 6]},
        {"image_id": 2, "category_id": 3, "bbox": [0, 0, 20, 36], "iscrowd": 1},
    ]
    return CocoDetection(*_write(tmp_path, images, annotations), train=False, **kwargs)


def test_gapped_category_ids_map_to_contiguous_labels(tmp_path):
    dataset = _basic(tmp_path)
    assert dataset.label_to_category == {1: 3, 2: 7, 3: 42}
    assert dataset.category_to_label == {3: 1, 7: 2, 42: 3}
    assert dataset.class_names == {0: "__background__", 1: "bus", 2: "cat", 3: "kite"}
    assert dataset.num_classes == 4
    assert dataset.image_ids == [2, 5, 9] and len(dataset) == 3


def test_targets_xyxy_clipped_crowd_excluded(tmp_path):
    dataset = _basic(tmp_path)
    image, target = dataset[1]  # image id 5
    assert target["image_id"] == 5 and target["orig_size"] == (30, 40)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 3.0, 12.0, 8.0], [0.0, 10.0, 15.0, 30.0]]))
    assert target["labels"].tolist() == [3, 1]
    _, target = dataset[0]  # image id 2: the crowd box is not a target
    assert torch.equal(target["boxes"], torch.tensor([[1.5, 2.5, 5.5, 8.5]]))
    assert target["labels"].tolist() == [2]
    assert dataset.num_crowd_annotations == 1
    assert len(dataset.coco.getAnnIds(imgIds=[2])) == 2  # evaluation still sees the crowd region


def test_image_tensor_is_exact_rgb_in_unit_range(tmp_path):
    dataset = _basic(tmp_path)
    image, _ = dataset[1]
    assert image.dtype == torch.float32 and image.shape == (3, 30, 40)
    expected = torch.from_numpy(_pixels(40, 30, 5)).permute(2, 0, 1).float() / 255
    assert torch.equal(image, expected)


def test_image_without_annotations_is_legal(tmp_path):
    _, target = _basic(tmp_path)[2]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["image_id"] == 9


def test_degenerate_boxes_dropped_with_one_summary_warning(tmp_path):
    annotations = [
        {"image_id": 1, "category_id": 7, "bbox": [1, 1, 0, 5]},  # zero width
        {"image_id": 1, "category_id": 7, "bbox": [4, 4, 3, -2]},  # inverted
        {"image_id": 1, "category_id": 7, "bbox": [50, 1, 5, 5]},  # right of the image: empty after clipping
        {"image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2]},  # kept
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 0, 0], "iscrowd": 1},  # crowd: not counted
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = CocoDetection(*_write(tmp_path, [(1, 16, 16)], annotations), train=False)
    messages = [str(w.message) for w in caught if "dropped" in str(w.message)]
    assert len(messages) == 1 and "dropped 3 annotations" in messages[0]
    assert dataset.num_dropped_boxes == 3
    _, target = dataset[0]
    assert torch.equal(target["boxes"], torch.tensor([[1.0, 1.0, 3.0, 3.0]]))


def test_unknown_category_names_annotation_and_category(tmp_path):
    annotations = [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2]},
                   {"image_id": 1, "category_id": 99, "bbox": [0, 0, 2, 2], "id": 1234}]
    with pytest.raises(ValueError, match=r"annotation id 1234 has category_id 99"):
        CocoDetection(*_write(tmp_path, [(1, 8, 8)], annotations), train=False)


def test_unknown_image_and_bad_bbox_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"annotation id 1 has unknown image_id 77"):
        CocoDetection(*_write(tmp_path, [(1, 8, 8)], [{"image_id": 77, "category_id": 7, "bbox": [0, 0, 1, 1]}]),
                      train=False)
    with pytest.raises(ValueError, match=r"annotation id 1 has bbox \[0, 0, 1\]"):
        CocoDetection(*_write(tmp_path, [(1, 8, 8)], [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 1]}]),
                      train=False)


def test_annotation_file_errors(tmp_path):
    missing = tmp_path / "absent.json"
    with pytest.raises(FileNotFoundError, match="absent.json"):
        CocoDetection(tmp_path, missing, train=False)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json.*malformed JSON"):
        CocoDetection(tmp_path, broken, train=False)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match="partial.json: missing key 'annotations'"):
        CocoDetection(tmp_path, partial, train=False)
    images_dir, empty = _write(tmp_path, [], [])
    with pytest.raises(ValueError, match="zero images"):
        CocoDetection(images_dir, empty, train=False)


def test_missing_and_truncated_images_name_the_file(tmp_path):
    images_dir, path = _write(tmp_path, [(1, 16, 16), (2, 16, 16), (3, 16, 16)], [])
    (images_dir / "0001.png").unlink()
    data = (images_dir / "0002.png").read_bytes()
    (images_dir / "0002.png").write_bytes(data[: len(data) // 2])
    dataset = CocoDetection(images_dir, path, train=False)
    with pytest.raises(InputError, match="image file not found: .*0001.png; restore or replace the file"):
        dataset[0]
    with pytest.raises(InputError, match="cannot decode image file .*0002.png: .*; restore or replace the file"):
        dataset[1]


def test_skip_bad_images_returns_next_valid_and_counts(tmp_path):
    images_dir, path = _write(tmp_path, [(1, 16, 16), (2, 16, 16), (3, 20, 12)], [])
    (images_dir / "0001.png").unlink()
    (images_dir / "0002.png").write_bytes(b"not a png")
    dataset = CocoDetection(images_dir, path, train=False, skip_bad_images=True)
    with pytest.warns(UserWarning) as caught:
        _, target = dataset[0]
    assert target["image_id"] == 3  # 0 and 1 are bad, 2 is the next readable one
    assert sorted(str(w.message).split(":")[0] for w in caught) == sorted(
        f"skipping bad image {images_dir / name}" for name in ("0001.png", "0002.png"))
    assert dataset.num_skipped_images == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known bad files are not warned about again
        _, target = dataset[1]
    assert target["image_id"] == 3 and dataset.num_skipped_images == 2


def test_aspect_ratio_groups_from_json_sizes(tmp_path):
    images_dir, path = _write(tmp_path, [(1, 40, 30), (2, 20, 36), (3, 24, 24)], [], write_files=False)
    assert CocoDetection(images_dir, path, train=False).aspect_ratio_groups() == [0, 1, 0]


def test_drop_images_rebuilds_every_per_sample_index(tmp_path):
    dataset = _basic(tmp_path)  # image ids 2, 5, 9 (sorted); 2 has a crowd box, 5 two boxes, 9 none
    dataset.drop_images([0])  # image id 2
    assert dataset.image_ids == [5, 9] and len(dataset) == 2 and dataset.num_dropped_images == 1
    assert dataset.aspect_ratio_groups() == [0, 0] and dataset.image_sizes() == [(30, 40), (24, 24)]
    assert [p.name for p in dataset.image_paths()] == ["0005.png", "0009.png"]
    assert sorted(dataset.coco.getImgIds()) == [5, 9] and len(dataset.coco.getAnnIds()) == 2
    assert dataset.num_crowd_annotations == 0 and dataset.label_to_category == {1: 3, 2: 7, 3: 42}
    _, target = dataset[0]
    assert target["image_id"] == 5 and target["labels"].tolist() == [3, 1]
    assert dataset[1][1]["image_id"] == 9 and dataset[1][1]["boxes"].shape == (0, 4)
    dataset.drop_images([])
    assert len(dataset) == 2
    with pytest.raises(IndexError, match="index 2"):
        dataset.drop_images([2])
    with pytest.raises(ValueError, match="cannot drop all 2 images"):
        dataset.drop_images([0, 1])


def _flip_dataset(tmp_path, seed=0):
    annotations = [{"image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4]}]
    return CocoDetection(*_write(tmp_path, [(1, 12, 8), (2, 10, 10)], annotations), train=True, seed=seed)


def test_train_flip_is_reproducible_per_index_and_epoch(tmp_path):
    dataset = _flip_dataset(tmp_path)
    reference = CocoDetection(dataset.images_dir, dataset.annotations_file, train=False)
    plain_image, plain_target = reference[0]
    flips = []
    for epoch in range(12):
        image, target = dataset[(0, epoch)]
        again_image, again_target = dataset[(0, epoch)]
        assert torch.equal(image, again_image) and torch.equal(target["boxes"], again_target["boxes"])
        flipped = not torch.equal(image, plain_image)
        if flipped:
            assert torch.equal(image, plain_image.flip(-1))
            assert torch.equal(target["boxes"], torch.tensor([[8.0, 2.0, 11.0, 6.0]]))
        else:
            assert torch.equal(target["boxes"], plain_target["boxes"])
        flips.append(flipped)
    assert any(flips) and not all(flips)  # the flip changes with the epoch
    dataset.set_epoch(5)
    assert torch.equal(dataset[0][0], dataset[(0, 5)][0])
    other_seed = [not torch.equal(_flip_dataset(tmp_path, seed=1)[(0, e)][0], plain_image) for e in range(12)]
    assert other_seed != flips


def test_flips_do_not_depend_on_worker_count(tmp_path):
    dataset = _flip_dataset(tmp_path)

    def run(workers):
        sampler = GroupedBatchSampler(TrainingSampler(2, seed=0, with_epoch=True), [0, 0], batch_size=2)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
        batches = []
        for step, (images, targets) in enumerate(loader):
            batches.append((images, [t["boxes"] for t in targets]))
            if step == 5:
                return batches

    for (images0, boxes0), (images2, boxes2) in zip(run(0), run(2)):
        assert all(torch.equal(a, b) for a, b in zip(images0 + boxes0, images2 + boxes2))


def test_collate_keeps_lists(tmp_path):
    dataset = _basic(tmp_path)
    images, targets = collate([dataset[0], dataset[1]])
    assert [tuple(image.shape) for image in images] == [(3, 36, 20), (3, 30, 40)]
    assert [target["image_id"] for target in targets] == [2, 5]
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate)
    images, targets = next(iter(loader))
    assert len(images) == 3 and [t["image_id"] for t in targets] == [2, 5, 9]


def test_index_out_of_range_and_negative_seed(tmp_path):
    dataset = _basic(tmp_path)
    with pytest.raises(IndexError, match="index 3"):
        dataset[3]
    assert dataset[-1][1]["image_id"] == 9
    with pytest.raises(ValueError, match="-1"):
        CocoDetection(dataset.images_dir, dataset.annotations_file, train=True, seed=-1)


def test_cache_images_decodes_each_file_once_and_gives_the_same_samples(tmp_path):
    annotations = [{"image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4]}]
    images_dir, path = _write(tmp_path, [(1, 12, 8), (2, 10, 10), (3, 9, 7)], annotations)
    plain = CocoDetection(images_dir, path, train=True, seed=3)
    cached = CocoDetection(images_dir, path, train=True, seed=3, cache_images=True)
    assert cached.decoded_bytes() == 3 * (12 * 8 + 10 * 10 + 9 * 7)
    keys = [(index, epoch) for epoch in range(4) for index in range(3)]  # the flips change with the epoch
    expected = {key: plain[key] for key in keys}
    for key in keys:
        image, target = cached[key]
        assert image.dtype == torch.float32 and torch.equal(image, expected[key][0])
        assert torch.equal(target["boxes"], expected[key][1]["boxes"])
    assert sorted(cached._decoded) == [0, 1, 2] and all(v.dtype == torch.uint8 for v in cached._decoded.values())
    for name in ("0001.png", "0002.png", "0003.png"):
        (images_dir / name).unlink()
    for key in reversed(keys):  # from memory now, and a flipped sample did not flip the kept pixels
        assert torch.equal(cached[key][0], expected[key][0])
    cached.drop_images([0])  # the sample indices shift, so the cache is emptied: the files are read again
    with pytest.raises(InputError, match="0002.png"):
        cached[0]
